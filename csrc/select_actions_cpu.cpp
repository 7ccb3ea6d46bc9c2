// CPU entry of the fused select_actions (select_actions.h): the current kernel (cpu_kernel) over all
// rows, split over OpenMP threads from parallel_threshold() elements (n * sum of head sizes) on
// (cpu_dispatch.h).
#include <cstdint>

#include "cpu_dispatch.h"
#include "select_actions.h"
#include "select_cpu_simd.h"

namespace esper_fast {

int64_t select_actions_cpu(const ActionArgs& a) {
  const bool needs_key = !a.deterministic && a.key != nullptr;
  const uint64_t key = needs_key ? static_cast<uint64_t>(*a.key) : 0u;
  int64_t width = 0, max_a = 1;
  for (int h = 0; h < kNumHeads; ++h) {
    width += a.size[h];
    max_a = a.size[h] > max_a ? a.size[h] : max_a;
  }
  const SimdKernel& k = cpu_kernel();
  return run_split(a.n, cpu_threads(a.n * width), simd_scratch_floats(max_a),
                   [&](int64_t begin, int64_t end, float* scratch) {
                     return k.action_rows(a, key, begin, end, scratch);
                   });
}

}  // namespace esper_fast
