"""Autograd and fake (shape) registrations for the native fusedrnn ops.

The op schemas live in csrc/ops.cpp; the kernels in csrc/cpu and csrc/cuda.
`lstm` below is the differentiable functional the modules call.
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

def lstm(input: Tensor, hx: Tensor, cx: Tensor, weights: Sequence[Tensor],
         has_biases: bool = True) -> Tuple[Tensor, Tensor, Tensor]:
    """Stacked LSTM over a whole sequence, differentiable.

    input (T, B, I); hx, cx (L, B, H); weights in nn.LSTM's flat order
    ([w_ih_l0, w_hh_l0, b_ih_l0, b_hh_l0, w_ih_l1, ...], no biases when
    has_biases is False).  Returns output (T, B, H), h_n (L, B, H), c_n (L, B, H).
    The activations backward needs are kept only when a gradient is required.
    """
    weights = list(weights)
    train = torch.is_grad_enabled() and (
        input.requires_grad or hx.requires_grad or cx.requires_grad
        or any(w.requires_grad for w in weights))
    output, hy, cy, *_ = _ops.lstm_forward(input, hx, cx, weights, has_biases, train)
    return output, hy, cy


__all__: List[str] = ["lstm"]
