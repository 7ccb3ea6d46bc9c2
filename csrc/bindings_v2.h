// pybind11 entry of the schema-v2 fused selection, shared by esper_fast._C and esper_fast._C_cuda:
// select_actions' arguments (bindings_common.h) plus per-head floors and the optional V(s) input.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "bindings_common.h"
#include "select_actions_v2.h"

namespace esper_fast {

inline ActionArgsV2 make_action_args_v2(const Ints& logits, const Ints& logits_dtype,
                                        const Ints& logits_stride, const Ints& mask,
                                        const Ints& mask_stride, const Ints& noise,
                                        const Ints& noise_stride, const Ints& size, uintptr_t q,
                                        int q_dtype, int64_t q_stride, uintptr_t slot_by_op,
                                        int64_t slot_by_op_stride, uintptr_t key, int64_t n,
                                        bool deterministic, uintptr_t out_actions,
                                        uintptr_t out_f, const std::vector<double>& floors,
                                        uintptr_t value, int value_dtype, int64_t value_stride) {
  if (floors.size() != kNumHeads) throw std::invalid_argument("select_actions_v2: 8 floors expected");
  ActionArgsV2 a{};
  a.base = make_action_args(logits, logits_dtype, logits_stride, mask, mask_stride, noise,
                            noise_stride, size, q, q_dtype, q_stride, slot_by_op,
                            slot_by_op_stride, key, n, deterministic, out_actions, out_f);
  for (int h = 0; h < kNumHeads; ++h) a.floor[h] = static_cast<float>(floors[h]);
  a.value = reinterpret_cast<const void*>(value);
  a.value_dtype = value_dtype;
  a.value_stride = value_stride;
  return a;
}

// Registers `select_actions_v2` on module m. With `with_stream`, the last argument is a CUDA stream
// and `run` enqueues (returning an error string or null); otherwise `run` returns the bad-row count.
template <bool with_stream>
void bind_select_actions_v2(pybind11::module_& m) {
  namespace py = pybind11;
  if constexpr (with_stream) {
    m.def("select_actions_v2",
          [](const Ints& logits, const Ints& logits_dtype, const Ints& logits_stride,
             const Ints& mask, const Ints& mask_stride, const Ints& noise,
             const Ints& noise_stride, const Ints& size, uintptr_t q, int q_dtype,
             int64_t q_stride, uintptr_t slot_by_op, int64_t slot_by_op_stride, uintptr_t key,
             int64_t n, bool deterministic, uintptr_t out_actions, uintptr_t out_f,
             const std::vector<double>& floors, uintptr_t value, int value_dtype,
             int64_t value_stride, uintptr_t stream) {
            const ActionArgsV2 args = make_action_args_v2(
                logits, logits_dtype, logits_stride, mask, mask_stride, noise, noise_stride,
                size, q, q_dtype, q_stride, slot_by_op, slot_by_op_stride, key, n, deterministic,
                out_actions, out_f, floors, value, value_dtype, value_stride);
            const char* err = select_actions_v2_cuda(args, reinterpret_cast<void*>(stream));
            if (err != nullptr)
              throw std::runtime_error(std::string("esper_fast cuda select_actions_v2: ") + err);
          });
  } else {
    m.def("select_actions_v2",
          [](const Ints& logits, const Ints& logits_dtype, const Ints& logits_stride,
             const Ints& mask, const Ints& mask_stride, const Ints& noise,
             const Ints& noise_stride, const Ints& size, uintptr_t q, int q_dtype,
             int64_t q_stride, uintptr_t slot_by_op, int64_t slot_by_op_stride, uintptr_t key,
             int64_t n, bool deterministic, uintptr_t out_actions, uintptr_t out_f,
             const std::vector<double>& floors, uintptr_t value, int value_dtype,
             int64_t value_stride) {
            const ActionArgsV2 args = make_action_args_v2(
                logits, logits_dtype, logits_stride, mask, mask_stride, noise, noise_stride,
                size, q, q_dtype, q_stride, slot_by_op, slot_by_op_stride, key, n, deterministic,
                out_actions, out_f, floors, value, value_dtype, value_stride);
            py::gil_scoped_release release;
            return select_actions_v2_cpu(args);
          });
  }
}

}  // namespace esper_fast
