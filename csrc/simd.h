// Lane vectors for the CPU SIMD kernels (GCC/Clang vector extensions), and exp/log on them.
//
// Included only by csrc/select_cpu_simd.cpp, which is compiled once per instruction set (AVX-512,
// AVX2, generic) with EF_SIMD_NS naming the namespace of that build; everything here has internal
// linkage (static), so no ISA-specific code can be shared with another build.
//
// Floating point: every operation is an IEEE fp32 op in a fixed order and the SIMD sources are
// compiled with -ffp-contract=off, so the AVX-512, AVX2 and generic builds produce the same bits.
//
// Error bounds (tests/test_cpu_kernels.py asserts them; README.md "CPU kernels" documents them):
//   vexp(d), d in [-87.33, 0]:  Cephes expf polynomial after a Cody-Waite reduction; <= 1 ulp
//                                (0.96 ulp max over an 18M-point sample of every 61st float);
//                                d < -87.33 returns 0 (the true value is < 1.2e-38, a subnormal).
//   vlog(x), x positive normal:  Cephes logf polynomial; <= 1 ulp (0.82 ulp max over 16.7M floats).
//   Gumbel -vlog(-vlog(u)):      over ALL 2^24 uniforms of philox.h's map (the only inputs it ever
//                                sees): |error| <= 5.25e-7 absolute, the same as glibc's logf path
//                                (5.25e-7) and torch's fp32 (5.36e-7); |simd - torch| <= 9.5e-7.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#ifndef EF_SIMD_NS
#error "define EF_SIMD_NS (the namespace of this ISA build) before including simd.h"
#endif

#define EF_SI static inline __attribute__((always_inline))

namespace esper_fast {
namespace EF_SIMD_NS {

template <int W>
struct V {
  typedef float f __attribute__((vector_size(4 * W)));
  typedef int32_t i __attribute__((vector_size(4 * W)));
  typedef uint32_t u __attribute__((vector_size(4 * W)));
  typedef int64_t l __attribute__((vector_size(8 * W)));
  typedef uint64_t ul __attribute__((vector_size(4 * W)));  // W/2 lanes of 64 bits
};

template <typename T>
EF_SI T vload(const void* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}
template <typename T>
EF_SI void vstore(void* p, const T& v) {
  std::memcpy(p, &v, sizeof(T));
}

template <int W>
EF_SI typename V<W>::i iota() {
  typename V<W>::i r;
  for (int k = 0; k < W; ++k) r[k] = k;
  return r;
}

template <typename T, typename S>
EF_SI T splat(S s) {
  return T{} + s;
}

// High 32 bits of the 64-bit products a * k, per lane (the Philox multiply).
template <int W>
EF_SI typename V<W>::u mulhi(typename V<W>::u a, uint32_t k) {
#if defined(__AVX512F__)
  if constexpr (W == 16) {
    const __m512i x = (__m512i)a, kk = _mm512_set1_epi64(k);
    const __m512i even = _mm512_srli_epi64(_mm512_mul_epu32(x, kk), 32);
    const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(x, 32), kk);
    return (typename V<W>::u)_mm512_mask_blend_epi32(0xAAAA, even, odd);
  }
#endif
#if defined(__AVX2__)
  if constexpr (W == 8) {
    const __m256i x = (__m256i)a, kk = _mm256_set1_epi64x(k);
    const __m256i even = _mm256_srli_epi64(_mm256_mul_epu32(x, kk), 32);
    const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(x, 32), kk);
    return (typename V<W>::u)_mm256_blend_epi32(even, odd, 0xAA);
  }
#endif
  typedef typename V<W>::ul ul;
  const ul x = (ul)a;
  const ul even = ((x & 0xffffffffull) * static_cast<uint64_t>(k)) >> 32;
  const ul odd = (x >> 32) * static_cast<uint64_t>(k);
  return (typename V<W>::u)(even | (odd & 0xffffffff00000000ull));
}

// 4 bytes at base + off[lane] per lane (a hardware gather where there is one).
template <int W>
EF_SI typename V<W>::u gather32(const char* base, typename V<W>::i off) {
#if defined(__AVX512F__)
  if constexpr (W == 16) return (typename V<W>::u)_mm512_i32gather_epi32((__m512i)off, base, 1);
#endif
#if defined(__AVX2__)
  if constexpr (W == 8)
    return (typename V<W>::u)_mm256_i32gather_epi32(reinterpret_cast<const int*>(base), (__m256i)off, 1);
#endif
  typename V<W>::u r;
  for (int k = 0; k < W; ++k) {
    uint32_t x;
    std::memcpy(&x, base + off[k], 4);
    r[k] = x;
  }
  return r;
}

// exp(d) for d <= 0 (Cephes expf); 0 below -87.33 (see the header comment for the error bound).
template <int W>
EF_SI typename V<W>::f vexp(typename V<W>::f d) {
  typedef typename V<W>::f f;
  typedef typename V<W>::i i;
  const f lo = splat<f>(-87.3365402f);
  const f x = d < lo ? lo : d;
  const f magic = splat<f>(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const f t = x * 1.44269504088896341f + magic;
  const f kf = t - magic;
  const i k = (i)t - 0x4B400000;
  f r = x - kf * 0.693359375f;
  r = r - kf * -2.12194440e-4f;
  f p = splat<f>(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const f y = p * (r * r) + r + 1.0f;
  const f scale = (f)((k + 127) << 23);
  const f e = y * scale;
  return d < lo ? splat<f>(0.0f) : e;
}

// log(x) for positive normal finite x (Cephes logf; see the header comment for the error bound).
template <int W>
EF_SI typename V<W>::f vlog(typename V<W>::f x) {
  typedef typename V<W>::f f;
  typedef typename V<W>::i i;
  typedef typename V<W>::u u;
  const u bits = (u)x;
  i e = (i)(bits >> 23) - 126;                     // x = m * 2^e, m in [0.5, 1)
  f m = (f)((bits & 0x007fffffu) | 0x3f000000u);
  const i small = m < 0.707106781186547524f;       // m < sqrt(1/2): use 2m - 1, e - 1
  e = e + small;                                   // small is -1 where true
  m = small ? (m + m) - 1.0f : m - 1.0f;
  const f z = m * m;
  f y = splat<f>(7.0376836292e-2f);
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  const f fe = __builtin_convertvector(e, f);
  y = y + fe * -2.12194440e-4f;
  y = y - z * 0.5f;
  f r = m + y;
  r = r + fe * 0.693359375f;
  return r;
}

// Lanes where v is finite (-1) or inf/nan (0).
template <int W>
EF_SI typename V<W>::i finite(typename V<W>::f v) {
  return (v - v) == 0.0f;
}

}  // namespace EF_SIMD_NS
}  // namespace esper_fast
