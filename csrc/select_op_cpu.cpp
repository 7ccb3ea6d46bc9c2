// CPU entry of select_op (select_args.h): the current kernel (cpu_kernel) over all rows, split over
// OpenMP threads from parallel_threshold() elements (n * a) on (cpu_dispatch.h).
#include <cstdint>

#include "cpu_dispatch.h"
#include "select_args.h"
#include "select_cpu_simd.h"

namespace esper_fast {

int64_t select_op_cpu(const SelectArgs& a) {
  const uint64_t key = (a.key != nullptr) ? static_cast<uint64_t>(*a.key) : 0u;  // read once, host memory
  const SimdKernel& k = cpu_kernel();
  return run_split(a.n, cpu_threads(a.n * a.a), simd_scratch_floats(a.a),
                   [&](int64_t begin, int64_t end, float* scratch) {
                     return k.select_rows(a, key, begin, end, scratch);
                   });
}

}  // namespace esper_fast
