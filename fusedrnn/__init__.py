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


__all__ = ["LSTM", "GRU", "RNN", "ops", "reference", "cuda_compiled"]
