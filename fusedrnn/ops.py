"""Fake (shape) registrations for the native fusedrnn ops, and the functionals.

The op schemas live in csrc/ops.cpp; the kernels in csrc/cpu and csrc/cuda; the ops' autograd
in csrc/autograd.cpp.
`lstm`, `gru` and `rnn` below are the differentiable functionals the modules call.
"""
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

_ops = torch.ops.fusedrnn


# --------------------------------------------------------------- fake impls --

def _rows(input, batch_sizes, cols, lead=None):
    """Shape of a per-row tensor: (T, B, cols) padded, (N, cols) packed, with an
    optional leading dimension (e.g. L)."""
    rows = (input.shape[0],) if batch_sizes is not None else tuple(input.shape[:2])
    return ((lead,) if lead is not None else ()) + rows + (cols,)


def _check_input_dim(op, input, batch_sizes):
    if batch_sizes is None:
        torch._check(input.dim() == 3,
                     lambda: f"fusedrnn.{op}: expected input of shape (T, B, I), got {input.dim()}-D")
    else:
        torch._check(input.dim() == 2,
                     lambda: f"fusedrnn.{op}: with batch_sizes, expected input of shape (N, I), "
                             f"got {input.dim()}-D")


def _check_directions(op, directions):
    torch._check(directions in (1, 2),
                 lambda: f"fusedrnn.{op}: expected directions to be 1 or 2 (2 for a "
                         f"bidirectional stack), got {directions}")


@torch.library.register_fake("fusedrnn::lstm_forward")
def _lstm_forward_fake(input, hx, cx, weights, has_biases, train, batch_sizes=None,
                       directions=1):
    _check_input_dim("lstm", input, batch_sizes)
    _check_directions("lstm", directions)
    D = directions
    H, P = weights[1].shape[0] // 4, weights[1].shape[1]
    per_layer = (4 if has_biases else 2) + (1 if P != H else 0)
    torch._check(len(weights) > 0 and len(weights) % (per_layer * D) == 0,
                 lambda: f"fusedrnn.lstm: expected {per_layer} weight tensors per layer"
                         f"{' and direction' if D == 2 else ''}, got {len(weights)}")
    L = len(weights) // (per_layer * D)
    B = hx.shape[1]
    output = input.new_empty(_rows(input, batch_sizes, D * P))
    hy = input.new_empty((D * L, B, P))
    cy = input.new_empty((D * L, B, H))
    if train:
        gates = input.new_empty(_rows(input, batch_sizes, 4 * H, D * L))
        cells = input.new_empty(_rows(input, batch_sizes, H, D * L))
        hiddens = input.new_empty(_rows(input, batch_sizes, D * P, L - 1))
    else:
        gates, cells, hiddens = (input.new_empty((0,)) for _ in range(3))
    return output, hy, cy, gates, cells, hiddens


def _like_all(*tensors):
    return [torch.empty_like(t, memory_format=torch.contiguous_format) for t in tensors]


def _masked_grads(output_mask, input, states, weights):
    """The backward ops' results under output_mask ([input, states, weights]):
    a gradient left out is an empty (0,) tensor, the weights' an empty list."""
    want_input, want_states, want_weights = output_mask

    def like(want, t):
        return (torch.empty_like(t, memory_format=torch.contiguous_format) if want
                else input.new_empty((0,)))
    return (like(want_input, input), *(like(want_states, t) for t in states),
            _like_all(*weights) if want_weights else [])


@torch.library.register_fake("fusedrnn::lstm_backward")
def _lstm_backward_fake(grad_output, grad_hy, grad_cy, input, hx, cx, weights, has_biases,
                        output, gates, cells, hiddens, batch_sizes=None, directions=1,
                        output_mask=(True, True, True)):
    return _masked_grads(output_mask, input, (hx, cx), weights)


# ----------------------------------------------------------------- autograd --
#
# The forward ops are differentiable through C++ autograd functions registered
# for the Autograd dispatch key (csrc/autograd.cpp): their backward calls
# lstm_backward / gru_backward / rnn_backward.  (torch.library.register_autograd
# did the same from Python at about 100 µs more host time per forward and per
# backward, measured on the CPU VM.)

# ---------------------------------------------------------------- functional --

def _needs_grad(*tensors) -> bool:
    """Whether backward can be called on the result: keep the activations then."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _autocast(*tensors: Tensor) -> List[Tensor]:
    """Inside torch.autocast for these tensors' device, float32 arguments are cast
    to the autocast dtype (bfloat16 on the CPU, float16/bfloat16 on CUDA), so the
    kernels run in the low dtype (they accumulate in float32).  The casts are
    differentiable: gradients reach float32 parameters in float32."""
    device = tensors[0].device.type
    if not torch.is_autocast_enabled(device):
        return list(tensors)
    low = torch.get_autocast_dtype(device)
    return [t.to(low) if t.dtype == torch.float32 else t for t in tensors]


def lstm(input: Tensor, hx: Tensor, cx: Tensor, weights: Sequence[Tensor],
         has_biases: bool = True, batch_sizes: Optional[Tensor] = None,
         bidirectional: bool = False) -> Tuple[Tensor, Tensor, Tensor]:
    """Stacked LSTM over a whole sequence, differentiable.

    input (T, B, I); hx, cx (L, B, H); weights in nn.LSTM's flat order
    ([w_ih_l0, w_hh_l0, b_ih_l0, b_hh_l0, w_ih_l1, ...], no biases when
    has_biases is False; with proj_size each layer ends with w_hr (P, H) and
    hx, output and h_n have P features).  Returns output (T, B, H),
    h_n (L, B, H), c_n (L, B, H).

    Packed sequences: with ``batch_sizes`` (a PackedSequence's), input is its
    data (N, I) and output is (N, H) in the same layout; h_n and c_n hold each
    sequence's state at its own last step (in the packed, i.e. sorted, order).

    ``bidirectional``: every layer also runs over the reversed sequences with
    its ``_reverse`` weights (nn.LSTM's flat order: each layer's forward group,
    then its reverse group); hx, cx, h_n, c_n are (2L, B, ·), output has 2H
    (2P) features, [forward | reverse], and layers > 0 take 2H inputs.

    The activations backward needs are kept only when a gradient is required.
    """
    input, hx, cx, *weights = _autocast(input, hx, cx, *weights)
    train = _needs_grad(input, hx, cx, *weights)
    output, hy, cy, *_ = _ops.lstm_forward(input, hx, cx, weights, has_biases, train,
                                           batch_sizes, 2 if bidirectional else 1)
    return output, hy, cy


# ====================================================================== GRU ==

def _stack_sizes(op, input, weights, has_biases, batch_sizes, D):
    """(L, H) of a stacked-RNN call with D directions, for the fake implementations."""
    _check_input_dim(op, input, batch_sizes)
    _check_directions(op, D)
    per_layer = 4 if has_biases else 2
    torch._check(len(weights) > 0 and len(weights) % (per_layer * D) == 0,
                 lambda: f"fusedrnn.{op}: expected {per_layer} weight tensors per layer"
                         f"{' and direction' if D == 2 else ''}, got {len(weights)}")
    return len(weights) // (per_layer * D), weights[1].shape[1]


@torch.library.register_fake("fusedrnn::gru_forward")
def _gru_forward_fake(input, hx, weights, has_biases, train, batch_sizes=None, directions=1):
    D = directions
    L, H = _stack_sizes("gru", input, weights, has_biases, batch_sizes, D)
    output = input.new_empty(_rows(input, batch_sizes, D * H))
    hy = input.new_empty((D * L, hx.shape[1], H))
    if train:
        saved = input.new_empty(_rows(input, batch_sizes, 4 * H, D * L))
        hiddens = input.new_empty(_rows(input, batch_sizes, D * H, L - 1))
    else:
        saved, hiddens = (input.new_empty((0,)) for _ in range(2))
    return output, hy, saved, hiddens


@torch.library.register_fake("fusedrnn::gru_backward")
def _gru_backward_fake(grad_output, grad_hy, input, hx, weights, has_biases, output, saved,
                       hiddens, batch_sizes=None, directions=1, output_mask=(True, True, True)):
    return _masked_grads(output_mask, input, (hx,), weights)


# ====================================================================== RNN ==

@torch.library.register_fake("fusedrnn::rnn_forward")
def _rnn_forward_fake(input, hx, weights, has_biases, relu, train, batch_sizes=None,
                      directions=1):
    D = directions
    L, H = _stack_sizes("rnn", input, weights, has_biases, batch_sizes, D)
    output = input.new_empty(_rows(input, batch_sizes, D * H))
    hy = input.new_empty((D * L, hx.shape[1], H))
    hiddens = (input.new_empty(_rows(input, batch_sizes, D * H, L - 1)) if train
               else input.new_empty((0,)))
    return output, hy, hiddens


@torch.library.register_fake("fusedrnn::rnn_backward")
def _rnn_backward_fake(grad_output, grad_hy, input, hx, weights, has_biases, relu, output,
                       hiddens, batch_sizes=None, directions=1, output_mask=(True, True, True)):
    return _masked_grads(output_mask, input, (hx,), weights)


# --------------------------------------------------------------- functionals --

def gru(input: Tensor, hx: Tensor, weights: Sequence[Tensor],
        has_biases: bool = True, batch_sizes: Optional[Tensor] = None,
        bidirectional: bool = False) -> Tuple[Tensor, Tensor]:
    """Stacked GRU over a whole sequence, differentiable.

    input (T, B, I); hx (L, B, H); weights in nn.GRU's flat order
    ([w_ih_l0, w_hh_l0, b_ih_l0, b_hh_l0, w_ih_l1, ...], gate order r, z, n;
    no biases when has_biases is False).  Returns output (T, B, H) and
    h_n (L, B, H).  The activations backward needs are kept only when a
    gradient is required.  ``batch_sizes`` (a packed sequence) and
    ``bidirectional``: as in :func:`lstm`.
    """
    input, hx, *weights = _autocast(input, hx, *weights)
    train = _needs_grad(input, hx, *weights)
    output, hy, *_ = _ops.gru_forward(input, hx, weights, has_biases, train, batch_sizes,
                                      2 if bidirectional else 1)
    return output, hy


_NONLINEARITIES = ("tanh", "relu")


def rnn(input: Tensor, hx: Tensor, weights: Sequence[Tensor], has_biases: bool = True,
        nonlinearity: str = "tanh", batch_sizes: Optional[Tensor] = None,
        bidirectional: bool = False) -> Tuple[Tensor, Tensor]:
    """Stacked plain (Elman) RNN over a whole sequence, differentiable.

    h_t = act(x_t W_ihᵀ + b_ih + h_{t-1} W_hhᵀ + b_hh), act = tanh or relu
    (``nonlinearity``).  input (T, B, I); hx (L, B, H); weights in nn.RNN's flat
    order.  Returns output (T, B, H) and h_n (L, B, H).  ``batch_sizes`` (a
    packed sequence) and ``bidirectional``: as in :func:`lstm`.
    """
    if nonlinearity not in _NONLINEARITIES:
        raise ValueError(
            f"fusedrnn.rnn: unknown nonlinearity {nonlinearity!r}; select from 'tanh' or 'relu'")
    input, hx, *weights = _autocast(input, hx, *weights)
    train = _needs_grad(input, hx, *weights)
    output, hy, _ = _ops.rnn_forward(input, hx, weights, has_biases, nonlinearity == "relu",
                                     train, batch_sizes, 2 if bidirectional else 1)
    return output, hy


__all__: List[str] = ["lstm", "gru", "rnn"]
