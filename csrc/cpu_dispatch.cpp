// The CPU kernel registry and choice (declared in cpu_dispatch.h): the scalar kernel, the SIMD builds
// this CPU supports, the kernel the CPU entries run now, and the OpenMP threshold.
//
// Kernels (cpu_kernel): "avx512" / "avx2" / "generic" are the SIMD builds of select_cpu_simd.cpp
// (W rows per vector step; the best one the CPU supports is the default); "scalar" is select_row.h
// row by row (glibc expf/logf), kept as the portable reference path. ESPER_FAST_CPU_KERNEL chooses
// one at load time, set_cpu_kernel at run time (tests compare them). The entries that use them:
// select_op_cpu.cpp and select_actions_cpu.cpp (through cpu_dispatch.h's run_split).
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu_dispatch.h"
#include "select_actions.h"
#include "select_args.h"
#include "select_cpu_simd.h"
#include "select_row.h"

namespace esper_fast {

namespace {

int64_t run_row(const SelectArgs& a, uint64_t key, int64_t row) {
  const RowResult r = select_row(
      offset_row(a.logits, a.logits_stride, dtype_size(a.logits_dtype), row), a.logits_dtype,
      offset_row(a.q, a.q_stride, dtype_size(a.q_dtype), row), a.q_dtype,
      offset_row(a.mask, a.mask_stride, 1, row), nullptr, -1,
      offset_row(a.noise, a.noise_stride, 4, row), a.a, a.deterministic, key,
      row, 0u);
  a.out_op[row] = r.action;
  a.out_log_prob[row] = r.log_prob;
  a.out_entropy[row] = r.entropy;
  a.out_q_op[row] = r.q_sel;
  a.out_value[row] = r.value;
  return r.action < 0 ? 1 : 0;
}

// The scalar kernels as SimdKernel-shaped functions (rows one at a time).
int64_t scalar_select_rows(const SelectArgs& a, uint64_t key, int64_t begin, int64_t end, float*) {
  int64_t bad = 0;
  for (int64_t row = begin; row < end; ++row) bad += run_row(a, key, row);
  return bad;
}

int64_t scalar_action_rows(const ActionArgs& a, uint64_t key, int64_t begin, int64_t end, float*) {
  int64_t bad = 0;
  for (int64_t row = begin; row < end; ++row) bad += select_action_row(a, row, key);
  return bad;
}

void scalar_math(int what, const float* in, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    out[i] = what == 0 ? expf(in[i]) : (what == 1 ? logf(in[i]) : gumbel(in[i]));
}

void scalar_philox(uint64_t key, int64_t row0, int64_t n, uint32_t col, uint32_t stream,
                   float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = philox_uniform(key, row0 + i, col, stream);
}

const SimdKernel kScalar{"scalar", 1, scalar_select_rows, scalar_action_rows, scalar_math,
                         scalar_philox};

bool supported(const SimdKernel* k) {
#if defined(EF_X86_SIMD)
  __builtin_cpu_init();
  if (k == &simd_avx512::kKernel) return __builtin_cpu_supports("x86-64-v4");
  if (k == &simd_avx2::kKernel) return __builtin_cpu_supports("x86-64-v3");
#endif
  return k == &simd_generic::kKernel || k == &kScalar;
}

const SimdKernel* by_name(const std::string& name) {
  for (const SimdKernel* k : all_cpu_kernels())
    if (name == k->name) return k;
  return nullptr;
}

const SimdKernel* best_kernel() {
  for (const SimdKernel* k : all_cpu_kernels())
    if (supported(k)) return k;
  return &kScalar;
}

const SimdKernel* initial_kernel() {
  const char* env = std::getenv("ESPER_FAST_CPU_KERNEL");
  if (env == nullptr || *env == '\0' || std::string(env) == "auto") return best_kernel();
  const SimdKernel* k = by_name(env);
  if (k == nullptr || !supported(k)) return best_kernel();  // the module's import then fails (bindings)
  return k;
}

const SimdKernel* g_kernel = initial_kernel();

// Below this many elements one thread runs the whole call. Measured on the shared 2-core VM this
// was tuned on (bench_select: threads table and cpu_2t column, README "CPU threads"): with the second
// core free, two threads gave 1.4-1.7x from 64K x 6 (393K elements) up to 4M x 6, and lost below
// ~100K elements; whenever another job holds the second core, every wake-up of the OpenMP worker
// waits up to a scheduler slice (~8 ms) and two threads lose at every size. 2^18 elements sits in
// the measured crossover; move it with set_parallel_threshold (or OMP_NUM_THREADS=1).
int64_t g_parallel_elements = int64_t{1} << 18;

}  // namespace

std::vector<const SimdKernel*> all_cpu_kernels() {
  std::vector<const SimdKernel*> ks;
#if defined(EF_X86_SIMD)
  ks.push_back(&simd_avx512::kKernel);
  ks.push_back(&simd_avx2::kKernel);
#endif
  ks.push_back(&simd_generic::kKernel);
  ks.push_back(&kScalar);
  return ks;
}

const SimdKernel& cpu_kernel() { return *g_kernel; }

int64_t parallel_threshold() { return g_parallel_elements; }

void set_parallel_threshold(int64_t elements) { g_parallel_elements = elements < 0 ? 0 : elements; }

bool cpu_kernel_supported(const std::string& name) {
  const SimdKernel* k = by_name(name);
  return k != nullptr && supported(k);
}

void set_cpu_kernel(const std::string& name) {
  if (name == "auto") {
    g_kernel = best_kernel();
    return;
  }
  const SimdKernel* k = by_name(name);
  if (k == nullptr)
    throw std::invalid_argument("cpu kernel must be one of auto, avx512, avx2, generic, scalar; got '" +
                                name + "'");
  if (!supported(k))
    throw std::invalid_argument("cpu kernel '" + name + "' is not supported by this CPU");
  g_kernel = k;
}

}  // namespace esper_fast
