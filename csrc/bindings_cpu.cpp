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

namespace {

// The lean call path: tensors straight from Python, read through their Python methods (this module
// does not link libtorch). esper_fast/ops/_native.py registers torch's dtype objects once; shapes,
// dtypes and devices are checked in Python before (ops/select.py, with the argument names).
PyObject* g_dtypes[3] = {nullptr, nullptr, nullptr};  // float32, float16, bfloat16 (DType order)

struct View {
  uintptr_t ptr = 0;
  int64_t row_stride = 0;
  int dtype = -1;  // DType code, -1 = none of the three
  bool unit_cols = true;
};

// data_ptr, row stride, dtype code and whether the columns are unit-stride of a 2-D tensor or None.
View view_of(py::handle t) {
  View v;
  if (t.is_none()) return v;
  v.ptr = t.attr("data_ptr")().cast<uintptr_t>();
  const py::tuple stride = t.attr("stride")();
  const py::tuple shape = t.attr("shape");
  v.row_stride = stride[0].cast<int64_t>();
  v.unit_cols = stride[1].cast<int64_t>() == 1 || shape[1].cast<int64_t>() == 1;
  const py::object dtype = t.attr("dtype");
  for (int k = 0; k < 3; ++k)
    if (dtype.ptr() == g_dtypes[k]) v.dtype = k;
  return v;
}

}  // namespace

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
  m.def("register_dtypes", [](py::handle f32, py::handle f16, py::handle bf16) {
    for (PyObject* d : {f32.ptr(), f16.ptr(), bf16.ptr()}) Py_INCREF(d);
    g_dtypes[0] = f32.ptr();
    g_dtypes[1] = f16.ptr();
    g_dtypes[2] = bf16.ptr();
  });
  // select_op on tensors (checked by the caller; contiguous outputs: op [N] int64, floats [4, N]
  // float32). Returns the bad-row count, or -1 (nothing run) when an input's columns are not
  // unit-stride: the caller then copies it and takes the pointer path.
  m.def("select_op_tensors", [](py::handle logits, py::handle q, py::handle mask, py::handle noise,
                                py::handle key, bool deterministic, py::handle out_op,
                                py::handle out_f) -> int64_t {
    const View l = view_of(logits), qv = view_of(q), mv = view_of(mask), nv = view_of(noise);
    if (!l.unit_cols || !qv.unit_cols || !mv.unit_cols || !nv.unit_cols || l.dtype < 0 ||
        (qv.ptr && qv.dtype < 0) || (nv.ptr && nv.dtype != kFloat32))
      return -1;
    const py::tuple shape = logits.attr("shape");
    const int64_t n = shape[0].cast<int64_t>();
    const int a = shape[1].cast<int>();
    const uintptr_t f = out_f.attr("data_ptr")().cast<uintptr_t>();
    const SelectArgs args = make_args(
        l.ptr, l.dtype, l.row_stride, qv.ptr, qv.dtype, qv.row_stride, mv.ptr, mv.row_stride, nv.ptr,
        nv.row_stride, key.is_none() ? 0 : key.attr("data_ptr")().cast<uintptr_t>(), n, a,
        deterministic, out_op.attr("data_ptr")().cast<uintptr_t>(), f, f + 4 * n, f + 8 * n,
        f + 12 * n);
    if (n * a < 4096) return select_op_cpu(args);  // releasing the GIL costs more than these take
    py::gil_scoped_release release;
    return select_op_cpu(args);
  });
  // select_actions on tensors (checked by the caller): per-head lists in HEAD_NAMES order (None =
  // absent), outputs actions [8, N] int64 and floats [18, N] float32 contiguous. Returns the bad-row
  // count, or -1 (nothing run) when an input is not unit-stride in its columns (or slot_by_op not
  // contiguous): the caller then takes the copying pointer path.
  m.def("select_actions_tensors", [](py::list logits, py::list masks, py::list noise, py::handle q,
                                     py::handle slot_by_op, py::handle key, bool deterministic,
                                     py::handle out_actions, py::handle out_f) -> int64_t {
    if (logits.size() != kNumHeads || masks.size() != kNumHeads || noise.size() != kNumHeads)
      throw std::invalid_argument("select_actions: 8 heads expected");
    ActionArgs a{};
    int64_t width = 0;
    for (int h = 0; h < kNumHeads; ++h) {
      const View l = view_of(logits[h]), mv = view_of(masks[h]), nv = view_of(noise[h]);
      if (!l.unit_cols || !mv.unit_cols || !nv.unit_cols || l.dtype < 0 ||
          (nv.ptr && nv.dtype != kFloat32))
        return -1;
      a.logits[h] = reinterpret_cast<const void*>(l.ptr);
      a.logits_dtype[h] = l.dtype;
      a.logits_stride[h] = l.row_stride;
      a.mask[h] = reinterpret_cast<const uint8_t*>(mv.ptr);
      a.mask_stride[h] = mv.row_stride;
      a.noise[h] = reinterpret_cast<const float*>(nv.ptr);
      a.noise_stride[h] = nv.row_stride;
      const py::tuple shape = logits[h].attr("shape");
      a.size[h] = shape[1].cast<int>();
      a.n = shape[0].cast<int64_t>();
      width += a.size[h];
    }
    const View qv = view_of(q);
    if (!qv.unit_cols || qv.dtype < 0) return -1;
    a.q = reinterpret_cast<const void*>(qv.ptr);
    a.q_dtype = qv.dtype;
    a.q_stride = qv.row_stride;
    if (!slot_by_op.is_none()) {
      if (!slot_by_op.attr("is_contiguous")().cast<bool>()) return -1;
      a.slot_by_op = reinterpret_cast<const uint8_t*>(slot_by_op.attr("data_ptr")().cast<uintptr_t>());
      a.slot_by_op_stride = static_cast<int64_t>(a.size[kOpHead]) * a.size[kSlotHead];
    }
    a.key = key.is_none() ? nullptr
                          : reinterpret_cast<const int64_t*>(key.attr("data_ptr")().cast<uintptr_t>());
    a.deterministic = deterministic;
    a.out_actions = reinterpret_cast<int64_t*>(out_actions.attr("data_ptr")().cast<uintptr_t>());
    a.out_f = reinterpret_cast<float*>(out_f.attr("data_ptr")().cast<uintptr_t>());
    if (a.n * width < 4096) return select_actions_cpu(a);
    py::gil_scoped_release release;
    return select_actions_cpu(a);
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
