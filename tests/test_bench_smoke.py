"""Smoke test of benchmarks/bench_layers.py: a tiny configuration end to end.

Runs the benchmark script in a subprocess (as a user would) on the `tiny`
configuration with two measurement rounds, for every cell this build of
fusedrnn provides, and checks that it exits cleanly and that its tables show
every implementation and cell that applies on this machine.  Writes no files.
"""
import importlib.util
import os
import subprocess
import sys

import pytest

from conftest import ROOT, fusedrnn_or_skip

fusedrnn = fusedrnn_or_skip()

SCRIPT = os.path.join(ROOT, "benchmarks", "bench_layers.py")
TIMEOUT_S = 50


def _run(*args):
    cmd = [sys.executable, SCRIPT, "--device", "cpu", "--configs", "tiny", "--reps", "2",
           "--warmup", "1", "--threads", "1", "--no-save", *args]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"bench_layers.py took longer than {TIMEOUT_S} s:\n{e.stdout or ''}")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"exit status {proc.returncode}:\n{out}"
    return out


def _table_headers(out):
    """The header line of each results table (the line after '== ...')."""
    lines = out.splitlines()
    return [lines[i + 1] for i, line in enumerate(lines[:-1]) if line.startswith("== ")]


def test_bench_layers_tiny_all_cells():
    cells = ["lstm"] + [c for c, cls in (("gru", "GRU"), ("rnn", "RNN")) if hasattr(fusedrnn, cls)]
    out = _run("--cells", ",".join(cells))

    headers = _table_headers(out)
    assert len(headers) == 2, f"expected a forward and a forward+backward table:\n{out}"
    impls = ["torch", "fusedrnn", "reference"]
    fast = getattr(fusedrnn._C, "cpu_fast_step_available", lambda: False)()
    if fast:
        impls.append("fusedrnn-generic")
    for header in headers:
        for name in impls:
            assert f" {name} ms" in header, f"{name} missing from the table header:\n{out}"
    # One row per cell in each table.
    rows = [line.split() for line in out.splitlines() if line.startswith("tiny ")]
    assert sorted(r[1] for r in rows) == sorted(2 * [c.upper() for c in cells]), out
    for r in rows:
        assert "-" not in r[2:], f"an implementation has no result in this row: {r}\n{out}"

    try:
        import flashrnn  # noqa: F401
    except ImportError:
        assert "peer flashrnn: not installed, skipped" in out, out


def test_bench_layers_impls_selection():
    """--impls picks columns; the baseline is always there."""
    out = _run("--cells", "lstm", "--impls", "fusedrnn", "--modes", "fwd")
    headers = _table_headers(out)
    assert len(headers) == 1
    assert " torch ms" in headers[0] and " fusedrnn ms" in headers[0]
    assert "reference ms" not in headers[0] and "generic" not in headers[0]


def test_fast_step_switch_restores_on_exception():
    """The generic-step row switches the fused CPU kernels off around each call
    and must restore the previous setting, also when the call raises."""
    if not hasattr(fusedrnn._C, "set_cpu_fast_step_enabled"):
        pytest.skip("this fusedrnn has no switch for its CPU step kernels")
    spec = importlib.util.spec_from_file_location("bench_layers", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    before = fusedrnn._C.cpu_fast_step_enabled()
    try:
        for start in (True, False):
            fusedrnn._C.set_cpu_fast_step_enabled(start)
            scope = bench.fast_step_switch(fusedrnn, not start)
            with pytest.raises(RuntimeError):
                with scope():
                    assert fusedrnn._C.cpu_fast_step_enabled() == (not start)
                    raise RuntimeError("boom")
            assert fusedrnn._C.cpu_fast_step_enabled() == start
    finally:
        fusedrnn._C.set_cpu_fast_step_enabled(before)


VARIANT_OTHERS = {"persistent_bwd_split": ("auto", "on"),
                  "persistent_cta_epilogue": ("auto", "off", "on"),
                  "persistent_threads": ("auto", "256", "512"),
                  "persistent_fwd_task_units": ("auto", "1", "2", "regs")}


@pytest.mark.parametrize("name,pinned", [
    ("fusedrnn-persistent-nosplit", {"persistent_bwd_split": "off"}),
    ("fusedrnn-persistent-base", {"persistent_threads": "256", "persistent_cta_epilogue": "off"}),
    ("fusedrnn-persistent-ctaepi", {"persistent_threads": "256", "persistent_cta_epilogue": "on"}),
    ("fusedrnn-persistent-wide", {"persistent_threads": "512", "persistent_cta_epilogue": "off"}),
    ("fusedrnn-persistent-wide-ctaepi",
     {"persistent_threads": "512", "persistent_cta_epilogue": "on"}),
    ("fusedrnn-persistent-pairs", {"persistent_threads": "256", "persistent_cta_epilogue": "on",
                                   "persistent_fwd_task_units": "2"}),
    ("fusedrnn-persistent-wide-pairs", {"persistent_threads": "512",
                                        "persistent_cta_epilogue": "on",
                                        "persistent_fwd_task_units": "2"}),
    ("fusedrnn-persistent-regs", {"persistent_threads": "256", "persistent_cta_epilogue": "on",
                                  "persistent_fwd_task_units": "regs"}),
])
def test_persistent_variant_impl_scope_and_not_default(name, pinned):
    """The persistent-tier variants run only when named, and each one's scope
    pins every option it names (whatever the option was before: auto or
    another value) and the persistent tier for the call, and restores them
    all afterwards, also when the call raises."""
    spec = importlib.util.spec_from_file_location("bench_layers", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    impl = bench.IMPLS[name]
    assert not impl.in_default and bench.IMPLS["fusedrnn-persistent"].in_default

    class Ctx:
        fusedrnn = globals()["fusedrnn"]

    names = ["cuda_tier"] + list(pinned)
    before = {n: fusedrnn.get_option(n) for n in names}
    try:
        for k in range(3):  # every option at auto, then at its other values
            prev = {o: VARIANT_OTHERS[o][min(k, len(VARIANT_OTHERS[o]) - 1)] for o in pinned}
            for o, v in prev.items():
                fusedrnn.set_option(o, v)
            scope = impl.scope(Ctx())
            with pytest.raises(RuntimeError):
                with scope():
                    assert {o: fusedrnn.get_option(o) for o in pinned} == pinned
                    assert fusedrnn.get_option("cuda_tier") == "persistent"
                    raise RuntimeError("boom")
            assert {o: fusedrnn.get_option(o) for o in pinned} == prev
            assert fusedrnn.get_option("cuda_tier") == before["cuda_tier"]
    finally:
        for n, v in before.items():
            fusedrnn.set_option(n, v)


def test_layer_scaling_table():
    """scaling_rows: each implementation's time at a sweep's largest L over its
    time at the smallest, per cell and mode; configurations outside a sweep
    and implementations missing a depth are left out."""
    spec = importlib.util.spec_from_file_location("bench_layers", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def row(config, L, impl, ms, mode="fwd"):
        return {"config": config, "L": L, "cell": "lstm", "mode": mode, "impl": impl,
                "median_ms": ms}
    rows = [row("d2l-L1", 1, "torch", 1.0), row("d2l", 2, "torch", 2.0),
            row("d2l-L8", 8, "torch", 6.0), row("d2l-L1", 1, "fusedrnn", 0.5),
            row("d2l-L8", 8, "fusedrnn", 1.5), row("d2l-L8", 8, "reference", 9.0),
            row("d2l-L1", 1, "fusedrnn", 2.0, "fwdbwd"), row("d2l-L8", 8, "fusedrnn", 5.0, "fwdbwd"),
            row("fastrnns", 1, "torch", 3.0)]
    header, body = bench.scaling_rows(rows, ["torch", "fusedrnn", "reference"])
    assert header == ["sweep", "cell", "mode", "L", "torch", "fusedrnn"]
    assert body == [["d2l", "LSTM", "fwd", "8/1", "6.00", "3.00"],
                    ["d2l", "LSTM", "fwdbwd", "8/1", "-", "2.50"]]
    assert bench.scaling_rows(rows[:1], ["torch"])[1] == []
