"""The hang watchdog of tests/conftest.py (FUSEDRNN_TEST_TIMEOUT): a test
that runs too long ends its pytest process with the tracebacks in the log
file, instead of holding the GPU machine's test step until its deadline.
CPU only: a test that sleeps stands in for a kernel that never finishes."""
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SLEEPY = '''
import time

def test_quick():
    pass

def test_sleeps_too_long():
    time.sleep(120)
'''


def _run(tmp_path, timeout):
    (tmp_path / "test_sleepy.py").write_text(SLEEPY)
    log = tmp_path / "hang.log"
    env = dict(os.environ, FUSEDRNN_TEST_TIMEOUT=timeout, FUSEDRNN_TEST_TIMEOUT_LOG=str(log),
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest",
                        "-p", "no:cacheprovider", "-k", "quick or sleeps",
                        str(tmp_path / "test_sleepy.py")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=100)
    return r, time.monotonic() - t0, log


def test_a_test_over_the_timeout_ends_the_process(tmp_path):
    r, took, log = _run(tmp_path, "2")
    assert r.returncode == 1, r.stdout + r.stderr
    assert took < 60, f"the watchdog did not stop the sleeping test ({took:.0f} s)"
    text = log.read_text()
    assert "Timeout (0:00:02)!" in text
    assert "test_sleeps_too_long" in text


def test_a_bad_timeout_value_is_a_usage_error(tmp_path):
    r, _, _ = _run(tmp_path, "soon")
    assert r.returncode != 0
    assert "FUSEDRNN_TEST_TIMEOUT must be a number of seconds" in r.stdout + r.stderr
