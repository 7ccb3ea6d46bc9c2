// pybind11 module esper_fast._C_score: the CPU scoring op of the PPO update (raw pointers, no libtorch).
// Both entries take keyword arguments only, named as ScoreArgs' fields (esper_fast/ops/score.py).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <vector>

#include "score_row.h"

namespace py = pybind11;
using namespace esper_fast;

namespace {

using Ints = std::vector<int64_t>;

ScoreArgs make_score_args(uintptr_t logits, int logits_dtype, int64_t logits_stride, uintptr_t mask,
                          int64_t mask_stride, uintptr_t actions, int64_t actions_stride,
                          uintptr_t slot_by_op, int64_t slot_by_op_stride, const Ints& offset,
                          const Ints& size, int a_total, int64_t n, int num_threads) {
  if (offset.size() != kScoreHeads || size.size() != kScoreHeads)
    throw std::invalid_argument("score_actions: offsets and sizes need 8 entries (HEAD_NAMES order)");
  if (logits_dtype < 0 || logits_dtype > kFloat64)
    throw std::invalid_argument("score_actions: logits dtype code must be 0..3");
  ScoreArgs a{};
  a.logits = reinterpret_cast<const void*>(logits);
  a.logits_dtype = logits_dtype;
  a.logits_stride = logits_stride;
  a.mask = reinterpret_cast<const uint8_t*>(mask);
  a.mask_stride = mask_stride;
  a.actions = reinterpret_cast<const int64_t*>(actions);
  a.actions_stride = actions_stride;
  a.slot_by_op = reinterpret_cast<const uint8_t*>(slot_by_op);
  a.slot_by_op_stride = slot_by_op_stride;
  for (int h = 0; h < kScoreHeads; ++h) {
    if (offset[h] < 0 || size[h] < 1 || offset[h] + size[h] > a_total)
      throw std::invalid_argument("score_actions: head columns must lie inside the packed row");
    a.offset[h] = static_cast<int>(offset[h]);
    a.size[h] = static_cast<int>(size[h]);
  }
  a.a_total = a_total;
  a.n = n;
  a.num_threads = num_threads;
  return a;
}

}  // namespace

PYBIND11_MODULE(_C_score, m) {
  m.doc() = "esper_fast CPU scoring op (score_actions forward/backward; called from esper_fast.ops.score)";
  m.def("score_forward",
        [](uintptr_t logits, int logits_dtype, int64_t logits_stride, uintptr_t mask,
           int64_t mask_stride, uintptr_t actions, int64_t actions_stride, uintptr_t slot_by_op,
           int64_t slot_by_op_stride, const Ints& offset, const Ints& size, int a_total, int64_t n,
           int num_threads, uintptr_t out_log_prob, uintptr_t out_entropy) {
          ScoreArgs a = make_score_args(logits, logits_dtype, logits_stride, mask, mask_stride,
                                        actions, actions_stride, slot_by_op, slot_by_op_stride,
                                        offset, size, a_total, n, num_threads);
          a.out_log_prob = reinterpret_cast<void*>(out_log_prob);
          a.out_entropy = reinterpret_cast<void*>(out_entropy);
          py::gil_scoped_release release;
          score_forward_cpu(a);
        },
        py::kw_only(), py::arg("logits"), py::arg("logits_dtype"), py::arg("logits_stride"),
        py::arg("mask"), py::arg("mask_stride"), py::arg("actions"), py::arg("actions_stride"),
        py::arg("slot_by_op"), py::arg("slot_by_op_stride"), py::arg("offset"), py::arg("size"),
        py::arg("a_total"), py::arg("n"), py::arg("num_threads"), py::arg("out_log_prob"), py::arg("out_entropy"));
  m.def("score_backward",
        [](uintptr_t logits, int logits_dtype, int64_t logits_stride, uintptr_t mask,
           int64_t mask_stride, uintptr_t actions, int64_t actions_stride, uintptr_t slot_by_op,
           int64_t slot_by_op_stride, const Ints& offset, const Ints& size, int a_total, int64_t n,
           int num_threads, uintptr_t grad_log_prob, uintptr_t grad_entropy, uintptr_t grad_logits) {
          ScoreArgs a = make_score_args(logits, logits_dtype, logits_stride, mask, mask_stride,
                                        actions, actions_stride, slot_by_op, slot_by_op_stride,
                                        offset, size, a_total, n, num_threads);
          a.grad_log_prob = reinterpret_cast<const void*>(grad_log_prob);
          a.grad_entropy = reinterpret_cast<const void*>(grad_entropy);
          a.grad_logits = reinterpret_cast<void*>(grad_logits);
          py::gil_scoped_release release;
          score_backward_cpu(a);
        },
        py::kw_only(), py::arg("logits"), py::arg("logits_dtype"), py::arg("logits_stride"),
        py::arg("mask"), py::arg("mask_stride"), py::arg("actions"), py::arg("actions_stride"),
        py::arg("slot_by_op"), py::arg("slot_by_op_stride"), py::arg("offset"), py::arg("size"),
        py::arg("a_total"), py::arg("n"), py::arg("num_threads"), py::arg("grad_log_prob"), py::arg("grad_entropy"), py::arg("grad_logits"));
}
