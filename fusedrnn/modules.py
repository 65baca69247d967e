"""Drop-in replacements for torch.nn recurrent modules, running fusedrnn's kernels.

`LSTM`, `GRU` and `RNN` subclass `torch.nn.LSTM` / `nn.GRU` / `nn.RNN` (same
constructor, parameters, initialisation and ``state_dict``) and share their
forward plumbing — input/state validation, layouts (batch_first, unbatched),
dropout between layers — through `_FusedRNNMixin`; each only says how to call
its op.
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import _C, ops


def _not_implemented(what: str, kind: str = "LSTM") -> NotImplementedError:
    return NotImplementedError(
        f"fusedrnn.{kind}: {what} is not implemented yet; use torch.nn.{kind} for it for now")


class _FusedRNNMixin:
    """Forward plumbing shared by the fused modules (mixed in before the nn class).

    Subclasses set ``_kind`` ("LSTM", "GRU", "RNN"), ``_state_names`` (the
    names of the recurrent states in hx: ("h_0", "c_0") or ("h_0",)) and
    implement ``_call_op(x, states, weights, batch_sizes, bidirectional) ->
    (output, finals)`` running the stack (or one layer) on (T, B, I) input, or
    on a packed sequence's (N, I) data with its batch_sizes, and (D*L, B, ·)
    states.

    ``bidirectional=True`` is the ops' directions=2 (csrc/ops.cpp): the op
    runs both directions of every layer, the reverse one over the
    time-reversed sequences (each within its own length when packed) with the
    ``_reverse`` weights; the layer's output is both concatenated, (T, B, 2H),
    and the states are ordered as in torch.nn: [l0 fwd, l0 bwd, l1 fwd, ...].

    PackedSequence input runs the ops on its data with its batch_sizes (no
    work on padding; each sequence's final state is taken at its own last
    step); states are permuted by ``sorted_indices`` on the way in and
    ``unsorted_indices`` on the way out, as torch.nn does.
    """

    _kind = "RNN"
    _state_names: Tuple[str, ...] = ("h_0",)
    _has_cuda_kernels = False  # the cell's ops have a CUDA implementation

    def _state_sizes(self) -> Tuple[int, ...]:
        """The last dimension of each state: h has proj_size features when the
        LSTM projects, c always hidden_size."""
        proj = getattr(self, "proj_size", 0)
        h = proj if proj > 0 else self.hidden_size
        return (h,) + (self.hidden_size,) * (len(self._state_names) - 1)

    def _state_label(self, i: int, name: str) -> str:
        # nn.LSTM says "hidden[0]"/"hidden[1]", nn.GRU/RNN just "hidden".
        if len(self._state_names) > 1:
            return f"hidden[{i}] ({name})"
        return f"hidden ({name})"

    def _check_state(self, state, i: int, input: Tensor, expected: Tuple[int, ...]) -> None:
        name = self._state_names[i]
        if not isinstance(state, Tensor):
            raise TypeError(
                f"fusedrnn.{self._kind}: expected {name} to be a Tensor, got {type(state).__name__}")
        if tuple(state.shape) != expected:
            raise RuntimeError(
                f"Expected {self._state_label(i, name)} size {expected}, got {list(state.shape)}")
        if state.dtype != input.dtype:
            raise ValueError(
                f"fusedrnn.{self._kind}: {name} dtype ({state.dtype}) does not match input dtype "
                f"({input.dtype})")
        if state.device != input.device:
            raise RuntimeError(
                f"fusedrnn.{self._kind}: {name} is on {state.device} but input is on "
                f"{input.device}; input and states must be on the module's device")

    def _prepare_input(self, input) -> Tuple[Tensor, bool]:
        """Validate ``input`` against the module; return it as (T, B, I) (or a
        packed sequence's (N, I) data) and whether it was batched."""
        kind = self._kind
        if isinstance(input, PackedSequence):
            x = input.data
            if not isinstance(x, Tensor) or x.dim() != 2:
                raise ValueError(
                    f"fusedrnn.{kind}: a PackedSequence's data must be 2-D (N, input_size), got "
                    f"{getattr(x, 'shape', type(x).__name__)}")
            bs = input.batch_sizes
            if not isinstance(bs, Tensor) or bs.dim() != 1 or bs.device.type != "cpu" \
                    or bs.dtype != torch.int64:
                raise ValueError(
                    f"fusedrnn.{kind}: a PackedSequence's batch_sizes must be a 1-D int64 CPU "
                    "tensor (as torch.nn.utils.rnn.pack_padded_sequence makes it)")
            T, I = bs.numel(), x.shape[1]
            self._check_input_tensor(x, I)
            if T == 0:
                raise RuntimeError(f"fusedrnn.{kind}: the PackedSequence holds no timesteps")
            return x, True
        if not isinstance(input, Tensor):
            raise TypeError(f"fusedrnn.{kind}: expected input to be a Tensor, got {type(input).__name__}")
        if input.dim() not in (2, 3):
            raise ValueError(f"{kind}: Expected input to be 2D or 3D, got {input.dim()}D instead")
        batched = input.dim() == 3
        x = input if batched else input.unsqueeze(1)
        if batched and self.batch_first:
            x = x.transpose(0, 1)
        T, B, I = x.shape
        if T == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN "
                               f"(fusedrnn.{kind} got an input with 0 timesteps)")
        self._check_input_tensor(x, I)
        return x, batched

    def _check_input_tensor(self, x: Tensor, I: int) -> None:
        kind = self._kind
        if I != self.input_size:
            raise RuntimeError(
                f"input.size(-1) must be equal to input_size. Expected {self.input_size}, got {I}")
        w0 = self._flat_weights[0]
        if x.dtype != w0.dtype:
            raise ValueError(
                f"RNN input dtype ({x.dtype}) does not match weight dtype ({w0.dtype}). "
                f"Convert input: input.to({w0.dtype}), or convert model: model.to({x.dtype})")
        if x.device != w0.device:
            raise RuntimeError(
                f"fusedrnn.{kind}: input is on {x.device} but the module's weights are on "
                f"{w0.device}; move one of them (e.g. input.to({str(w0.device)!r}))")
        if x.device.type not in ("cpu", "cuda") or (x.is_cuda and not _C.cuda_compiled):
            raise RuntimeError(
                f"fusedrnn.{kind}: this build of fusedrnn has no kernels for {x.device.type} "
                "tensors (CUDA kernels are compiled only when nvcc and a CUDA build of torch "
                "are present at install time)")
        if x.is_cuda and not self._has_cuda_kernels:
            raise _not_implemented("CUDA input (its kernels are CPU-only so far)", kind)
        if not x.is_floating_point():
            raise ValueError(f"fusedrnn.{kind}: input must be floating point, got {x.dtype}")

    def _prepare_states(self, hx, x: Tensor, batched: bool, B: int,
                        sorted_indices: Optional[Tensor] = None) -> List[Tensor]:
        """Validate ``hx`` (a tensor for GRU/RNN, a pair for LSTM, or None);
        return the states as (D*L, B, ·) tensors (D = 2 when bidirectional),
        permuted by ``sorted_indices`` (packed input) into the packed order."""
        DL = self.num_layers * (2 if self.bidirectional else 1)
        sizes = self._state_sizes()
        n = len(self._state_names)
        if hx is None:
            return _zero_states(x, [(DL, B, h) for h in sizes])
        if n == 1:
            if not isinstance(hx, Tensor):
                raise TypeError(
                    f"fusedrnn.{self._kind}: expected hx to be a Tensor (h_0), got {type(hx).__name__}")
            states = [hx]
        else:
            if not isinstance(hx, (tuple, list)) or len(hx) != n:
                raise TypeError(
                    f"fusedrnn.{self._kind}: expected hx to be a tuple (h_0, c_0) of two tensors")
            states = list(hx)
        if all(isinstance(s, Tensor) for s in states):
            want = 3 if batched else 2
            if any(s.dim() != want for s in states):
                kind = "batched 3-D" if batched else "unbatched 2-D"
                if n == 1:
                    raise RuntimeError(
                        f"For {kind} input, hx should also be {want}-D but got "
                        f"{states[0].dim()}-D tensor")
                dims = ", ".join(f"{s.dim()}-D" for s in states)
                raise RuntimeError(
                    f"For {kind} input, hx and cx should also be {want}-D but got "
                    f"({dims}) tensors")
        if not batched:
            states = [s.unsqueeze(1) for s in states]
        for i, s in enumerate(states):
            self._check_state(s, i, x, (DL, B, sizes[i]))
        if sorted_indices is not None:
            states = [s.index_select(1, sorted_indices.to(s.device)) for s in states]
        return states

    def _run_stack(self, x: Tensor, states: List[Tensor],
                   batch_sizes: Optional[Tensor] = None) -> Tuple[Tensor, List[Tensor]]:
        """The whole stack in one op call (both directions of every layer when
        bidirectional: the op's directions=2) or, with dropout in training,
        layer by layer: one op call per layer and ``F.dropout`` between layers
        (never after the last), in the reference's order so that masks
        coincide under the same seed."""
        weights = self._flat_weights
        L = self.num_layers
        bidirectional = self.bidirectional
        if not (self.dropout > 0 and self.training and L > 1):
            return self._call_op(x, states, weights, batch_sizes, bidirectional)
        D = 2 if bidirectional else 1
        per = len(weights) // L  # tensors per layer, both directions
        finals: List[List[Tensor]] = [[] for _ in states]
        layer_in = x
        for l in range(L):
            out, fin = self._call_op(layer_in, [s[l * D:(l + 1) * D] for s in states],
                                     weights[l * per:(l + 1) * per], batch_sizes, bidirectional)
            for acc, f in zip(finals, fin):
                acc.append(f)
            layer_in = F.dropout(out, p=self.dropout, training=True) if l < L - 1 else out
        return layer_in, [torch.cat(f, 0) for f in finals]

    def _fused_forward(self, input, hx) -> Tuple[Tensor, List[Tensor]]:
        """Validate, run, and restore the caller's layout.  Returns the output
        and the final states."""
        x, batched = self._prepare_input(input)
        if isinstance(input, PackedSequence):
            bs = input.batch_sizes
            states = self._prepare_states(hx, x, True, int(bs[0]), input.sorted_indices)
            output, finals = self._run_stack(x, states, bs)
            if input.unsorted_indices is not None:
                finals = [f.index_select(1, input.unsorted_indices.to(f.device)) for f in finals]
            return PackedSequence(output, bs, input.sorted_indices, input.unsorted_indices), finals
        states = self._prepare_states(hx, x, batched, x.shape[1])
        output, finals = self._run_stack(x, states)
        if batched and self.batch_first:
            output = output.transpose(0, 1)
        if not batched:
            output = output.squeeze(1)
            finals = [f.squeeze(1) for f in finals]
        return output, finals

    def _call_op(self, x: Tensor, states: List[Tensor], weights: Sequence[Tensor],
                 batch_sizes: Optional[Tensor] = None, bidirectional: bool = False
                 ) -> Tuple[Tensor, List[Tensor]]:
        raise NotImplementedError


# Zero initial states (hx=None), reused across calls: the ops only read
# their states, so one zero tensor per (device, dtype, shape) serves every
# call, which saves two allocations and, on CUDA, two fill-kernel launches on
# the host's path before the kernels of every call (measured on the CPU VM:
# about 3-4 µs of a ~40 µs tiny forward).  Not while torch.compile traces (it
# makes its own), while a CUDA graph is being captured (the tensor would live
# in the graph's private pool) or in inference mode (an inference tensor
# could not later be saved for backward).  At most _ZERO_STATES_MAX entries
# (each L x B x H, e.g. 2 MiB at L8 B64 H1024 float32), the oldest dropped first.
_ZERO_STATES: "dict[tuple, Tensor]" = {}
_ZERO_STATES_MAX = 4


def _zero_states(x: Tensor, shapes: List[Tuple[int, ...]]) -> List[Tensor]:
    """Zero states of these shapes, on x's device and dtype (cached, see above)."""
    if torch.compiler.is_compiling() or torch.is_inference_mode_enabled() or \
            (x.is_cuda and torch.cuda.is_current_stream_capturing()):
        return [x.new_zeros(shape) for shape in shapes]
    out = []
    for shape in shapes:
        key = (x.device, x.dtype, shape)
        z = _ZERO_STATES.get(key)
        if z is None:
            z = x.new_zeros(shape)
            if len(_ZERO_STATES) >= _ZERO_STATES_MAX:
                _ZERO_STATES.pop(next(iter(_ZERO_STATES)))
            _ZERO_STATES[key] = z
        out.append(z)
    return out


class LSTM(_FusedRNNMixin, nn.LSTM):
    """A stacked LSTM computed by fusedrnn's fused kernels.

    Same constructor, parameters (names, shapes, initialisation), ``state_dict``
    and forward contract as :class:`torch.nn.LSTM`, of which it is a subclass:
    a ``torch.nn.LSTM`` state_dict loads unchanged, and back.

    Inputs: ``input`` of shape (T, B, I), (B, T, I) with ``batch_first=True``,
    or unbatched (T, I); optional ``hx = (h_0, c_0)`` of shape (D*L, B, H), or
    (D*L, H) for unbatched input (D = 2 when ``bidirectional``, else 1).
    Returns ``output, (h_n, c_n)``; output has D*H features (D*proj_size
    with ``proj_size > 0``, h_0/h_n then being (D*L, B, proj_size)).
    A PackedSequence input gives a PackedSequence output; h_n and c_n are each
    sequence's state at its own last step (no work is done on padding).
    """

    _kind = "LSTM"
    _state_names = ("h_0", "c_0")
    _has_cuda_kernels = True

    def _call_op(self, x, states, weights, batch_sizes=None, bidirectional=False):
        output, h_n, c_n = ops.lstm(x, states[0], states[1], weights, self.bias, batch_sizes,
                                    bidirectional)
        return output, [h_n, c_n]

    def forward(self, input, hx: Optional[Tuple[Tensor, Tensor]] = None):
        output, (h_n, c_n) = self._fused_forward(input, hx)
        return output, (h_n, c_n)


class GRU(_FusedRNNMixin, nn.GRU):
    """A stacked GRU computed by fusedrnn's fused kernels.

    Same constructor, parameters (names, shapes, initialisation), ``state_dict``
    and forward contract as :class:`torch.nn.GRU`, of which it is a subclass
    (gate order r, z, n; ``b_hn`` inside the reset product, as in PyTorch).

    Inputs: ``input`` of shape (T, B, I), (B, T, I) with ``batch_first=True``,
    or unbatched (T, I); optional ``hx`` (h_0) of shape (D*L, B, H), or (D*L, H)
    for unbatched input (D = 2 when ``bidirectional``, else 1).  Returns
    ``output, h_n``; output has D*H features.  A PackedSequence input gives a
    PackedSequence output, h_n at each sequence's own last step.
    """

    _kind = "GRU"
    _has_cuda_kernels = True

    def _call_op(self, x, states, weights, batch_sizes=None, bidirectional=False):
        output, h_n = ops.gru(x, states[0], weights, self.bias, batch_sizes, bidirectional)
        return output, [h_n]

    def forward(self, input, hx: Optional[Tensor] = None):
        output, (h_n,) = self._fused_forward(input, hx)
        return output, h_n


class RNN(_FusedRNNMixin, nn.RNN):
    """A stacked plain (Elman) RNN, tanh or ReLU, computed by fusedrnn's kernels.

    Same constructor (``nonlinearity='tanh'`` or ``'relu'``; anything else is a
    ValueError, as in torch.nn), parameters, initialisation, ``state_dict`` and
    forward contract as :class:`torch.nn.RNN`, of which it is a subclass.

    Inputs: ``input`` of shape (T, B, I), (B, T, I) with ``batch_first=True``,
    or unbatched (T, I); optional ``hx`` (h_0) of shape (D*L, B, H), or (D*L, H)
    for unbatched input (D = 2 when ``bidirectional``, else 1).  Returns
    ``output, h_n``; output has D*H features.  A PackedSequence input gives a
    PackedSequence output, h_n at each sequence's own last step.
    """

    _kind = "RNN"
    _has_cuda_kernels = True

    def _call_op(self, x, states, weights, batch_sizes=None, bidirectional=False):
        output, h_n = ops.rnn(x, states[0], weights, self.bias, self.nonlinearity, batch_sizes,
                              bidirectional)
        return output, [h_n]

    def forward(self, input, hx: Optional[Tensor] = None):
        if self.nonlinearity not in ("tanh", "relu"):
            raise ValueError(
                f"Unknown nonlinearity '{self.nonlinearity}'. Select from 'tanh' or 'relu'.")
        output, (h_n,) = self._fused_forward(input, hx)
        return output, h_n
