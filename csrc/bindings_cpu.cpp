// pybind11 module esper_fast._C: the CPU backend (always built, no libtorch).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings_common.h"
#include "bindings_v2.h"
#include "philox.h"
#include "select_args.h"
#include "select_cpu_simd.h"

#include <omp.h>

#include <cstdlib>
#include <string>

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

// Interned attribute names (created once, with the GIL held at module import).
PyObject* g_data_ptr = nullptr;
PyObject* g_stride = nullptr;
PyObject* g_shape = nullptr;
PyObject* g_dtype = nullptr;

// Owned reference or throw the pending Python error.
py::object steal_or_throw(PyObject* o) {
  if (o == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(o);
}

int64_t as_int(PyObject* o) {
  const int64_t v = PyLong_AsLongLong(o);
  if (v == -1 && PyErr_Occurred()) throw py::error_already_set();
  return v;
}

uintptr_t data_ptr(py::handle t) {
  const py::object p = steal_or_throw(PyObject_CallMethodNoArgs(t.ptr(), g_data_ptr));
  return static_cast<uintptr_t>(PyLong_AsUnsignedLongLong(p.ptr()));
}

// data_ptr, row stride, dtype code and whether the columns are unit-stride of a 2-D tensor or None
// (raw Python C API calls with interned names: cheaper than pybind11's attribute accessors).
View view_of(py::handle t) {
  View v;
  if (t.is_none()) return v;
  v.ptr = data_ptr(t);
  const py::object stride = steal_or_throw(PyObject_CallMethodNoArgs(t.ptr(), g_stride));
  const py::object shape = steal_or_throw(PyObject_GetAttr(t.ptr(), g_shape));
  if (!PyTuple_Check(stride.ptr()) || PyTuple_GET_SIZE(stride.ptr()) != 2 ||
      !PyTuple_Check(shape.ptr()) || PyTuple_GET_SIZE(shape.ptr()) != 2)
    throw std::invalid_argument("select_op_tensors: 2-D tensors expected");
  v.row_stride = as_int(PyTuple_GET_ITEM(stride.ptr(), 0));
  v.unit_cols = as_int(PyTuple_GET_ITEM(stride.ptr(), 1)) == 1 ||
                as_int(PyTuple_GET_ITEM(shape.ptr(), 1)) == 1;
  const py::object dtype = steal_or_throw(PyObject_GetAttr(t.ptr(), g_dtype));
  for (int k = 0; k < 3; ++k)
    if (dtype.ptr() == g_dtypes[k]) v.dtype = k;
  return v;
}

// (rows, columns) of a 2-D tensor.
std::pair<int64_t, int64_t> shape2(py::handle t) {
  const py::object shape = steal_or_throw(PyObject_GetAttr(t.ptr(), g_shape));
  if (!PyTuple_Check(shape.ptr()) || PyTuple_GET_SIZE(shape.ptr()) != 2)
    throw std::invalid_argument("select_op_tensors: 2-D tensors expected");
  return {as_int(PyTuple_GET_ITEM(shape.ptr(), 0)), as_int(PyTuple_GET_ITEM(shape.ptr(), 1))};
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "esper_fast CPU kernels (raw pointers; called from esper_fast.ops)";
  // ESPER_FAST_CPU_KERNEL names the kernel; a name that is unknown or unsupported here fails the
  // import with the reason (never a silent substitute).
  if (const char* env = std::getenv("ESPER_FAST_CPU_KERNEL"); env != nullptr && *env != '\0') {
    try {
      set_cpu_kernel(env);
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(std::string("ESPER_FAST_CPU_KERNEL: ") + e.what());
    }
  }
  // The fused output layout (esper_fast/ops/layout.py is the Python twin; tests/test_layout.py).
  py::dict layout;
  layout["num_heads"] = kNumHeads;
  layout["action_rows"] = kActionRows;
  layout["log_prob_row"] = kLogProbRow;
  layout["entropy_row"] = kEntropyRow;
  layout["q_op_row"] = kQOpRow;
  layout["value_row"] = kValueRow;
  layout["float_rows"] = kFloatRows;
  layout["state_value_row_v2"] = kStateValueRowV2;
  layout["float_rows_v2"] = kFloatRowsV2;
  m.attr("OUTPUT_LAYOUT") = layout;
  g_data_ptr = PyUnicode_InternFromString("data_ptr");
  g_stride = PyUnicode_InternFromString("stride");
  g_shape = PyUnicode_InternFromString("shape");
  g_dtype = PyUnicode_InternFromString("dtype");
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
    const auto [n, a64] = shape2(logits);
    const int a = static_cast<int>(a64);
    const uintptr_t f = data_ptr(out_f);
    const SelectArgs args = make_args(
        l.ptr, l.dtype, l.row_stride, qv.ptr, qv.dtype, qv.row_stride, mv.ptr, mv.row_stride, nv.ptr,
        nv.row_stride, key.is_none() ? 0 : data_ptr(key), n, a, deterministic, data_ptr(out_op), f,
        f + 4 * n, f + 8 * n,
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
      const auto [rows, cols] = shape2(logits[h]);
      a.size[h] = static_cast<int>(cols);
      a.n = rows;
      width += a.size[h];
    }
    const View qv = view_of(q);
    if (!qv.unit_cols || qv.dtype < 0) return -1;
    a.q = reinterpret_cast<const void*>(qv.ptr);
    a.q_dtype = qv.dtype;
    a.q_stride = qv.row_stride;
    if (!slot_by_op.is_none()) {
      if (!slot_by_op.attr("is_contiguous")().cast<bool>()) return -1;
      a.slot_by_op = reinterpret_cast<const uint8_t*>(data_ptr(slot_by_op));
      a.slot_by_op_stride = static_cast<int64_t>(a.size[kOpHead]) * a.size[kSlotHead];
    }
    a.key = key.is_none() ? nullptr : reinterpret_cast<const int64_t*>(data_ptr(key));
    a.deterministic = deterministic;
    a.out_actions = reinterpret_cast<int64_t*>(data_ptr(out_actions));
    a.out_f = reinterpret_cast<float*>(data_ptr(out_f));
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
  // Elements (n * width) from which a call uses the threads (default: the measured crossover).
  m.def("parallel_threshold", [] { return parallel_threshold(); });
  m.def("set_parallel_threshold", [](int64_t elements) { set_parallel_threshold(elements); });
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
  bind_select_actions_v2<false>(m);  // schema-v2 fused selection (bindings_v2.h)
}
