// The Python module fusedrnn._C.  Importing it loads this shared library,
// whose static initialisers register the ops with the dispatcher; the module
// itself only reports how the library was built.
#include <Python.h>

#ifndef FUSEDRNN_WITH_CUDA
#define FUSEDRNN_WITH_CUDA 0
#endif

static struct PyModuleDef fusedrnn_module = {
    PyModuleDef_HEAD_INIT, "_C",
    "fusedrnn native library (ops are registered with torch.ops.fusedrnn)", -1,
    nullptr};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* m = PyModule_Create(&fusedrnn_module);
  if (m == nullptr) return nullptr;
  if (PyModule_AddIntConstant(m, "cuda_compiled", FUSEDRNN_WITH_CUDA) < 0) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
