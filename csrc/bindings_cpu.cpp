// pybind11 module esper_fast._C: the CPU backend (always built, no libtorch).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings_common.h"
#include "cpu_dispatch.h"
#include "philox.h"
#include "select_args.h"
#include "select_cpu_simd.h"

#include <omp.h>

#include <array>
#include <chrono>
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

// SelectArgs of the tensor entries, by field: the inputs' views, outputs op [N] and floats [4, N].
SelectArgs tensor_args(const View& l, const View& q, const View& m, const View& g, py::handle key,
                       int64_t n, int a, bool deterministic, uintptr_t out_op,
                       const float* const outs[4]) {
  SelectArgs args{};
  args.logits = reinterpret_cast<const void*>(l.ptr);
  args.logits_dtype = l.dtype;
  args.logits_stride = l.row_stride;
  args.q = reinterpret_cast<const void*>(q.ptr);
  args.q_dtype = q.ptr ? q.dtype : 0;
  args.q_stride = q.row_stride;
  args.mask = reinterpret_cast<const uint8_t*>(m.ptr);
  args.mask_stride = m.row_stride;
  args.noise = reinterpret_cast<const float*>(g.ptr);
  args.noise_stride = g.row_stride;
  args.key = key.is_none() ? nullptr : reinterpret_cast<const int64_t*>(data_ptr(key));
  args.n = n;
  args.a = a;
  args.deterministic = deterministic;
  args.out_op = reinterpret_cast<int64_t*>(out_op);
  args.out_log_prob = const_cast<float*>(outs[0]);
  args.out_entropy = const_cast<float*>(outs[1]);
  args.out_q_op = const_cast<float*>(outs[2]);
  args.out_value = const_cast<float*>(outs[3]);
  return args;
}

// The four [N] rows of a contiguous float32 [4, N] output.
std::array<const float*, 4> rows_of(uintptr_t f, int64_t n) {
  const float* p = reinterpret_cast<const float*>(f);
  return {p, p + n, p + 2 * n, p + 3 * n};
}

// ---- select_op_lean: checks, allocation, key draw and kernel in one entry ------------------------
// Objects registered once by esper_fast/ops/_native.py (register_lean): torch.Tensor, torch.empty,
// torch.bool / torch.int64, OpSelection and the key range's upper bound.
PyObject* g_tensor_type = nullptr;
PyObject* g_empty = nullptr;
PyObject* g_bool = nullptr;
PyObject* g_int64 = nullptr;
PyObject* g_opselection = nullptr;
PyObject* g_key_high = nullptr;
PyObject* g_is_cpu = nullptr;
PyObject* g_random = nullptr;
PyObject* g_zero = nullptr;
PyObject* g_kw_int64 = nullptr;  // {"dtype": torch.int64, "device": cpu}
PyObject* g_kw_f32 = nullptr;    // {"dtype": torch.float32, "device": cpu}

// A 2-D CPU tensor's pointer, shape, row stride, unit-column flag and dtype object, or false (the
// caller declines, leaving the checks with their messages to Python) for anything else.
struct Seen {
  View v;
  int64_t rows = 0, cols = 0;
  PyObject* dtype = nullptr;  // borrowed: dtype objects are immortal singletons
};

// TensorBase's own descriptors of the attributes the lean entries read (looked up once in
// register_lean): calling them skips the per-call attribute lookup through Tensor's Python MRO and the
// bound-method object; torch's getters still dispatch __torch_function__ themselves.
enum Attr { kIsCpu, kShape, kDtype, kStride, kDataPtr, kNumAttrs };
PyObject* g_descr[kNumAttrs] = {};
const char* const kAttrNames[kNumAttrs] = {"is_cpu", "shape", "dtype", "stride", "data_ptr"};

// t.<getset attribute> (new reference or null with the Python error set).
PyObject* get_attr(PyObject* t, Attr a) {
  PyObject* d = g_descr[a];
  return Py_TYPE(d)->tp_descr_get(d, t, reinterpret_cast<PyObject*>(Py_TYPE(t)));
}

// t.<method>() (new reference or null with the Python error set).
PyObject* call0(PyObject* t, Attr a) { return PyObject_Vectorcall(g_descr[a], &t, 1, nullptr); }

bool see(PyObject* t, Seen& s) {
  if (!PyObject_TypeCheck(t, reinterpret_cast<PyTypeObject*>(g_tensor_type))) return false;
  PyObject* cpu = get_attr(t, kIsCpu);
  if (cpu == nullptr) return false;
  const bool on_cpu = cpu == Py_True;
  Py_DECREF(cpu);
  if (!on_cpu) return false;
  PyObject* shape = get_attr(t, kShape);
  if (shape == nullptr) return false;
  const bool two_d = PyTuple_Check(shape) && PyTuple_GET_SIZE(shape) == 2;
  if (two_d) {
    s.rows = PyLong_AsLongLong(PyTuple_GET_ITEM(shape, 0));
    s.cols = PyLong_AsLongLong(PyTuple_GET_ITEM(shape, 1));
  }
  Py_DECREF(shape);
  if (!two_d) return false;
  PyObject* stride = call0(t, kStride);
  if (stride == nullptr) return false;
  s.v.row_stride = PyLong_AsLongLong(PyTuple_GET_ITEM(stride, 0));
  s.v.unit_cols = PyLong_AsLongLong(PyTuple_GET_ITEM(stride, 1)) == 1 || s.cols == 1;
  Py_DECREF(stride);
  PyObject* dtype = get_attr(t, kDtype);
  if (dtype == nullptr) return false;
  s.dtype = dtype;
  Py_DECREF(dtype);
  for (int k = 0; k < 3; ++k)
    if (dtype == g_dtypes[k]) s.v.dtype = k;
  PyObject* p = call0(t, kDataPtr);
  if (p == nullptr) return false;
  s.v.ptr = static_cast<uintptr_t>(PyLong_AsUnsignedLongLong(p));
  Py_DECREF(p);
  return !PyErr_Occurred() && s.v.unit_cols;
}

// torch.empty(*shape, **kw) as an owned reference (throws the Python error).
py::object empty(std::initializer_list<int64_t> shape, PyObject* kw) {
  py::tuple args(shape.size());
  size_t i = 0;
  for (int64_t d : shape) args[i++] = py::int_(d);
  return steal_or_throw(PyObject_Call(g_empty, args.ptr(), kw));
}

// Outputs of n rows: torch._C._VariableFunctions.empty_like(template) on [n] templates cached per
// dtype (one vectorcall with one argument: cheaper than torch.empty(n, dtype=, device=), whose
// argument parsing dominated the call; measured). empty_like follows the caller's grad / inference
// mode, not the template's. Every call returns fresh tensors; the templates are never returned.
PyObject* g_empty_like = nullptr;
int64_t g_tmpl_n = -1;
PyObject* g_tmpl_i64 = nullptr;
PyObject* g_tmpl_f32 = nullptr;

void ensure_templates(int64_t n) {
  if (n == g_tmpl_n) return;
  py::object i64 = empty({n}, g_kw_int64), f32 = empty({n}, g_kw_f32);
  Py_XDECREF(g_tmpl_i64);
  Py_XDECREF(g_tmpl_f32);
  g_tmpl_i64 = i64.release().ptr();
  g_tmpl_f32 = f32.release().ptr();
  g_tmpl_n = n;
}

// A fresh tensor like `tmpl` (owned reference; throws the Python error).
PyObject* new_like(PyObject* tmpl) {
  PyObject* r = PyObject_Vectorcall(g_empty_like, &tmpl, 1, nullptr);
  if (r == nullptr) throw py::error_already_set();
  return r;
}

// key_buf.random_(0, 2**63 - 1) (the value torch.randint would draw from the default generator), as
// one vectorcall without a bound-method object; throws the Python error.
void draw_key_into(PyObject* key_buf) {
  PyObject* args[4] = {nullptr, key_buf, g_zero, g_key_high};  // args[0]: scratch for the offset flag
  PyObject* r =
      PyObject_VectorcallMethod(g_random, args + 1, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, nullptr);
  if (r == nullptr) throw py::error_already_set();
  Py_DECREF(r);
}

// t.data_ptr() through TensorBase's descriptor (throws the Python error).
uintptr_t fast_ptr(py::handle t) {
  const py::object p = steal_or_throw(call0(t.ptr(), kDataPtr));
  return static_cast<uintptr_t>(PyLong_AsUnsignedLongLong(p.ptr()));
}

// select_op's whole CPU call for the common case; None (nothing drawn, nothing run) when any input is
// not the plain case (not a 2-D CPU tensor, shape / dtype mismatch, non-unit columns, noise not fp32),
// so that select_op's Python path raises its named error or handles it. Returns (OpSelection, bad rows).
py::object select_op_lean(py::handle logits, py::handle q, py::handle mask, py::handle noise,
                          bool deterministic, py::handle key_buf) {
  Seen l, qs, ms, gs;
  const bool ok = see(logits.ptr(), l) && l.v.dtype >= 0 && l.cols >= 1 &&
                  (q.is_none() || (see(q.ptr(), qs) && qs.v.dtype >= 0 && qs.rows == l.rows &&
                                   qs.cols == l.cols)) &&
                  (mask.is_none() || (see(mask.ptr(), ms) && ms.dtype == g_bool &&
                                      ms.rows == l.rows && ms.cols == l.cols)) &&
                  (noise.is_none() || (see(noise.ptr(), gs) && gs.v.dtype == kFloat32 &&
                                       gs.rows == l.rows && gs.cols == l.cols));
  if (!ok) {
    PyErr_Clear();
    return py::none();
  }
  const int64_t n = l.rows;
  const int a = static_cast<int>(l.cols);
  // Five fresh [N] tensors: cheaper than a [4, N] float buffer and its unbind (measured).
  ensure_templates(n);
  py::object op = py::reinterpret_steal<py::object>(new_like(g_tmpl_i64));
  py::object fl[4];
  for (auto& f : fl) f = py::reinterpret_steal<py::object>(new_like(g_tmpl_f32));
  const bool draws = !deterministic && noise.is_none();
  if (draws) draw_key_into(key_buf.ptr());
  View none;
  const float* outs[4];
  for (int k = 0; k < 4; ++k) outs[k] = reinterpret_cast<const float*>(fast_ptr(fl[k]));
  const SelectArgs args = tensor_args(l.v, q.is_none() ? none : qs.v, mask.is_none() ? none : ms.v,
                                      (deterministic || noise.is_none()) ? none : gs.v,
                                      draws ? key_buf : py::none(), n, a, deterministic,
                                      fast_ptr(op), outs);
  int64_t bad;
  if (n * a < 4096) {
    bad = select_op_cpu(args);
  } else {
    py::gil_scoped_release release;
    bad = select_op_cpu(args);
  }
  // OpSelection(op, log_prob, entropy, q_op, value), built as its tuple (a NamedTuple has no more).
  PyTypeObject* tp = reinterpret_cast<PyTypeObject*>(g_opselection);
  PyObject* sel_raw = tp->tp_alloc(tp, 5);
  if (sel_raw == nullptr) throw py::error_already_set();
  PyTuple_SET_ITEM(sel_raw, 0, op.release().ptr());
  for (int k = 0; k < 4; ++k) PyTuple_SET_ITEM(sel_raw, k + 1, fl[k].release().ptr());
  py::object sel = py::reinterpret_steal<py::object>(sel_raw);
  return py::make_tuple(sel, bad);
}

// select_op_lean as a METH_FASTCALL builtin: positional (logits, q, mask, noise, deterministic,
// key_buf), no pybind11 dispatch (a measurable share of a ~5 us call). C++ errors become Python ones
// as pybind11 would map them.
PyObject* select_op_lean_fastcall(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 6) {
    PyErr_Format(PyExc_TypeError,
                 "select_op_lean(logits, q, mask, noise, deterministic, key_buf) takes 6 positional "
                 "arguments, got %zd",
                 nargs);
    return nullptr;
  }
  try {
    const int det = PyObject_IsTrue(args[4]);
    if (det < 0) return nullptr;
    return select_op_lean(args[0], args[1], args[2], args[3], det != 0, args[5]).release().ptr();
  } catch (py::error_already_set& e) {
    e.restore();
  } catch (const std::invalid_argument& e) {
    PyErr_SetString(PyExc_ValueError, e.what());
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
  }
  return nullptr;
}

PyMethodDef g_select_op_lean_def = {
    "select_op_lean", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(&select_op_lean_fastcall)),
    METH_FASTCALL,
    "select_op_lean(logits, q, mask, noise, deterministic, key_buf) -> (OpSelection, bad rows) or None"};

// slot_by_op: a contiguous bool CPU tensor of shape [n, n_ops, n_slots], else false.
bool see_slot_by_op(PyObject* t, int64_t n, int64_t n_ops, int64_t n_slots, uintptr_t& ptr) {
  if (!PyObject_TypeCheck(t, reinterpret_cast<PyTypeObject*>(g_tensor_type))) return false;
  py::handle h(t);
  PyObject* shape = PyObject_GetAttr(t, g_shape);
  if (shape == nullptr) return false;
  const bool ok = PyTuple_Check(shape) && PyTuple_GET_SIZE(shape) == 3 &&
                  PyLong_AsLongLong(PyTuple_GET_ITEM(shape, 0)) == n &&
                  PyLong_AsLongLong(PyTuple_GET_ITEM(shape, 1)) == n_ops &&
                  PyLong_AsLongLong(PyTuple_GET_ITEM(shape, 2)) == n_slots;
  Py_DECREF(shape);
  if (!ok || PyErr_Occurred()) return false;
  PyObject* cpu = PyObject_GetAttr(t, g_is_cpu);
  if (cpu == nullptr) return false;
  const bool on_cpu = cpu == Py_True;
  Py_DECREF(cpu);
  PyObject* dtype = PyObject_GetAttr(t, g_dtype);
  if (dtype == nullptr) return false;
  const bool is_bool = dtype == g_bool;
  Py_DECREF(dtype);
  if (!on_cpu || !is_bool) return false;
  PyObject* contiguous = PyObject_CallMethod(t, "is_contiguous", nullptr);
  if (contiguous == nullptr) return false;
  const bool c = contiguous == Py_True;
  Py_DECREF(contiguous);
  if (!c) return false;
  ptr = data_ptr(h);
  return true;
}

// select_actions' whole CPU call for the common case: lists in HEAD_NAMES order (None = absent),
// checked here as select_actions' Python checks would (shapes, dtypes, CPU), outputs allocated,
// the key drawn into key_buf when a head samples without explicit noise, the kernel run. Returns
// (actions [8, N], floats [18, N], bad rows), or None (nothing drawn or run) when anything is not the
// plain case, so that select_actions' Python path raises its named error or handles it.
py::object select_actions_lean(py::list logits, py::list masks, py::list noise, py::handle q,
                               py::handle slot_by_op, bool deterministic, py::handle key_buf) {
  if (logits.size() != kNumHeads || masks.size() != kNumHeads || noise.size() != kNumHeads)
    return py::none();
  ActionArgs a{};
  Seen l[kNumHeads];
  bool ok = true;
  bool any_drawn = false;
  int64_t width = 0;
  for (int h = 0; h < kNumHeads && ok; ++h)
    ok = !logits[h].is_none() && see(logits[h].ptr(), l[h]) && l[h].v.dtype >= 0;
  const int64_t n = ok ? l[kOpHead].rows : 0;
  for (int h = 0; h < kNumHeads && ok; ++h) {
    Seen ms, gs;
    const py::handle mh = masks[h], gh = noise[h];
    ok = l[h].rows == n && l[h].cols >= 1 &&
         (mh.is_none() || (see(mh.ptr(), ms) && ms.dtype == g_bool && ms.rows == n &&
                           ms.cols == l[h].cols)) &&
         (gh.is_none() || (see(gh.ptr(), gs) && gs.v.dtype == kFloat32 && gs.rows == n &&
                           gs.cols == l[h].cols));
    if (!ok) break;
    a.logits[h] = reinterpret_cast<const void*>(l[h].v.ptr);
    a.logits_dtype[h] = l[h].v.dtype;
    a.logits_stride[h] = l[h].v.row_stride;
    a.mask[h] = mh.is_none() ? nullptr : reinterpret_cast<const uint8_t*>(ms.v.ptr);
    a.mask_stride[h] = mh.is_none() ? 0 : ms.v.row_stride;
    a.noise[h] = gh.is_none() ? nullptr : reinterpret_cast<const float*>(gs.v.ptr);
    a.noise_stride[h] = gh.is_none() ? 0 : gs.v.row_stride;
    a.size[h] = static_cast<int>(l[h].cols);
    width += a.size[h];
    any_drawn = any_drawn || gh.is_none();
  }
  Seen qs;
  ok = ok && see(q.ptr(), qs) && qs.v.dtype >= 0 && qs.rows == n && qs.cols == a.size[kOpHead];
  uintptr_t sbo = 0;
  ok = ok && (slot_by_op.is_none() ||
              see_slot_by_op(slot_by_op.ptr(), n, a.size[kOpHead], a.size[kSlotHead], sbo));
  if (!ok) {
    PyErr_Clear();
    return py::none();
  }
  a.q = reinterpret_cast<const void*>(qs.v.ptr);
  a.q_dtype = qs.v.dtype;
  a.q_stride = qs.v.row_stride;
  a.slot_by_op = reinterpret_cast<const uint8_t*>(sbo);
  a.slot_by_op_stride = static_cast<int64_t>(a.size[kOpHead]) * a.size[kSlotHead];
  a.n = n;
  a.deterministic = deterministic;
  py::object actions = empty({kActionRows, n}, g_kw_int64);
  py::object floats = empty({kFloatRows, n}, g_kw_f32);
  if (!deterministic && any_drawn) {  // key_buf.random_(0, 2**63 - 1), as select_op_lean
    draw_key_into(key_buf.ptr());
    a.key = reinterpret_cast<const int64_t*>(data_ptr(key_buf));
  }
  a.out_actions = reinterpret_cast<int64_t*>(data_ptr(actions));
  a.out_f = reinterpret_cast<float*>(data_ptr(floats));
  int64_t bad;
  if (n * width < 4096) {
    bad = select_actions_cpu(a);
  } else {
    py::gil_scoped_release release;
    bad = select_actions_cpu(a);
  }
  return py::make_tuple(actions, floats, bad);
}

// Mean wall nanoseconds of `reps` calls of fn.
template <typename Fn>
double time_ns(int64_t reps, const Fn& fn) {
  if (reps < 1) throw std::invalid_argument("reps must be >= 1");
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < reps; ++i) fn();
  const auto t1 = std::chrono::steady_clock::now();
  return std::chrono::duration<double, std::nano>(t1 - t0).count() / static_cast<double>(reps);
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
  // select_op over host memory, keyword arguments only (the SelectArgs fields, bindings_common.h);
  // returns the number of bad rows (no valid entry / non-finite logit).
  m.def("select_op", [](const py::kwargs& kw) {
    const SelectArgs args = select_args(Fields("select_op", kw, {EF_SELECT_OP_FIELDS}));
    py::gil_scoped_release release;
    return select_op_cpu(args);
  });
  m.def("register_dtypes", [](py::handle f32, py::handle f16, py::handle bf16) {
    for (PyObject* d : {f32.ptr(), f16.ptr(), bf16.ptr()}) Py_INCREF(d);
    g_dtypes[0] = f32.ptr();
    g_dtypes[1] = f16.ptr();
    g_dtypes[2] = bf16.ptr();
  });
  // The objects select_op_lean uses (esper_fast/ops/_native.py calls this once).
  m.def("register_lean", [](py::handle tensor_type, py::handle empty_fn, py::handle bool_dtype,
                            py::handle int64_dtype, py::handle opselection, py::handle key_high,
                            py::handle cpu_device) {
    for (PyObject* o : {tensor_type.ptr(), empty_fn.ptr(), bool_dtype.ptr(), int64_dtype.ptr(),
                        opselection.ptr(), key_high.ptr()})
      Py_INCREF(o);
    g_tensor_type = tensor_type.ptr();
    g_empty = empty_fn.ptr();
    g_bool = bool_dtype.ptr();
    g_int64 = int64_dtype.ptr();
    g_opselection = opselection.ptr();
    g_key_high = key_high.ptr();
    g_is_cpu = PyUnicode_InternFromString("is_cpu");
    const py::object base = py::module_::import("torch").attr("_C").attr("TensorBase");
    for (int k = 0; k < kNumAttrs; ++k) {
      PyObject* d = PyDict_GetItemString(reinterpret_cast<PyTypeObject*>(base.ptr())->tp_dict,
                                         kAttrNames[k]);  // borrowed
      if (d == nullptr || Py_TYPE(d)->tp_descr_get == nullptr)
        throw std::runtime_error(std::string("torch._C.TensorBase has no descriptor '") +
                                 kAttrNames[k] + "'");
      Py_INCREF(d);
      g_descr[k] = d;
    }
    py::object empty_like =
        py::module_::import("torch").attr("_C").attr("_VariableFunctions").attr("empty_like");
    g_empty_like = empty_like.release().ptr();
    g_random = PyUnicode_InternFromString("random_");
    g_zero = PyLong_FromLong(0);
    g_kw_int64 = PyDict_New();
    PyDict_SetItemString(g_kw_int64, "dtype", g_int64);
    g_kw_f32 = PyDict_New();
    PyDict_SetItemString(g_kw_f32, "dtype", g_dtypes[0]);
    // Outputs on the CPU whatever torch.set_default_device says.
    PyDict_SetItemString(g_kw_int64, "device", cpu_device.ptr());
    PyDict_SetItemString(g_kw_f32, "device", cpu_device.ptr());
  });
  // select_op's whole CPU call in one entry (checks, outputs, key draw, kernel): (OpSelection, bad
  // rows), or None when an input is not the plain case (select_op then takes its Python path).
  m.add_object("select_op_lean", steal_or_throw(PyCFunction_NewEx(&g_select_op_lean_def, nullptr,
                                                                  m.attr("__name__").ptr())));
  m.def("select_actions_lean", &select_actions_lean, py::arg("logits"), py::arg("masks"),
        py::arg("noise"), py::arg("q"), py::arg("slot_by_op"), py::arg("deterministic"),
        py::arg("key_buf"));
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
    const SelectArgs args = tensor_args(l, qv, mv, nv, key, n, a, deterministic, data_ptr(out_op),
                                        rows_of(data_ptr(out_f), n).data());
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
  // Fused whole-action selection over host memory, keyword arguments only (the ActionArgs fields,
  // per-head lists in HEAD_NAMES order); returns the number of rows with a bad head.
  m.def("select_actions", [](const py::kwargs& kw) {
    const ActionArgs args = action_args(Fields("select_actions", kw, {EF_SELECT_ACTIONS_FIELDS}));
    py::gil_scoped_release release;
    return select_actions_cpu(args);
  });
  // Schema-v2 fused selection: select_actions' fields plus floor, value, value_dtype, value_stride.
  m.def("select_actions_v2", [](const py::kwargs& kw) {
    const ActionArgsV2 args =
        action_args_v2(Fields("select_actions_v2", kw, {EF_SELECT_ACTIONS_V2_FIELDS}));
    py::gil_scoped_release release;
    return select_actions_v2_cpu(args);
  });
  // Mean nanoseconds per run of the kernel alone (`reps` runs on the pointer entries' fields, no
  // Python, no allocation): bench_select subtracts it from the call time to report the overhead.
  m.def("kernel_ns_select_op", [](int64_t reps, const py::kwargs& kw) {
    const SelectArgs args = select_args(Fields("kernel_ns_select_op", kw, {EF_SELECT_OP_FIELDS}));
    py::gil_scoped_release release;
    return time_ns(reps, [&] { select_op_cpu(args); });
  });
  m.def("kernel_ns_select_actions", [](int64_t reps, const py::kwargs& kw) {
    const ActionArgs args =
        action_args(Fields("kernel_ns_select_actions", kw, {EF_SELECT_ACTIONS_FIELDS}));
    py::gil_scoped_release release;
    return time_ns(reps, [&] { select_actions_cpu(args); });
  });
  // Kernel choice (cpu_dispatch.cpp): names of the kernels this CPU supports, best first; the one in
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
}
