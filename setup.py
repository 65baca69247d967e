"""Build fusedrnn and its native library fusedrnn._C.

The CPU sources are always built.  The CUDA sources (csrc/cuda) are built
whenever they can be *compiled*: a CUDA build of torch and an nvcc toolkit are
present.  No GPU is needed for that; without one the architectures come from
TORCH_CUDA_ARCH_LIST (default "8.0;9.0").  Set FUSEDRNN_NO_CUDA=1 to build
the CPU sources only.
"""
import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCHS = "8.0;9.0"


def _truthy(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _find_cuda_home():
    """The toolkit root: $CUDA_HOME/$CUDA_PATH, else what `nvcc --dryrun` calls TOP.

    The nvcc on PATH may be a wrapper script, so the directory above it is not
    necessarily the toolkit; nvcc itself knows where it lives.
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        path = os.environ.get(var)
        if path and os.path.exists(os.path.join(path, "bin", "nvcc")):
            return os.path.realpath(path)
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    try:
        out = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull],
                             capture_output=True, text=True, timeout=60)
        m = re.search(r"^#\$ TOP=(.*)$", out.stdout + out.stderr, re.M)
        if m:
            return os.path.realpath(m.group(1).strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return os.path.realpath(os.path.join(os.path.dirname(nvcc), ".."))


def _cuda_wanted():
    if _truthy("FUSEDRNN_NO_CUDA"):
        print("fusedrnn: FUSEDRNN_NO_CUDA is set: building the CPU sources only")
        return False, None
    import torch  # noqa: F401  (torch.version.cuda does not need the GPU)
    if torch.version.cuda is None:
        print("fusedrnn: this torch is not a CUDA build: building the CPU sources only")
        return False, None
    home = _find_cuda_home()
    if home is None:
        print("fusedrnn: no nvcc found: building the CPU sources only")
        return False, None
    return True, home


WITH_CUDA, CUDA_HOME = _cuda_wanted()
if WITH_CUDA:
    # torch.utils.cpp_extension reads CUDA_HOME when it is imported.
    os.environ["CUDA_HOME"] = CUDA_HOME

from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _nvidia_wheel_dirs():
    """Headers and libraries that torch's CUDA wheels install (cuBLAS etc.)."""
    import torch
    site = os.path.dirname(os.path.dirname(torch.__file__))
    incs = sorted(glob.glob(os.path.join(site, "nvidia", "*", "include")))
    libs = sorted(glob.glob(os.path.join(site, "nvidia", "*", "lib")))
    return incs, libs


def _openmp_torch():
    """True when torch's CPU parallelism is OpenMP (ATen/Config.h says so)."""
    import torch
    config = os.path.join(os.path.dirname(torch.__file__), "include", "ATen", "Config.h")
    try:
        with open(config) as f:
            return re.search(r"#define AT_PARALLEL_OPENMP 1", f.read()) is not None
    except OSError:
        return False


def extensions():
    cpu_sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) +
                         glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    # torch picks the C++ standard (C++20 for torch >= 2.13).  -fopenmp matters:
    # at::parallel_for is inlined from ATen's headers as an OpenMP region, which
    # silently runs on one thread when the extension is compiled without it.
    cxx = ["-O3", "-fvisibility=hidden"]
    link = []
    if _openmp_torch():
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    define = [("FUSEDRNN_WITH_CUDA", "1" if WITH_CUDA else "0")]
    include_dirs = [os.path.join(ROOT, "csrc")]
    if not WITH_CUDA:
        return [CppExtension("fusedrnn._C", cpu_sources, include_dirs=include_dirs,
                             define_macros=define, extra_compile_args={"cxx": cxx},
                             extra_link_args=link)]

    import torch
    if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        if torch.cuda.is_available():
            caps = {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
            archs = ";".join(f"{a}.{b}" for a, b in sorted(caps))
        else:
            archs = DEFAULT_ARCHS
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
    print(f"fusedrnn: building CUDA sources with {CUDA_HOME} for "
          f"TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}")
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")) +
                          glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
    incs, libs = _nvidia_wheel_dirs()
    nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
    return [CUDAExtension("fusedrnn._C", cpu_sources + cuda_sources,
                          include_dirs=include_dirs + incs, library_dirs=libs,
                          define_macros=define, extra_link_args=link,
                          extra_compile_args={"cxx": cxx, "nvcc": nvcc})]


setup(
    name="fusedrnn",
    version="0.1.0",
    description="Fused stacked LSTM kernels for PyTorch (CPU and CUDA), drop-in for torch.nn.LSTM",
    packages=find_packages(include=["fusedrnn", "fusedrnn.*"]),
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    python_requires=">=3.9",
    install_requires=["torch", "numpy"],
)
