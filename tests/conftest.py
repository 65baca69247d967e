"""Shared helpers and fixtures for the fusedrnn test suite.

* ``reference`` — the pure-PyTorch reference module.  It is loaded straight
  from ``fusedrnn/reference.py`` so the reference tests run even when the
  native library ``fusedrnn._C`` has not been built.
* ``fusedrnn_or_skip()`` — import the package, skipping the calling module
  cleanly when the native library is missing.
* ``cuda_or_skip()`` — like ``fusedrnn_or_skip()``, and also skip the calling
  module without a CUDA device or without the CUDA kernels in the build.
  The CUDA test modules also share ``CUDA``, ``CUDA_TOL`` with
  ``assert_close_scaled(...)``, the ``no_tf32``, ``step_launch`` and
  ``general_tier`` fixtures, ``option_set(name, value)`` (a kernel switch
  for a block),
  ``lstm_inputs(...)``
  and ``loss_weights(...)``.
* ``make_pair(...)`` — a ``fusedrnn.LSTM`` and a ``torch.nn.LSTM`` with
  identical weights.
* ``cpu_step_path`` fixture — a test runs with the project's float32 CPU
  kernels and with the generic CPU path.
* ``seed`` fixture (autouse) — every test starts from ``torch.manual_seed(0)``.
* ``hang_watchdog`` fixture (autouse) — with ``FUSEDRNN_TEST_TIMEOUT=S`` a test
  running over S seconds ends the process with every thread's traceback.
"""
import contextlib
import glob
import importlib.util
import os
import re
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The extension is built in place (setup.py build_ext --inplace): make the
# checkout importable for plain `pytest` as well as `python -m pytest`.
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def _load_reference():
    try:
        from fusedrnn import reference  # noqa: F401  (package importable)
        return reference
    except Exception:  # the package's __init__ may need the native library
        spec = importlib.util.spec_from_file_location(
            "fusedrnn_reference_standalone", os.path.join(ROOT, "fusedrnn", "reference.py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod


reference = _load_reference()


def fusedrnn_or_skip():
    """Import fusedrnn; skip the calling test module if the native library is
    not built at all.  A library that exists but fails to load is an error,
    not a skip, so a broken build cannot pass the suite silently."""
    try:
        import fusedrnn
    except ImportError as e:
        built = glob.glob(os.path.join(ROOT, "fusedrnn", "_C*.so")) + \
            glob.glob(os.path.join(ROOT, "fusedrnn", "_C*.pyd"))
        if built:
            raise
        pytest.skip(f"fusedrnn._C is not built ({e}); run "
                    "`python setup.py build_ext --inplace`", allow_module_level=True)
    return fusedrnn


def cuda_or_skip():
    """fusedrnn_or_skip(), then skip the calling test module unless there is a
    CUDA device and fusedrnn._C was built with its CUDA kernels."""
    fusedrnn = fusedrnn_or_skip()
    if not torch.cuda.is_available():
        pytest.skip("CUDA tests need a CUDA device (torch.cuda.is_available() is False)",
                    allow_module_level=True)
    if not getattr(fusedrnn._C, "cuda_compiled", 0):
        pytest.skip("fusedrnn._C was built without its CUDA kernels (cuda_compiled == 0); "
                    "rebuild with nvcc available", allow_module_level=True)
    return fusedrnn


# ----------------------------------------------- shared by the CUDA tests --

CUDA = torch.device("cuda", 0)

# Per-dtype tolerance of the CUDA kernels vs the float64 reference / cuDNN,
# for assert_close_scaled: a result r passes against the expected e when
#   |r - e| <= TOL * |e| + TOL * max(1, max|e|)
# (relative, plus an absolute floor scaled by the tensor's largest magnitude,
# since gradients of the weights are sums over T·B terms).
CUDA_TOL = {
    torch.float64: 1e-10,   # vs the float64 reference: only summation order differs
    torch.float32: 1e-4,    # vs cuDNN, TF32 off: full fp32 in both, different order
    torch.float16: 5e-3,    # vs cuDNN in half: both round every stored value to 11 bits
    torch.bfloat16: 3e-2,   # vs cuDNN in bfloat16: 8-bit mantissa, rounded per step
}


def assert_close_scaled(actual, expected, tol, name):
    """Equal shapes, and |actual - expected| <= tol * |expected| + tol * max(1, max|expected|),
    compared in float64 on the CPU."""
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    scale = max(1.0, e.abs().max().item()) if e.numel() else 1.0
    torch.testing.assert_close(a, e, rtol=tol, atol=tol * scale,
                               msg=lambda m: f"{name}: {m}")


@pytest.fixture
def step_launch():
    """Sets fusedrnn's cuda_step_launch option (``step_launch("graph")``);
    restores it afterwards."""
    import fusedrnn
    old = fusedrnn.get_option("cuda_step_launch")
    try:
        yield lambda v: fusedrnn.set_option("cuda_step_launch", v)
    finally:
        fusedrnn.set_option("cuda_step_launch", old)


@pytest.fixture(params=["fast", "generic"])
def cpu_step_path(request):
    """Runs a test once with the project's AVX-512 float32 CPU kernels (the
    fused step kernels and the packed products) and once with the generic path
    (ATen products + one pointwise pass per step) that other CPUs and dtypes
    use; one switch covers LSTM, GRU and RNN."""
    import fusedrnn
    C = fusedrnn._C
    if request.param == "fast" and not C.cpu_fast_step_available():
        pytest.skip("this CPU has no AVX-512: the fused float32 step kernels cannot run")
    before = C.cpu_fast_step_enabled()
    C.set_cpu_fast_step_enabled(request.param == "fast")
    try:
        yield request.param
    finally:
        C.set_cpu_fast_step_enabled(before)


@contextlib.contextmanager
def option_set(name, value):
    """fusedrnn.set_option(name, value) for the block, the previous value
    restored afterwards, exceptions included."""
    import fusedrnn
    old = fusedrnn.get_option(name)
    fusedrnn.set_option(name, value)
    try:
        yield
    finally:
        fusedrnn.set_option(name, old)


@pytest.fixture
def general_tier():
    """Runs the CUDA LSTM's general tier (cuda_tier = 'general'), restored
    afterwards: tests/test_cuda.py, the general tier's tests, opt in, since
    auto would give most of its sizes to the persistent tier (tested in
    tests/test_cuda_persistent.py, auto included)."""
    with option_set("cuda_tier", "general"):
        yield


@pytest.fixture
def no_tf32():
    """Full fp32 GEMMs for cuBLAS and cuDNN alike, restored afterwards (a CUDA
    test module opts in with pytestmark = pytest.mark.usefixtures("no_tf32"))."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def lstm_inputs(I, H, L, T, B, dtype, device=CUDA, batch_first=False, seed=1):
    """Seeded LSTM inputs [x, h0, c0] ((T, B, I) or (B, T, I), (L, B, H) twice)."""
    g = torch.Generator().manual_seed(seed)
    shape = (B, T, I) if batch_first else (T, B, I)
    x = torch.randn(shape, generator=g)
    h0 = 0.5 * torch.randn(L, B, H, generator=g)
    c0 = 0.5 * torch.randn(L, B, H, generator=g)
    return [t.to(device=device, dtype=dtype) for t in (x, h0, c0)]


def loss_weights(vals, seed=2):
    """Seeded random weights for a loss over the tensors `vals` (float32, or
    float64 when vals[0] is, so the loss itself is not computed in half precision)."""
    g = torch.Generator().manual_seed(seed)
    dt = torch.float64 if vals[0].dtype == torch.float64 else torch.float32
    return [torch.randn(v.shape, generator=g).to(device=v.device, dtype=dt) for v in vals]


@pytest.fixture(autouse=True)
def seed():
    """Make every test deterministic."""
    torch.manual_seed(0)
    yield 0


def _test_timeout():
    """FUSEDRNN_TEST_TIMEOUT in seconds (unset, empty or 0: no watchdog)."""
    raw = os.environ.get("FUSEDRNN_TEST_TIMEOUT", "").strip()
    try:
        return float(raw) if raw else 0.0
    except ValueError:
        raise pytest.UsageError(f"FUSEDRNN_TEST_TIMEOUT must be a number of seconds, got {raw!r}")


_WATCHDOG_FILE = []  # the open FUSEDRNN_TEST_TIMEOUT_LOG, once opened


@pytest.fixture(autouse=True)
def hang_watchdog():
    """With FUSEDRNN_TEST_TIMEOUT=S set (scripts/gpu_check.sh sets it), a test
    that runs longer than S seconds makes the process write every thread's
    traceback ("Timeout (0:01:30)!", then the stacks, the test's among them)
    and exit with status 1: a kernel that never finishes (a grid barrier some
    CTA never reaches, say) then costs its file S seconds of the GPU
    machine's time instead of the whole test step; the driver stops the
    kernel when the process exits.  The tracebacks go to the file
    FUSEDRNN_TEST_TIMEOUT_LOG names (appended to), else to stderr, where
    pytest's output capture may swallow them."""
    seconds = _test_timeout()
    if seconds > 0:
        import faulthandler
        path = os.environ.get("FUSEDRNN_TEST_TIMEOUT_LOG", "").strip()
        if path and not _WATCHDOG_FILE:
            _WATCHDOG_FILE.append(open(path, "a"))
        faulthandler.dump_traceback_later(seconds, exit=True,
                                          file=_WATCHDOG_FILE[0] if path else sys.stderr)
    try:
        yield
    finally:
        if seconds > 0:
            faulthandler.cancel_dump_traceback_later()


def make_pair(input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
              dropout=0.0, dtype=torch.float32, device="cpu", seed=0):
    """A ``fusedrnn.LSTM`` and a ``torch.nn.LSTM`` holding identical weights.

    The fused module is constructed from ``seed``; the torch module receives its
    state_dict (which also checks that state_dicts load across).
    """
    import fusedrnn
    torch.manual_seed(seed)
    kw = dict(num_layers=num_layers, bias=bias, batch_first=batch_first,
              dropout=dropout, device=device, dtype=dtype)
    fused = fusedrnn.LSTM(input_size, hidden_size, **kw)
    ref = torch.nn.LSTM(input_size, hidden_size, **kw)
    ref.load_state_dict(fused.state_dict())
    return fused, ref


def flat_weights(module):
    """The module's parameters in nn.LSTM's flat order."""
    return [getattr(module, name) for name in module._flat_weights_names]


def tolerances(dtype):
    """(rtol, atol) for comparing states/outputs/gradients of a given dtype."""
    if dtype == torch.float64:
        return dict(rtol=1e-10, atol=1e-10)
    # float32: different summation order (fused GEMMs vs per-step matmuls).
    return dict(rtol=1e-4, atol=1e-5)


def assert_parity(a, b, names, tol, what):
    """a, b = ([output, h_n(, c_n)], [gradients...]): equal shapes, values within tol."""
    (va, ga), (vb, gb) = a, b
    assert len(va) == len(vb)
    for x, y, n in zip(va, vb, ("output", "h_n", "c_n")):
        assert x.shape == y.shape, f"{what}: {n} shape {tuple(x.shape)} vs {tuple(y.shape)}"
        torch.testing.assert_close(x, y, **tol, msg=lambda m: f"{what}: {n}: {m}")
    assert len(ga) == len(gb) == len(names)
    for x, y, n in zip(ga, gb, names):
        assert x.shape == y.shape, f"{what}: grad {n} shape"
        torch.testing.assert_close(x, y, **tol, msg=lambda m: f"{what}: grad {n}: {m}")


def assert_raises(exc, fn, *patterns):
    """fn() raises exc, and every regex in patterns occurs in its message."""
    with pytest.raises(exc) as info:
        fn()
    msg = str(info.value)
    for p in patterns:
        assert re.search(p, msg), f"message {msg!r} does not match {p!r}"
    return msg
