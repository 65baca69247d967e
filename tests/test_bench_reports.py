"""The benchmark's arithmetic, without timing anything: bench_layers.py's FLOP
count of a call (the GFLOP/s and % peak columns) and summarize.py's table
over several runs."""
import importlib.util
import os

import pytest

from conftest import ROOT


def _load(name):
    path = os.path.join(ROOT, "benchmarks", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bench = _load("bench_layers")
summarize = _load("summarize")


def test_flop_count_of_the_d2l_lstm():
    """DESIGN.md's figures: forward about 1.8 GFLOP, forward+backward 5.4."""
    cfg = bench.CONFIGS["d2l"]
    fwd = bench.model_gflop(cfg, "fwd")
    # Σ_l 2·T·B·4H·(I_l + H): 2·35·32·1024·(28 + 256) + 2·35·32·1024·(256 + 256)
    assert fwd == pytest.approx(2 * 35 * 32 * 1024 * (284 + 512) / 1e9)
    assert bench.model_gflop(cfg, "fwdbwd") == pytest.approx(3 * fwd)


@pytest.mark.parametrize("cell,gates", [("gru", 3), ("rnn", 1)])
def test_flop_count_scales_with_the_gate_blocks(cell, gates):
    lstm = bench.model_gflop(bench.CONFIGS["d2l"], "fwd")
    other = bench.dataclasses.replace(bench.CONFIGS["d2l"], cell=cell)
    assert bench.model_gflop(other, "fwd") == pytest.approx(lstm * gates / 4)


def test_flop_count_bidirectional_doubles_and_widens_upper_inputs():
    cfg = bench.dataclasses.replace(bench.CONFIGS["d2l-bidir"], cell="lstm-bidir")
    T, B, I, H = cfg.T, cfg.B, cfg.I, cfg.H
    want = 2 * (2 * T * B * 4 * H * (I + H) + 2 * T * B * 4 * H * (2 * H + H))
    assert bench.model_gflop(cfg, "fwd") == pytest.approx(want / 1e9)


def _run(date, peak, ratios):
    rows = []
    for (cfg, mode), (torch_ms, fused_ms) in ratios.items():
        shape = dict(B=2, T=3, I=4, H=5, L=1)
        for impl, ms in (("torch", torch_ms), ("fusedrnn", fused_ms)):
            rows.append({"config": cfg, "cell_label": "LSTM", "mode": mode, "impl": impl,
                         **shape, "median_ms": ms, "gflops": 10.0 / ms,
                         "peak_share": 10.0 / ms / peak,
                         "speedup_vs_torch": torch_ms / ms})
    meta = {"device_name": "cpu X", "device_type": "cpu", "num_threads": 2, "date": date,
            "torch": "2.x", "python": "3.x", "dtype": "float32", "git": "abc1234",
            "cpu_peak": {"gflops": peak}}
    return {"meta": meta, "results": rows}


def test_summary_takes_medians_and_ranges_over_runs():
    runs = [_run("d1", 100.0, {("a", "fwd"): (2.0, 1.0)}),
            _run("d2", 100.0, {("a", "fwd"): (3.0, 1.0)}),
            _run("d3", 100.0, {("a", "fwd"): (4.0, 2.0)})]
    lines = summarize.table(runs, "fusedrnn")
    assert len(lines) == 3
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    # torch ms, fusedrnn ms, x median, range, GFLOP/s, % peak, torch GFLOP/s
    assert cells[8:] == ["3.000", "1.000", "2.00", "2.00-3.00", "10", "10", "3"]
    assert "- runs: 3, d1, d2, d3" in summarize.header(runs)


def test_summary_leaves_out_rows_missing_from_a_run():
    runs = [_run("d1", 100.0, {("a", "fwd"): (2.0, 1.0), ("b", "fwd"): (2.0, 1.0)}),
            _run("d2", 100.0, {("a", "fwd"): (2.0, 1.0)})]
    body = summarize.table(runs, "fusedrnn")[2:]
    assert [r.split("|")[1].strip() for r in body] == ["a"]
