// pybind11 module esper_fast._C: the CPU backend (always built, no libtorch).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings_common.h"
#include "philox.h"
#include "select_args.h"
#include "select_cpu_simd.h"

#include <omp.h>

namespace py = pybind11;
using namespace esper_fast;

PYBIND11_MODULE(_C, m) {
  m.doc() = "esper_fast CPU kernels (raw pointers; called from esper_fast.ops)";
  // select_op over host memory; returns the number of bad rows (no valid entry / non-finite logit).
  m.def(
      "select_op",
      [](uintptr_t logits, int logits_dtype, int64_t logits_stride, uintptr_t q, int q_dtype,
         int64_t q_stride, uintptr_t mask, int64_t mask_stride, uintptr_t noise,
         int64_t noise_stride, uintptr_t key, int64_t n, int a, bool deterministic,
         uintptr_t out_op, uintptr_t out_lp, uintptr_t out_ent, uintptr_t out_q,
         uintptr_t out_v) {
        const SelectArgs args =
            make_args(logits, logits_dtype, logits_stride, q, q_dtype, q_stride, mask,
                      mask_stride, noise, noise_stride, key, n, a, deterministic, out_op, out_lp, out_ent, out_q, out_v);
        py::gil_scoped_release release;
        return select_op_cpu(args);
      });
  // Fused whole-action selection over host memory; returns the number of rows with a bad head.
  m.def("select_actions",
        [](const Ints& logits, const Ints& logits_dtype, const Ints& logits_stride,
           const Ints& mask, const Ints& mask_stride, const Ints& noise, const Ints& noise_stride,
           const Ints& size, uintptr_t q, int q_dtype, int64_t q_stride, uintptr_t slot_by_op,
           int64_t slot_by_op_stride, uintptr_t key, int64_t n, bool deterministic,
           uintptr_t out_actions, uintptr_t out_f) {
          const ActionArgs args = make_action_args(
              logits, logits_dtype, logits_stride, mask, mask_stride, noise, noise_stride, size,
              q, q_dtype, q_stride, slot_by_op, slot_by_op_stride, key, n, deterministic,
              out_actions, out_f);
          py::gil_scoped_release release;
          return select_actions_cpu(args);
        });
  // Kernel choice (select_cpu.cpp): names of the kernels this CPU supports, best first; the one in
  // use; and a setter ("auto" = best). Tests run every supported kernel against the reference.
  m.def("cpu_kernels", [] {
    std::vector<std::string> names;
    for (const SimdKernel* k : all_cpu_kernels())
      if (cpu_kernel_supported(k->name)) names.emplace_back(k->name);
    return names;
  });
  m.def("cpu_kernel", [] { return std::string(cpu_kernel().name); });
  m.def("set_cpu_kernel", [](const std::string& name) { set_cpu_kernel(name); });
  // OpenMP threads of this module (its own runtime: torch.set_num_threads does not reach it).
  m.def("set_num_threads", [](int n) { omp_set_num_threads(n); });
  m.def("get_num_threads", [] { return omp_get_max_threads(); });
  // The current kernel's lane math on n floats (what: 0 exp, 1 log, 2 gumbel); tests only.
  m.def("kernel_math", [](int what, uintptr_t in, uintptr_t out, int64_t n) {
    if (what < 0 || what > 2) throw std::invalid_argument("what must be 0 (exp), 1 (log) or 2 (gumbel)");
    cpu_kernel().math(what, reinterpret_cast<const float*>(in), reinterpret_cast<float*>(out), n);
  });
  // The current kernel's Philox uniforms for rows row0 .. row0 + n - 1; tests only.
  m.def("kernel_philox", [](uint64_t key, int64_t row0, int64_t n, uint32_t col, uint32_t stream,
                            uintptr_t out) {
    cpu_kernel().philox(key, row0, n, col, stream, reinterpret_cast<float*>(out));
  });
  // The uniform that every backend draws for (key, row, col, stream); used by tests.
  m.def("philox_uniform", [](uint64_t key, int64_t row, uint32_t col, uint32_t stream) {
    return philox_uniform(key, row, col, stream);
  });
}
