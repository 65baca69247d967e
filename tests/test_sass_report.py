"""scripts/sass_report.py: the static SASS report of the persistent kernels
(no GPU needed, only a build with the CUDA sources and the disassembler that
the CUDA toolkit or the triton wheel ships)."""
import os
import subprocess
import sys

import pytest

from conftest import fusedrnn_or_skip

fusedrnn = fusedrnn_or_skip()
if not fusedrnn._C.cuda_compiled:
    pytest.skip("this build of fusedrnn._C has no CUDA kernels to disassemble",
                allow_module_level=True)

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "scripts", "sass_report.py")


def test_reports_the_float32_persistent_kernels():
    so = fusedrnn._C.__file__
    r = subprocess.run([sys.executable, SCRIPT, "--so", so], capture_output=True, text=True)
    if r.returncode != 0 and "not found" in r.stderr + r.stdout:
        pytest.skip(f"no disassembler here: {(r.stderr + r.stdout).strip()}")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "lstm_persistent_fwd_kernelIfLb0E" in out and "lstm_persistent_bwd_kernelIfLb0E" in out
    assert "registers" in out and "? registers" not in out
    # The forward's 16-byte FMA loop: 4 gate rows x 8 batch rows x 4 elements.
    assert any("FFMA  128" in line and "LDS  12" in line for line in out.splitlines()), out


def test_unknown_kernel_is_an_error():
    r = subprocess.run([sys.executable, SCRIPT, "--so", fusedrnn._C.__file__, "--kernel",
                        "no_such_kernel"], capture_output=True, text=True)
    assert r.returncode != 0
    assert "no kernel matches" in r.stderr or "not found" in r.stderr
