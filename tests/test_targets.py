"""scripts/targets.py: issue 4's target figures read from bench_layers.py result
files.  CPU only: synthetic result files with known medians."""
import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("targets", os.path.join(ROOT, "scripts", "targets.py"))
targets = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(targets)


def row(config, impl, mode, ms, **extra):
    return dict(config=config, impl=impl, mode=mode, cell="lstm", median_ms=ms, **extra)


def results():
    return [
        row("d2l", "torch", "fwd", 1.8, wavefront_floor_ms=0.04),
        row("d2l", "fusedrnn", "fwd", 0.36, wavefront_floor_ms=0.04, x_floor=9.0),
        row("d2l", "fusedrnn-slow", "fwd", 0.9),   # no floor on its row: the config's
        row("d2l", "torch", "fwdbwd", 4.0),
        row("d2l", "fusedrnn", "fwdbwd", 1.6),      # 2.5x: not met
        row("d2l", "fusedrnn-slow", "fwdbwd", 1.0),
        row("d2l-L1", "torch", "fwd", 0.8),
        row("d2l-L1", "fusedrnn", "fwd", 0.3),
        row("d2l-L8", "torch", "fwd", 4.4),
        row("d2l-L8", "fusedrnn", "fwd", 0.72),     # 2.4: met
        row("d2l-L1", "fusedrnn-slow", "fwd", 0.3),
        row("d2l-L8", "fusedrnn-slow", "fwd", 0.9),  # 3.0: not met
        # another cell's rows must not count
        dict(config="small-batch", impl="fusedrnn", mode="fwd", cell="gru", median_ms=0.01),
        dict(config="small-batch", impl="torch", mode="fwd", cell="gru", median_ms=1.0),
    ]


def test_figures_against_hand_computed_values():
    fig = targets.figures(results(), "fusedrnn")
    assert fig["d2l fwd"] == pytest.approx(5.0)
    assert fig["d2l fwdbwd"] == pytest.approx(2.5)
    assert fig["L8/L1"] == pytest.approx(2.4)
    assert fig["x floor"] == pytest.approx(9.0)
    assert fig["torch L8/L1"] == pytest.approx(5.5)
    assert fig["small fwd"] is None and fig["small fwdbwd"] is None  # only GRU rows there
    slow = targets.figures(results(), "fusedrnn-slow")
    assert slow["d2l fwd"] == pytest.approx(2.0)
    assert slow["x floor"] == pytest.approx(0.9 / 0.04)   # the floor of the config's rows
    assert slow["L8/L1"] == pytest.approx(3.0)


@pytest.mark.parametrize("name,value,want", [
    ("d2l fwd", 3.0, "3.00 ok"), ("d2l fwd", 2.99, "2.99 NO"),
    ("L8/L1", 2.5, "2.50 ok"), ("L8/L1", 2.51, "2.51 NO"),
    ("x floor", 10.9, "10.90 NO"), ("small fwd", None, "-"),
])
def test_verdict_thresholds(name, value, want):
    assert targets.verdict(name, value) == want


def test_report_of_files_and_folders(tmp_path, capsys):
    meta = {"device_name": "Test GPU", "dtype": "float32", "allow_tf32_cudnn": True,
            "date": "2026-12-05", "git": "abc1234"}
    (tmp_path / "a.json").write_text(json.dumps({"meta": meta, "results": results()}))
    (tmp_path / "notes.txt").write_text("not a result file")
    (tmp_path / "bad.json").write_text("{")
    assert targets.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "a.json: Test GPU, float32, TF32 on, 2026-12-05, git abc1234" in out
    line = next(l for l in out.splitlines() if l.strip().startswith("fusedrnn "))
    assert line.split()[1:] == ["5.00", "ok", "2.50", "NO", "-", "-", "2.40", "ok", "9.00", "NO",
                                "5.50"]
    assert "bad.json: unreadable" in out
    assert "notes.txt" not in out


def test_no_files_is_an_error(tmp_path, capsys):
    assert targets.main([str(tmp_path)]) == 1
    assert "no result files" in capsys.readouterr().err
