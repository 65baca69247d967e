#!/usr/bin/env python3
"""Stacked-RNN benchmark: fusedrnn.LSTM/GRU/RNN against torch.nn and the reference.

Run from the repository root:

    python benchmarks/bench_layers.py            # default sweep on the best device
    python benchmarks/bench_layers.py --quick    # a small, fast smoke run
    python benchmarks/bench_layers.py --configs d2l --cells lstm,gru,rnn
    python benchmarks/bench_layers.py --list-configs

Cells (--cells): every configuration runs once per chosen cell (default: each
cell fusedrnn provides: lstm, and gru/rnn when fusedrnn.GRU/RNN exist), with
torch.nn.LSTM/GRU/RNN as the baseline of its rows.  In the default sweeps a
configuration runs only the cells listed in its Config.cells (the layer sweep
points are LSTM-only, GRU/RNN run at d2l), which keeps the default CPU run at a
few minutes; configurations named with --configs run their own cells too,
and every chosen cell when --cells is given as well.

Implementations (--impls): torch (the baseline), fusedrnn, fusedrnn-generic
(CPU float32 only: fusedrnn with its AVX-512 kernels, the fused steps and the
packed products, switched off, i.e. ATen's products + a pointwise pass per
step, to show what they buy),
fusedrnn-general / fusedrnn-persistent (CUDA LSTM only: one kernel tier forced
through fusedrnn.set_option("cuda_tier", ...); the fusedrnn row is the auto
choice; sizes the persistent kernel does not fit are skipped with the reason),
fusedrnn-persistent-nosplit, -mma, -base, -ctaepi, -wide and -wide-ctaepi (only
when named: the persistent tier with its backward batch split off,
persistent_bwd_split "off"; with the experimental tensor-core products for
bfloat16/float16, persistent_mma "on"; and the four settings of
persistent_threads x persistent_cta_epilogue, each pinned: 256 threads with the
lanes' epilogue (-base, the defaults before 2026-12-04), 256 with the CTA-wide
forward epilogue (-ctaepi), 512 with the lanes' (-wide), 512 with the CTA-wide
(-wide-ctaepi); fusedrnn-persistent is their auto choice; -pairs and
-wide-pairs: 256 / 512 threads, CTA-wide, with the experimental two-unit
forward tasks, persistent_fwd_task_units "2"; -regs: 256, CTA-wide, the
experimental float32 forward with its weights in registers,
persistent_fwd_task_units "regs", where it fits, else the one-unit tasks),
fusedrnn-per-step and fusedrnn-graph (CUDA only: the general tier's step
kernels launched one by one from the host, or replayed from a captured CUDA
graph), fusedrnn-packed and torch-packed (the same batch as a PackedSequence with
lengths spread evenly between T/2 and T, on the configurations marked
packed=True: a packed batch should cost no more than the padded one),
the reference, and optional peers (other RNN libraries, e.g. flashrnn on CUDA)
that are used when importable and otherwise skipped with a note.

Protocol (see DESIGN.md, "Benchmark protocol"):
  * every implementation runs in this one process on the same inputs and the
    same weights (fusedrnn.LSTM loads torch.nn.LSTM's state_dict; the reference
    gets copies of the same tensors);
  * forward is timed under torch.no_grad() with the modules in training mode;
    forward+backward back-propagates fixed random gradients into the output,
    h_n and c_n, with input, h_0 and c_0 requiring grad and every .grad reset
    to None (untimed) before each run;
  * warm-up first, then measurement rounds that interleave the implementations
    in a new random order each round (seeded by the configuration and mode, so
    a rerun repeats it): no one always runs first, and no one always runs
    right after the same other one (a fixed rotation kept the neighbours: on
    an H200, 2026-12-04, the row that always followed torch.nn.LSTM measured
    0.02-0.06 ms slower than the same kernels in another row, see
    benchmarks/NOTES_gpu.md),
    and the median is reported;
  * on CUDA each run is timed with a pair of CUDA events after a synchronize,
    and the peak memory of each implementation is measured separately; on the
    CPU each run is timed with time.perf_counter;
  * "x torch" is t_torch / t_impl: above 1 means faster than torch.nn.LSTM
    (or nn.GRU / nn.RNN for those rows; cuDNN on CUDA, PyTorch's own kernels
    on the CPU).

The floor (CUDA LSTM, forward table): fusedrnn::wavefront_floor times the
persistent tier's grid running only its T+L-1 wavefront steps separated by
grid barriers, no arithmetic (median of 25 launches); the "floor ms" column
shows it and "<impl> x floor" the fusedrnn and persistent-tier times as
multiples of it.

Results go to --out (default benchmarks/results) as <device-slug>_<date>.json
and .md, plus a PNG when matplotlib is importable: time against layers for
each layer sweep, and the speedup over torch of every configuration (bars).

Adding a configuration: add an entry to CONFIGS.  Adding an implementation or
a variant of one (a kernel tier, say): add an Impl to IMPLS.  Adding a peer
library: subclass PeerImpl (module name, devices, cells, build) and add it to
IMPLS.  Adding a cell type: add a Cell to CELLS and list it in configs' cells.
"""
import argparse
import contextlib
import dataclasses
import datetime
import glob
import importlib
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cpu_peak  # noqa: E402  (benchmarks/cpu_peak.py)

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
    # Cells the sweeps run this configuration for (named with --configs and
    # --cells together, it runs every chosen cell).
    cells: Tuple[str, ...] = ("lstm",)
    # The cell of one run: set per run (dataclasses.replace), a key into CELLS.
    cell: str = "lstm"
    devices: Tuple[str, ...] = ("cpu", "cuda")  # default sweeps that include it
    quick: Tuple[str, ...] = ()  # --quick sweeps that include it
    sweep: Optional[str] = None  # layer-sweep group: plotted as time against L
    reference: bool = True       # False: the per-timestep reference is too slow here
    packed: bool = False         # also run the packed-batch rows (fusedrnn-packed, torch-packed)
    about: str = ""

    def shape(self):
        return dict(B=self.B, T=self.T, I=self.I, H=self.H, L=self.L)


CONFIGS: Dict[str, Config] = {
    # Dive into Deep Learning, deep RNN chapter: 2 layers of 256 on 28 characters.
    # It is also the L=2 point of the d2l layer sweep.
    "d2l-L1": Config(32, 35, 28, 256, 1, sweep="d2l", quick=("cpu",), about="layer sweep"),
    "d2l": Config(32, 35, 28, 256, 2, sweep="d2l", quick=("cpu", "cuda"),
                  cells=("lstm", "gru", "rnn"), packed=True,
                  about="D2L deep-RNN chapter (= d2l-L2)"),
    # Same shape as d2l; kept so it can be named, left out of the default sweeps.
    "d2l-L2": Config(32, 35, 28, 256, 2, sweep="d2l", devices=(), about="layer sweep (= d2l)"),
    "d2l-L4": Config(32, 35, 28, 256, 4, sweep="d2l", about="layer sweep"),
    "d2l-L8": Config(32, 35, 28, 256, 8, sweep="d2l", quick=("cuda",), about="layer sweep"),
    # GPU sizes (too slow for a 2-core CPU sweep; name them with --configs to run there).
    "fastrnns": Config(64, 100, 512, 512, 1, quick=("cuda",),
                       cells=("lstm", "gru", "rnn"), packed=True,
                       about="PyTorch fastrnns default"),
    "appleyard": Config(64, 100, 512, 512, 4, devices=("cuda",),
                        about="Appleyard et al. 2016"),
    "large": Config(256, 100, 1024, 1024, 4, devices=("cuda",), about="large"),
    "small-batch": Config(8, 256, 512, 512, 4, devices=("cuda",), about="small-batch latency"),
    "long-seq": Config(16, 1024, 768, 768, 2, devices=("cuda",), reference=False,
                       about="long sequence (reference skipped: 2048 python-level steps)"),
    # The fixed cost of a call (Python, dispatch, allocations, launches) against
    # cuDNN's: one step of a tiny 2-layer stack, where almost nothing is computed.
    "one-step": Config(1, 1, 16, 16, 2, devices=("cuda",), about="fixed per-call cost"),
    # One step of a stateful decoding loop on the CPU (T = 1, the state passed
    # in): a speech model's prediction network, a small decoder, an RL policy
    # stepping 16 environments.
    "step-b1-h640": Config(1, 1, 640, 640, 2, devices=("cpu",),
                           about="one decoding step, speech prediction network"),
    "step-b1-h256": Config(1, 1, 256, 256, 1, devices=("cpu",), about="one decoding step"),
    "step-b16-h256": Config(16, 1, 256, 256, 2, devices=("cpu",),
                            about="one step of an RL policy over 16 environments"),
    # The D2L shape with bidirectional layers: fusedrnn (auto) against
    # fusedrnn-separate (each direction its own call inside the op) and
    # fusedrnn-one-launch (both directions per kernel launch).
    "d2l-bidir": Config(32, 35, 28, 256, 2, cells=("lstm-bidir", "gru-bidir", "rnn-bidir"),
                        devices=("cuda",),
                        about="D2L shape, bidirectional"),
    # Not in any default sweep: a few milliseconds a call, for smoke tests.
    "tiny": Config(4, 8, 8, 16, 2, devices=(), cells=("lstm", "gru", "rnn"), packed=True,
                   about="smoke test (tests/test_bench_smoke.py)"),
}


# ----------------------------------------------------------------------------
# Cells and implementations (the registry)
# ----------------------------------------------------------------------------

@dataclasses.dataclass
class Cell:
    title: str                        # "LSTM": the class name in torch.nn and fusedrnn
    n_states: int                     # 2 for LSTM (h, c), 1 for GRU/RNN (h)
    kwargs: Dict[str, object] = dataclasses.field(default_factory=dict)  # module ctor extras
    ref_name: str = ""                # function in fusedrnn.reference (default: title.lower())
    ref_kwargs: Dict[str, object] = dataclasses.field(default_factory=dict)

    def torch_module(self, torch):
        return getattr(torch.nn, self.title)

    def fused_module(self, fr):
        return getattr(fr, self.title)

    def available(self, fr) -> bool:
        """Whether this build of fusedrnn provides the cell."""
        return hasattr(fr, self.title)

    def reference(self, fr):
        """fusedrnn.reference's function(input, hx, weights, **kw) -> (output, states)."""
        fn = getattr(fr.reference, self.ref_name or self.title.lower(), None)
        if fn is None:
            raise SkipImpl(f"fusedrnn.reference has no {self.ref_name or self.title.lower()}()")
        if self.ref_kwargs:
            return lambda *a, **kw: fn(*a, **kw, **self.ref_kwargs)
        return fn


CELLS: Dict[str, Cell] = {
    "lstm": Cell("LSTM", 2),
    "gru": Cell("GRU", 1),
    "rnn": Cell("RNN", 1, kwargs={"nonlinearity": "tanh"}, ref_kwargs={"nonlinearity": "tanh"}),
    # Not in the default set: the same kernels as rnn with another activation.
    "rnn-relu": Cell("RNN", 1, kwargs={"nonlinearity": "relu"}, ref_name="rnn",
                     ref_kwargs={"nonlinearity": "relu"}),
    # Bidirectional (configuration d2l-bidir): states are (2L, B, H).
    "lstm-bidir": Cell("LSTM", 2, kwargs={"bidirectional": True},
                       ref_kwargs={"bidirectional": True}),
    "gru-bidir": Cell("GRU", 1, kwargs={"bidirectional": True},
                      ref_kwargs={"bidirectional": True}),
    "rnn-bidir": Cell("RNN", 1, kwargs={"nonlinearity": "tanh", "bidirectional": True},
                      ref_kwargs={"nonlinearity": "tanh", "bidirectional": True}),
}
# The -bidir cells run only where a configuration lists them (d2l-bidir).
DEFAULT_CELLS = ("lstm", "gru", "rnn", "lstm-bidir", "gru-bidir", "rnn-bidir")


# Gate blocks of each cell's products (LSTM i f g o, GRU r z n, RNN one).
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def model_gflop(cfg: Config, mode: str) -> float:
    """The matrix products' GFLOP of one call (the elementwise work is left
    out): forward Σ_l 2·T·B·G·H·(I_l + H) per direction; the backward twice
    that (the recurrent products, the weight gradients and the input
    gradients)."""
    cell = CELLS[cfg.cell]
    D = 2 if cell.kwargs.get("bidirectional") else 1
    G = GATES[cell.title]
    fwd = sum(2 * cfg.T * cfg.B * G * cfg.H * ((cfg.I if l == 0 else D * cfg.H) + cfg.H) * D
              for l in range(cfg.L))
    return fwd * (3 if mode == "fwdbwd" else 1) / 1e9


def cell_label(cell: str) -> str:
    """How rows of a cell are labelled: LSTM, GRU, RNN, RNN-relu."""
    c = CELLS[cell]
    nl = c.kwargs.get("nonlinearity")
    return (c.title + (f"-{nl}" if nl and nl != "tanh" else "")
            + ("-bidir" if c.kwargs.get("bidirectional") else ""))


def fast_step_switch(fr, on: bool):
    """A context manager that sets fusedrnn._C.set_cpu_fast_step_enabled(on) and
    restores the previous setting on exit, exceptions included."""
    @contextlib.contextmanager
    def scope():
        prev = fr._C.cpu_fast_step_enabled()
        fr._C.set_cpu_fast_step_enabled(on)
        try:
            yield
        finally:
            fr._C.set_cpu_fast_step_enabled(prev)
    return scope


class Runner:
    """One implementation built for one configuration: call it like nn.LSTM.

    scope() is entered around every call, forward and backward together (a
    setting that must hold while the backward kernels run, say)."""

    def __init__(self, fn, params, scope=contextlib.nullcontext):
        self.fn = fn            # (input, hx) -> (output, states)
        self.params = params    # tensors whose .grad is reset between runs
        self.scope = scope

    def __call__(self, x, hx):
        with self.scope():
            return self.fn(x, hx)


class Impl:
    """An entry of the registry.  build() returns a Runner or raises.

    headline=False marks a slow implementation that is measured for context
    only: it takes part in fewer of the interleaved rounds, so that it does not
    set the repetition count of the others.  label may name the cell with
    {Cell} (LSTM, GRU, ...).  applicable() says, once per run, why the
    implementation cannot take part at all (None: it can).
    """
    name = ""
    label = ""
    headline = True
    comparable = True  # its outputs are checked against the baseline's
    in_default = True  # runs without --impls (False: only when named there)

    def label_for(self, cell: str) -> str:
        return self.label.format(Cell=cell_label(cell))

    def applicable(self, ctx) -> Optional[str]:
        return None

    def wants(self, cfg: Config) -> bool:
        """Whether it runs on this configuration at all (no note when not)."""
        return True

    def build(self, ctx, cfg: Config, base) -> Runner:
        raise NotImplementedError


class TorchImpl(Impl):
    name, label = "torch", "torch.nn.{Cell}"

    def build(self, ctx, cfg, base):
        return Runner(lambda x, hx: base(x, hx), list(base.parameters()))


class FusedImpl(Impl):
    """fusedrnn's module.  kwargs go to its constructor (e.g. a future tier=)."""

    def __init__(self, name="fusedrnn", label="fusedrnn.{Cell}", **kwargs):
        self.name, self.label, self.kwargs = name, label, kwargs

    def scope(self, ctx):
        return contextlib.nullcontext

    def build(self, ctx, cfg, base):
        cell = CELLS[cfg.cell]
        cls = cell.fused_module(ctx.fusedrnn)
        mod = cls(cfg.I, cfg.H, num_layers=cfg.L, **cell.kwargs, **self.kwargs)
        mod = mod.to(device=ctx.device, dtype=ctx.dtype)
        mod.load_state_dict(base.state_dict())
        mod.train()
        return Runner(lambda x, hx: mod(x, hx), list(mod.parameters()), self.scope(ctx))


class GenericStepImpl(FusedImpl):
    """fusedrnn with the CPU float32 fused (AVX-512) step kernels switched off:
    the generic at::addmm + pointwise step.  Shows what the fused step buys."""

    def __init__(self):
        super().__init__("fusedrnn-generic", "fusedrnn.{Cell} (generic step)")

    def applicable(self, ctx):
        C = ctx.fusedrnn._C
        if not hasattr(C, "set_cpu_fast_step_enabled"):
            return "this fusedrnn has no switch for its CPU step kernels"
        if ctx.device.type != "cpu" or ctx.dtype != ctx.torch.float32:
            return "CPU float32 only (the fused step kernels exist only there)"
        if not C.cpu_fast_step_available():
            return ("the fused CPU step kernels are not available on this CPU/build "
                    "(the fusedrnn row already runs the generic step)")
        return None

    def scope(self, ctx):
        return fast_step_switch(ctx.fusedrnn, False)


def persistent_plan(ctx, cfg, backward=False):
    """The persistent tier's plan (fusedrnn._C.persistent_plan) of its forward
    or backward kernel for cfg on this device, or None when this build or
    torch cannot say."""
    torch, C = ctx.torch, ctx.fusedrnn._C
    if not hasattr(C, "persistent_plan"):
        return None
    p = torch.cuda.get_device_properties(ctx.device)
    smem_sm = getattr(p, "shared_memory_per_multiprocessor", 0)
    smem_block = getattr(p, "shared_memory_per_block_optin", 0)
    if not smem_sm or not smem_block:
        return None
    elem = torch.empty(0, dtype=ctx.dtype).element_size()
    return C.persistent_plan(cfg.H, cfg.I, cfg.L, cfg.B, elem, smem_sm, smem_block,
                             getattr(p, "regs_per_multiprocessor", 65536),
                             p.multi_processor_count, cfg.T, 0, int(backward))


# The floor of the wavefront design: fusedrnn::wavefront_floor times the
# persistent tier's grid doing only its T+L-1 grid barriers (no arithmetic).
# The forward table shows it and these implementations' times as multiples of it.
FLOOR_IMPLS = ("fusedrnn", "fusedrnn-persistent")


def wavefront_floor_ms(ctx, cfg, runs=25):
    """Median ms of the empty wavefront for cfg's sizes, or None (CPU, not LSTM,
    or a build without the op)."""
    if not ctx.cuda or cfg.cell != "lstm" or ctx.args.no_persistent:
        return None
    try:
        op = ctx.torch.ops.fusedrnn.wavefront_floor
    except (AttributeError, RuntimeError):
        return None
    with ctx.torch.cuda.device(ctx.device):
        return statistics.median(op(cfg.T, cfg.L, cfg.B, cfg.H) for _ in range(runs))
def packed_lengths(cfg):
    """Lengths spread evenly between T/2 and T (sorted, longest first)."""
    lo = max(1, cfg.T // 2)
    if cfg.B == 1:
        return [cfg.T]
    return [round(cfg.T - (cfg.T - lo) * b / (cfg.B - 1)) for b in range(cfg.B)]


class PackedImpl(Impl):
    """An implementation fed a PackedSequence of the same batch with lengths
    spread evenly between T/2 and T (about 3/4 of the padded work).  Packing
    and unpacking are one row gather/scatter each (index_select/index_copy,
    cheap in both directions), timed with the module; torch's
    pad_packed_sequence is avoided because its backward copies the whole
    padded tensor once per timestep, which would swamp what is measured here.
    Its results are not compared with the padded baseline (different
    lengths); tests/test_packed_proj.py checks them against torch.nn."""
    comparable = False

    def __init__(self, inner: Impl, name, label):
        self.inner, self.name, self.label = inner, name, label

    def applicable(self, ctx):
        return self.inner.applicable(ctx)

    def wants(self, cfg):
        return cfg.packed  # only where Config.packed asks for it (keeps sweeps short)

    def build(self, ctx, cfg, base):
        torch = ctx.torch
        from torch.nn.utils.rnn import PackedSequence
        lengths = torch.tensor(packed_lengths(cfg))
        batch_sizes = (lengths.unsqueeze(0) > torch.arange(cfg.T).unsqueeze(1)).sum(1)
        # Row t*B + b of the padded (T*B, ·) view, for every packed row in order.
        rows = torch.cat([t * cfg.B + torch.arange(int(n)) for t, n in enumerate(batch_sizes)])
        rows = rows.to(ctx.device)
        runner = self.inner.build(ctx, cfg, base)

        def run(x, hx):
            T, B = x.shape[0], x.shape[1]
            data = x.reshape(T * B, -1).index_select(0, rows)
            out, states = runner.fn(PackedSequence(data, batch_sizes), hx)
            y = out.data.new_zeros((T * B, out.data.shape[1])).index_copy(0, rows, out.data)
            return y.view(T, B, -1), states
        return Runner(run, runner.params, runner.scope)


def option_switch(fr, name: str, value: str):
    """A context manager that sets fusedrnn.set_option(name, value) and restores
    the previous value on exit, exceptions included."""
    @contextlib.contextmanager
    def scope():
        prev = fr.get_option(name)
        fr.set_option(name, value)
        try:
            yield
        finally:
            fr.set_option(name, prev)
    return scope


def option_missing(ctx, option):
    """Why an implementation that holds `option` cannot run with this fusedrnn
    (an older build without that switch), or None."""
    if option not in getattr(ctx.fusedrnn, "_OPTIONS", {option: None}):
        return f"this fusedrnn has no {option} option"
    return None


class OptionImpl(FusedImpl):
    """fusedrnn with one kernel switch (fusedrnn.set_option) held at a value
    while it runs, e.g. the CUDA step loop replayed from a CUDA graph."""

    def __init__(self, name, label, option, value, devices=("cuda",)):
        super().__init__(name, label)
        self.option, self.value, self.devices = option, value, devices

    def applicable(self, ctx):
        if not hasattr(ctx.fusedrnn, "set_option"):
            return "this fusedrnn has no kernel switches (fusedrnn.set_option)"
        if ctx.device.type not in self.devices:
            return f"{'/'.join(self.devices)} only"
        return option_missing(ctx, self.option)

    def scope(self, ctx):
        return option_switch(ctx.fusedrnn, self.option, self.value)


class StepLaunchImpl(OptionImpl):
    """The CUDA general tier with its step loops issued one way
    (cuda_step_launch = per_step or graph).  Setting the option keeps the LSTM
    on the general tier; for GRU/RNN (general tier only) "auto" means per_step,
    so their fusedrnn-graph row is the one that differs from fusedrnn."""


class BidirectionalImpl(OptionImpl):
    """Bidirectional layers on CUDA with the option cuda_bidirectional held:
    "one_launch" (both directions of a layer in one kernel launch per step,
    the general tier) or "separate" (each direction its own one-direction
    call, e.g. the persistent tier's for an LSTM that fits it).  The fusedrnn
    row is auto's choice between them.  Only for bidirectional cells."""

    def __init__(self, value):
        label = {"one_launch": "both directions, one launch",
                 "separate": "each direction its own call"}[value]
        super().__init__(f"fusedrnn-{value.replace('_', '-')}", f"fusedrnn.{{Cell}} ({label})",
                         "cuda_bidirectional", value)

    def wants(self, cfg):
        return bool(CELLS[cfg.cell].kwargs.get("bidirectional"))


class CudaTierImpl(OptionImpl):
    """fusedrnn's LSTM with the CUDA tier forced (fusedrnn.set_option("cuda_tier", tier)):
    "general" (one fused kernel per layer-timestep) or "persistent" (the
    cooperative wavefront kernels, forward and reverse).  CUDA LSTM only; a
    configuration the persistent kernels do not fit on this device is skipped
    with the planner's reason."""

    def __init__(self, tier):
        super().__init__(f"fusedrnn-{tier}", f"fusedrnn.{{Cell}} ({tier} tier)", "cuda_tier", tier)
        self.tier = tier

    def build(self, ctx, cfg, base):
        if cfg.cell != "lstm":
            raise SkipImpl("the CUDA tiers are the LSTM's")
        if self.tier == "persistent":
            for backward in (False, True):
                plan = persistent_plan(ctx, cfg, backward)
                if plan is not None and not plan["fits"]:
                    raise SkipImpl(f"does not fit the persistent "
                                   f"{'backward' if backward else 'forward'} here: {plan['why']}")
        return super().build(ctx, cfg, base)


class PersistentVariantImpl(CudaTierImpl):
    """The persistent tier with more kernel switches held while it runs
    (fusedrnn.set_option(option, value) for each (option, value) pair), for
    variants compared with
    fusedrnn-persistent in one process: fusedrnn-persistent-nosplit (the
    backward's batch split off; on by default since its first GPU run) and
    fusedrnn-persistent-mma (the tensor-core products, forward and backward:
    bfloat16/float16 where the tiles fit, else the FMA kernels; off by
    default), and the four pinned settings of persistent_threads x
    persistent_cta_epilogue: fusedrnn-persistent-base (256 threads per CTA,
    the lanes' forward epilogue), -ctaepi (256, the forward's cell applied
    CTA-wide after the chunk's products), -wide (512, lanes') and
    -wide-ctaepi (512, CTA-wide); and fusedrnn-persistent-pairs (256,
    CTA-wide, the experimental two-unit forward tasks) and -wide-pairs (the
    same at 512, float32 only), and fusedrnn-persistent-regs (256, CTA-wide,
    the experimental float32 forward weights in registers).  Only when named
    in --impls."""
    in_default = False

    def __init__(self, name, label, *variant):
        super().__init__("persistent")
        self.name, self.label = name, label
        self.variant = variant  # (option, value) pairs

    def applicable(self, ctx):
        why = super().applicable(ctx)
        for option, _ in self.variant:
            why = why or option_missing(ctx, option)
        return why

    def scope(self, ctx):
        tier = super().scope(ctx)
        extras = [option_switch(ctx.fusedrnn, o, v) for o, v in self.variant]

        @contextlib.contextmanager
        def scope():
            with contextlib.ExitStack() as stack:
                stack.enter_context(tier())
                for extra in extras:
                    stack.enter_context(extra())
                yield
        return scope


class ReferenceImpl(Impl):
    name, label = "reference", "fusedrnn.reference.{Cell}"
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


class PeerImpl(Impl):
    """Another library's RNN, used when its package imports.

    Subclasses set name/label, `module` (what to import), `devices` and
    `cells` they support, and implement build(ctx, cfg, base) with self.mod,
    the imported module.  Weights come from `base` (the torch module), so the
    forward results are checked against torch like everyone else's.
    """
    module = ""
    devices: Tuple[str, ...] = ("cuda",)
    cells: Tuple[str, ...] = ("lstm",)
    mod = None
    status = "not checked"

    def detect(self):
        """Import the package once; returns (and records) a short status."""
        if self.status == "not checked":
            try:
                self.mod = importlib.import_module(self.module)
                version = getattr(self.mod, "__version__", None)
                self.status = "available" + (f" ({version})" if version else "")
            except ImportError:
                self.status = "not installed"
            except Exception as e:  # noqa: BLE001 (a broken install is a skip, with the reason)
                self.status = f"import error ({type(e).__name__}: {e})"
        return self.status

    def applicable(self, ctx):
        status = self.detect()
        if not status.startswith("available"):
            return status
        if ctx.device.type not in self.devices:
            return f"runs on {', '.join(self.devices)} only"
        return None

    def check_cell(self, cfg):
        if cfg.cell not in self.cells:
            raise SkipImpl(f"{self.module} peer is wired for {', '.join(self.cells)} only")


class FlashRNNImpl(PeerImpl):
    """FlashRNN (NX-AI, pip install flashrnn), its documented functional API:

        states, last_states = flashrnn.flashrnn(Wx, R, b, states=s0,
                                                function="lstm", backend="cuda_fused",
                                                dtype="float32")

    with Wx (B, T, G, N, D) the input projections, R (G, N, D, P) the recurrent
    weights (gate, head, output, input), b (G, N, D), states (S, B, 1, N, D),
    returning states (S, B, T, N, D) and last states (S, B, 1, N, D).  One call
    per layer, one head of size H; the input projection x W_ih^T is done with a
    torch matmul and timed as part of the call.  Gate order i, f, g, o as torch.
    """
    name, label, module = "flashrnn", "flashrnn ({backend})", "flashrnn"
    devices, cells = ("cuda",), ("lstm",)

    def __init__(self, backend="cuda_fused"):
        self.backend = backend

    def label_for(self, cell):
        return self.label.format(backend=self.backend)

    def build(self, ctx, cfg, base):
        self.check_cell(cfg)
        dtype = str(ctx.dtype).replace("torch.", "")
        if dtype not in ("float32", "float16", "bfloat16"):
            raise SkipImpl(f"flashrnn has no {dtype} kernels")
        fn = getattr(self.mod, "flashrnn", None)
        if not callable(fn):
            raise SkipImpl("flashrnn.flashrnn() not found in the installed package")
        H, L, per = cfg.H, cfg.L, 4
        w = base._flat_weights
        params, layers = [], []
        for layer in range(L):
            w_ih, w_hh, b_ih, b_hh = (t.detach() for t in w[layer * per:(layer + 1) * per])
            W = w_ih.clone().requires_grad_(True)
            R = w_hh.reshape(4, 1, H, H).clone().requires_grad_(True)
            b = (b_ih + b_hh).reshape(4, 1, H).clone().requires_grad_(True)
            params += [W, R, b]
            layers.append((W, R, b))
        backend = self.backend

        def run(x, hx):
            h0, c0 = hx
            T, B = x.shape[0], x.shape[1]
            layer_in, hs, cs = x, [], []
            for layer, (W, R, b) in enumerate(layers):
                Wx = (layer_in.transpose(0, 1) @ W.t()).reshape(B, T, 4, 1, H)
                s0 = ctx.torch.stack((h0[layer], c0[layer])).reshape(2, B, 1, 1, H)
                states, last = fn(Wx, R, b, states=s0, function="lstm", backend=backend,
                                  dtype=dtype)
                layer_in = states[0].reshape(B, T, H).transpose(0, 1)
                hs.append(last[0].reshape(B, H))
                cs.append(last[1].reshape(B, H))
            return layer_in, (ctx.torch.stack(hs), ctx.torch.stack(cs))
        return Runner(run, params)


# The order is the column order; "torch" is the baseline and must come first.
IMPLS: Dict[str, Impl] = {
    "torch": TorchImpl(),
    "fusedrnn": FusedImpl(),
    # CUDA LSTM with one kernel tier forced (the fusedrnn row is the auto choice).
    "fusedrnn-general": CudaTierImpl("general"),
    "fusedrnn-persistent": CudaTierImpl("persistent"),
    "fusedrnn-persistent-nosplit": PersistentVariantImpl(
        "fusedrnn-persistent-nosplit", "fusedrnn.{Cell} (persistent tier, backward batch split off)",
        ("persistent_bwd_split", "off")),
    "fusedrnn-persistent-mma": PersistentVariantImpl(
        "fusedrnn-persistent-mma", "fusedrnn.{Cell} (persistent tier, tensor cores)",
        ("persistent_mma", "on")),
    "fusedrnn-persistent-base": PersistentVariantImpl(
        "fusedrnn-persistent-base",
        "fusedrnn.{Cell} (persistent tier, 256 threads per CTA, lanes' forward epilogue)",
        ("persistent_threads", "256"), ("persistent_cta_epilogue", "off")),
    "fusedrnn-persistent-ctaepi": PersistentVariantImpl(
        "fusedrnn-persistent-ctaepi",
        "fusedrnn.{Cell} (persistent tier, 256 threads per CTA, CTA-wide forward epilogue)",
        ("persistent_threads", "256"), ("persistent_cta_epilogue", "on")),
    "fusedrnn-persistent-wide": PersistentVariantImpl(
        "fusedrnn-persistent-wide",
        "fusedrnn.{Cell} (persistent tier, 512 threads per CTA, lanes' forward epilogue)",
        ("persistent_threads", "512"), ("persistent_cta_epilogue", "off")),
    "fusedrnn-persistent-pairs": PersistentVariantImpl(
        "fusedrnn-persistent-pairs",
        "fusedrnn.{Cell} (persistent tier, 256 threads per CTA, CTA-wide forward epilogue, "
        "two-unit forward tasks)",
        ("persistent_threads", "256"), ("persistent_cta_epilogue", "on"),
        ("persistent_fwd_task_units", "2")),
    "fusedrnn-persistent-wide-pairs": PersistentVariantImpl(
        "fusedrnn-persistent-wide-pairs",
        "fusedrnn.{Cell} (persistent tier, 512 threads per CTA, CTA-wide forward epilogue, "
        "two-unit forward tasks)",
        ("persistent_threads", "512"), ("persistent_cta_epilogue", "on"),
        ("persistent_fwd_task_units", "2")),
    "fusedrnn-persistent-regs": PersistentVariantImpl(
        "fusedrnn-persistent-regs",
        "fusedrnn.{Cell} (persistent tier, 256 threads per CTA, CTA-wide forward epilogue, "
        "float32 forward weights in registers)",
        ("persistent_threads", "256"), ("persistent_cta_epilogue", "on"),
        ("persistent_fwd_task_units", "regs")),
    "fusedrnn-persistent-wide-ctaepi": PersistentVariantImpl(
        "fusedrnn-persistent-wide-ctaepi",
        "fusedrnn.{Cell} (persistent tier, 512 threads per CTA, CTA-wide forward epilogue)",
        ("persistent_threads", "512"), ("persistent_cta_epilogue", "on")),
    "fusedrnn-one-launch": BidirectionalImpl("one_launch"),
    "fusedrnn-separate": BidirectionalImpl("separate"),
    "fusedrnn-generic": GenericStepImpl(),
    # The CUDA general tier's two ways of issuing its T·L step kernels.
    "fusedrnn-per-step": StepLaunchImpl("fusedrnn-per-step",
                                        "fusedrnn.{Cell} (one launch per step)",
                                        "cuda_step_launch", "per_step"),
    "fusedrnn-graph": StepLaunchImpl("fusedrnn-graph", "fusedrnn.{Cell} (step loop as CUDA graph)",
                                     "cuda_step_launch", "graph"),
    "fusedrnn-packed": PackedImpl(FusedImpl(), "fusedrnn-packed",
                                  "fusedrnn.{Cell}, packed (lengths T/2..T)"),
    "torch-packed": PackedImpl(TorchImpl(), "torch-packed",
                               "torch.nn.{Cell}, packed (lengths T/2..T)"),
    "flashrnn": FlashRNNImpl(),
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
    """The CPU's model name, with its family/model numbers where the name alone
    does not tell the generation (virtual machines report "AMD EPYC" for
    Zen 4 and Zen 5 alike)."""
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                info.setdefault(key.strip(), val.strip())
    except OSError:
        pass
    name = info.get("model name") or platform.processor() or platform.machine() or "unknown cpu"
    if "cpu family" in info and "model" in info:
        name += f" (family {info['cpu family']} model {info['model']})"
    return name


def slugify(text):
    text = re.sub(r"\(r\)|\(tm\)|\bcpu\b|\bprocessor\b", " ", text.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "unknown"


def git_revision():
    try:
        rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        if not rev:
            return None
        if not dirty:
            return rev
        # A dirty checkout (the lent GPU machine gets the working tree with a
        # copy of .git from the session's start) also names the tree it holds:
        # `git rev-parse <commit>^{tree}` of the commit with these files gives
        # the same hash.
        tree = working_tree_hash()
        return f"{rev}-dirty" + (f", working tree {tree}" if tree else "")
    except (OSError, subprocess.SubprocessError):
        return None


def working_tree_hash():
    """The git tree hash of the files in the checkout (tracked and untracked,
    less the ignored), from a throw-away index; None when git cannot say."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, GIT_INDEX_FILE=os.path.join(tmp, "index"))
        add = subprocess.run(["git", "-C", ROOT, "add", "-A"], env=env, capture_output=True,
                             timeout=60)
        if add.returncode != 0:
            return None
        out = subprocess.run(["git", "-C", ROOT, "write-tree"], env=env, capture_output=True,
                             text=True, timeout=60)
        return out.stdout.strip()[:12] or None


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
        self.peak = None  # the CPU's measured FMA peak (cpu_peak.measure), CPU runs only

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
        "cpu_fast_step_available": (bool(fr._C.cpu_fast_step_available())
                                    if hasattr(fr._C, "cpu_fast_step_available") else None),
        "cpu_fast_step_enabled": (bool(fr._C.cpu_fast_step_enabled())
                                  if hasattr(fr._C, "cpu_fast_step_enabled") else None),
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
    cell = CELLS[cfg.cell]
    D = 2 if cell.kwargs.get("bidirectional") else 1
    states = [t(D * cfg.L, cfg.B, cfg.H) for _ in range(cell.n_states)]
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
        with self.runner.scope():   # around forward and backward both
            if self.mode == "fwd":
                with torch.no_grad():
                    self.runner.fn(self.x, self.hx)
            else:
                # as_list: (output, (h_n, c_n)) for LSTM, (output, h_n) for GRU/RNN
                outs = as_list(self.runner.fn(self.x, self.hx))
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
            # Slow context-only implementations (the python-level reference) need
            # no more than one warm-up run; it also sets their round stride.
            n_warm = args.warmup if headline[name] else min(args.warmup, 1)
            times = [cases[name].timed() for _ in range(max(n_warm, 1))]
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
    # others join every `stride`-th round, as often as half that budget allows
    # (they are context, not the comparison; this keeps the default sweep short).
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
            want = max(args.min_reps, int(0.5 * args.budget / max(warm[n] / 1e3, 1e-6)))
            stride[n] = max(1, -(-reps // want))
    # If the machine slows down after the warm-up, stop once min_reps rounds are
    # done and the measurement has run well past its budget (no cap with --reps).
    samples = {n: [] for n in names}
    deadline = time.perf_counter() + 2.5 * args.budget
    order_rng = random.Random(tag)  # the same orders when the same case is rerun
    for r in range(reps):
        these = [n for n in names if r % stride[n] == 0]
        order_rng.shuffle(these)
        for name in these:
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
    tag = f"{cname} {cell_label(cfg.cell)}"
    torch.manual_seed(ctx.args.seed)
    base = cell.torch_module(torch)(cfg.I, cfg.H, num_layers=cfg.L, **cell.kwargs)
    base = base.to(device=ctx.device, dtype=ctx.dtype).train()

    impls = {n: i for n, i in impls.items() if i.wants(cfg)}
    runners = {}
    for name, impl in impls.items():
        try:
            runners[name] = impl.build(ctx, cfg, base)
        except SkipImpl as e:
            notes.append(f"{tag}: {name} skipped: {e}")
            log(f"    {name} skipped: {e}")
        except Exception as e:  # noqa: BLE001
            notes.append(f"{tag}: {name} could not be built: {type(e).__name__}: {e}")
            log(f"    {name} could not be built: {type(e).__name__}: {e}")

    # Same inputs for every implementation; forward results checked against torch.
    x, hx, leaves = make_inputs(ctx, cfg, requires_grad=False)
    diffs = {}
    with torch.no_grad():
        ref_out = as_list(runners[BASELINE](x, hx))
        for name in list(runners):
            if name == BASELINE:
                continue
            if not impls[name].comparable:
                try:  # still run it once, so a failure shows here
                    runners[name](x, hx)
                except Exception as e:  # noqa: BLE001
                    notes.append(f"{tag}: {name} failed: {type(e).__name__}: {e}")
                    log(f"    {name} failed: {type(e).__name__}: {e}")
                    del runners[name]
                continue
            try:
                diffs[name] = max_abs_diff(as_list(runners[name](x, hx)), ref_out)
            except Exception as e:  # noqa: BLE001
                notes.append(f"{tag}: {name} failed: {type(e).__name__}: {e}")
                log(f"    {name} failed: {type(e).__name__}: {e}")
                del runners[name]
                continue
            tol = tolerance(str(ctx.dtype).replace("torch.", ""))
            if diffs[name] > tol:
                msg = (f"{tag}: WARNING {name} differs from {BASELINE}: "
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
                      f"{tag} {mode}")
        load = load_average()
        floor = wavefront_floor_ms(ctx, cfg) if mode == "fwd" and res else None
        if floor:
            for r in res.values():
                r["wavefront_floor_ms"] = floor
                r["x_floor"] = r["median_ms"] / floor
            log(f"    empty wavefront (T+L-1 grid barriers): {floor:.3f} ms")
        base_ms = res.get(BASELINE, {}).get("median_ms")
        gflop = model_gflop(cfg, mode)
        peak = (ctx.peak or {}).get("gflops")
        parts = []
        for name, r in res.items():
            r["speedup_vs_torch"] = (base_ms / r["median_ms"]) if base_ms else None
            r["gflop"] = gflop
            r["gflops"] = gflop / (r["median_ms"] / 1e3)
            r["peak_share"] = r["gflops"] / peak if peak else None
            row = {"config": cname, **cfg.shape(), "cell": cfg.cell,
                   "cell_label": cell_label(cfg.cell), "mode": mode,
                   "impl": name, "label": impls[name].label_for(cfg.cell),
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
    header = ["config", "cell", "B", "T", "I", "H", "L"]
    for n in impl_names:
        header.append(f"{n} ms")
        if n != BASELINE:
            header.append("x torch")
    rate = [n for n in ("fusedrnn", BASELINE) if n in impl_names] if not cuda else []
    with_peak = any(r.get("peak_share") for r in rows if r["mode"] == mode)
    for n in rate:
        header.append(f"{n} GFLOP/s")
        if with_peak:
            header.append(f"{n} % peak")
    if cuda:
        header += [f"{n} MiB" for n in impl_names]
    floors = [n for n in impl_names if n in FLOOR_IMPLS]
    with_floor = any(r.get("wavefront_floor_ms") for r in rows if r["mode"] == mode)
    if with_floor:
        header += ["floor ms"] + [f"{n} x floor" for n in floors]
    body = []
    keys = list(dict.fromkeys((r["config"], r["cell"]) for r in rows if r["mode"] == mode))
    for c, cell in keys:
        by = {r["impl"]: r for r in rows
              if r["mode"] == mode and r["config"] == c and r["cell"] == cell}
        any_row = next(iter(by.values()))
        line = [c, cell_label(cell)] + [str(any_row[k]) for k in ("B", "T", "I", "H", "L")]
        for n in impl_names:
            r = by.get(n)
            line.append(f"{r['median_ms']:.3f}" if r else "-")
            if n != BASELINE:
                line.append(f"{r['speedup_vs_torch']:.2f}" if r and r["speedup_vs_torch"] else "-")
        for n in rate:
            r = by.get(n)
            line.append(f"{r['gflops']:.0f}" if r and r.get("gflops") else "-")
            if with_peak:
                line.append(f"{100 * r['peak_share']:.0f}" if r and r.get("peak_share") else "-")
        if cuda:
            for n in impl_names:
                r = by.get(n)
                mem = r.get("peak_mem_bytes") if r else None
                line.append(f"{mem / 2**20:.1f}" if mem is not None else "-")
        if with_floor:
            f = any_row.get("wavefront_floor_ms")
            line.append(f"{f:.3f}" if f else "-")
            for n in floors:
                r = by.get(n)
                line.append(f"{r['x_floor']:.1f}" if r and r.get("x_floor") else "-")
        body.append(line)
    return header, body


def scaling_rows(rows, impl_names):
    """Header and body of the layer-scaling table: for each layer sweep (configs
    sharing a `sweep`), cell and mode, every implementation's time at the
    sweep's largest L over its time at the smallest (issue 4's target: at most
    2.5 for L=8 over L=1 at the D2L size).  Empty without a sweep of two or
    more depths."""
    groups = {}
    for r in rows:
        cfg = CONFIGS.get(r["config"])
        if cfg and cfg.sweep:
            groups.setdefault((cfg.sweep, r["cell"], r["mode"]), []).append(r)
    ratios = {}
    for key, g in groups.items():
        depths = sorted({r["L"] for r in g})
        if len(depths) < 2:
            continue
        lo, hi = depths[0], depths[-1]
        for n in impl_names:
            t = {r["L"]: r["median_ms"] for r in g if r["impl"] == n}
            if lo in t and hi in t and t[lo]:
                ratios.setdefault((key, lo, hi), {})[n] = t[hi] / t[lo]
    shown = [n for n in impl_names if any(n in v for v in ratios.values())]
    header = ["sweep", "cell", "mode", "L"] + shown
    body = [[sweep, cell_label(cell), mode, f"{hi}/{lo}"]
            + [f"{v[n]:.2f}" if n in v else "-" for n in shown]
            for ((sweep, cell, mode), lo, hi), v in ratios.items()]
    return header, body


def text_table(header, body):
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(c.rjust(w) if i > 1 else c.ljust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(b) for b in body])


def md_table(header, body):
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|"]
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
                     f"torch threads {meta['num_threads']}"
                     + (f"; measured float32 FMA peak {meta['cpu_peak']['gflops']:.0f} GFLOP/s "
                        f"({meta['cpu_peak']['isa']}, benchmarks/cpu_peak.py)"
                        if meta.get("cpu_peak") else "")),
        ("dtype", meta["dtype"]),
        ("torch", f"{meta['torch']} (CUDA {meta['torch_cuda']}, cuDNN {meta['cudnn']})"),
        ("TF32 allowed", tf32),
        ("fusedrnn", f"git {meta['git']}, CUDA compiled: {bool(meta['fusedrnn_cuda_compiled'])}"
                     + (f", CPU fused step kernels: available {meta['cpu_fast_step_available']}, "
                        f"enabled {meta['cpu_fast_step_enabled']}"
                        if meta.get("cpu_fast_step_available") is not None else "")),
        ("cells", ", ".join(meta.get("cells", []))),
        ("peers", ", ".join(f"{k}: {v}" for k, v in meta.get("peers", {}).items()) or "none"),
        ("load average (1 min) at start", meta["load_avg_start"]),
        ("command", meta["command"]),
    ] + ([("INCOMPLETE", meta["partial"] + " (written while the benchmark was running)")]
         if meta.get("partial") else [])


def write_markdown(path, meta, rows, impl_names, notes):
    cuda = meta["device_type"] == "cuda"
    out = [f"# fusedrnn stacked-RNN benchmark: {meta['device_name']}, {meta['date'][:10]}", ""]
    out += [f"- {k}: {v}" for k, v in describe(meta)]
    out += ["", "Median time per call in milliseconds; `x torch` = t(torch.nn.LSTM / GRU / RNN, "
            "the row's cell) / t(impl), "
            "above 1 is faster than torch" + (" (cuDNN)" if cuda else "") + ". "
            + ("MiB = peak memory allocated by one call. " if cuda else
               "GFLOP/s = the call's matrix-product FLOPs (forward 2·T·B·G·H·(I_l + H) a "
               "layer, G gate blocks; forward + backward three times that) over its median "
               "time; % peak = that over the measured FMA peak. ")
            + "Implementations were timed in interleaved rounds in one process on the same "
            "inputs and weights.", ""]
    out += ["Implementations:", ""]
    for n in impl_names:
        labels = list(dict.fromkeys(r["label"] for r in rows if r["impl"] == n))
        if labels:
            out.append(f"- `{n}`: {', '.join(labels)}")
    out.append("")
    for mode in MODE_TITLES:
        if any(r["mode"] == mode for r in rows):
            out += [f"## {MODE_TITLES[mode]}", "", md_table(*table_rows(rows, mode, impl_names, cuda)),
                    ""]
    header, body = scaling_rows(rows, impl_names)
    if body:
        out += ["## Layer scaling", "", "Time at the sweep's largest L over its time at the "
                "smallest, per implementation (the same medians as above).", "",
                md_table(header, body), ""]
    if notes:
        out += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    with open(path, "w") as f:
        f.write("\n".join(out))


def write_plot(path, meta, rows, impl_names):
    """Time against L for each layer sweep with more than one L (a row of panels
    per sweep and cell, one panel per mode), and below them the speedup over
    torch of every configuration and cell (bars per implementation and mode)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("note: matplotlib is not installed: no plot written (pip install matplotlib)")
        return False
    modes = [m for m in MODE_TITLES if any(r["mode"] == m for r in rows)]
    groups = {}
    for r in rows:
        cfg = CONFIGS.get(r["config"])
        if cfg and cfg.sweep:
            groups.setdefault((cfg.sweep, r["cell"]), []).append(r)
    groups = {k: g for k, g in groups.items() if len({r["L"] for r in g}) > 1}
    # Bars: headline implementations other than the baseline (the slow reference
    # would flatten the scale), one group of bars per configuration and cell.
    bar_impls = [n for n in impl_names if n != BASELINE and IMPLS[n].headline
                 and any(r["impl"] == n and r.get("speedup_vs_torch") for r in rows)]
    keys = list(dict.fromkeys((r["config"], r["cell"]) for r in rows))
    if not groups and not bar_impls:
        log("note: nothing to plot (no layer sweep with more than one L, no speedups)")
        return False

    n_line_rows = len(groups)
    ncols = max(1, len(modes))
    nrows = n_line_rows + (1 if bar_impls else 0)
    fig = plt.figure(figsize=(max(5.5 * ncols, 1.1 * len(keys) + 3), 4 * nrows))
    gs = fig.add_gridspec(nrows, ncols)
    colors = {n: f"C{i}" for i, n in enumerate(impl_names)}
    for gi, ((group, cell), grows) in enumerate(groups.items()):
        for mi, mode in enumerate(modes):
            ax = fig.add_subplot(gs[gi, mi])
            for n in impl_names:
                pts = sorted({r["L"]: r["median_ms"] for r in grows
                              if r["mode"] == mode and r["impl"] == n}.items())
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=n,
                            color=colors[n])
            ax.set_title(f"{group} {cell_label(cell)}: {MODE_TITLES[mode]}")
            ax.set_xlabel("layers L")
            ax.set_ylabel("median ms per call")
            ax.set_xscale("log", base=2)
            ls = sorted({r["L"] for r in grows})
            ax.set_xticks(ls)
            ax.set_xticklabels([str(v) for v in ls])
            ax.grid(True, alpha=0.3)
            ax.legend()
    if bar_impls:
        ax = fig.add_subplot(gs[n_line_rows, :])
        series = [(n, m) for n in bar_impls for m in modes]
        width = 0.8 / len(series)
        hatches = {"fwd": "", "fwdbwd": "//"}
        for si, (n, m) in enumerate(series):
            xs, ys = [], []
            for ki, (c, cell) in enumerate(keys):
                r = next((r for r in rows if r["config"] == c and r["cell"] == cell
                          and r["impl"] == n and r["mode"] == m), None)
                if r and r.get("speedup_vs_torch"):
                    xs.append(ki - 0.4 + width * (si + 0.5))
                    ys.append(r["speedup_vs_torch"])
            if xs:
                ax.bar(xs, ys, width, color=colors[n], hatch=hatches.get(m, ""),
                       edgecolor="black", linewidth=0.4, label=f"{n}, {MODE_TITLES[m]}")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels([f"{c}\n{cell_label(cell)}" for c, cell in keys])
        ax.set_ylabel("x torch (t_torch / t_impl)")
        ax.set_title("speedup over torch.nn per configuration (above 1: faster than torch)")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize="small")
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
    p.add_argument("--cells", help=f"comma-separated, from {', '.join(CELLS)} (default: those of "
                                   f"{', '.join(DEFAULT_CELLS)} that fusedrnn provides)")
    p.add_argument("--impls", help=f"comma-separated, from {', '.join(IMPLS)} (default: all "
                                   f"that apply but the fusedrnn-persistent-* variants; peers when "
                                   f"installed)")
    p.add_argument("--no-reference", action="store_true", help="leave out the reference")
    p.add_argument("--modes", default="fwd,fwdbwd", help="fwd, fwdbwd or both (default)")
    p.add_argument("--quick", action="store_true", help="small sweep and few repetitions")
    p.add_argument("--reps", type=int, help="measurement rounds (default: fit --budget)")
    p.add_argument("--budget", type=float,
                   help="seconds of measurement per configuration and mode when --reps is "
                        "not given (default 7 on the CPU, 3 on CUDA, 1 with --quick); "
                        "slow context-only implementations (the reference) get half")
    p.add_argument("--warmup", type=int, help="warm-up runs per implementation (default 3, "
                                              "1 with --quick)")
    p.add_argument("--reference-limit", type=float, default=5.0,
                   help="skip the reference where one warm-up run takes longer (s)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    p.add_argument("--no-persistent", action="store_true",
                   help="leave out the persistent CUDA tier and its empty-wavefront floor "
                        "(scripts/gpu_check.sh does when the tier's smoke test failed)")
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
    log(f"{'name':12s} {'B':>4s} {'T':>5s} {'I':>5s} {'H':>5s} {'L':>2s}  {'default cells':14s} "
        f"default on  about")
    for n, c in CONFIGS.items():
        log(f"{n:12s} {c.B:4d} {c.T:5d} {c.I:5d} {c.H:5d} {c.L:2d}  {','.join(c.cells):14s} "
            f"{','.join(c.devices) or '-':10s}  {c.about}")
    log("(named with --configs: the listed cells; with --cells as well: every chosen cell)")


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
        args.budget = 1.0 if args.quick else (3.0 if device.type == "cuda" else 7.0)

    notes = []
    ctx = Context(torch, fusedrnn, device, dtype, args)

    # Cells: the chosen ones that this build of fusedrnn provides.
    if args.cells:
        cells = [c.strip() for c in args.cells.split(",") if c.strip()]
        unknown = [c for c in cells if c not in CELLS]
        if unknown:
            sys.exit(f"bench_layers: unknown cell(s) {unknown}; known: {list(CELLS)}")
    else:
        cells = list(DEFAULT_CELLS)
    for c in list(cells):
        if not CELLS[c].available(fusedrnn):
            cells.remove(c)
            notes.append(f"cell {c}: fusedrnn.{CELLS[c].title} is not in this build of "
                         f"fusedrnn: skipped")
    cells = list(dict.fromkeys(cells))
    if not cells:
        sys.exit("bench_layers: none of the chosen cells is provided by this fusedrnn")

    names = [n for n, impl in IMPLS.items() if impl.in_default]
    explicit_impls = bool(args.impls)
    if args.impls:
        names = [n.strip() for n in args.impls.split(",") if n.strip()]
        unknown = [n for n in names if n not in IMPLS]
        if unknown:
            sys.exit(f"bench_layers: unknown implementation(s) {unknown}; known: {list(IMPLS)}")
        if BASELINE not in names:
            names.insert(0, BASELINE)   # every ratio is to the baseline
    if args.no_reference and "reference" in names:
        names.remove("reference")
    if args.no_persistent:
        names = [n for n in names if not n.startswith("fusedrnn-persistent")]
    names = [n for n in IMPLS if n in names]  # registry order, baseline first
    peers = {}
    for n in list(names):
        impl = IMPLS[n]
        why = impl.applicable(ctx)
        if isinstance(impl, PeerImpl):
            peers[n] = impl.status if why is None else why
            if why is not None:
                notes.append(f"peer {n}: {why}, skipped")
        elif why is not None and explicit_impls:
            notes.append(f"{n}: {why}: skipped")
        if why is not None:
            names.remove(n)
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
    # The runs, cell by cell: with both --configs and --cells every chosen cell
    # on every named configuration; otherwise only the cells each
    # configuration lists.
    runs = [(cn, cell) for cell in cells for cn in cnames
            if (args.configs and args.cells) or cell in CONFIGS[cn].cells]
    skipped_cells = [c for c in cells if not any(rc == c for _, rc in runs)]
    if skipped_cells and args.cells:
        notes.append(f"cell(s) {', '.join(skipped_cells)}: not listed by these "
                     f"configurations; name them with --configs and --cells")

    ctx.peak = None
    if device.type == "cpu":
        ctx.peak = cpu_peak.measure(torch.get_num_threads())
        if ctx.peak is None:
            notes.append("the CPU's FMA peak could not be measured (benchmarks/cpu_peak.py "
                         "needs a C compiler with OpenMP): no % peak")
    meta = metadata(ctx)
    meta["cpu_peak"] = ctx.peak
    meta["cells"] = cells
    meta["peers"] = peers
    if not args.configs and "d2l" in cnames:
        notes.append("d2l is also the L=2 point of the d2l layer sweep (d2l-L2 is the same shape)")
    if args.quick:
        notes.append("--quick: few repetitions; indicative only")
    if device.type == "cpu" and torch.cuda.is_available() is False and args.device == "auto":
        notes.append("no GPU available: CPU run")

    log(f"fusedrnn benchmark: {len(runs)} run(s) ({len(cnames)} configuration(s), cells "
        f"{', '.join(cells)}) x {len(args.modes)} mode(s), implementations: {', '.join(names)}")
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

    def save(final):
        """Write the JSON and Markdown results (and the plot when final).  Also
        called after every configuration, so a run cut short (a time limit on
        a lent GPU) still leaves the results it has so far."""
        os.makedirs(args.out, exist_ok=True)
        stem = meta["device_slug"]
        if args.dtype != "float32":
            stem += "-" + args.dtype
        if args.quick:
            stem += "-quick"
        stem = os.path.join(args.out, f"{stem}_{meta['date'][:10]}")
        with open(stem + ".json", "w") as f:
            configs = {}
            for c in cnames:
                d = dataclasses.asdict(CONFIGS[c])
                d.pop("cell")
                d["cells_run"] = [rc for cn, rc in runs if cn == c]
                configs[c] = d
            json.dump({"meta": meta, "configs": configs, "cells": cells,
                       "implementations": {n: {c: impls[n].label_for(c) for c in cells}
                                           for n in names},
                       "peers": peers, "results": rows, "notes": notes}, f, indent=1)
        write_markdown(stem + ".md", meta, rows, names, notes)
        written = [stem + ".json", stem + ".md"]
        if final and write_plot(stem + ".png", meta, rows, names):
            written.append(stem + ".png")
        if final:
            log("wrote " + ", ".join(os.path.relpath(w) for w in written))

    rows = []
    t_start = time.perf_counter()
    for i, (cname, cell) in enumerate(runs, 1):
        cfg = dataclasses.replace(CONFIGS[cname], cell=cell)
        log(f"[{i}/{len(runs)}] {cname} {cell_label(cell)}: B={cfg.B} T={cfg.T} I={cfg.I} "
            f"H={cfg.H} L={cfg.L}")
        try:
            rows += bench_config(ctx, cname, cfg, impls, notes)
        except Exception as e:  # noqa: BLE001 (keep the other configurations' results)
            notes.append(f"{cname} {cell_label(cell)}: failed: {type(e).__name__}: {e}")
            log(f"    failed: {type(e).__name__}: {e}")
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if not args.no_save and i < len(runs):
            meta["partial"] = f"{i} of {len(runs)} runs done"
            save(final=False)
    meta.pop("partial", None)
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
    header, body = scaling_rows(rows, names)
    if body:
        log("== layer scaling: t(largest L) / t(smallest L) of each layer sweep")
        log(text_table(header, body))
        log("")
    if notes:
        log("notes:")
        for n in notes:
            log(f"  - {n}")
    log(f"total {elapsed:.0f} s")

    if not args.no_save:
        save(final=True)
    # Skips (a reference too slow) are fine; an implementation that fails is not.
    failures = [n for n in notes if " failed: " in n or "could not be built" in n]
    if not rows or failures:
        log(f"bench_layers: {len(failures)} failure(s); see the notes above")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
