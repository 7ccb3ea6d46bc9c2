// The CPU entries' shared dispatch: which kernel runs (the registry in cpu_dispatch.cpp) and how rows
// are split over OpenMP threads (run_split). Used by select_op_cpu.cpp, select_actions_cpu.cpp and
// select_actions_v2_cpu.cpp, and by bindings_cpu.cpp (kernel choice, threshold).
//
// Threads: one thread below parallel_threshold() elements (n * a for select_op, n * sum of head sizes
// for select_actions; cpu_threads): the fork/join of an OpenMP region costs more than it saves there
// (measured, see README "CPU threads"). Above it, rows are split in contiguous chunks of whole
// 16-row blocks. Rows are independent, so the split never changes a result.
#pragma once

#include <omp.h>

#include <cstdint>
#include <string>
#include <vector>

#include "select_cpu_simd.h"

namespace esper_fast {

// Every kernel of this build, best first (x86: avx512, avx2; then generic, scalar).
std::vector<const SimdKernel*> all_cpu_kernels();
// The kernel select_op_cpu / select_actions_cpu run now.
const SimdKernel& cpu_kernel();
bool cpu_kernel_supported(const std::string& name);
// Chooses the kernel by name ("auto" = the best supported); throws std::invalid_argument.
void set_cpu_kernel(const std::string& name);
// Elements (n * width) from which a call is split over the OpenMP threads.
int64_t parallel_threshold();
void set_parallel_threshold(int64_t elements);

// Threads for a call over `elements` elements: 1 below parallel_threshold(), else the OpenMP team.
inline int cpu_threads(int64_t elements) {
  return elements < parallel_threshold() ? 1 : omp_get_max_threads();
}

// Runs rows [0, n) with fn(begin, end, scratch) -> bad rows, on one thread (threads <= 1 or n <= 16)
// or split over `threads` OpenMP threads in contiguous chunks of 16-row blocks (begin a multiple of
// 16, as the SIMD kernels need); each call gets its own `scratch_floats` floats of scratch (null
// when 0). Returns the sum of fn's results.
template <typename Fn>
int64_t run_split(int64_t n, int threads, int64_t scratch_floats, const Fn& fn) {
  if (threads <= 1 || n <= 16) {
    if (scratch_floats == 0) return fn(0, n, nullptr);
    if (scratch_floats <= 4096) {
      alignas(64) float stack[4096];
      return fn(0, n, stack);
    }
    std::vector<float> scratch(static_cast<size_t>(scratch_floats));
    return fn(0, n, scratch.data());
  }
  int64_t bad = 0;
#pragma omp parallel num_threads(threads) reduction(+ : bad)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t blocks = (n + 15) / 16;
    const int64_t b0 = blocks * t / nt, b1 = blocks * (t + 1) / nt;
    const int64_t begin = b0 * 16, end = b1 * 16 < n ? b1 * 16 : n;
    if (begin < end) {
      std::vector<float> scratch(static_cast<size_t>(scratch_floats));
      bad += fn(begin, end, scratch_floats == 0 ? nullptr : scratch.data());
    }
  }
  return bad;
}

}  // namespace esper_fast
