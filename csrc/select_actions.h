// The fused whole-action selection: per row, the op is chosen once (with Q(s, op) and
// sum_a pi(a) Q(s, a)), then esper's op-dependent rules apply and every other head is chosen.
// Shared verbatim by the CPU loop and the CUDA kernel (one thread per row).
#pragma once

#include <cstdint>

#include "select_row.h"

namespace esper_fast {

// Heads in esper's HEAD_NAMES order.
constexpr int kNumHeads = 8;
constexpr int kSlotHead = 0, kStyleHead = 2, kOpHead = 7;
constexpr int kSigmoidAdd = 2;                      // GerminationStyle.SIGMOID_ADD
constexpr int kGerminate = 1, kSetAlphaTarget = 2;  // ops for which the style head is free
// The fused output layout (Python twin: esper_fast/ops/layout.py; tests/test_layout.py checks that
// they agree through _C.OUTPUT_LAYOUT): out_actions [kActionRows, N] (row h: head h's action);
// out_f [kFloatRows, N]: row kLogProbRow + h head h's log-prob, kEntropyRow + h its entropy, kQOpRow
// Q(s, chosen op), kValueRow sum_a pi(a) Q(s, a). select_actions_v2 appends kStateValueRowV2 (V(s)).
constexpr int kActionRows = kNumHeads;
constexpr int kLogProbRow = 0;          // + head
constexpr int kEntropyRow = kNumHeads;  // + head
constexpr int kQOpRow = 2 * kNumHeads;
constexpr int kValueRow = kQOpRow + 1;
constexpr int kFloatRows = kValueRow + 1;
constexpr int kStateValueRowV2 = kFloatRows;
constexpr int kFloatRowsV2 = kStateValueRowV2 + 1;
// The k-th head chosen after the op, in esper's get_action order: style, slot, blueprint, tempo,
// alpha_target, alpha_speed, alpha_curve.
EF_HD int head_after_op(int k) {
  return k == 0 ? kStyleHead : (k == 1 ? kSlotHead : (k == 2 ? 1 : k));
}

// The style index the op forces (-1 = free): SIGMOID_ADD unless the op is GERMINATE or
// SET_ALPHA_TARGET (also for op -1, a bad op row). Shared by the scalar and SIMD kernels.
EF_HD int style_forced(int op) {
  return (op != kGerminate && op != kSetAlphaTarget) ? kSigmoidAdd : -1;
}

struct ActionArgs {
  const void* logits[kNumHeads];   // per head [N, size] with row stride, unit column stride
  int logits_dtype[kNumHeads];
  int64_t logits_stride[kNumHeads];
  const uint8_t* mask[kNumHeads];  // per head [N, size] bool or null
  int64_t mask_stride[kNumHeads];
  const float* noise[kNumHeads];   // per head [N, size] Gumbel noise or null (Philox)
  int64_t noise_stride[kNumHeads];
  int size[kNumHeads];
  const void* q;                   // [N, size[op]]
  int q_dtype;
  int64_t q_stride;
  const uint8_t* slot_by_op;       // [N, size[op], size[slot]] row-contiguous, or null
  int64_t slot_by_op_stride;
  const int64_t* key;
  int64_t n;
  bool deterministic;
  int64_t* out_actions;            // [kActionRows, N]
  float* out_f;                    // [kFloatRows, N]: log_prob x8, entropy x8, q_op, value
};

// Whether head h depends on the chosen op (style: forced SIGMOID_ADD; slot: slot_by_op).
EF_HD bool head_needs_op(int h) { return h == kStyleHead || h == kSlotHead; }

// Head h's inputs at row `row` (null where absent; q is the op head's only).
struct HeadRow {
  const void* logits;
  const void* q;
  const uint8_t* mask;
  const float* noise;
};

EF_HD HeadRow head_row(const ActionArgs& a, int64_t row, int h) {
  return HeadRow{offset_row(a.logits[h], a.logits_stride[h], dtype_size(a.logits_dtype[h]), row),
                 h == kOpHead ? offset_row(a.q, a.q_stride, dtype_size(a.q_dtype), row) : nullptr,
                 offset_row(a.mask[h], a.mask_stride[h], 1, row),
                 offset_row(a.noise[h], a.noise_stride[h], 4, row)};
}

// The fused op's shared fields, for code written once for ActionArgs and ActionArgsV2.
EF_HD const ActionArgs& base_args(const ActionArgs& a) { return a; }

// Whether head h is chosen before the op is known (the CUDA kernel's first pass): every head that
// does not depend on it.
EF_HD bool head_before_op(const ActionArgs&, int h) { return !head_needs_op(h); }

// Head h of row `row` once the op is known (`op` is ignored by heads that do not need it). A forced
// style (SIGMOID_ADD) overrides the head's mask, as in the torch and triton backends.
EF_HD RowResult select_head_row(const ActionArgs& a, int64_t row, int h, int op, uint64_t key) {
  int forced = -1;
  const uint8_t* mask2 = nullptr;
  if (h == kStyleHead) forced = style_forced(op);
  if (h == kSlotHead && a.slot_by_op != nullptr && op >= 0)
    mask2 = a.slot_by_op + row * a.slot_by_op_stride + op * a.size[kSlotHead];
  const HeadRow in = head_row(a, row, h);
  return select_row(in.logits, a.logits_dtype[h], in.q, a.q_dtype, forced >= 0 ? nullptr : in.mask,
                    mask2, forced, in.noise, a.size[h], a.deterministic, key, row,
                    static_cast<uint32_t>(h + 1));
}

// Writes head h's result for `row` (the op head also writes q_op and the expected value).
EF_HD void write_head(const ActionArgs& a, int64_t row, int h, const RowResult& r) {
  const int64_t n = a.n;
  if (h == kOpHead) {
    a.out_f[kQOpRow * n + row] = r.q_sel;
    a.out_f[kValueRow * n + row] = r.value;
  }
  a.out_actions[h * n + row] = r.action;
  a.out_f[(kLogProbRow + h) * n + row] = r.log_prob;
  a.out_f[(kEntropyRow + h) * n + row] = r.entropy;
}

// Chooses every head of row `row` in esper's get_action order (the CPU kernels): the op first, then
// head_after_op(k) given the op. Args is ActionArgs or ActionArgsV2 (select_actions_v2.h), whose
// select_head_row / write_head overloads are found at instantiation. Returns 1 if any head was bad.
template <typename Args>
EF_HD int select_action_row(const Args& a, int64_t row, uint64_t key) {
  const RowResult op_result = select_head_row(a, row, kOpHead, -1, key);
  write_head(a, row, kOpHead, op_result);
  const int op = static_cast<int>(op_result.action);
  int bad = op < 0;
  for (int k = 0; k < kNumHeads - 1; ++k) {
    const int h = head_after_op(k);
    const RowResult r = select_head_row(a, row, h, op, key);
    write_head(a, row, h, r);
    bad |= r.action < 0;
  }
  return bad;
}

// CPU: all rows; returns the number of rows with a bad head.
int64_t select_actions_cpu(const ActionArgs& args);

// CUDA: enqueues the fused kernel on `stream`; returns an error string or null.
const char* select_actions_cuda(const ActionArgs& args, void* stream);

}  // namespace esper_fast
