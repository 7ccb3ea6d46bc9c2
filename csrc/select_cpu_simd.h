// The CPU SIMD kernels' entry points, one set per instruction-set build of select_cpu_simd.cpp.
//
// Each build processes a vector of W rows per step (AVX-512: 16, AVX2: 8, generic: 4 lanes of the
// compiler's vector extensions) with the per-row math of select_row.h written on lanes; the Philox
// stream is bit-identical to philox.h; exp/log are the polynomials of simd.h (error bounds there).
// cpu_dispatch.h / cpu_dispatch.cpp pick a build at run time (cpu_kernel) and split rows over OpenMP
// threads (run_split).
#pragma once

#include <cstdint>

#include "select_actions.h"
#include "select_args.h"

namespace esper_fast {

// Rows [begin, end) of a select_op call (begin a multiple of the build's width); `scratch` holds
// simd_scratch_floats(a.a) floats. Returns the number of bad rows in the range.
using SelectRowsFn = int64_t (*)(const SelectArgs& a, uint64_t key, int64_t begin, int64_t end,
                                 float* scratch);
// Rows [begin, end) of a select_actions call; scratch holds simd_scratch_floats(max head size).
using ActionRowsFn = int64_t (*)(const ActionArgs& a, uint64_t key, int64_t begin, int64_t end,
                                 float* scratch);

// Scratch for one thread: logits, q, mask, noise and slot mask of one block of up to 16 rows x `a` columns.
static constexpr int64_t simd_scratch_floats(int64_t a) { return 5 * a * 16; }

// Test hooks (tests/test_cpu_kernels.py): the lane math on n values.
using MathFn = void (*)(int what, const float* in, float* out, int64_t n);
using PhiloxFn = void (*)(uint64_t key, int64_t row0, int64_t n, uint32_t col, uint32_t stream,
                          float* out);

struct SimdKernel {
  const char* name;  // "avx512", "avx2", "generic"
  int width;         // rows per vector
  SelectRowsFn select_rows;
  ActionRowsFn action_rows;
  MathFn math;       // what: 0 = exp, 1 = log, 2 = gumbel
  PhiloxFn philox;   // philox_uniform(key, row0 + i, col, stream) for i < n
};

namespace simd_avx512 {
extern const SimdKernel kKernel;
}
namespace simd_avx2 {
extern const SimdKernel kKernel;
}
namespace simd_generic {
extern const SimdKernel kKernel;
}

}  // namespace esper_fast
