"""scripts/trace_gaps.py: GPU busy time and idle gaps per profiled call, from a
torch.profiler Chrome trace.  CPU only: synthetic traces with GPU events, and a
real CPU-only trace for the file format."""
import importlib.util
import json
import os

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "trace_gaps", os.path.join(ROOT, "scripts", "trace_gaps.py"))
trace_gaps = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(trace_gaps)


def X(cat, name, ts, dur, tid=1, corr=None):
    e = {"ph": "X", "cat": cat, "name": name, "pid": 7, "tid": tid, "ts": ts, "dur": dur,
         "args": {}}
    if corr is not None:
        e["args"]["correlation"] = corr
    return e


def one_call(t0, corr0):
    """A call at t0: a GEMM, a persistent kernel launched late (host-bound gap),
    a reduction 1 us later (below the threshold) and a kernel launched early that
    starts 10 us after the previous one ended (a GPU-side gap)."""
    c = corr0
    return [
        X("user_annotation", trace_gaps.CALL_NAME, t0, 100),
        X("cpu_op", "fusedrnn::lstm_forward", t0 + 5, 60),
        X("cpu_op", "aten::mm", t0 + 10, 10),
        X("cuda_runtime", "cudaLaunchKernel", t0 + 15, 3, corr=c),
        X("kernel", "gemm", t0 + 20, 5, tid=0, corr=c),
        X("cuda_runtime", "cudaLaunchCooperativeKernel", t0 + 40, 5, corr=c + 1),
        X("kernel", "lstm_persistent_fwd", t0 + 50, 200, tid=0, corr=c + 1),
        X("cpu_op", "aten::sum", t0 + 70, 10, tid=2),
        X("cuda_driver", "cuLaunchKernel", t0 + 72, 2, tid=2, corr=c + 2),
        X("kernel", "reduce", t0 + 251, 4, tid=0, corr=c + 2),
        X("cpu_op", "aten::mm", t0 + 73, 5, tid=2),
        X("cuda_runtime", "cudaLaunchKernel", t0 + 74, 1, tid=2, corr=c + 3),
        X("kernel", "gemm2", t0 + 265, 5, tid=0, corr=c + 3),
    ]


def test_one_call_numbers_and_gaps():
    (r,) = trace_gaps.analyze(one_call(0.0, 1))
    assert r["gpu_ops"] == 4
    assert r["host_lead_us"] == pytest.approx(20)
    assert r["gpu_span_us"] == pytest.approx(250)       # 20 .. 270
    assert r["gpu_busy_us"] == pytest.approx(5 + 200 + 4 + 5)
    assert r["gpu_idle_us"] == pytest.approx(25 + 1 + 10)
    assert r["end_us"] == pytest.approx(270)
    gaps = r["gaps"]
    assert [g["us"] for g in gaps] == pytest.approx([25, 10])   # the 1 us gap is below 2
    assert gaps[0] == {"us": pytest.approx(25), "gpu_op": "lstm_persistent_fwd",
                       "host_op": "fusedrnn::lstm_forward", "host_bound": True}
    # Launched on another thread (the backward's) inside aten::mm, before the gap.
    assert gaps[1]["host_op"] == "aten::mm" and gaps[1]["host_bound"] is False


def test_min_gap_threshold_and_work_outside_calls():
    events = one_call(0.0, 1) + [
        X("cuda_runtime", "cudaLaunchKernel", 500, 2, corr=99),  # no call around it
        X("kernel", "stray", 600, 50, tid=0, corr=99),
    ]
    (r,) = trace_gaps.analyze(events, min_gap_us=0.5)
    assert r["gpu_ops"] == 4
    assert [g["us"] for g in r["gaps"]] == pytest.approx([25, 1, 10])


def test_summary_groups_gaps_by_ops_over_calls():
    events = one_call(0.0, 1) + one_call(1000.0, 11) + one_call(2000.0, 21)
    results = trace_gaps.analyze(events)
    assert len(results) == 3
    text = trace_gaps.summarize(results)
    assert "3 calls" in text and "host lead 20.0" in text and "GPU busy 214.0" in text
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if "idle gaps by" in line)
    assert "fusedrnn::lstm_forward -> lstm_persistent_fwd [host-bound]" in lines[first + 1]
    assert lines[first + 1].startswith("  - 25.0 us in 1 gap(s): ")
    assert "aten::mm -> gemm2 [GPU-side]" in lines[first + 2]


def test_messages_without_calls_or_gpu_events():
    assert "no profiled calls" in trace_gaps.summarize(trace_gaps.analyze([]))
    cpu_only = [X("user_annotation", trace_gaps.CALL_NAME, 0, 10), X("cpu_op", "aten::mm", 1, 2)]
    assert "none with GPU operations" in trace_gaps.summarize(trace_gaps.analyze(cpu_only))


def test_reads_a_real_profiler_trace(tmp_path):
    """The format torch.profiler writes: the calls are found (a CPU run has no
    GPU operations, so it says so)."""
    from torch.profiler import ProfilerActivity, profile, record_function
    x = torch.randn(4, 4)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            with record_function(trace_gaps.CALL_NAME):
                torch.mm(x, x)
    path = tmp_path / "trace.json"
    prof.export_chrome_trace(str(path))
    results = trace_gaps.analyze(trace_gaps.load_events(str(path)))
    assert len(results) == 2 and all(r["gpu_ops"] == 0 for r in results)
    assert "2 calls, none with GPU operations" in trace_gaps.summarize(results)
    # The command line prints the same.
    import subprocess
    import sys
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "trace_gaps.py"),
                          str(path)], capture_output=True, text=True, check=True).stdout
    assert "none with GPU operations" in out
