// The Python module fusedrnn._C.  Importing it loads this shared library,
// whose static initialisers register the ops with the dispatcher; the module
// itself only reports how the library was built.
#include <Python.h>

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

static PyMethodDef fusedrnn_methods[] = {
    {"set_option", set_option, METH_VARARGS,
     "set_option(name, value): set a kernel switch (see csrc/options.h)."},
    {"get_option", get_option, METH_VARARGS, "get_option(name): a kernel switch's value."},
    {"cpu_fast_step_available", cpu_fast_step_available, METH_NOARGS,
     "True when this CPU runs the AVX-512 fused float32 step kernels."},
    {"cpu_fast_step_enabled", cpu_fast_step_enabled, METH_NOARGS,
     "Whether float32 CPU calls use the fused step kernels when available."},
    {"set_cpu_fast_step_enabled", set_cpu_fast_step_enabled, METH_O,
     "Enable (True) or disable (False) the fused float32 CPU step kernels; when "
     "disabled the CPU path uses at::addmm plus a pointwise pass (for tests and "
     "benchmarks)."},
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
