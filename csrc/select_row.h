// The per-row math of masked categorical selection, shared verbatim by the CPU and CUDA builds.
//
// A row is reduced in two passes, each expressed as an associative state with observe/combine so the
// CPU loops over elements while the CUDA kernel spreads elements over lanes and combines by shuffles:
//   pass 1 (PickState): count valid entries, flag non-finite valid logits, max valid logit m, and the
//          chosen index = first argmax of the score (logit, or logit + Gumbel noise);
//   pass 2 (SumState):  s = sum e, sl = sum e*(l-m), sq = sum e*q  with e = exp(l - m) over valid entries;
//   finalize:           log_prob = (l_op - m) - log s, entropy = log s - sl/s, value = sq/s, q_op = q[op].
// A row with no valid entry or a non-finite valid logit yields action -1 and NaN floats.
#pragma once

#include <cmath>
#include <cstdint>

#include "philox.h"

namespace esper_fast {

// ---- element loads (bit-exact conversions, the same on host and device) ----------------------
struct half_bits {
  uint16_t x;
};
struct bf16_bits {
  uint16_t x;
};

EF_HD float bits_to_float(uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(b);
#else
  union {
    uint32_t u;
    float f;
  } v{b};
  return v.f;
#endif
}

EF_HD float to_float(float v) { return v; }
EF_HD float to_float(bf16_bits v) { return bits_to_float(static_cast<uint32_t>(v.x) << 16); }
EF_HD float to_float(half_bits v) {
  const uint32_t sign = static_cast<uint32_t>(v.x & 0x8000u) << 16;
  const uint32_t exp = (v.x >> 10) & 0x1fu;
  const uint32_t mant = v.x & 0x3ffu;
  if (exp == 0) {  // zero or subnormal: mant * 2^-24
    const float mag = static_cast<float>(mant) * 5.9604644775390625e-08f;
    return sign ? -mag : mag;
  }
  if (exp == 31) return bits_to_float(sign | 0x7f800000u | (mant << 13));  // inf / nan
  return bits_to_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

// Runtime dtype codes shared with esper_fast/ops/_native.py.
enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

EF_HD int dtype_size(int dtype) { return dtype == kFloat32 ? 4 : 2; }

// Row `row` of a row-strided array whose rows are `stride` elements of `elem_bytes` bytes apart (null
// stays null): the one row-offset helper of every kernel (CPU, SIMD, CUDA).
template <typename T>
EF_HD const T* offset_row(const T* base, int64_t stride, int elem_bytes, int64_t row) {
  return base == nullptr ? nullptr
                         : reinterpret_cast<const T*>(reinterpret_cast<const char*>(base) +
                                                      row * stride * elem_bytes);
}

// Element `i` of a float32/float16/bfloat16 array, as fp32.
EF_HD float load_float(const void* base, int dtype, int64_t i) {
  if (dtype == kFloat32) return static_cast<const float*>(base)[i];
  if (dtype == kFloat16) return to_float(static_cast<const half_bits*>(base)[i]);
  return to_float(static_cast<const bf16_bits*>(base)[i]);
}

EF_HD bool is_finite(float v) { return v - v == 0.0f; }  // false for inf and nan, fast-math safe

EF_HD float nan_value() { return bits_to_float(0x7fc00000u); }

// Standard Gumbel from an open-interval uniform (see philox.h): finite for every u in (0, 1).
EF_HD float gumbel(float u) { return -logf(-logf(u)); }

// Whether entry j of a row is a candidate, from its mask bits (nonzero = valid) and the index the
// op-dependent rules force (-1 = none). A forced index wins over the masks (the style head: SIGMOID_ADD
// is forced even where the env's style mask excludes it, as the torch and Triton backends do); without
// one, both masks must allow j. Written once for scalars (select_row below) and for the SIMD kernels'
// lane vectors (select_cpu_simd.h passes int32 lane masks, -1 = true), so both apply the same rule.
template <typename M, typename F>
EF_HD M entry_valid(M mask_bit, M mask2_bit, F forced, int j) {
  return ((forced < 0) & mask_bit & mask2_bit) | (forced == j);
}

// ---- pass 1: validity, max and the chosen index ----------------------------------------------
struct PickState {
  float m;           // max valid logit
  float best_score;  // score of the chosen index
  float best_l;      // logit of the chosen index
  float best_q;      // q of the chosen index
  int best;          // chosen index (-1 while none)
  int count;         // valid entries seen
  int bad;           // a valid logit was non-finite
};

EF_HD PickState pick_init() {
  return PickState{-INFINITY, -INFINITY, 0.0f, 0.0f, -1, 0, 0};
}

EF_HD void pick_observe(PickState& st, int j, float l, float q, float score) {
  st.count += 1;
  st.bad |= !is_finite(l);
  st.m = l > st.m ? l : st.m;
  if (st.best < 0 || score > st.best_score) {  // strict: ties keep the lower index
    st.best = j;
    st.best_score = score;
    st.best_l = l;
    st.best_q = q;
  }
}

EF_HD PickState pick_combine(const PickState& a, const PickState& b) {
  PickState r = a;
  r.count = a.count + b.count;
  r.bad = a.bad | b.bad;
  r.m = b.m > a.m ? b.m : a.m;
  const bool take_b = b.best >= 0 && (a.best < 0 || b.best_score > a.best_score ||
                                      (b.best_score == a.best_score && b.best < a.best));
  if (take_b) {
    r.best = b.best;
    r.best_score = b.best_score;
    r.best_l = b.best_l;
    r.best_q = b.best_q;
  }
  return r;
}

// ---- pass 2: softmax sums relative to the max ------------------------------------------------
struct SumState {
  float s;   // sum exp(l - m)
  float sl;  // sum exp(l - m) * (l - m)
  float sq;  // sum exp(l - m) * q
};

EF_HD SumState sum_init() { return SumState{0.0f, 0.0f, 0.0f}; }

EF_HD void sum_observe(SumState& st, float l, float q, float m) {
  const float d = l - m;
  const float e = expf(d);
  st.s += e;
  st.sl += e > 0.0f ? e * d : 0.0f;  // e underflows to 0 where d = -inf (|logits| ~ 3e38): 0, not NaN
  st.sq += e * q;
}

EF_HD SumState sum_combine(const SumState& a, const SumState& b) {
  return SumState{a.s + b.s, a.sl + b.sl, a.sq + b.sq};
}

// ---- finalize ---------------------------------------------------------------------------------
struct RowResult {
  int64_t action;
  float log_prob;
  float entropy;
  float q_sel;
  float value;
};

EF_HD RowResult finalize_row(const PickState& p, const SumState& s) {
  if (p.count == 0 || p.bad) {
    const float nan = nan_value();
    return RowResult{-1, nan, nan, nan, nan};
  }
  const float log_s = logf(s.s);
  return RowResult{p.best, (p.best_l - p.m) - log_s, log_s - s.sl / s.s, p.best_q, s.sq / s.s};
}

// ---- one whole row, sequentially (the CPU kernels and the fused CUDA kernel) -------------------
// valid(j) = mask[j] && mask2[j] && (forced < 0 || j == forced); null masks mean all valid.
// q may be null (then q_sel = value = 0). noise may be null: deterministic -> argmax of logits,
// otherwise Gumbel from Philox(key; col j, row, stream).
EF_HD RowResult select_row(const void* logits, int logits_dtype, const void* q, int q_dtype,
                           const uint8_t* mask, const uint8_t* mask2, int forced,
                           const float* noise, int A, bool deterministic, uint64_t key,
                           int64_t row, uint32_t stream) {
  PickState p = pick_init();
  for (int j = 0; j < A; ++j) {
    if (!entry_valid<int, int>(mask == nullptr || mask[j], mask2 == nullptr || mask2[j], forced, j))
      continue;
    const float l = load_float(logits, logits_dtype, j);
    const float qv = q != nullptr ? load_float(q, q_dtype, j) : 0.0f;
    float score = l;
    if (!deterministic) {
      score += noise != nullptr
                   ? noise[j]
                   : gumbel(philox_uniform(key, row, static_cast<uint32_t>(j), stream));
    }
    pick_observe(p, j, l, qv, score);
  }
  SumState s = sum_init();
  if (p.count > 0 && !p.bad) {
    for (int j = 0; j < A; ++j) {
      if (!entry_valid<int, int>(mask == nullptr || mask[j], mask2 == nullptr || mask2[j], forced, j))
        continue;
      sum_observe(s, load_float(logits, logits_dtype, j),
                  q != nullptr ? load_float(q, q_dtype, j) : 0.0f, p.m);
    }
  }
  return finalize_row(p, s);
}

}  // namespace esper_fast
