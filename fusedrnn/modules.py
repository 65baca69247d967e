"""Drop-in replacements for torch.nn recurrent modules, running fusedrnn's kernels."""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import _C, ops


def _not_implemented(what: str) -> NotImplementedError:
    return NotImplementedError(
        f"fusedrnn.LSTM: {what} is not implemented yet; use torch.nn.LSTM for it for now")


class LSTM(nn.LSTM):
    """A stacked LSTM computed by fusedrnn's fused kernels.

    Same constructor, parameters (names, shapes, initialisation), ``state_dict``
    and forward contract as :class:`torch.nn.LSTM`, of which it is a subclass:
    a ``torch.nn.LSTM`` state_dict loads unchanged, and back.

    Inputs: ``input`` of shape (T, B, I), (B, T, I) with ``batch_first=True``,
    or unbatched (T, I); optional ``hx = (h_0, c_0)`` of shape (L, B, H), or
    (L, H) for unbatched input.  Returns ``output, (h_n, c_n)``.

    Not implemented yet (NotImplementedError): ``bidirectional=True``,
    ``proj_size > 0`` and PackedSequence input.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.bidirectional:
            raise _not_implemented("bidirectional=True")
        if self.proj_size > 0:
            raise _not_implemented("proj_size > 0")

    def _check_state(self, state, name: str, input: Tensor, expected: Tuple[int, ...]):
        if not isinstance(state, Tensor):
            raise TypeError(f"fusedrnn.LSTM: expected {name} to be a Tensor, got {type(state).__name__}")
        if tuple(state.shape) != expected:
            raise RuntimeError(
                f"Expected hidden[{0 if name == 'h_0' else 1}] ({name}) size {expected}, "
                f"got {list(state.shape)}")
        if state.dtype != input.dtype:
            raise ValueError(
                f"fusedrnn.LSTM: {name} dtype ({state.dtype}) does not match input dtype "
                f"({input.dtype})")
        if state.device != input.device:
            raise RuntimeError(
                f"fusedrnn.LSTM: {name} is on {state.device} but input is on {input.device}; "
                "input and states must be on the module's device")

    def forward(self, input, hx: Optional[Tuple[Tensor, Tensor]] = None):
        if isinstance(input, PackedSequence):
            raise _not_implemented("PackedSequence input")
        if not isinstance(input, Tensor):
            raise TypeError(f"fusedrnn.LSTM: expected input to be a Tensor, got {type(input).__name__}")
        if input.dim() not in (2, 3):
            raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {input.dim()}D instead")
        batched = input.dim() == 3
        x = input if batched else input.unsqueeze(1)
        if batched and self.batch_first:
            x = x.transpose(0, 1)
        T, B, I = x.shape
        if I != self.input_size:
            raise RuntimeError(
                f"input.size(-1) must be equal to input_size. Expected {self.input_size}, got {I}")
        if T == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN "
                               "(fusedrnn.LSTM got an input with 0 timesteps)")
        weights = self._flat_weights
        w0 = weights[0]
        if x.dtype != w0.dtype:
            raise ValueError(
                f"RNN input dtype ({x.dtype}) does not match weight dtype ({w0.dtype}). "
                f"Convert input: input.to({w0.dtype}), or convert model: model.to({x.dtype})")
        if x.device != w0.device:
            raise RuntimeError(
                f"fusedrnn.LSTM: input is on {x.device} but the module's weights are on "
                f"{w0.device}; move one of them (e.g. input.to({str(w0.device)!r}))")
        if x.device.type not in ("cpu", "cuda") or (x.is_cuda and not _C.cuda_compiled):
            raise RuntimeError(
                f"fusedrnn.LSTM: this build of fusedrnn has no kernels for {x.device.type} "
                "tensors (CUDA kernels are compiled only when nvcc and a CUDA build of torch "
                "are present at install time)")
        if not x.is_floating_point():
            raise ValueError(f"fusedrnn.LSTM: input must be floating point, got {x.dtype}")

        L, H = self.num_layers, self.hidden_size
        if hx is None:
            h0 = x.new_zeros((L, B, H))
            c0 = x.new_zeros((L, B, H))
        else:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError("fusedrnn.LSTM: expected hx to be a tuple (h_0, c_0) of two tensors")
            h0, c0 = hx
            if isinstance(h0, Tensor) and isinstance(c0, Tensor):
                want = 3 if batched else 2
                if h0.dim() != want or c0.dim() != want:
                    kind = "batched 3-D" if batched else "unbatched 2-D"
                    raise RuntimeError(
                        f"For {kind} input, hx and cx should also be {want}-D but got "
                        f"({h0.dim()}-D, {c0.dim()}-D) tensors")
            if not batched:
                h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
            self._check_state(h0, "h_0", x, (L, B, H))
            self._check_state(c0, "c_0", x, (L, B, H))

        if self.dropout > 0 and self.training and L > 1:
            # Dropout sits between layers: run the stack one layer per op call.
            per = 4 if self.bias else 2
            hs, cs = [], []
            layer_in = x
            for l in range(L):
                out, h_l, c_l = ops.lstm(layer_in, h0[l:l + 1], c0[l:l + 1],
                                         weights[l * per:(l + 1) * per], self.bias)
                hs.append(h_l)
                cs.append(c_l)
                layer_in = F.dropout(out, p=self.dropout, training=True) if l < L - 1 else out
            output, h_n, c_n = layer_in, torch.cat(hs, 0), torch.cat(cs, 0)
        else:
            output, h_n, c_n = ops.lstm(x, h0, c0, weights, self.bias)

        if batched and self.batch_first:
            output = output.transpose(0, 1)
        if not batched:
            output, h_n, c_n = output.squeeze(1), h_n.squeeze(1), c_n.squeeze(1)
        return output, (h_n, c_n)
