"""The CPU step kernels checked on their own, below the ops.

csrc/cpu/fast_step_bench.cc and fast_step_gru_bench.cc compare the fused
LSTM / GRU / RNN step kernels (AVX-512 and the portable scalar path) with a
double-precision reference over awkward sizes, strided layouts, in-place
updates, NaN, infinities and saturating inputs, and exit non-zero on any
mismatch.  tests/native/gemm_check.cc checks the packed matrix product (csrc/cpu/gemm.cpp)
the same way, and that its result does not depend on the thread count.
This test builds and runs them in their quick (check-only) mode.
"""
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU = os.path.join(ROOT, "csrc", "cpu")

PROGRAMS = {
    "lstm": ["fast_step.cpp", "fast_step_bench.cc"],
    "gru_rnn": ["fast_step.cpp", "fast_step_gru.cpp", "fast_step_gru_bench.cc"],
    "gemm": ["fast_step.cpp", "gemm.cpp", os.path.join(ROOT, "tests", "native", "gemm_check.cc")],
}


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ to build the kernel checks")
@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_step_kernels_against_double_reference(name, tmp_path):
    exe = tmp_path / f"check_{name}"
    sources = [os.path.join(CPU, f) for f in PROGRAMS[name]]
    subprocess.run(["g++", "-O2", "-std=c++17", "-I", os.path.join(ROOT, "csrc"), *sources,
                    "-o", str(exe), "-pthread", "-fopenmp"], check=True, timeout=300)
    run = subprocess.run([str(exe), "--quick"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "all checks passed" in run.stdout
