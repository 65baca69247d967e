#!/usr/bin/env python
"""Issue 4's targets, read from benchmarks/bench_layers.py result files.

    python scripts/targets.py benchmarks/results/cuda-nvidia-h200_2026-12-04.json
    python scripts/targets.py OUT/results OUT/results_variants ...   # folders: every *.json

For each result file (one bench_layers.py run: one device, dtype and TF32
policy) and each fusedrnn implementation in it (the LSTM rows), one line with
the figures the persistent-tier issue sets targets for, each marked against
its target ("ok" met, "NO" not met, "-" not in this file):

  * d2l fwd / fwdbwd: speedup over torch.nn.LSTM at the D2L size (config
    "d2l": B32 T35 I28 H256 L2), target >= 3;
  * small fwd / fwdbwd: the same at the small-batch size (config
    "small-batch"), target >= 3 (the issue asks it of bfloat16);
  * L8/L1: forward time at D2L with 8 layers over 1 layer ("d2l-L8" /
    "d2l-L1"), target <= 2.5 (torch's own ratio is printed beside it);
  * x floor: the D2L forward over the empty wavefront's time measured in the
    same run (the "wavefront_floor_ms" of the d2l forward rows), target <= 3.

Nothing here is measured: it only reads what the benchmark wrote.
"""
import argparse
import glob
import json
import os
import sys

BASELINE = "torch"
TARGETS = {  # name: (threshold, higher is better)
    "d2l fwd": (3.0, True),
    "d2l fwdbwd": (3.0, True),
    "small fwd": (3.0, True),
    "small fwdbwd": (3.0, True),
    "L8/L1": (2.5, False),
    "x floor": (3.0, False),
}


def result_files(paths):
    """The .json files named, and every .json file in the folders named, in order."""
    out = []
    for p in paths:
        if os.path.isdir(p):
            out += sorted(glob.glob(os.path.join(p, "*.json")))
        else:
            out.append(p)
    return out


def _row(rows, config, impl, mode):
    for r in rows:
        if (r.get("config") == config and r.get("impl") == impl and r.get("mode") == mode
                and r.get("cell", "lstm") == "lstm" and r.get("median_ms")):
            return r
    return None


def figures(results, impl):
    """The target figures of one implementation in one file's result rows (None: absent)."""
    def speedup(config, mode):
        mine, base = _row(results, config, impl, mode), _row(results, config, BASELINE, mode)
        return base["median_ms"] / mine["median_ms"] if mine and base else None

    def layer_ratio(name):
        l8, l1 = _row(results, "d2l-L8", name, "fwd"), _row(results, "d2l-L1", name, "fwd")
        return l8["median_ms"] / l1["median_ms"] if l8 and l1 else None

    d2l = _row(results, "d2l", impl, "fwd")
    floor = None
    if d2l:
        f = d2l.get("wavefront_floor_ms") or next(
            (r.get("wavefront_floor_ms") for r in results
             if r.get("config") == "d2l" and r.get("mode") == "fwd"
             and r.get("wavefront_floor_ms")), None)
        floor = d2l["median_ms"] / f if f else None
    return {
        "d2l fwd": speedup("d2l", "fwd"),
        "d2l fwdbwd": speedup("d2l", "fwdbwd"),
        "small fwd": speedup("small-batch", "fwd"),
        "small fwdbwd": speedup("small-batch", "fwdbwd"),
        "L8/L1": layer_ratio(impl),
        "x floor": floor,
        "torch L8/L1": layer_ratio(BASELINE),
    }


def verdict(name, value):
    if value is None:
        return "-"
    threshold, higher = TARGETS[name]
    met = value >= threshold if higher else value <= threshold
    return f"{value:.2f} {'ok' if met else 'NO'}"


def report(path):
    """The lines for one result file."""
    with open(path) as f:
        data = json.load(f)
    meta, results = data.get("meta", {}), data.get("results", [])
    tf32 = "TF32 on" if meta.get("allow_tf32_cudnn") or meta.get("allow_tf32_matmul") else "TF32 off"
    lines = [f"{os.path.basename(path)}: {meta.get('device_name', '?')}, {meta.get('dtype', '?')}, "
             f"{tf32}, {meta.get('date', '?')}, git {meta.get('git', '?')}"]
    impls = [i for i in dict.fromkeys(r.get("impl") for r in results if r.get("cell", "lstm") == "lstm")
             if i and i.startswith("fusedrnn")]
    if not impls:
        return lines + ["  (no fusedrnn LSTM rows)"]
    names = list(TARGETS)
    width = max(len(i) for i in impls)
    lines.append("  " + "impl".ljust(width) + "".join(f"  {n:>13}" for n in names)
                 + "  torch L8/L1")
    for impl in impls:
        fig = figures(results, impl)
        torch_ratio = fig["torch L8/L1"]
        tail = f"{torch_ratio:11.2f}" if torch_ratio is not None else f"{'-':>11}"
        lines.append("  " + impl.ljust(width)
                     + "".join(f"  {verdict(n, fig[n]):>13}" for n in names) + "  " + tail)
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("paths", nargs="+", help="bench_layers.py .json result files or folders of them")
    args = p.parse_args(argv)
    files = result_files(args.paths)
    if not files:
        print("targets: no result files found in " + ", ".join(args.paths), file=sys.stderr)
        return 1
    targets = ", ".join(f"{n} {'>=' if hi else '<='} {t:g}" for n, (t, hi) in TARGETS.items())
    print(f"issue 4 targets ({targets}); ok = met, NO = not met, - = not in the file")
    for path in files:
        try:
            print("\n".join(report(path)))
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"{os.path.basename(path)}: unreadable ({type(e).__name__}: {e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
