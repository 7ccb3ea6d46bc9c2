// pybind11 module esper_fast._C_cuda: the CUDA backend. Built only when nvcc is found; links the
// CUDA runtime statically and never libtorch, so one build serves any torch version.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>

#include "bindings_common.h"
#include "bindings_v2.h"
#include "select_args.h"

namespace py = pybind11;
using namespace esper_fast;

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "esper_fast CUDA kernels (raw device pointers + the caller's stream)";
  // Enqueues select_op on `stream` (torch.cuda.current_stream().cuda_stream); never synchronises.
  m.def("select_op", [](uintptr_t logits, int logits_dtype, int64_t logits_stride, uintptr_t q,
                        int q_dtype, int64_t q_stride, uintptr_t mask, int64_t mask_stride,
                        uintptr_t noise, int64_t noise_stride, uintptr_t key, int64_t n, int a,
                        bool deterministic, uintptr_t out_op, uintptr_t out_lp, uintptr_t out_ent, uintptr_t out_q,
         uintptr_t out_v, uintptr_t stream) {
    const SelectArgs args =
        make_args(logits, logits_dtype, logits_stride, q, q_dtype, q_stride, mask, mask_stride,
                  noise, noise_stride, key, n, a, deterministic, out_op, out_lp, out_ent, out_q, out_v);
    const char* err = select_op_cuda(args, reinterpret_cast<void*>(stream));
    if (err != nullptr) throw std::runtime_error(std::string("esper_fast cuda select_op: ") + err);
  });
  // Enqueues the fused whole-action kernel on `stream`; never synchronises.
  m.def("select_actions",
        [](const Ints& logits, const Ints& logits_dtype, const Ints& logits_stride,
           const Ints& mask, const Ints& mask_stride, const Ints& noise, const Ints& noise_stride,
           const Ints& size, uintptr_t q, int q_dtype, int64_t q_stride, uintptr_t slot_by_op,
           int64_t slot_by_op_stride, uintptr_t key, int64_t n, bool deterministic,
           uintptr_t out_actions, uintptr_t out_f, uintptr_t stream) {
          const ActionArgs args = make_action_args(
              logits, logits_dtype, logits_stride, mask, mask_stride, noise, noise_stride, size,
              q, q_dtype, q_stride, slot_by_op, slot_by_op_stride, key, n, deterministic,
              out_actions, out_f);
          const char* err = select_actions_cuda(args, reinterpret_cast<void*>(stream));
          if (err != nullptr)
            throw std::runtime_error(std::string("esper_fast cuda select_actions: ") + err);
        });
  m.def("device_count", &cuda_device_count);
  bind_select_actions_v2<true>(m);  // schema-v2 fused selection (bindings_v2.h)
}
