// The per-row math of the fused PPO scoring op (score_actions): for one row and each of the eight
// heads, the masked log-prob of the stored action and esper's normalised entropy, forward and
// backward. Shared by the CPU loop (score_cpu.cpp); the Triton kernel (esper_fast/ops/triton_score.py)
// implements the same formulas on tiles. Host-only (std:: math; the GPU path is Triton).
//
// Semantics are esper's evaluate_actions (FactoredNetwork.score_actions): logits outside the valid set
// are replaced by -1e4 (not -inf, so an all-masked row scores log(1/A)), the softmax runs over all A
// entries, and for head h with valid set V, stored action a:
//   logp_j = (x_j - m) - log sum_i exp(x_i - m),  x_j = l_j if j in V else -1e4,  m = max x,  p_j = exp(logp_j)
//   log_prob = logp_a                      (NaN when a is outside [0, A))
//   raw      = -sum_{j in V} p_j logp_j,   n = |V|
//   entropy  = 0 if n <= 1 else raw / max(log n, 1e-8)
// Backward (zero at masked entries, which masked_fill cuts off), for k in V:
//   d log_prob / d l_k = [k == a] - p_k
//   d raw / d l_k      = -p_k (logp_k + 1 - S1 - PV),  S1 = sum_V p_j logp_j,  PV = sum_V p_j
// Op-dependent rules (the op is the row's stored op action): the style head's valid set is
// {SIGMOID_ADD} unless the op is GERMINATE or SET_ALPHA_TARGET (esper's override replaces the mask);
// with slot_by_op the slot head's valid set is mask & slot_by_op[row, op] (op in range).
#pragma once

#include <cmath>
#include <cstdint>

#include "select_row.h"

namespace esper_fast {

constexpr int kScoreHeads = 8;
constexpr int kScoreSlot = 0, kScoreStyle = 2, kScoreOp = 7;
constexpr int kScoreSigmoidAdd = 2;                 // GerminationStyle.SIGMOID_ADD
constexpr int kScoreGerminate = 1, kScoreSetAlpha = 2;  // ops for which the style head is free
constexpr int kFloat64 = 3;                        // dtype code beyond select_row.h's three
constexpr double kMaskedLogit = -1e4;              // esper's MASKED_LOGIT_VALUE

struct ScoreArgs {
  const void* logits;  // [N, A] packed heads, unit column stride
  int logits_dtype;    // 0 fp32, 1 fp16, 2 bf16, 3 fp64
  int64_t logits_stride;
  const uint8_t* mask;  // [N, A] bool (same packing) or null = all valid
  int64_t mask_stride;
  const int64_t* actions;  // [N, 8] stored actions, HEAD_NAMES order, unit column stride
  int64_t actions_stride;
  const uint8_t* slot_by_op;  // [N, size[op], size[slot]] bool, inner dims contiguous, or null
  int64_t slot_by_op_stride;
  int offset[kScoreHeads];  // column of head h's first logit in the packed row
  int size[kScoreHeads];    // head h's number of actions
  int a_total;              // packed row width A
  int64_t n;
  int num_threads;  // OpenMP threads for large inputs (the caller passes torch.get_num_threads())
  // forward outputs: [8, N] in the accumulation type (fp64 for fp64 logits, else fp32)
  void* out_log_prob;
  void* out_entropy;
  // backward inputs ([8, N], accumulation type, null = zero) and output ([N, A] contiguous, acc type)
  const void* grad_log_prob;
  const void* grad_entropy;
  void* grad_logits;
};

template <typename Acc>
EF_HD Acc load_acc(const void* base, int dtype, int64_t i) {
  if (dtype == kFloat64) return static_cast<Acc>(static_cast<const double*>(base)[i]);
  return static_cast<Acc>(load_float(base, dtype, i));
}

template <typename Acc>
EF_HD Acc acc_nan() {
  return static_cast<Acc>(nan_value());
}

// Whether entry j of head h is in the valid set of `row` (op = the row's stored op).
EF_HD bool score_valid(const ScoreArgs& a, int64_t row, int h, int j, int64_t op) {
  if (h == kScoreStyle && op != kScoreGerminate && op != kScoreSetAlpha) return j == kScoreSigmoidAdd;
  if (a.mask != nullptr && !a.mask[row * a.mask_stride + a.offset[h] + j]) return false;
  if (h == kScoreSlot && a.slot_by_op != nullptr && op >= 0 && op < a.size[kScoreOp])
    return a.slot_by_op[row * a.slot_by_op_stride + op * a.size[kScoreSlot] + j] != 0;
  return true;
}

// Per-head softmax statistics (recomputed by the backward: a head has at most a few dozen entries).
template <typename Acc>
struct HeadScore {
  Acc m;         // max over all entries (masked ones at -1e4)
  Acc log_s;     // log sum_j exp(x_j - m); logp_j = (x_j - m) - log_s (no cancellation at -1e4)
  Acc log_prob;  // logp of the stored action (NaN when out of range)
  Acc s1;        // sum_V p_j logp_j
  Acc pv;        // sum_V p_j
  int n_valid;
  Acc entropy;  // normalised
  Acc divisor;  // max(log n, 1e-8) (1 when n <= 1)
};

template <typename Acc>
EF_HD Acc head_logit(const ScoreArgs& a, const void* row_logits, int h, int j, bool valid) {
  return valid ? load_acc<Acc>(row_logits, a.logits_dtype, a.offset[h] + j) : static_cast<Acc>(kMaskedLogit);
}

template <typename Acc>
EF_HD HeadScore<Acc> score_head(const ScoreArgs& a, const void* row_logits, int64_t row, int h,
                                int64_t action, int64_t op) {
  const int A = a.size[h];
  Acc m = static_cast<Acc>(-INFINITY);
  for (int j = 0; j < A; ++j) {
    const Acc x = head_logit<Acc>(a, row_logits, h, j, score_valid(a, row, h, j, op));
    m = x > m ? x : m;
  }
  Acc s = 0;
  for (int j = 0; j < A; ++j) s += std::exp(head_logit<Acc>(a, row_logits, h, j, score_valid(a, row, h, j, op)) - m);
  HeadScore<Acc> r;
  r.m = m;
  r.log_s = std::log(s);
  r.s1 = 0;
  r.pv = 0;
  r.n_valid = 0;
  r.log_prob = acc_nan<Acc>();
  for (int j = 0; j < A; ++j) {
    const bool v = score_valid(a, row, h, j, op);
    const Acc logp = (head_logit<Acc>(a, row_logits, h, j, v) - r.m) - r.log_s;
    if (j == action) r.log_prob = logp;
    if (v) {
      const Acc p = std::exp(logp);
      r.s1 += p * logp;
      r.pv += p;
      r.n_valid += 1;
    }
  }
  if (r.n_valid > 1) {
    const Acc d = std::log(static_cast<Acc>(r.n_valid));
    r.divisor = d > static_cast<Acc>(1e-8) ? d : static_cast<Acc>(1e-8);
    r.entropy = -r.s1 / r.divisor;
  } else {
    r.divisor = 1;
    r.entropy = 0;
  }
  return r;
}

template <typename Acc>
EF_HD const void* score_row_logits(const ScoreArgs& a, int64_t row) {
  const int bytes = a.logits_dtype == kFloat64 ? 8 : dtype_size(a.logits_dtype);
  return static_cast<const char*>(a.logits) + row * a.logits_stride * bytes;
}

// Forward of one row: writes out_log_prob[h, row] and out_entropy[h, row] for every head.
template <typename Acc>
EF_HD void score_forward_row(const ScoreArgs& a, int64_t row) {
  const void* rl = score_row_logits<Acc>(a, row);
  const int64_t* act = a.actions + row * a.actions_stride;
  const int64_t op = act[kScoreOp];
  Acc* lp = static_cast<Acc*>(a.out_log_prob);
  Acc* ent = static_cast<Acc*>(a.out_entropy);
  for (int h = 0; h < kScoreHeads; ++h) {
    const HeadScore<Acc> r = score_head<Acc>(a, rl, row, h, act[h], op);
    lp[h * a.n + row] = r.log_prob;
    ent[h * a.n + row] = r.entropy;
  }
}

// Backward of one row: grad_logits[row, :] (zero outside every head and at masked entries).
template <typename Acc>
EF_HD void score_backward_row(const ScoreArgs& a, int64_t row) {
  const void* rl = score_row_logits<Acc>(a, row);
  const int64_t* act = a.actions + row * a.actions_stride;
  const int64_t op = act[kScoreOp];
  const Acc* g_lp = static_cast<const Acc*>(a.grad_log_prob);
  const Acc* g_ent = static_cast<const Acc*>(a.grad_entropy);
  Acc* g = static_cast<Acc*>(a.grad_logits) + row * a.a_total;
  for (int j = 0; j < a.a_total; ++j) g[j] = 0;
  for (int h = 0; h < kScoreHeads; ++h) {
    const HeadScore<Acc> r = score_head<Acc>(a, rl, row, h, act[h], op);
    const Acc gl = g_lp != nullptr ? g_lp[h * a.n + row] : static_cast<Acc>(0);
    const Acc ge = (g_ent != nullptr && r.n_valid > 1) ? g_ent[h * a.n + row] / r.divisor : static_cast<Acc>(0);
    const bool in_range = act[h] >= 0 && act[h] < a.size[h];
    for (int j = 0; j < a.size[h]; ++j) {
      if (!score_valid(a, row, h, j, op)) continue;
      const Acc logp = (load_acc<Acc>(rl, a.logits_dtype, a.offset[h] + j) - r.m) - r.log_s;
      const Acc p = std::exp(logp);
      const Acc d_lp = in_range ? (static_cast<Acc>(j == act[h]) - p) : acc_nan<Acc>();
      const Acc d_raw = -p * (logp + static_cast<Acc>(1) - r.s1 - r.pv);
      g[a.offset[h] + j] += gl * d_lp + ge * d_raw;
    }
  }
}

// CPU: all rows (OpenMP above a size threshold).
void score_forward_cpu(const ScoreArgs& args);
void score_backward_cpu(const ScoreArgs& args);

}  // namespace esper_fast
