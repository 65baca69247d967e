"""Autograd and fake (shape) registrations for the native fusedrnn ops.

The op schemas live in csrc/ops.cpp; the kernels in csrc/cpu and csrc/cuda.
`lstm`, `gru` and `rnn` below are the differentiable functionals the modules call.
"""
from typing import List, Sequence, Tuple

import torch
from torch import Tensor

_ops = torch.ops.fusedrnn


# --------------------------------------------------------------- fake impls --

@torch.library.register_fake("fusedrnn::lstm_forward")
def _lstm_forward_fake(input, hx, cx, weights, has_biases, train):
    torch._check(input.dim() == 3, lambda: f"fusedrnn.lstm: expected input of shape (T, B, I), got {input.dim()}-D")
    per_layer = 4 if has_biases else 2
    torch._check(len(weights) > 0 and len(weights) % per_layer == 0,
                 lambda: f"fusedrnn.lstm: expected {per_layer} weight tensors per layer, got {len(weights)}")
    L = len(weights) // per_layer
    T, B, _ = input.shape
    H = weights[1].shape[1]
    output = input.new_empty((T, B, H))
    hy = input.new_empty((L, B, H))
    cy = input.new_empty((L, B, H))
    if train:
        gates = input.new_empty((L, T, B, 4 * H))
        cells = input.new_empty((L, T, B, H))
        hiddens = input.new_empty((L - 1, T, B, H))
    else:
        gates, cells, hiddens = (input.new_empty((0,)) for _ in range(3))
    return output, hy, cy, gates, cells, hiddens


@torch.library.register_fake("fusedrnn::lstm_backward")
def _lstm_backward_fake(grad_output, grad_hy, grad_cy, input, hx, cx, weights, has_biases,
                        output, gates, cells, hiddens):
    return (torch.empty_like(input, memory_format=torch.contiguous_format),
            torch.empty_like(hx, memory_format=torch.contiguous_format),
            torch.empty_like(cx, memory_format=torch.contiguous_format),
            [torch.empty_like(w, memory_format=torch.contiguous_format) for w in weights])


# ----------------------------------------------------------------- autograd --

def _setup_context(ctx, inputs, output):
    input, hx, cx, weights, has_biases, train = inputs
    out, _hy, _cy, gates, cells, hiddens = output
    ctx.has_biases = has_biases
    ctx.train = train
    ctx.num_weights = len(weights)
    ctx.save_for_backward(input, hx, cx, out, gates, cells, hiddens, *weights)


def _backward(ctx, grad_output, grad_hy, grad_cy, *_workspace_grads):
    input, hx, cx, out, gates, cells, hiddens, *weights = ctx.saved_tensors
    if not ctx.train:
        raise RuntimeError(
            "fusedrnn.lstm_forward was called with train=False, which keeps nothing for "
            "backward; call it with train=True (fusedrnn.ops.lstm does this whenever a "
            "gradient is needed)")
    # Outputs that did not reach the loss have no gradient: pass zeros.
    if grad_output is None:
        grad_output = torch.zeros_like(out)
    if grad_hy is None:
        grad_hy = torch.zeros_like(hx)
    if grad_cy is None:
        grad_cy = torch.zeros_like(cx)
    grad_input, grad_hx, grad_cx, grad_w = _ops.lstm_backward(
        grad_output, grad_hy, grad_cy, input, hx, cx, weights, ctx.has_biases, out, gates,
        cells, hiddens)
    return grad_input, grad_hx, grad_cx, list(grad_w), None, None


torch.library.register_autograd("fusedrnn::lstm_forward", _backward,
                                setup_context=_setup_context)


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
         has_biases: bool = True) -> Tuple[Tensor, Tensor, Tensor]:
    """Stacked LSTM over a whole sequence, differentiable.

    input (T, B, I); hx, cx (L, B, H); weights in nn.LSTM's flat order
    ([w_ih_l0, w_hh_l0, b_ih_l0, b_hh_l0, w_ih_l1, ...], no biases when
    has_biases is False).  Returns output (T, B, H), h_n (L, B, H), c_n (L, B, H).
    The activations backward needs are kept only when a gradient is required.
    """
    input, hx, cx, *weights = _autocast(input, hx, cx, *weights)
    train = _needs_grad(input, hx, cx, *weights)
    output, hy, cy, *_ = _ops.lstm_forward(input, hx, cx, weights, has_biases, train)
    return output, hy, cy


# ====================================================================== GRU ==

def _stack_sizes(op, input, weights, has_biases):
    """(T, B, L, H) of a stacked-RNN call, for the fake implementations."""
    torch._check(input.dim() == 3,
                 lambda: f"fusedrnn.{op}: expected input of shape (T, B, I), got {input.dim()}-D")
    per_layer = 4 if has_biases else 2
    torch._check(len(weights) > 0 and len(weights) % per_layer == 0,
                 lambda: f"fusedrnn.{op}: expected {per_layer} weight tensors per layer, "
                         f"got {len(weights)}")
    T, B, _ = input.shape
    return T, B, len(weights) // per_layer, weights[1].shape[1]


@torch.library.register_fake("fusedrnn::gru_forward")
def _gru_forward_fake(input, hx, weights, has_biases, train):
    T, B, L, H = _stack_sizes("gru", input, weights, has_biases)
    output = input.new_empty((T, B, H))
    hy = input.new_empty((L, B, H))
    if train:
        saved = input.new_empty((L, T, B, 4 * H))
        hiddens = input.new_empty((L - 1, T, B, H))
    else:
        saved, hiddens = (input.new_empty((0,)) for _ in range(2))
    return output, hy, saved, hiddens


@torch.library.register_fake("fusedrnn::gru_backward")
def _gru_backward_fake(grad_output, grad_hy, input, hx, weights, has_biases, output, saved,
                       hiddens):
    return (torch.empty_like(input, memory_format=torch.contiguous_format),
            torch.empty_like(hx, memory_format=torch.contiguous_format),
            [torch.empty_like(w, memory_format=torch.contiguous_format) for w in weights])


def _no_train_error(op):
    return RuntimeError(
        f"fusedrnn.{op}_forward was called with train=False, which keeps nothing for "
        f"backward; call it with train=True (fusedrnn.ops.{op} does this whenever a "
        "gradient is needed)")


def _gru_setup_context(ctx, inputs, output):
    input, hx, weights, has_biases, train = inputs
    out, _hy, saved, hiddens = output
    ctx.has_biases = has_biases
    ctx.train = train
    ctx.save_for_backward(input, hx, out, saved, hiddens, *weights)


def _gru_backward(ctx, grad_output, grad_hy, *_workspace_grads):
    input, hx, out, saved, hiddens, *weights = ctx.saved_tensors
    if not ctx.train:
        raise _no_train_error("gru")
    if grad_output is None:
        grad_output = torch.zeros_like(out)
    if grad_hy is None:
        grad_hy = torch.zeros_like(hx)
    grad_input, grad_hx, grad_w = _ops.gru_backward(
        grad_output, grad_hy, input, hx, weights, ctx.has_biases, out, saved, hiddens)
    return grad_input, grad_hx, list(grad_w), None, None


torch.library.register_autograd("fusedrnn::gru_forward", _gru_backward,
                                setup_context=_gru_setup_context)


# ====================================================================== RNN ==

@torch.library.register_fake("fusedrnn::rnn_forward")
def _rnn_forward_fake(input, hx, weights, has_biases, relu, train):
    T, B, L, H = _stack_sizes("rnn", input, weights, has_biases)
    output = input.new_empty((T, B, H))
    hy = input.new_empty((L, B, H))
    hiddens = input.new_empty((L - 1, T, B, H)) if train else input.new_empty((0,))
    return output, hy, hiddens


@torch.library.register_fake("fusedrnn::rnn_backward")
def _rnn_backward_fake(grad_output, grad_hy, input, hx, weights, has_biases, relu, output,
                       hiddens):
    return (torch.empty_like(input, memory_format=torch.contiguous_format),
            torch.empty_like(hx, memory_format=torch.contiguous_format),
            [torch.empty_like(w, memory_format=torch.contiguous_format) for w in weights])


def _rnn_setup_context(ctx, inputs, output):
    input, hx, weights, has_biases, relu, train = inputs
    out, _hy, hiddens = output
    ctx.has_biases = has_biases
    ctx.relu = relu
    ctx.train = train
    ctx.save_for_backward(input, hx, out, hiddens, *weights)


def _rnn_backward(ctx, grad_output, grad_hy, *_workspace_grads):
    input, hx, out, hiddens, *weights = ctx.saved_tensors
    if not ctx.train:
        raise _no_train_error("rnn")
    if grad_output is None:
        grad_output = torch.zeros_like(out)
    if grad_hy is None:
        grad_hy = torch.zeros_like(hx)
    grad_input, grad_hx, grad_w = _ops.rnn_backward(
        grad_output, grad_hy, input, hx, weights, ctx.has_biases, ctx.relu, out, hiddens)
    return grad_input, grad_hx, list(grad_w), None, None, None


torch.library.register_autograd("fusedrnn::rnn_forward", _rnn_backward,
                                setup_context=_rnn_setup_context)


# --------------------------------------------------------------- functionals --

def gru(input: Tensor, hx: Tensor, weights: Sequence[Tensor],
        has_biases: bool = True) -> Tuple[Tensor, Tensor]:
    """Stacked GRU over a whole sequence, differentiable.

    input (T, B, I); hx (L, B, H); weights in nn.GRU's flat order
    ([w_ih_l0, w_hh_l0, b_ih_l0, b_hh_l0, w_ih_l1, ...], gate order r, z, n;
    no biases when has_biases is False).  Returns output (T, B, H) and
    h_n (L, B, H).  The activations backward needs are kept only when a
    gradient is required.
    """
    input, hx, *weights = _autocast(input, hx, *weights)
    train = _needs_grad(input, hx, *weights)
    output, hy, *_ = _ops.gru_forward(input, hx, weights, has_biases, train)
    return output, hy


_NONLINEARITIES = ("tanh", "relu")


def rnn(input: Tensor, hx: Tensor, weights: Sequence[Tensor], has_biases: bool = True,
        nonlinearity: str = "tanh") -> Tuple[Tensor, Tensor]:
    """Stacked plain (Elman) RNN over a whole sequence, differentiable.

    h_t = act(x_t W_ihᵀ + b_ih + h_{t-1} W_hhᵀ + b_hh), act = tanh or relu
    (``nonlinearity``).  input (T, B, I); hx (L, B, H); weights in nn.RNN's flat
    order.  Returns output (T, B, H) and h_n (L, B, H).
    """
    if nonlinearity not in _NONLINEARITIES:
        raise ValueError(
            f"fusedrnn.rnn: unknown nonlinearity {nonlinearity!r}; select from 'tanh' or 'relu'")
    input, hx, *weights = _autocast(input, hx, *weights)
    train = _needs_grad(input, hx, *weights)
    output, hy, _ = _ops.rnn_forward(input, hx, weights, has_biases, nonlinearity == "relu",
                                     train)
    return output, hy


__all__: List[str] = ["lstm", "gru", "rnn"]
