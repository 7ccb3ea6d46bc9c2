// Philox4x32-10 across lanes: W counters at once, the same rounds, constants and uniform map as
// csrc/philox.h (bit for bit; tests/test_cpu_kernels.py compares them on random counters and keys).
// Included only by select_cpu_simd.cpp (see simd.h for the per-ISA build rules).
#pragma once

#include "philox.h"
#include "simd.h"

namespace esper_fast {
namespace EF_SIMD_NS {

// First Philox output for counters (c0, c1[lane], c2[lane], c3) under key (k0, k1) (one key for
// all lanes: its schedule is scalar).
template <int W>
EF_SI typename V<W>::u philox_lanes(uint32_t c0s, typename V<W>::u c1, typename V<W>::u c2,
                                    uint32_t c3s, uint32_t k0, uint32_t k1) {
  typedef typename V<W>::u u;
  constexpr uint32_t kKeyA = 0x9E3779B9u, kKeyB = 0xBB67AE85u;
  constexpr uint32_t kRoundA = 0xD2511F53u, kRoundB = 0xCD9E8D57u;
  u c0 = splat<u>(c0s), c3 = splat<u>(c3s);
#pragma GCC unroll 10
  for (int r = 0; r < 10; ++r) {
    const u p0 = c0, p2 = c2;
    c0 = mulhi<W>(p2, kRoundB) ^ c1 ^ k0;
    c2 = mulhi<W>(p0, kRoundA) ^ c3 ^ k1;
    c1 = p2 * kRoundB;
    c3 = p0 * kRoundA;
    k0 += kKeyA;
    k1 += kKeyB;
  }
  return c0;
}

// uint_to_open_uniform (philox.h) per lane: ((x >> 8) + 0.5) * 2^-24, clamped to 1 - 2^-24.
template <int W>
EF_SI typename V<W>::f open_uniform_lanes(typename V<W>::u x) {
  typedef typename V<W>::f f;
  const f u = (__builtin_convertvector((typename V<W>::i)(x >> 8), f) + 0.5f) * 5.9604644775390625e-08f;
  return u < kUniformMax ? u : splat<f>(kUniformMax);
}

// Rows row0 + lane as the (lo, hi) 32-bit counter words.
template <int W>
EF_SI void row_words(int64_t row0, typename V<W>::u& lo, typename V<W>::u& hi) {
  typedef typename V<W>::u u;
  const uint64_t r = static_cast<uint64_t>(row0);
  const uint32_t r_lo = static_cast<uint32_t>(r);
  lo = splat<u>(r_lo) + (u)iota<W>();
  hi = splat<u>(static_cast<uint32_t>(r >> 32)) - (u)(lo < r_lo);  // carry: the compare is -1
}

// philox_uniform(key, row0 + lane, col, stream) per lane.
template <int W>
EF_SI typename V<W>::f philox_uniform_lanes(uint64_t key, typename V<W>::u row_lo,
                                            typename V<W>::u row_hi, uint32_t col, uint32_t stream) {
  return open_uniform_lanes<W>(philox_lanes<W>(col, row_lo, row_hi, stream,
                                               static_cast<uint32_t>(key),
                                               static_cast<uint32_t>(key >> 32)));
}

// Standard Gumbel -log(-log(u)) with the SIMD log.
template <int W>
EF_SI typename V<W>::f gumbel_lanes(typename V<W>::f u) {
  return -vlog<W>(-vlog<W>(u));
}

}  // namespace EF_SIMD_NS
}  // namespace esper_fast
