// CPU entry of the schema-v2 fused whole-action selection (select_actions_v2.h): the scalar row
// (select_action_row<ActionArgsV2>) over all rows, split over OpenMP threads by cpu_dispatch.h's
// run_split from kV2ParallelRows rows on (a fixed row count, not parallel_threshold(): v2 has no
// SIMD kernel, so its per-row cost and crossover differ from the v1 kernels').
#include <omp.h>

#include <cstdint>

#include "cpu_dispatch.h"
#include "select_actions.h"
#include "select_actions_v2.h"

namespace esper_fast {

namespace {

// Rows from which select_actions_v2_cpu runs on the whole OpenMP team (below: one thread).
constexpr int64_t kV2ParallelRows = 2048;

}  // namespace

int64_t select_actions_v2_cpu(const ActionArgsV2& a) {
  const bool needs_key = !a.base.deterministic && a.base.key != nullptr;
  const uint64_t key = needs_key ? static_cast<uint64_t>(*a.base.key) : 0u;
  const int threads = a.base.n < kV2ParallelRows ? 1 : omp_get_max_threads();
  return run_split(a.base.n, threads, 0, [&](int64_t begin, int64_t end, float*) {
    int64_t bad = 0;
    for (int64_t row = begin; row < end; ++row) bad += select_action_row(a, row, key);
    return bad;
  });
}

}  // namespace esper_fast
