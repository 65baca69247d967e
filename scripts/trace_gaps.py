"""Where a call's GPU waits: busy time, idle gaps and the host ops behind them.

Reads a Chrome trace that torch.profiler wrote (profile_step.py --trace) and,
for every profiled call (a `record_function` range named --call, which
profile_step.py puts around each call), reports:

  * host lead: from the start of the call to the start of its first GPU
    operation (the GPU is idle that long however fast the kernels are);
  * GPU span: from its first GPU operation's start to its last one's end, and
    how much of that span some GPU operation (kernel, memcpy, memset) ran;
  * idle gaps inside the span longer than --min-gap microseconds, each with the
    operation that ended it, the host op that launched that operation
    (innermost profiled CPU op around the launch call) and whether the launch
    came after the gap had begun (host-bound: the GPU waited for the host) or
    before (the wait was on the GPU side, e.g. a kernel's launch latency).

GPU operations belong to the call during which they were launched (matched to
their launch calls by the profiler's correlation ids), so work that runs after
the call's host code has returned still counts to it.  The summary gives the
median over calls and the gaps grouped by (host op, GPU op), median per call.

    python scripts/trace_gaps.py trace.json [--call NAME] [--min-gap 2] [--top 12]

Plain Python (json, statistics), so the CPU tests check it on synthetic traces.
"""
import argparse
import json
import statistics
from collections import defaultdict

CALL_NAME = "fusedrnn.profile_step.call"
GPU_CATS = ("kernel", "gpu_memcpy", "gpu_memset")
LAUNCH_CATS = ("cuda_runtime", "cuda_driver")


def load_events(path):
    with open(path) as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


def _complete(events, cats):
    """The complete ('X') events of these categories, sorted by start."""
    out = [e for e in events
           if e.get("ph") == "X" and e.get("cat") in cats and "ts" in e and "dur" in e]
    out.sort(key=lambda e: float(e["ts"]))
    return out


def _corr(e):
    return (e.get("args") or {}).get("correlation")


def _short(name, width=60):
    name = " ".join(str(name).split())
    return name if len(name) <= width else name[: width - 3] + "..."


def _innermost_op(ops_by_tid, tid, ts):
    """The shortest CPU op on thread `tid` whose interval holds `ts` (None if none)."""
    best = None
    for op in ops_by_tid.get(tid, ()):
        t0 = float(op["ts"])
        if t0 > ts:
            break
        if t0 <= ts <= t0 + float(op["dur"]):
            if best is None or float(op["dur"]) <= float(best["dur"]):
                best = op
    return best


def _merge(intervals):
    """Union of (start, end) intervals, sorted and merged."""
    merged = []
    for s, e in sorted(intervals):
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    return merged


def analyze(events, call_name=CALL_NAME, min_gap_us=2.0):
    """One dict per profiled call (see the module docstring); [] without calls."""
    calls = [e for e in _complete(events, ("user_annotation",)) if e.get("name") == call_name]
    gpu = _complete(events, GPU_CATS)
    launches = {}
    for e in _complete(events, LAUNCH_CATS):
        c = _corr(e)
        if c is not None:
            launches.setdefault(c, e)
    ops_by_tid = defaultdict(list)
    for e in _complete(events, ("cpu_op",)):
        ops_by_tid[e.get("tid")].append(e)

    results = []
    for call in calls:
        c0 = float(call["ts"])
        c1 = c0 + float(call["dur"])
        mine = []
        for g in gpu:
            launch = launches.get(_corr(g))
            when = float(launch["ts"]) if launch is not None else float(g["ts"])
            if c0 <= when <= c1:
                mine.append((g, launch))
        r = {"call_us": c1 - c0, "gpu_ops": len(mine), "gaps": []}
        if not mine:
            results.append(r)
            continue
        first = min(float(g["ts"]) for g, _ in mine)
        last = max(float(g["ts"]) + float(g["dur"]) for g, _ in mine)
        busy = _merge([(float(g["ts"]), float(g["ts"]) + float(g["dur"])) for g, _ in mine])
        r.update(host_lead_us=first - c0, gpu_span_us=last - first,
                 gpu_busy_us=sum(e - s for s, e in busy), end_us=last - c0)
        r["gpu_idle_us"] = r["gpu_span_us"] - r["gpu_busy_us"]
        starts = sorted(mine, key=lambda gl: float(gl[0]["ts"]))
        for (s0, e0), (s1, _) in zip(busy, busy[1:]):
            gap = s1 - e0
            if gap < min_gap_us:
                continue
            # The GPU operation that ended the gap, and what launched it.
            g, launch = next(gl for gl in starts if float(gl[0]["ts"]) >= s1)
            host_op, host_bound = None, None
            if launch is not None:
                op = _innermost_op(ops_by_tid, launch.get("tid"), float(launch["ts"]))
                host_op = op["name"] if op is not None else launch.get("name")
                host_bound = float(launch["ts"]) >= e0
            r["gaps"].append({"us": gap, "gpu_op": g.get("name"), "host_op": host_op,
                              "host_bound": host_bound})
        results.append(r)
    return results


def summarize(results, top=12, call_name=CALL_NAME):
    """Text: medians over the calls, then the gap groups by median idle per call."""
    timed = [r for r in results if r["gpu_ops"]]
    if not results:
        return f"trace_gaps: no profiled calls in the trace (no record_function ranges {call_name!r})"
    if not timed:
        return (f"trace_gaps: {len(results)} calls, none with GPU operations "
                "(a CPU-only trace?)")

    def med(key):
        return statistics.median(r[key] for r in timed)

    lines = [
        f"trace_gaps: {len(timed)} calls; medians in us: host lead {med('host_lead_us'):.1f}, "
        f"GPU span {med('gpu_span_us'):.1f}, GPU busy {med('gpu_busy_us'):.1f}, "
        f"GPU idle inside the span {med('gpu_idle_us'):.1f}, call start to last GPU end "
        f"{med('end_us'):.1f}, GPU ops per call {statistics.median(r['gpu_ops'] for r in timed):.0f}"
    ]
    groups = defaultdict(lambda: [[] for _ in timed])
    for i, r in enumerate(timed):
        for gp in r["gaps"]:
            key = (gp["host_op"] or "?", _short(gp["gpu_op"]),
                   {True: "host-bound", False: "GPU-side", None: "?"}[gp["host_bound"]])
            groups[key][i].append(gp["us"])
    if not groups:
        lines.append("  no idle gaps above the threshold")
        return "\n".join(lines)
    rows = []
    for key, per_call in groups.items():
        totals = [sum(v) for v in per_call]
        counts = [len(v) for v in per_call]
        rows.append((statistics.median(totals), statistics.median(counts), key))
    rows.sort(key=lambda x: -x[0])
    lines.append("  idle gaps by (host op that launched the next GPU op, that op, kind): "
                 "median us per call, median count per call")
    for total, count, (host_op, gpu_op, kind) in rows[:top]:
        lines.append(f"  - {total:.1f} us in {count:.0f} gap(s): {_short(host_op, 40)} -> {gpu_op} "
                     f"[{kind}]")
    if len(rows) > top:
        lines.append(f"  ({len(rows) - top} more groups)")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("trace")
    p.add_argument("--call", default=CALL_NAME, help="record_function name of one call")
    p.add_argument("--min-gap", type=float, default=2.0, help="smallest gap reported, us")
    p.add_argument("--top", type=int, default=12)
    a = p.parse_args(argv)
    print(summarize(analyze(load_events(a.trace), a.call, a.min_gap), a.top, a.call))


if __name__ == "__main__":
    main()
