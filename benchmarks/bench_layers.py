#!/usr/bin/env python3
"""Stacked-LSTM benchmark: fusedrnn.LSTM against torch.nn.LSTM and the reference.

Run from the repository root:

    python benchmarks/bench_layers.py            # default sweep on the best device
    python benchmarks/bench_layers.py --quick    # a small, fast smoke run
    python benchmarks/bench_layers.py --list-configs

Protocol (see DESIGN.md, "Benchmark protocol"):
  * every implementation runs in this one process on the same inputs and the
    same weights (fusedrnn.LSTM loads torch.nn.LSTM's state_dict; the reference
    gets copies of the same tensors);
  * forward is timed under torch.no_grad() with the modules in training mode;
    forward+backward back-propagates fixed random gradients into the output,
    h_n and c_n, with input, h_0 and c_0 requiring grad and every .grad reset
    to None (untimed) before each run;
  * warm-up first, then measurement rounds that interleave the implementations
    (A,B,C, B,C,A, C,A,B, ...: the order rotates so no one always runs first),
    and the median is reported;
  * on CUDA each run is timed with a pair of CUDA events after a synchronize,
    and the peak memory of each implementation is measured separately; on the
    CPU each run is timed with time.perf_counter;
  * "x torch" is t_torch / t_impl: above 1 means faster than torch.nn.LSTM
    (cuDNN on CUDA, PyTorch's own kernels on the CPU).

Results go to --out (default benchmarks/results) as <device-slug>_<date>.json
and .md, plus a PNG of time against layers when matplotlib is importable.

Adding a configuration: add an entry to CONFIGS.  Adding an implementation or
a variant of one (a kernel tier, say): add an Impl to IMPLS.  Adding a cell
type (GRU, RNN): add a Cell to CELLS and give configs cell="gru".
"""
import argparse
import dataclasses
import datetime
import glob
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(ROOT, "benchmarks", "results")


# ----------------------------------------------------------------------------
# Configurations
# ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Config:
    B: int                      # batch
    T: int                      # sequence length
    I: int                      # input size
    H: int                      # hidden size
    L: int                      # layers
    cell: str = "lstm"          # key into CELLS
    devices: Tuple[str, ...] = ("cpu", "cuda")  # default sweeps that include it
    quick: Tuple[str, ...] = ()  # --quick sweeps that include it
    sweep: Optional[str] = None  # layer-sweep group: plotted as time against L
    reference: bool = True       # False: the per-timestep reference is too slow here
    about: str = ""

    def shape(self):
        return dict(B=self.B, T=self.T, I=self.I, H=self.H, L=self.L)


CONFIGS: Dict[str, Config] = {
    # Dive into Deep Learning, deep RNN chapter: 2 layers of 256 on 28 characters.
    # It is also the L=2 point of the d2l layer sweep.
    "d2l-L1": Config(32, 35, 28, 256, 1, sweep="d2l", quick=("cpu",), about="layer sweep"),
    "d2l": Config(32, 35, 28, 256, 2, sweep="d2l", quick=("cpu", "cuda"),
                  about="D2L deep-RNN chapter (= d2l-L2)"),
    # Same shape as d2l; kept so it can be named, left out of the default sweeps.
    "d2l-L2": Config(32, 35, 28, 256, 2, sweep="d2l", devices=(), about="layer sweep (= d2l)"),
    "d2l-L4": Config(32, 35, 28, 256, 4, sweep="d2l", about="layer sweep"),
    "d2l-L8": Config(32, 35, 28, 256, 8, sweep="d2l", quick=("cuda",), about="layer sweep"),
    # GPU sizes (too slow for a 2-core CPU sweep; name them with --configs to run there).
    "fastrnns": Config(64, 100, 512, 512, 1, devices=("cuda",), quick=("cuda",),
                       about="PyTorch fastrnns default"),
    "appleyard": Config(64, 100, 512, 512, 4, devices=("cuda",),
                        about="Appleyard et al. 2016"),
    "large": Config(256, 100, 1024, 1024, 4, devices=("cuda",), about="large"),
    "small-batch": Config(8, 256, 512, 512, 4, devices=("cuda",), about="small-batch latency"),
    "long-seq": Config(16, 1024, 768, 768, 2, devices=("cuda",), reference=False,
                       about="long sequence (reference skipped: 2048 python-level steps)"),
}


# ----------------------------------------------------------------------------
# Cells and implementations (the registry)
# ----------------------------------------------------------------------------

@dataclasses.dataclass
class Cell:
    torch_module: Callable            # (torch) -> nn.Module class
    fused_module: Callable            # (fusedrnn) -> module class
    reference: Callable               # (fusedrnn) -> function(input, hx, weights, **kw)
    n_states: int                     # 2 for LSTM (h, c), 1 for GRU/RNN (h)


CELLS: Dict[str, Cell] = {
    "lstm": Cell(torch_module=lambda torch: torch.nn.LSTM,
                 fused_module=lambda fr: fr.LSTM,
                 reference=lambda fr: fr.reference.lstm,
                 n_states=2),
    # "gru": Cell(lambda torch: torch.nn.GRU, lambda fr: fr.GRU, lambda fr: fr.reference.gru, 1),
}


class Runner:
    """One implementation built for one configuration: call it like nn.LSTM."""

    def __init__(self, fn, params):
        self.fn = fn            # (input, hx) -> (output, states)
        self.params = params    # tensors whose .grad is reset between runs

    def __call__(self, x, hx):
        return self.fn(x, hx)


class Impl:
    """An entry of the registry.  build() returns a Runner or raises.

    headline=False marks a slow implementation that is measured for context
    only: it takes part in fewer of the interleaved rounds, so that it does not
    set the repetition count of the others.
    """
    name = ""
    label = ""
    headline = True

    def build(self, ctx, cfg: Config, base) -> Runner:
        raise NotImplementedError


class TorchImpl(Impl):
    name, label = "torch", "torch.nn.LSTM"

    def build(self, ctx, cfg, base):
        return Runner(lambda x, hx: base(x, hx), list(base.parameters()))


class FusedImpl(Impl):
    """fusedrnn's module.  kwargs go to its constructor (e.g. a future tier=)."""

    def __init__(self, name="fusedrnn", label="fusedrnn.LSTM", **kwargs):
        self.name, self.label, self.kwargs = name, label, kwargs

    def build(self, ctx, cfg, base):
        cls = CELLS[cfg.cell].fused_module(ctx.fusedrnn)
        mod = cls(cfg.I, cfg.H, num_layers=cfg.L, **self.kwargs)
        mod = mod.to(device=ctx.device, dtype=ctx.dtype)
        mod.load_state_dict(base.state_dict())
        mod.train()
        return Runner(lambda x, hx: mod(x, hx), list(mod.parameters()))


class ReferenceImpl(Impl):
    name, label = "reference", "fusedrnn.reference"
    headline = False

    def build(self, ctx, cfg, base):
        if not cfg.reference:
            raise SkipImpl("the per-timestep reference is too slow for this configuration")
        fn = CELLS[cfg.cell].reference(ctx.fusedrnn)
        weights = [w.detach().clone() for w in base._flat_weights]
        for w in weights:
            w.requires_grad_(True)

        def run(x, hx):
            return fn(x, hx, weights, num_layers=cfg.L, has_biases=True,
                      batch_first=False, dropout=0.0, training=True)
        return Runner(run, weights)


class SkipImpl(Exception):
    """An implementation that does not run on a configuration, and why."""


# The order is the column order; "torch" is the baseline and must come first.
IMPLS: Dict[str, Impl] = {
    "torch": TorchImpl(),
    "fusedrnn": FusedImpl(),
    # e.g. "fusedrnn-persistent": FusedImpl("fusedrnn-persistent", "fusedrnn (persistent)",
    #                                       tier="persistent"),
    "reference": ReferenceImpl(),
}
BASELINE = "torch"


# ----------------------------------------------------------------------------
# Environment
# ----------------------------------------------------------------------------

def import_fusedrnn():
    """fusedrnn built in place in this checkout if there is such a build, else the installed one."""
    if glob.glob(os.path.join(ROOT, "fusedrnn", "_C*.so")) or \
            glob.glob(os.path.join(ROOT, "fusedrnn", "_C*.pyd")):
        sys.path.insert(0, ROOT)
    try:
        import fusedrnn
        import fusedrnn.reference  # noqa: F401
    except ImportError as e:
        sys.exit(f"bench_layers: cannot import fusedrnn ({e}).\n"
                 f"Build it first: pip install --no-build-isolation -e .  "
                 f"(or python setup.py build_ext --inplace)")
    return fusedrnn


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def slugify(text):
    text = re.sub(r"\(r\)|\(tm\)|\bcpu\b|\bprocessor\b", " ", text.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "unknown"


def git_revision():
    try:
        rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (rev + ("-dirty" if dirty else "")) if rev else None
    except (OSError, subprocess.SubprocessError):
        return None


def load_average():
    """The 1-minute load average, or None where the OS has none."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def log(msg=""):
    print(msg, flush=True)


class Context:
    def __init__(self, torch, fusedrnn, device, dtype, args):
        self.torch, self.fusedrnn = torch, fusedrnn
        self.device, self.dtype, self.args = device, dtype, args
        self.cuda = device.type == "cuda"

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()


def metadata(ctx):
    torch, fr = ctx.torch, ctx.fusedrnn
    if ctx.cuda:
        name = torch.cuda.get_device_name(ctx.device)
        cap = torch.cuda.get_device_capability(ctx.device)
        slug = "cuda-" + slugify(name)
    else:
        name, cap = cpu_model(), None
        slug = "cpu-" + slugify(name)
    try:
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    except Exception:  # noqa: BLE001 (cuDNN missing is not an error on the CPU)
        cudnn = None
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device_type": ctx.device.type,
        "device_name": name,
        "device_capability": list(cap) if cap else None,
        "device_slug": slug,
        "host_cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "num_threads": torch.get_num_threads(),
        "dtype": str(ctx.dtype).replace("torch.", ""),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": cudnn,
        "allow_tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "allow_tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "fusedrnn_path": os.path.dirname(fr.__file__),
        "fusedrnn_cuda_compiled": int(getattr(fr._C, "cuda_compiled", 0)),
        "git": git_revision(),
        "load_avg_start": load_average(),
        "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
    }


# ----------------------------------------------------------------------------
# Measurement
# ----------------------------------------------------------------------------

def as_list(result):
    """(output, (h, c)) or (output, h) -> [output, h, c] / [output, h]."""
    out, states = result
    if isinstance(states, (tuple, list)):
        return [out, *states]
    return [out, states]


def make_inputs(ctx, cfg, requires_grad):
    torch = ctx.torch
    g = torch.Generator().manual_seed(ctx.args.seed + 1)
    kw = dict(generator=g, dtype=torch.float32)

    def t(*shape):
        return torch.randn(*shape, **kw).to(ctx.device, ctx.dtype).requires_grad_(requires_grad)
    x = t(cfg.T, cfg.B, cfg.I)
    states = [t(cfg.L, cfg.B, cfg.H) for _ in range(CELLS[cfg.cell].n_states)]
    hx = tuple(states) if len(states) > 1 else states[0]
    leaves = [x] + states
    return x, hx, leaves


def make_grads(ctx, cfg, outs):
    g = ctx.torch.Generator().manual_seed(ctx.args.seed + 2)
    return [ctx.torch.randn(o.shape, generator=g).to(ctx.device, ctx.dtype) for o in outs]


def max_abs_diff(a_list, b_list):
    return max(float((a.detach().double() - b.detach().double()).abs().max()) for a, b in
               zip(a_list, b_list))


def tolerance(dtype_name):
    return {"float64": 1e-8, "float32": 1e-4, "bfloat16": 1e-1, "float16": 1e-2}[dtype_name]


class Case:
    """One implementation's forward or forward+backward on one configuration."""

    def __init__(self, ctx, runner, mode, x, hx, leaves, grads):
        self.ctx, self.runner, self.mode = ctx, runner, mode
        self.x, self.hx, self.leaves, self.grads = x, hx, leaves, grads

    def prepare(self):
        if self.mode == "fwdbwd":
            for t in self.leaves + self.runner.params:
                t.grad = None

    def run(self):
        torch = self.ctx.torch
        if self.mode == "fwd":
            with torch.no_grad():
                self.runner(self.x, self.hx)
        else:
            outs = as_list(self.runner(self.x, self.hx))
            torch.autograd.backward(outs, self.grads)

    def timed(self):
        """One run, in milliseconds."""
        ctx = self.ctx
        self.prepare()
        ctx.sync()
        if ctx.cuda:
            start = ctx.torch.cuda.Event(enable_timing=True)
            end = ctx.torch.cuda.Event(enable_timing=True)
            start.record()
            self.run()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        t0 = time.perf_counter()
        self.run()
        return (time.perf_counter() - t0) * 1e3

    def peak_memory(self):
        """Peak bytes allocated by one run above what was allocated before it."""
        torch = self.ctx.torch
        self.prepare()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(self.ctx.device)
        before = torch.cuda.memory_allocated(self.ctx.device)
        self.run()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(self.ctx.device) - before


def summarize(samples):
    s = sorted(samples)
    q = statistics.quantiles(s, n=4) if len(s) >= 2 else [s[0]] * 3
    return {"median_ms": statistics.median(s), "min_ms": s[0], "max_ms": s[-1],
            "q1_ms": q[0], "q3_ms": q[2], "mean_ms": statistics.fmean(s),
            "reps": len(s), "samples_ms": [round(v, 4) for v in samples]}


def measure(ctx, cases: Dict[str, Case], headline: Dict[str, bool], notes: List[str], tag: str):
    """Warm up, pick the repetition count, then time interleaved rounds."""
    args = ctx.args
    names = list(cases)
    warm = {}
    for name in list(names):
        try:
            times = [cases[name].timed() for _ in range(args.warmup)]
        except Exception as e:  # noqa: BLE001 (one implementation failing must not stop the rest)
            notes.append(f"{tag}: {name} failed: {type(e).__name__}: {e}")
            log(f"    {name} failed: {type(e).__name__}: {e}")
            names.remove(name)
            continue
        warm[name] = min(times)
        if name == "reference" and warm[name] > args.reference_limit * 1e3:
            notes.append(f"{tag}: reference skipped: one run took {warm[name] / 1e3:.1f} s "
                         f"(limit {args.reference_limit:g} s)")
            log(f"    reference skipped: {warm[name] / 1e3:.1f} s a run")
            names.remove(name)
    if not names:
        return {}
    # Rounds: as many as fit the budget for the headline implementations; the
    # others join every `stride`-th round, as often as the same budget allows.
    main = [n for n in names if headline[n]] or names
    if args.reps:
        reps = args.reps
    else:
        per_round = sum(warm[n] for n in main) / 1e3
        reps = max(args.min_reps, min(args.max_reps, int(args.budget / max(per_round, 1e-6))))
    stride = {}
    for n in names:
        if n in main or args.reps:
            stride[n] = 1
        else:
            want = max(args.min_reps, int(args.budget / max(warm[n] / 1e3, 1e-6)))
            stride[n] = max(1, -(-reps // want))
    # If the machine slows down after the warm-up, stop once min_reps rounds are
    # done and the measurement has run well past its budget (no cap with --reps).
    samples = {n: [] for n in names}
    deadline = time.perf_counter() + 2.5 * args.budget
    for r in range(reps):
        these = [n for n in names if r % stride[n] == 0]
        k = r % len(these)
        for name in these[k:] + these[:k]:
            samples[name].append(cases[name].timed())
        if not args.reps and r + 1 >= args.min_reps and time.perf_counter() > deadline:
            notes.append(f"{tag}: stopped after {r + 1} of {reps} rounds: over the time budget")
            break
    results = {n: summarize(samples[n]) for n in names}
    if ctx.cuda:
        for n in names:
            results[n]["peak_mem_bytes"] = cases[n].peak_memory()
    return results


def bench_config(ctx, cname, cfg, impls, notes):
    """Both modes of one configuration; returns a list of result rows."""
    torch = ctx.torch
    cell = CELLS[cfg.cell]
    torch.manual_seed(ctx.args.seed)
    base = cell.torch_module(torch)(cfg.I, cfg.H, num_layers=cfg.L)
    base = base.to(device=ctx.device, dtype=ctx.dtype).train()

    runners = {}
    for name, impl in impls.items():
        try:
            runners[name] = impl.build(ctx, cfg, base)
        except SkipImpl as e:
            notes.append(f"{cname}: {name} skipped: {e}")
            log(f"    {name} skipped: {e}")
        except Exception as e:  # noqa: BLE001
            notes.append(f"{cname}: {name} could not be built: {type(e).__name__}: {e}")
            log(f"    {name} could not be built: {type(e).__name__}: {e}")

    # Same inputs for every implementation; forward results checked against torch.
    x, hx, leaves = make_inputs(ctx, cfg, requires_grad=False)
    diffs = {}
    with torch.no_grad():
        ref_out = as_list(runners[BASELINE](x, hx))
        for name in list(runners):
            if name == BASELINE:
                continue
            try:
                diffs[name] = max_abs_diff(as_list(runners[name](x, hx)), ref_out)
            except Exception as e:  # noqa: BLE001
                notes.append(f"{cname}: {name} failed: {type(e).__name__}: {e}")
                log(f"    {name} failed: {type(e).__name__}: {e}")
                del runners[name]
                continue
            tol = tolerance(str(ctx.dtype).replace("torch.", ""))
            if diffs[name] > tol:
                msg = (f"{cname}: WARNING {name} differs from {BASELINE}: "
                       f"max |diff| {diffs[name]:.3g} > {tol:g}")
                notes.append(msg)
                log("    " + msg)
    del ref_out

    rows = []
    for mode in ctx.args.modes:
        need_grad = mode == "fwdbwd"
        x, hx, leaves = make_inputs(ctx, cfg, requires_grad=need_grad)
        grads = None
        if need_grad:
            with torch.no_grad():
                grads = make_grads(ctx, cfg, as_list(runners[BASELINE](x, hx)))
        cases = {n: Case(ctx, r, mode, x, hx, leaves, grads) for n, r in runners.items()}
        t0 = time.perf_counter()
        res = measure(ctx, cases, {n: impls[n].headline for n in cases}, notes,
                      f"{cname} {mode}")
        load = load_average()
        base_ms = res.get(BASELINE, {}).get("median_ms")
        parts = []
        for name, r in res.items():
            r["speedup_vs_torch"] = (base_ms / r["median_ms"]) if base_ms else None
            row = {"config": cname, **cfg.shape(), "cell": cfg.cell, "mode": mode,
                   "impl": name, "label": impls[name].label,
                   "max_abs_diff_vs_torch": diffs.get(name, 0.0 if name == BASELINE else None),
                   "load_avg_after": load, **r}
            rows.append(row)
            s = f"{name} {r['median_ms']:.3f} ms"
            if name != BASELINE and r["speedup_vs_torch"]:
                s += f" ({r['speedup_vs_torch']:.2f}x)"
            parts.append(s)
        reps = max((r["reps"] for r in res.values()), default=0)
        log(f"    {mode:6s} reps={reps:<4d} {time.perf_counter() - t0:5.1f}s | " + " | ".join(parts))
    return rows


# ----------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------

MODE_TITLES = {"fwd": "forward (no grad)", "fwdbwd": "forward + backward"}


def table_rows(rows, mode, impl_names, cuda):
    """Header and body of the results table for one mode."""
    header = ["config", "B", "T", "I", "H", "L"]
    for n in impl_names:
        header.append(f"{n} ms")
        if n != BASELINE:
            header.append("x torch")
    if cuda:
        header += [f"{n} MiB" for n in impl_names]
    body = []
    configs = list(dict.fromkeys(r["config"] for r in rows if r["mode"] == mode))
    for c in configs:
        by = {r["impl"]: r for r in rows if r["mode"] == mode and r["config"] == c}
        any_row = next(iter(by.values()))
        line = [c] + [str(any_row[k]) for k in ("B", "T", "I", "H", "L")]
        for n in impl_names:
            r = by.get(n)
            line.append(f"{r['median_ms']:.3f}" if r else "-")
            if n != BASELINE:
                line.append(f"{r['speedup_vs_torch']:.2f}" if r and r["speedup_vs_torch"] else "-")
        if cuda:
            for n in impl_names:
                r = by.get(n)
                mem = r.get("peak_mem_bytes") if r else None
                line.append(f"{mem / 2**20:.1f}" if mem is not None else "-")
        body.append(line)
    return header, body


def text_table(header, body):
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(b) for b in body])


def md_table(header, body):
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(b) + " |" for b in body]
    return "\n".join(lines)


def describe(meta):
    tf32 = (f"matmul {meta['allow_tf32_matmul']}, cuDNN {meta['allow_tf32_cudnn']}"
            if meta["device_type"] == "cuda" else "n/a on the CPU")
    return [
        ("date", meta["date"]),
        ("device", meta["device_name"] + (f" (sm_{meta['device_capability'][0]}"
                                          f"{meta['device_capability'][1]})"
                                          if meta["device_capability"] else "")),
        ("host CPU", f"{meta['host_cpu']}, {meta['cpu_count']} logical cores, "
                     f"torch threads {meta['num_threads']}"),
        ("dtype", meta["dtype"]),
        ("torch", f"{meta['torch']} (CUDA {meta['torch_cuda']}, cuDNN {meta['cudnn']})"),
        ("TF32 allowed", tf32),
        ("fusedrnn", f"git {meta['git']}, CUDA compiled: {bool(meta['fusedrnn_cuda_compiled'])}"),
        ("load average (1 min) at start", meta["load_avg_start"]),
        ("command", meta["command"]),
    ]


def write_markdown(path, meta, rows, impl_names, notes):
    cuda = meta["device_type"] == "cuda"
    out = [f"# fusedrnn stacked-LSTM benchmark: {meta['device_name']}, {meta['date'][:10]}", ""]
    out += [f"- {k}: {v}" for k, v in describe(meta)]
    out += ["", "Median time per call in milliseconds; `x torch` = t(torch.nn.LSTM) / t(impl), "
            "above 1 is faster than torch" + (" (cuDNN)" if cuda else "") + ". "
            + ("MiB = peak memory allocated by one call. " if cuda else "")
            + "Implementations were timed in interleaved rounds in one process on the same "
            "inputs and weights.", ""]
    for mode in MODE_TITLES:
        if any(r["mode"] == mode for r in rows):
            out += [f"## {MODE_TITLES[mode]}", "", md_table(*table_rows(rows, mode, impl_names, cuda)),
                    ""]
    if notes:
        out += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    with open(path, "w") as f:
        f.write("\n".join(out))


def write_plot(path, meta, rows, impl_names):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("note: matplotlib is not installed: no plot written (pip install matplotlib)")
        return False
    groups = {}
    for r in rows:
        cfg = CONFIGS.get(r["config"])
        if cfg and cfg.sweep:
            groups.setdefault(cfg.sweep, []).append(r)
    if not groups or not any(len({r["L"] for r in g}) > 1 for g in groups.values()):
        log("note: no layer sweep with more than one L was run: no plot written")
        return False
    modes = [m for m in MODE_TITLES if any(r["mode"] == m for r in rows)]
    fig, axes = plt.subplots(len(groups), len(modes), figsize=(5.5 * len(modes), 4 * len(groups)),
                             squeeze=False)
    for gi, (group, grows) in enumerate(groups.items()):
        for mi, mode in enumerate(modes):
            ax = axes[gi][mi]
            for n in impl_names:
                pts = sorted({r["L"]: r["median_ms"] for r in grows
                              if r["mode"] == mode and r["impl"] == n}.items())
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=n)
            ax.set_title(f"{group}: {MODE_TITLES[mode]}")
            ax.set_xlabel("layers L")
            ax.set_ylabel("median ms per call")
            ax.set_xscale("log", base=2)
            ls = sorted({r["L"] for r in grows})
            ax.set_xticks(ls)
            ax.set_xticklabels([str(v) for v in ls])
            ax.grid(True, alpha=0.3)
            ax.legend()
    fig.suptitle(f"{meta['device_name']}, {meta['dtype']}, {meta['date'][:10]}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: CUDA when a GPU is present and fusedrnn was built with CUDA")
    p.add_argument("--dtype", choices=["float32", "float64", "bfloat16", "float16"],
                   default="float32")
    p.add_argument("--configs", help="comma-separated names from --list-configs "
                                     "(default: the device's sweep)")
    p.add_argument("--impls", help=f"comma-separated, from {', '.join(IMPLS)} (default: all)")
    p.add_argument("--no-reference", action="store_true", help="leave out the reference")
    p.add_argument("--modes", default="fwd,fwdbwd", help="fwd, fwdbwd or both (default)")
    p.add_argument("--quick", action="store_true", help="small sweep and few repetitions")
    p.add_argument("--reps", type=int, help="measurement rounds (default: fit --budget)")
    p.add_argument("--budget", type=float,
                   help="seconds of measurement per configuration and mode when --reps is "
                        "not given (default 10 on the CPU, 3 on CUDA, 1 with --quick)")
    p.add_argument("--warmup", type=int, help="warm-up runs per implementation (default 3, "
                                              "1 with --quick)")
    p.add_argument("--reference-limit", type=float, default=5.0,
                   help="skip the reference where one warm-up run takes longer (s)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    p.add_argument("--tf32", choices=["off", "on", "default"], default="off",
                   help="float32 on CUDA: off (default: like with like, full FP32 "
                        "everywhere), on, or leave torch's defaults (cuDNN TF32 on)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=DEFAULT_OUT, help="directory for the JSON/Markdown/PNG")
    p.add_argument("--no-save", action="store_true", help="print only; write no files")
    p.add_argument("--list-configs", action="store_true", help="print the configurations and exit")
    args = p.parse_args(argv)
    if args.warmup is None:
        args.warmup = 1 if args.quick else 3
    args.min_reps = 3 if args.quick else 5
    args.max_reps = 10 if args.quick else 200
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in args.modes if m not in MODE_TITLES]
    if bad:
        p.error(f"unknown mode(s) {bad}; choose from {list(MODE_TITLES)}")
    if args.reps is not None and args.reps < 1:
        p.error("--reps must be at least 1")
    return args


def list_configs():
    log(f"{'name':12s} {'B':>4s} {'T':>5s} {'I':>5s} {'H':>5s} {'L':>2s}  cell  default on   about")
    for n, c in CONFIGS.items():
        log(f"{n:12s} {c.B:4d} {c.T:5d} {c.I:5d} {c.H:5d} {c.L:2d}  {c.cell:4s}  "
            f"{','.join(c.devices) or '-':10s}  {c.about}")


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.list_configs:
        list_configs()
        return 0

    import torch
    fusedrnn = import_fusedrnn()

    cuda_ok = torch.cuda.is_available() and bool(getattr(fusedrnn._C, "cuda_compiled", 0))
    if args.device == "auto":
        device = "cuda" if cuda_ok else "cpu"
    elif args.device == "cuda" and not cuda_ok:
        sys.exit("bench_layers: --device cuda needs a GPU and a fusedrnn built with CUDA "
                 f"(GPU available: {torch.cuda.is_available()}, fusedrnn._C.cuda_compiled: "
                 f"{getattr(fusedrnn._C, 'cuda_compiled', None)})")
    else:
        device = args.device
    device = torch.device(device) if device == "cpu" else torch.device("cuda", torch.cuda.current_device())
    dtype = getattr(torch, args.dtype)

    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda" and args.tf32 != "default":
        torch.backends.cuda.matmul.allow_tf32 = args.tf32 == "on"
        torch.backends.cudnn.allow_tf32 = args.tf32 == "on"
    if args.budget is None:
        args.budget = 1.0 if args.quick else (3.0 if device.type == "cuda" else 10.0)

    names = list(IMPLS)
    if args.impls:
        names = [n.strip() for n in args.impls.split(",") if n.strip()]
        unknown = [n for n in names if n not in IMPLS]
        if unknown:
            sys.exit(f"bench_layers: unknown implementation(s) {unknown}; known: {list(IMPLS)}")
        if BASELINE not in names:
            names.insert(0, BASELINE)   # every ratio is to the baseline
    if args.no_reference and "reference" in names:
        names.remove("reference")
    names = [n for n in IMPLS if n in names]  # registry order, baseline first
    impls = {n: IMPLS[n] for n in names}

    if args.configs:
        cnames = [c.strip() for c in args.configs.split(",") if c.strip()]
        unknown = [c for c in cnames if c not in CONFIGS]
        if unknown:
            sys.exit(f"bench_layers: unknown configuration(s) {unknown}; "
                     f"see --list-configs")
    else:
        key = "quick" if args.quick else "devices"
        cnames = [n for n, c in CONFIGS.items() if device.type in getattr(c, key)]

    ctx = Context(torch, fusedrnn, device, dtype, args)
    meta = metadata(ctx)
    notes = []
    if not args.configs and "d2l" in cnames:
        notes.append("d2l is also the L=2 point of the d2l layer sweep (d2l-L2 is the same shape)")
    if args.quick:
        notes.append("--quick: few repetitions; indicative only")
    if device.type == "cpu" and torch.cuda.is_available() is False and args.device == "auto":
        notes.append("no GPU available: CPU run")

    log(f"fusedrnn benchmark: {len(cnames)} configuration(s) x {len(args.modes)} mode(s), "
        f"implementations: {', '.join(names)}")
    for k, v in describe(meta):
        log(f"  {k}: {v}")
    log(f"  fusedrnn from: {meta['fusedrnn_path']}")
    load = meta["load_avg_start"]
    if load is not None and load > 0.5 * (os.cpu_count() or 1):
        msg = (f"the machine was busy at the start (1-min load average {load} on "
               f"{os.cpu_count()} cores): timings, multi-threaded CPU ones above all, "
               f"may be inflated")
        notes.append(msg)
        log(f"  WARNING: {msg}")
    log("")

    rows = []
    t_start = time.perf_counter()
    for i, cname in enumerate(cnames, 1):
        cfg = CONFIGS[cname]
        log(f"[{i}/{len(cnames)}] {cname}: B={cfg.B} T={cfg.T} I={cfg.I} H={cfg.H} L={cfg.L} "
            f"({cfg.cell})")
        try:
            rows += bench_config(ctx, cname, cfg, impls, notes)
        except Exception as e:  # noqa: BLE001 (keep the other configurations' results)
            notes.append(f"{cname}: failed: {type(e).__name__}: {e}")
            log(f"    failed: {type(e).__name__}: {e}")
        if device.type == "cuda":
            torch.cuda.empty_cache()
    elapsed = time.perf_counter() - t_start
    meta["elapsed_s"] = round(elapsed, 1)
    meta["load_avg_end"] = load_average()

    log("")
    for mode in args.modes:
        if any(r["mode"] == mode for r in rows):
            log(f"== {MODE_TITLES[mode]}: median ms per call; x torch = t_torch / t_impl "
                f"(>1: faster than torch)")
            log(text_table(*table_rows(rows, mode, names, device.type == "cuda")))
            log("")
    if notes:
        log("notes:")
        for n in notes:
            log(f"  - {n}")
    log(f"total {elapsed:.0f} s")

    if not args.no_save:
        os.makedirs(args.out, exist_ok=True)
        stem = meta["device_slug"]
        if args.dtype != "float32":
            stem += "-" + args.dtype
        if args.quick:
            stem += "-quick"
        stem = os.path.join(args.out, f"{stem}_{meta['date'][:10]}")
        with open(stem + ".json", "w") as f:
            json.dump({"meta": meta, "configs": {c: dataclasses.asdict(CONFIGS[c]) for c in cnames},
                       "implementations": {n: impls[n].label for n in names},
                       "results": rows, "notes": notes}, f, indent=1)
        write_markdown(stem + ".md", meta, rows, names, notes)
        written = [stem + ".json", stem + ".md"]
        if write_plot(stem + ".png", meta, rows, names):
            written.append(stem + ".png")
        log("wrote " + ", ".join(os.path.relpath(w) for w in written))
    # Skips (a reference too slow) are fine; an implementation that fails is not.
    failures = [n for n in notes if " failed: " in n or "could not be built" in n]
    if not rows or failures:
        log(f"bench_layers: {len(failures)} failure(s); see the notes above")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
