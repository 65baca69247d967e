// The Python module fusedrnn._C.  Importing it loads this shared library,
// whose static initialisers register the ops with the dispatcher; the module
// itself only reports how the library was built.
#include <Python.h>

#include "cuda/mma_layout.h"
#include "cuda/persistent_plan.h"
#include "cuda/stage_layout.h"
#include "options.h"

#ifndef FUSEDRNN_WITH_CUDA
#define FUSEDRNN_WITH_CUDA 0
#endif

namespace fusedrnn {
bool cpu_fast_step_available();
void set_cpu_fast_step_enabled(bool on);
bool cpu_fast_step_enabled();
}  // namespace fusedrnn

static PyObject* cpu_fast_step_available(PyObject*, PyObject*) {
  return PyBool_FromLong(fusedrnn::cpu_fast_step_available());
}

static PyObject* cpu_fast_step_enabled(PyObject*, PyObject*) {
  return PyBool_FromLong(fusedrnn::cpu_fast_step_enabled());
}

static PyObject* set_cpu_fast_step_enabled(PyObject*, PyObject* arg) {
  const int on = PyObject_IsTrue(arg);
  if (on < 0) return nullptr;
  fusedrnn::set_cpu_fast_step_enabled(on != 0);
  Py_RETURN_NONE;
}

// set_option(name: str, value: int); the names and values are documented in
// options.h and validated (with their string spellings) by fusedrnn.set_option.
static PyObject* set_option(PyObject*, PyObject* args) {
  const char* name = nullptr;
  long long value = 0;
  if (!PyArg_ParseTuple(args, "sL", &name, &value)) return nullptr;
  const int i = fusedrnn::option_index(name);
  if (i < 0) {
    PyErr_Format(PyExc_ValueError, "fusedrnn: unknown option '%s'", name);
    return nullptr;
  }
  if (value < 0 || value >= fusedrnn::option_value_count(i)) {
    PyErr_Format(PyExc_ValueError, "fusedrnn: option '%s' takes a value in [0, %lld), got %lld",
                 name, static_cast<long long>(fusedrnn::option_value_count(i)), value);
    return nullptr;
  }
  fusedrnn::set_option(static_cast<fusedrnn::Option>(i), value);
  Py_RETURN_NONE;
}

static PyObject* get_option(PyObject*, PyObject* args) {
  const char* name = nullptr;
  if (!PyArg_ParseTuple(args, "s", &name)) return nullptr;
  const int i = fusedrnn::option_index(name);
  if (i < 0) {
    PyErr_Format(PyExc_ValueError, "fusedrnn: unknown option '%s'", name);
    return nullptr;
  }
  return PyLong_FromLongLong(fusedrnn::get_option(static_cast<fusedrnn::Option>(i)));
}

// The device limits the planner takes, from the Python arguments.
static fusedrnn::persistent::DeviceLimits limits(long long smem_sm, long long smem_block,
                                                 long long regs_sm, long long sms) {
  fusedrnn::persistent::DeviceLimits d;
  d.smem_per_sm = smem_sm;
  d.smem_per_block = smem_block;
  d.regs_per_sm = regs_sm;
  d.num_sms = sms;
  return d;
}

// persistent_plan(H, I, L, B, dtype_bytes, smem_per_sm, smem_per_block,
// regs_per_sm, num_sms[, T=1, option=0, backward=0, max_batch_split=1, mma=0,
// cta_epilogue=0, threads=256, fwd_task_units=1]) -> dict: the
// persistent LSTM tier's plan (csrc/cuda/persistent_plan.h) of its forward (or
// backward) kernel for these sizes on a device with these limits, and the tier
// `option` (0 auto, 1 general, 2 persistent) would pick; `mma` asks for the
// tensor-core tiles (1; 2: float32 as TF32 too) ("mma_product": the
// partial-sum area's rows per K slice and row length); `cta_epilogue` 0 off,
// 1 on, -1 auto; `threads` 256, 512 or -1 auto; `fwd_task_units` 1, 2 or 3
// (the forward weights in registers, persistent_plan.h kFwdRegs)
// (persistent_plan.h, plan_lstm_auto: what the options' auto values pick).
// Plain host code, so the CPU tests can check the planner without a GPU.
static PyObject* persistent_plan(PyObject*, PyObject* args) {
  long long H, I, L, B, elem, smem_sm, smem_block, regs_sm, sms, T = 1, option = 0, bwd = 0,
      split = 1, mma = 0, cta = 0, threads = fusedrnn::persistent::kThreads, units = 1;
  if (!PyArg_ParseTuple(args, "LLLLLLLLL|LLLLLLLL", &H, &I, &L, &B, &elem, &smem_sm, &smem_block,
                        &regs_sm, &sms, &T, &option, &bwd, &split, &mma, &cta, &threads,
                        &units))
    return nullptr;
  namespace ps = fusedrnn::persistent;
  const auto p = ps::plan_lstm_auto(H, I, L, B, elem, elem == 8 ? 8 : 4,
                                    limits(smem_sm, smem_block, regs_sm, sms), bwd != 0, split,
                                    mma != 0, mma == 2, cta < 0 ? ps::kAutoOption : cta != 0,
                                    threads < 0 ? ps::kAutoOption : threads, units);
  const auto c = fusedrnn::persistent::choose_tier(option, true, "", p, T + L - 1, L);
  // ctas: (layer, j0, j1) of each CTA; cta_rows: its batch rows (b0, b1).
  PyObject* ctas = PyList_New(0);
  PyObject* rows = PyList_New(0);
  if (ctas == nullptr || rows == nullptr) {
    Py_XDECREF(ctas);
    Py_XDECREF(rows);
    return nullptr;
  }
  for (int64_t k = 0; p.fits && k < p.num_ctas; ++k) {
    PyObject* e = Py_BuildValue("(LLL)", (long long)p.cta_layer(k), (long long)p.cta_j0(k),
                                (long long)p.cta_j1(k));
    PyObject* r = Py_BuildValue("(LL)", (long long)p.cta_b0(k), (long long)p.cta_b1(k));
    const bool ok = e != nullptr && r != nullptr && PyList_Append(ctas, e) == 0 &&
                    PyList_Append(rows, r) == 0;
    Py_XDECREF(e);
    Py_XDECREF(r);
    if (!ok) {
      Py_DECREF(ctas);
      Py_DECREF(rows);
      return nullptr;
    }
  }
  PyObject* dict = Py_BuildValue(
      "{s:O,s:O,s:s,s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:N,s:N,s:L,s:L,s:O,s:O,s:O,s:s}", "fits",
      p.fits ? Py_True : Py_False,
      "auto", p.auto_ok ? Py_True : Py_False, "why", p.why.c_str(), "K", (long long)p.K,
      "units_per_cta", (long long)p.units_per_cta, "ctas_per_layer", (long long)p.ctas_per_layer,
      "num_ctas", (long long)p.num_ctas, "batch_chunk", (long long)p.batch_chunk, "threads",
      (long long)p.threads, "smem_bytes", (long long)p.smem.total, "ctas", ctas, "cta_rows",
      rows, "batch_split", (long long)p.batch_split, "rows_per_cta", (long long)p.rows_per_cta,
      "persistent",
      c.persistent ? Py_True : Py_False, "auto_eligible", c.auto_eligible ? Py_True : Py_False,
      "auto_enabled", fusedrnn::persistent::kAutoEnabled ? Py_True : Py_False, "error",
      c.error.c_str());
  if (dict == nullptr) return nullptr;
  // The shared-memory areas' offsets and the tensor-core path's tiles.
  const auto& m = p.smem;
  PyObject* extra = Py_BuildValue(
      "{s:(LLLLL),s:O,s:(LL),s:L,s:L,s:(LL),s:s,s:O,s:L}", "smem_offsets", (long long)m.weights,
      (long long)m.bias, (long long)m.cstate, (long long)m.stage, (long long)m.product, "mma",
      p.mma.on() ? Py_True : Py_False, "mma_tile", (long long)p.mma.tm, (long long)p.mma.tn,
      "mma_depth", (long long)p.mma.tk, "mma_ksplit", (long long)p.mma_ksplit, "mma_product", (long long)p.mma_mpad,
      (long long)p.mma_npad, "mma_why", p.mma.why.c_str(), "cta_epilogue",
      p.cta_epilogue ? Py_True : Py_False, "fwd_task_units", (long long)p.fwd_task_units);
  if (extra == nullptr || PyDict_Update(dict, extra) != 0) {
    Py_XDECREF(extra);
    Py_DECREF(dict);
    return nullptr;
  }
  Py_DECREF(extra);
  return dict;
}

// persistent_mma_check(H, L, B, dtype_bytes, smem_per_sm, smem_per_block,
// regs_per_sm, num_sms, backward=0, tf32=0, seed=1) -> float: plans the
// persistent kernel with its tensor-core tiles and replays its products on
// the CPU (csrc/cuda/mma_layout.h): the largest error of the epilogue's sums
// against the direct product (~1e-13 when the partition is right, NaN when a
// padding row leaked in).  ValueError when the plan has no tiles or an access
// left its shared-memory area.
static PyObject* persistent_mma_check(PyObject*, PyObject* args) {
  long long H, L, B, elem, smem_sm, smem_block, regs_sm, sms, bwd = 0, tf32 = 0, seed = 1;
  if (!PyArg_ParseTuple(args, "LLLLLLLL|LLL", &H, &L, &B, &elem, &smem_sm, &smem_block,
                        &regs_sm, &sms, &bwd, &tf32, &seed))
    return nullptr;
  const auto p = fusedrnn::persistent::plan_lstm(H, H, L, B, elem, elem == 8 ? 8 : 4,
                                                   limits(smem_sm, smem_block, regs_sm, sms),
                                                   bwd != 0, 1, true, tf32 != 0);
  std::string error;
  const double e =
      fusedrnn::persistent::mma_emulation_error(p, &error, static_cast<unsigned>(seed));
  if (!error.empty()) {
    PyErr_Format(PyExc_ValueError, "fusedrnn: %s", error.c_str());
    return nullptr;
  }
  return PyFloat_FromDouble(e);
}

// persistent_stage_check(threads, rows, kv, kav, ldv, dst_ldv) -> None: replays
// the persistent kernels' per-step staging copy (csrc/cuda/stage_layout.h) of
// one CTA on the CPU; ValueError saying what went wrong when an element was
// missed, stored twice, stored by another thread than the coalesced order's,
// or a load or store left its area.
static PyObject* persistent_stage_check(PyObject*, PyObject* args) {
  int threads, rows, kv, kav, ldv, dst_ldv;
  if (!PyArg_ParseTuple(args, "iiiiii", &threads, &rows, &kv, &kav, &ldv, &dst_ldv))
    return nullptr;
  const std::string err =
      fusedrnn::persistent::stage_copy_check(threads, rows, kv, kav, ldv, dst_ldv);
  if (!err.empty()) {
    PyErr_Format(PyExc_ValueError, "fusedrnn: staging copy: %s", err.c_str());
    return nullptr;
  }
  Py_RETURN_NONE;
}

static PyMethodDef fusedrnn_methods[] = {
    {"set_option", set_option, METH_VARARGS,
     "set_option(name, value): set a kernel switch (see csrc/options.h)."},
    {"get_option", get_option, METH_VARARGS, "get_option(name): a kernel switch's value."},
    {"cpu_fast_step_available", cpu_fast_step_available, METH_NOARGS,
     "True when this CPU runs the AVX-512 float32 kernels (fused steps, packed products)."},
    {"cpu_fast_step_enabled", cpu_fast_step_enabled, METH_NOARGS,
     "Whether float32 CPU calls use the AVX-512 kernels when available."},
    {"set_cpu_fast_step_enabled", set_cpu_fast_step_enabled, METH_O,
     "Enable (True) or disable (False) the AVX-512 float32 CPU kernels (the fused "
     "steps and the packed products); when disabled the CPU path uses ATen's "
     "products plus a pointwise pass per step (for tests and benchmarks)."},
    {"persistent_plan", persistent_plan, METH_VARARGS,
     "persistent_plan(H, I, L, B, dtype_bytes, smem_per_sm, smem_per_block, regs_per_sm, "
     "num_sms, T=1, option=0, backward=0, max_batch_split=1, mma=0, cta_epilogue=0, "
     "threads=256, fwd_task_units=1) -> dict (positional arguments only): the persistent "
     "CUDA LSTM tier's plan (for tests)."},
    {"persistent_mma_check", persistent_mma_check, METH_VARARGS,
     "persistent_mma_check(H, L, B, dtype_bytes, smem_per_sm, smem_per_block, regs_per_sm, "
     "num_sms, backward=0, tf32=0, seed=1) -> float: the persistent kernels' tensor-core "
     "products replayed on the CPU; the largest error against the direct product (for tests)."},
    {"persistent_stage_check", persistent_stage_check, METH_VARARGS,
     "persistent_stage_check(threads, rows, kv, kav, ldv, dst_ldv) -> None: the persistent "
     "kernels' staging copy of one CTA replayed on the CPU; ValueError if it is wrong (for "
     "tests)."},
    {nullptr, nullptr, 0, nullptr}};

static struct PyModuleDef fusedrnn_module = {
    PyModuleDef_HEAD_INIT, "_C",
    "fusedrnn native library (ops are registered with torch.ops.fusedrnn)", -1,
    fusedrnn_methods};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* m = PyModule_Create(&fusedrnn_module);
  if (m == nullptr) return nullptr;
  if (PyModule_AddIntConstant(m, "cuda_compiled", FUSEDRNN_WITH_CUDA) < 0) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
