"""fusedrnn: stacked recurrent networks with fused per-layer-timestep kernels.

`fusedrnn.LSTM`, `fusedrnn.GRU` and `fusedrnn.RNN` are drop-ins for
`torch.nn.LSTM` / `nn.GRU` / `nn.RNN`; `fusedrnn.reference` is the plain
PyTorch ground truth; `fusedrnn.ops` holds the autograd-enabled functionals
(`lstm`, `gru`, `rnn`) over the native ops `torch.ops.fusedrnn.*`.
"""
import torch  # noqa: F401  (loads libtorch/libc10, which fusedrnn._C links against)

try:
    from . import _C  # noqa: F401  (loading the library registers the ops)
except ImportError as e:  # pragma: no cover - depends on the build
    raise ImportError(
        f"fusedrnn's native library fusedrnn._C could not be loaded ({e}). Install with "
        "`pip install --no-build-isolation .` or build in place with "
        "`python setup.py build_ext --inplace` (with the torch you run it with).") from e

from . import ops, reference  # noqa: E402
from .modules import GRU, LSTM, RNN  # noqa: E402

__version__ = "0.1.0"


def cuda_compiled() -> bool:
    """True when this build of fusedrnn contains its CUDA kernels."""
    return bool(_C.cuda_compiled)


# The kernel switches (csrc/options.h): option name -> its values, in order
# (index 0 is always "auto").
_OPTIONS = {
    # Which CUDA LSTM tier runs: the selector's choice (the persistent tier
    # where the weights fit on chip and B <= 64, else the
    # general tier), the general tier (one fused kernel per layer-timestep)
    # or the persistent wavefront kernel.
    "cuda_tier": ("auto", "general", "persistent"),
    # How the CUDA general tier issues its step kernels: auto (the graph, for
    # every cell: measured faster than per-step launches on an H100), one
    # launch per step, or the step loop captured in a CUDA graph and replayed.
    "cuda_step_launch": ("auto", "per_step", "graph"),
    # Tensor-core (WMMA) products in the persistent tier's kernels (forward
    # and backward) for bfloat16/float16, and for float32 as TF32 when
    # torch.backends.cuda.matmul.allow_tf32 is on, where their tiles fit: EXPERIMENTAL,
    # so auto means off (they pass their tests on an H200 but measured faster
    # only at 8 layers, 2026-12-04).
    "persistent_mma": ("auto", "off", "on"),
    # Bidirectional layers on CUDA (LSTM, GRU, RNN): each direction its own
    # call ("separate"), or both directions of a layer with one kernel launch
    # per step in the general tier ("one_launch"; the LSTM falls back to
    # separate with a projection or cuda_tier='persistent').  auto: one_launch
    # for GRU and RNN, and for the LSTM where the persistent tier would not run
    # its directions (an H200 measured both ways faster there, 2026-12-04);
    # separate for an LSTM whose directions the persistent tier runs.
    "cuda_bidirectional": ("auto", "separate", "one_launch"),
    # The persistent tier's backward splitting the batch across CTAs where its
    # staged rows do not fit one CTA whole: auto = on (measured faster on an
    # H200, 2026-12-04), "off" for comparisons.
    "persistent_bwd_split": ("auto", "off", "on"),
    # The persistent forward applying the LSTM cell CTA-wide, one (unit, batch
    # row) pair per thread after the chunk's products, instead of 8 lanes of
    # each warp task: auto = on for float32, bfloat16 and float16 where its
    # product area costs no staged rows, off for float64 (measured on an
    # H200, 2026-12-04; csrc/cuda/persistent_plan.h, plan_lstm_auto).
    "persistent_cta_epilogue": ("auto", "off", "on"),
    # Threads per CTA of the persistent kernels: 512 gives each SM twice the
    # warps to hide latency with, at 128 registers a thread.  auto = 512 for
    # the float32 / bfloat16 / float16 backward and for the float32 forward
    # with at least 16 warp tasks per CTA, else 256 (and 256 where the
    # tensor-core products are asked for); measured on an H200, 2026-12-04.
    "persistent_threads": ("auto", "256", "512"),
    # Hidden units per forward warp task (FMA path): 2 (EXPERIMENTAL, written
    # without a GPU, 2026-12-04) loads each staged chunk once for twice the
    # products; only with the CTA-wide epilogue, at 256 threads per CTA or
    # (float32) 512 (auto threads then count the two-unit tasks).  "regs"
    # (EXPERIMENTAL, written without a GPU, 2026-12-05): float32 weights kept
    # in registers, each warp owning up to 8 gate rows for every step (256
    # threads, CTA-wide epilogue, H % 4 == 0, a staged row of at most 512:
    # H <= 512 at one layer, H <= 256 above).  auto means 1.
    "persistent_fwd_task_units": ("auto", "1", "2", "regs"),
}


def set_option(name: str, value: str) -> None:
    """Set a process-wide kernel switch, e.g. ``set_option("cuda_tier", "general")``.

    Options: ``cuda_tier`` in ("auto", "general", "persistent"),
    ``cuda_step_launch`` in ("auto", "per_step", "graph"),
    ``persistent_mma`` in ("auto", "off", "on") (experimental tensor-core
    products in the persistent kernels; auto = off),
    ``cuda_bidirectional`` in ("auto", "separate", "one_launch") (both
    directions of a bidirectional layer in one launch per step) and
    ``persistent_bwd_split`` in ("auto", "off", "on") (the persistent
    backward's batch split; auto = on) and ``persistent_cta_epilogue`` in
    ("auto", "off", "on") (the persistent forward's cell CTA-wide; auto = on
    except for float64), ``persistent_threads`` in ("auto", "256", "512")
    (threads per CTA of the persistent kernels; auto picks per dtype,
    direction and size) and ``persistent_fwd_task_units`` in ("auto", "1",
    "2", "regs") (experimental: hidden units per forward warp task, or the
    float32 forward's weights in registers; auto = 1).
    Meant for tests and
    benchmarks that compare implementations; "auto" is the default."""
    if name not in _OPTIONS:
        raise ValueError(f"fusedrnn.set_option: unknown option {name!r}; "
                         f"expected one of {sorted(_OPTIONS)}")
    values = _OPTIONS[name]
    if value not in values:
        raise ValueError(f"fusedrnn.set_option: option {name!r} takes one of {values}, "
                         f"got {value!r}")
    _C.set_option(name, values.index(value))


def get_option(name: str) -> str:
    """The current value of a kernel switch (see :func:`set_option`)."""
    if name not in _OPTIONS:
        raise ValueError(f"fusedrnn.get_option: unknown option {name!r}; "
                         f"expected one of {sorted(_OPTIONS)}")
    return _OPTIONS[name][_C.get_option(name)]


__all__ = ["LSTM", "GRU", "RNN", "ops", "reference", "cuda_compiled", "set_option",
           "get_option"]
