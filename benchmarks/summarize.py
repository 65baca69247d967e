"""One table from several runs of bench_layers.py on the same machine.

    python benchmarks/summarize.py RUN1.json RUN2.json RUN3.json [--impl fusedrnn]

For every configuration, cell and mode measured in all the runs: torch's and
the implementation's time (the median over the runs of each run's median),
the speedup over torch (median over the runs, and the lowest and highest run),
the implementation's matrix-product GFLOP/s and, on the CPU, its share of the
measured FMA peak, and torch's GFLOP/s.  Prints Markdown, headed by the runs' device, dates,
versions and commits; the README's result tables are this output.
"""
import argparse
import json
import statistics


def load(paths):
    runs = []
    for p in paths:
        with open(p) as f:
            runs.append(json.load(f))
    return runs


def header(runs):
    metas = [r["meta"] for r in runs]
    m = metas[0]
    peaks = [mm["cpu_peak"]["gflops"] for mm in metas if mm.get("cpu_peak")]
    lines = [
        f"- device: {m['device_name']}" + (f", torch threads {m['num_threads']}"
                                            if m["device_type"] == "cpu" else ""),
        f"- runs: {len(runs)}, " + ", ".join(mm["date"] for mm in metas),
        f"- torch {m['torch']}, Python {m['python']}, dtype {m['dtype']}",
        "- fusedrnn commit: " + ", ".join(sorted({mm["git"] for mm in metas})),
    ]
    if peaks:
        lines.append("- measured FMA peak (benchmarks/cpu_peak.py, each run): "
                     + ", ".join(f"{p:.0f}" for p in peaks) + " GFLOP/s")
    return lines


def table(runs, impl):
    keys = []
    per_run = []
    for r in runs:
        by = {}
        for row in r["results"]:
            k = (row["config"], row["cell_label"], row["mode"])
            by.setdefault(k, {})[row["impl"]] = row
            if k not in keys:
                keys.append(k)
        per_run.append(by)
    cpu = runs[0]["meta"]["device_type"] == "cpu"
    head = ["config", "cell", "B", "T", "I", "H", "L", "mode", "torch ms", f"{impl} ms",
            "x torch (median)", "x torch (runs' range)", f"{impl} GFLOP/s"]
    if cpu:
        head.append(f"{impl} % peak")
    head.append("torch GFLOP/s")
    body = []
    for k in keys:
        rows = [by[k] for by in per_run if k in by and impl in by[k] and "torch" in by[k]]
        if len(rows) < len(runs):
            continue
        ratios = [r[impl]["speedup_vs_torch"] for r in rows]
        mine = rows[0][impl]
        line = [k[0], k[1]] + [str(mine[d]) for d in "BTIHL"] + [
            "fwd" if k[2] == "fwd" else "fwd+bwd",
            f"{statistics.median(r['torch']['median_ms'] for r in rows):.3f}",
            f"{statistics.median(r[impl]['median_ms'] for r in rows):.3f}",
            f"{statistics.median(ratios):.2f}",
            f"{min(ratios):.2f}-{max(ratios):.2f}",
            f"{statistics.median(r[impl]['gflops'] for r in rows):.0f}",
        ]
        if cpu:
            shares = [r[impl].get("peak_share") for r in rows]
            line.append(f"{100 * statistics.median(shares):.0f}" if all(shares) else "-")
        line.append(f"{statistics.median(r['torch']['gflops'] for r in rows):.0f}")
        body.append(line)
    out = ["| " + " | ".join(head) + " |",
           "|" + "|".join("---" if i < 2 or i == 7 else "---:" for i in range(len(head))) + "|"]
    out += ["| " + " | ".join(b) + " |" for b in body]
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", help="bench_layers.py JSON result files")
    p.add_argument("--impl", default="fusedrnn", help="implementation compared with torch")
    args = p.parse_args()
    runs = load(args.results)
    print("\n".join(header(runs) + [""] + table(runs, args.impl)))


if __name__ == "__main__":
    main()
