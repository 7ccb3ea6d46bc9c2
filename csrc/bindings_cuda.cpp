// pybind11 module esper_fast._C_cuda: the CUDA backend. Built only when nvcc is found; links the
// CUDA runtime statically and never libtorch, so one build serves any torch version.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>

#include "bindings_common.h"
#include "select_args.h"

namespace py = pybind11;
using namespace esper_fast;

namespace {

// A launch's CUDA error string (null = none) as a RuntimeError naming the op.
void check(const char* err, const char* op) {
  if (err != nullptr) throw std::runtime_error(std::string("esper_fast cuda ") + op + ": " + err);
}

}  // namespace

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "esper_fast CUDA kernels (raw device pointers + the caller's stream)";
  // The CPU module's pointer entries (keyword arguments only, bindings_common.h) plus `stream`
  // (torch.cuda.current_stream().cuda_stream): each enqueues its kernel and never synchronises.
  m.def("select_op", [](const py::kwargs& kw) {
    const Fields f("cuda select_op", kw, {EF_SELECT_OP_FIELDS, "stream"});
    check(select_op_cuda(select_args(f), f.ptr<void>("stream")), "select_op");
  });
  m.def("select_actions", [](const py::kwargs& kw) {
    const Fields f("cuda select_actions", kw, {EF_SELECT_ACTIONS_FIELDS, "stream"});
    check(select_actions_cuda(action_args(f), f.ptr<void>("stream")), "select_actions");
  });
  m.def("select_actions_v2", [](const py::kwargs& kw) {
    const Fields f("cuda select_actions_v2", kw, {EF_SELECT_ACTIONS_V2_FIELDS, "stream"});
    check(select_actions_v2_cuda(action_args_v2(f), f.ptr<void>("stream")), "select_actions_v2");
  });
  m.def("device_count", &cuda_device_count);
}
