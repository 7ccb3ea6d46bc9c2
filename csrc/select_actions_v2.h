// Schema-v2 fused whole-action selection (esper HEAD's get_action), per row:
//   1. the op, chosen once from its probability-floored distribution, with Q(s, op) and
//      sum_a pi(a) Q(s, a) from the same pass; the network's V(s) is passed through;
//   2. every other head on its effective mask: a head the op makes irrelevant allows only its
//      canonical action (whatever the caller's mask says); slot uses slot_by_op[row, op] in place of
//      the slot mask when given, and WAIT takes its first valid slot (slot 0 if none);
//   3. each head's probability floor (esper HEAD's floor-preserving renormalisation), then argmax or
//      Gumbel-max, log-prob and entropy / log(#valid) of the floored distribution, all in fp32.
// A bad op (no valid op / non-finite valid op logit) makes every head of the row bad (-1, NaN).
// Reuses select_row.h's PickState / SumState / finalize_row and select_actions.h's ActionArgs layout;
// the ground truth is esper_fast/reference/actions_v2.py.
#pragma once

#include <cstdint>

#include "select_actions.h"

namespace esper_fast {

struct ActionArgsV2 {
  ActionArgs base;        // logits / masks / noise / sizes / q / slot_by_op / key / n / outputs
  float floor[kNumHeads];  // per head probability floor (<= 0: none)
  const void* value;       // [N] V(s) (row stride value_stride elements) or null
  int value_dtype;
  int64_t value_stride;
  // base.out_f is [kFloatRowsV2, N]: log_prob x8, entropy x8 (normalised), q_op, expected value, value
};

// Canonical action of head h (HEAD_NAMES order) and the ops (bit o) for which h is relevant.
EF_HD int v2_canonical(int h) {
  // slot(0) special, blueprint NOOP, style SIGMOID_ADD, tempo STANDARD, alpha_target FULL,
  // alpha_speed INSTANT, alpha_curve LINEAR
  return h == 1 ? 0 : (h == 2 ? 2 : (h == 3 ? 1 : (h == 4 ? 2 : 0)));
}
EF_HD unsigned v2_relevant_ops(int h) {
  // GERMINATE = 1, SET_ALPHA_TARGET = 2, PRUNE = 3
  return (h == 1 || h == 3) ? 0x2u : ((h == 2 || h == 4) ? 0x6u : 0xCu);
}
constexpr int kWaitOp = 0;

// One head of one row: where its entries are and which of them are valid.
struct HeadRowV2 {
  const void* logits;
  int dtype;
  const void* q;  // op head only
  int q_dtype;
  const uint8_t* mask;  // null = all valid
  int forced;           // >= 0: only this entry is valid (masks ignored)
  const float* noise;   // null = Philox
  int size;
  float floor;
};

EF_HD bool v2_valid(const HeadRowV2& v, int j) {
  return v.forced >= 0 ? j == v.forced : (v.mask == nullptr || v.mask[j] != 0);
}

// The floored logit of an entry: log(max(p', 1e-8)) with p = exp(l - m) / s (select_row's max m).
EF_HD float v2_floored(float l, float m, float s, float eff, float scale) {
  const float p = expf(l - m) / s;
  const float fp = p < eff ? eff : p * scale;
  return logf(fp > 1e-8f ? fp : 1e-8f);
}

EF_HD RowResult v2_bad_result() {
  const float nan = nan_value();
  return RowResult{-1, nan, nan, nan, nan};
}

EF_HD RowResult select_row_v2(const HeadRowV2& v, bool deterministic, uint64_t key, int64_t row,
                              uint32_t stream) {
  // pass 1 on the raw logits: count, non-finite flag, max
  int count = 0, bad = 0;
  float m = -INFINITY;
  for (int j = 0; j < v.size; ++j) {
    if (!v2_valid(v, j)) continue;
    const float l = load_float(v.logits, v.dtype, j);
    count += 1;
    bad |= !is_finite(l);
    m = l > m ? l : m;
  }
  if (count == 0 || bad) return v2_bad_result();
  // the floor: effective floor, #underweight, overweight mass -> scale
  const bool floored = v.floor > 0.0f;
  float s = 0.0f, eff = 0.0f, scale = 1.0f;
  if (floored) {
    for (int j = 0; j < v.size; ++j)
      if (v2_valid(v, j)) s += expf(load_float(v.logits, v.dtype, j) - m);
    const float cap = (1.0f / static_cast<float>(count)) * 0.99f;
    eff = v.floor < cap ? v.floor : cap;
    float under = 0.0f, over = 0.0f;
    for (int j = 0; j < v.size; ++j) {
      if (!v2_valid(v, j)) continue;
      const float p = expf(load_float(v.logits, v.dtype, j) - m) / s;
      if (p < eff) under += 1.0f; else over += p;
    }
    float remaining = 1.0f - under * eff;
    remaining = remaining > 1e-8f ? remaining : 1e-8f;
    over = over > 1e-8f ? over : 1e-8f;
    scale = remaining / over;
  }
  // pass 2: choose on the (floored) logits; pass 3: their softmax sums
  PickState p = pick_init();
  for (int j = 0; j < v.size; ++j) {
    if (!v2_valid(v, j)) continue;
    const float raw = load_float(v.logits, v.dtype, j);
    const float l = floored ? v2_floored(raw, m, s, eff, scale) : raw;
    const float qv = v.q != nullptr ? load_float(v.q, v.q_dtype, j) : 0.0f;
    float score = l;
    if (!deterministic) {
      score += v.noise != nullptr
                   ? v.noise[j]
                   : gumbel(philox_uniform(key, row, static_cast<uint32_t>(j), stream));
    }
    pick_observe(p, j, l, qv, score);
  }
  SumState st = sum_init();
  for (int j = 0; j < v.size; ++j) {
    if (!v2_valid(v, j)) continue;
    const float raw = load_float(v.logits, v.dtype, j);
    sum_observe(st, floored ? v2_floored(raw, m, s, eff, scale) : raw,
                v.q != nullptr ? load_float(v.q, v.q_dtype, j) : 0.0f, p.m);
  }
  RowResult r = finalize_row(p, st);
  r.entropy = count > 1 ? r.entropy / logf(static_cast<float>(count)) : 0.0f;
  return r;
}

EF_HD const ActionArgs& base_args(const ActionArgsV2& a) { return a.base; }

// v2's CUDA first pass is the op alone: every other head may be canonicalised by it.
EF_HD bool head_before_op(const ActionArgsV2&, int h) { return h == kOpHead; }

// Head h of row `row`; `op` is the row's chosen op (ignored for the op head itself).
EF_HD RowResult select_head_row(const ActionArgsV2& a2, int64_t row, int h, int op, uint64_t key) {
  const ActionArgs& a = a2.base;
  const HeadRow in = head_row(a, row, h);
  HeadRowV2 v;
  v.logits = in.logits;
  v.dtype = a.logits_dtype[h];
  v.q = in.q;
  v.q_dtype = a.q_dtype;
  v.mask = in.mask;
  v.forced = -1;
  v.noise = in.noise;
  v.size = a.size[h];
  v.floor = a2.floor[h];
  if (h != kOpHead) {
    if (op < 0) return v2_bad_result();
    if (h == kSlotHead) {
      if (a.slot_by_op != nullptr) v.mask = a.slot_by_op + row * a.slot_by_op_stride + op * v.size;
      if (op == kWaitOp) {
        int first = 0;
        for (int j = v.size - 1; j >= 0; --j)
          if (v.mask == nullptr || v.mask[j] != 0) first = j;
        v.forced = first;
      }
    } else if (op >= 32 || ((v2_relevant_ops(h) >> op) & 1u) == 0u) {
      v.forced = v2_canonical(h);
    }
  }
  return select_row_v2(v, a.deterministic, key, row, static_cast<uint32_t>(h + 1));
}

// Writes head h's result (the op head also writes q_op, the expected value and the value).
EF_HD void write_head(const ActionArgsV2& a2, int64_t row, int h, const RowResult& r) {
  write_head(a2.base, row, h, r);
  if (h == kOpHead) {
    const int64_t n = a2.base.n;
    float value = r.value;
    if (a2.value != nullptr) {
      const void* vrow = offset_row(a2.value, a2.value_stride, dtype_size(a2.value_dtype), row);
      value = r.action < 0 ? nan_value() : load_float(vrow, a2.value_dtype, 0);
    }
    a2.base.out_f[kStateValueRowV2 * n + row] = value;
  }
}

// Every head of a row: select_action_row<ActionArgsV2> (select_actions.h).

// CPU: all rows; returns the number of rows with a bad head.
int64_t select_actions_v2_cpu(const ActionArgsV2& args);

// CUDA: enqueues the fused kernel on `stream`; returns an error string or null.
const char* select_actions_v2_cuda(const ActionArgsV2& args, void* stream);

}  // namespace esper_fast
