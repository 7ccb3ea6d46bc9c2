// Counter-based Philox4x32-10, identical bit for bit to Triton's tl.random.philox_impl
// (same constants, same round function, key (k0, k1) = (seed lo, seed hi)).
//
// esper_fast draws one uniform per (key, column, row, stream) and the same mapping is written in
// Triton (esper_fast/ops/triton_select.py) and in torch ops (esper_fast/reference/philox.py), so a given
// key selects the same actions on every backend (up to the last-ulp rounding of log()).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define EF_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// always_inline: an out-of-line copy of a shared helper is never emitted, so the per-ISA SIMD
// translation units (select_cpu_simd.cpp, built with -mavx2 / -mavx512f) cannot leak an AVX-512
// copy into code that runs on a CPU without it (no ODR mixing of ISA-specific inline functions).
#define EF_HD inline __attribute__((always_inline))
#else
#define EF_HD inline
#endif

namespace esper_fast {

EF_HD uint32_t mulhi32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

// Returns the first of the four Philox outputs for counter (c0, c1, c2, c3) and key (k0, k1).
EF_HD uint32_t philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                             uint32_t k1) {
  constexpr uint32_t kKeyA = 0x9E3779B9u, kKeyB = 0xBB67AE85u;
  constexpr uint32_t kRoundA = 0xD2511F53u, kRoundB = 0xCD9E8D57u;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int i = 0; i < 10; ++i) {
    const uint32_t p0 = c0, p2 = c2;
    c0 = mulhi32(kRoundB, p2) ^ c1 ^ k0;
    c2 = mulhi32(kRoundA, p0) ^ c3 ^ k1;
    c1 = kRoundB * p2;
    c3 = kRoundA * p0;
    k0 += kKeyA;
    k1 += kKeyB;
  }
  return c0;
}

// Largest fp32 below 1 (1 - 2^-24).
constexpr float kUniformMax = 0.99999994039535522461f;

// Uniform in the open interval (0, 1) from the top 24 bits: ((x >> 8) + 0.5) * 2^-24 in fp32,
// clamped to 1 - 2^-24. Without the clamp, x >> 8 == 2^24 - 1 rounds (x >> 8) + 0.5 up to 2^24 and
// u to exactly 1.0 (Gumbel noise +inf, probability 2^-24 per element). The clamp touches only that
// value, so every other uniform is unchanged; the same map is written in Triton and torch, so every
// backend produces the same float, and -log(-log(u)) is always finite.
EF_HD float uint_to_open_uniform(uint32_t x) {
  const float u = (static_cast<float>(x >> 8) + 0.5f) * 5.9604644775390625e-08f;
  return u < kUniformMax ? u : kUniformMax;
}

// Uniform for element `col` of row `row` in stream `stream` under the 64-bit key `key`.
EF_HD float philox_uniform(uint64_t key, int64_t row, uint32_t col, uint32_t stream) {
  const uint64_t r = static_cast<uint64_t>(row);
  return uint_to_open_uniform(philox4x32_10(col, static_cast<uint32_t>(r),
                                            static_cast<uint32_t>(r >> 32), stream,
                                            static_cast<uint32_t>(key),
                                            static_cast<uint32_t>(key >> 32)));
}

}  // namespace esper_fast
