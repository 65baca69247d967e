"""Pure-PyTorch, per-timestep reference implementations of the fusedrnn ops.

This module is the ground truth the fused kernels are tested against, and it is
meant to be read as documentation of the math.  Everything here is written with
ordinary differentiable PyTorch operations, one timestep at a time, so autograd
provides the reference gradients as well.

Conventions are PyTorch's (``torch.nn.LSTM``), so weights load unchanged:

* Shapes: ``T`` sequence length, ``B`` batch, ``I`` input size, ``H`` hidden
  size, ``L`` number of layers.
* Weights are given as one flat list in ``nn.LSTM``'s order
  (``module._flat_weights``): per layer ``w_ih, w_hh, b_ih, b_hh``, the biases
  only when ``has_biases``.
* Dropout (training only) is applied between layers, to each layer's whole
  output sequence, never after the last layer, with
  ``torch.nn.functional.dropout(out, p, training=True)``; the fused module makes
  the same calls in the same order, so under the same seed the masks coincide.
* Bidirectional (``bidirectional=True``, as ``torch.nn``): every layer also
  runs a reverse direction, t = T-1 … 0, with its own weights (the
  ``_reverse`` ones, which follow the forward ones of the same layer in the
  flat list); the layer's output is ``cat(forward, reverse)`` on the feature
  dimension, (T, B, 2H), which is what the next layer (and dropout) sees.
  States are (2L, B, H), ordered [l0 forward, l0 reverse, l1 forward, …].
* Variable lengths (a ``PackedSequence`` input, as ``torch.nn``): the batch
  is padded and every sequence b only runs its own steps t < length_b (its
  state is frozen beyond; the reverse direction starts at its own last
  step); the output is packed again in the input's layout and the final
  states are each sequence's state at its own end.
* LSTM projection (``proj_size``): h' = (o ⊙ tanh c') W_hrᵀ, see
  :func:`lstm_cell`.

The file is organised as cell -> layer -> stack; the GRU (``torch.nn.GRU``'s
conventions, gate order r, z, n) and the plain tanh/ReLU RNN (``torch.nn.RNN``)
sit next to the LSTM and reuse :func:`_stack`.
"""
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

__all__ = ["lstm_cell", "lstm_layer", "lstm", "gru_cell", "gru_layer", "gru",
           "rnn_cell", "rnn_layer", "rnn", "split_weights"]


# --------------------------------------------------------------------------
# Cells
# --------------------------------------------------------------------------

def lstm_cell(x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor,
              b_ih: Optional[Tensor] = None, b_hh: Optional[Tensor] = None,
              w_hr: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    r"""One LSTM step.

    Shapes: ``x`` (B, I), ``h`` and ``c`` (B, H), ``w_ih`` (4H, I),
    ``w_hh`` (4H, H), ``b_ih`` and ``b_hh`` (4H) or ``None``.

    The gate pre-activations, in PyTorch's gate order i, f, g, o::

        G = x W_ihᵀ + b_ih + h W_hhᵀ + b_hh            (B, 4H)
        [G_i, G_f, G_g, G_o] = G split into four blocks of H columns

        i = σ(G_i)          input gate
        f = σ(G_f)          forget gate
        g = tanh(G_g)       cell candidate
        o = σ(G_o)          output gate

        c' = f ⊙ c + i ⊙ g
        h' = o ⊙ tanh(c')

    With a projection (``torch.nn.LSTM(proj_size=P)``, ``w_hr`` (P, H)) the
    state h is (B, P), ``w_hh`` is (4H, P) and ``h' = (o ⊙ tanh(c')) W_hrᵀ``.

    Returns ``(h', c')``, (B, H) (h' (B, P) with a projection) and (B, H).
    """
    gates = x @ w_ih.t() + h @ w_hh.t()
    if b_ih is not None:
        gates = gates + b_ih
    if b_hh is not None:
        gates = gates + b_hh
    g_i, g_f, g_g, g_o = gates.chunk(4, dim=-1)
    i = torch.sigmoid(g_i)
    f = torch.sigmoid(g_f)
    g = torch.tanh(g_g)
    o = torch.sigmoid(g_o)
    c_new = f * c + i * g
    h_new = o * torch.tanh(c_new)
    if w_hr is not None:
        h_new = h_new @ w_hr.t()
    return h_new, c_new


# --------------------------------------------------------------------------
# Layers: run one cell over the sequence
# --------------------------------------------------------------------------

def _time_steps(T: int, reverse: bool):
    """The order in which a layer visits the timesteps."""
    return range(T - 1, -1, -1) if reverse else range(T)


def _masked(t: int, lengths: Optional[Tensor], new: Tensor, old: Tensor) -> Tensor:
    """Variable lengths: sequence b takes step t only when t < lengths[b];
    past its end its state stays as it was.  Walking backwards (reverse), a
    sequence therefore starts from its initial state at its own last step,
    i.e. each sequence is reversed within its own length."""
    if lengths is None:
        return new
    live = (t < lengths.to(new.device)).unsqueeze(1)
    return torch.where(live, new, old)


def _pad_outputs(t: int, lengths: Optional[Tensor], h: Tensor) -> Tensor:
    """The output at step t: h, and zeros at the padding of shorter sequences."""
    if lengths is None:
        return h
    return torch.where((t < lengths.to(h.device)).unsqueeze(1), h, torch.zeros_like(h))


def lstm_layer(x: Tensor, h0: Tensor, c0: Tensor, layer_weights: Sequence[Tensor],
               reverse: bool = False, lengths: Optional[Tensor] = None
               ) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
    r"""Run one LSTM layer over a sequence.

    ``x`` (T, B, I), ``h0``/``c0`` (B, H), ``layer_weights`` =
    ``(w_ih, w_hh)`` or ``(w_ih, w_hh, b_ih, b_hh)``.

    For t = 0 … T-1: ``(h_t, c_t) = lstm_cell(x_t, h_{t-1}, c_{t-1}, …)``
    with ``h_{-1} = h0``, ``c_{-1} = c0``.  With ``reverse`` the sequence is
    walked backwards, t = T-1 … 0, starting from ``(h0, c0)`` at t = T-1.

    Returns ``(out, (h_last, c_last))`` with ``out`` = all h_t in time order,
    shape (T, B, H), and the state after the last step taken (t = T-1, or
    t = 0 when ``reverse``).  For T = 0 the output is empty and the final
    state is the initial state.

    ``lengths`` (B,): variable-length sequences (a packed batch, padded):
    sequence b only runs steps t < lengths[b]; its output is zero beyond and
    its final state is the one after its own last step.  ``layer_weights``
    may end with ``w_hr`` (a projection, see :func:`lstm_cell`).
    """
    h, c = h0, c0
    outs: List[Tensor] = []
    for t in _time_steps(x.shape[0], reverse):
        h_new, c_new = lstm_cell(x[t], h, c, *layer_weights)
        h, c = _masked(t, lengths, h_new, h), _masked(t, lengths, c_new, c)
        outs.append(_pad_outputs(t, lengths, h))
    if reverse:
        outs.reverse()
    if outs:
        out = torch.stack(outs, dim=0)
    else:
        out = x.new_zeros((0, h0.shape[0], h0.shape[1]))
    return out, (h, c)


# --------------------------------------------------------------------------
# Stacks: layers on top of each other, dropout in between
# --------------------------------------------------------------------------

def split_weights(weights: Sequence[Tensor], num_layers: int, has_biases: bool,
                  per_layer_matrices: int = 2, has_proj: bool = False) -> List[List[Tensor]]:
    """Split nn.LSTM/GRU/RNN's flat weight list into one list per layer.

    Per layer there are ``per_layer_matrices`` matrices (w_ih, w_hh) followed,
    when ``has_biases``, by as many bias vectors (b_ih, b_hh), then, with
    ``has_proj`` (nn.LSTM's proj_size > 0), the projection w_hr.
    """
    n = per_layer_matrices * (2 if has_biases else 1) + (1 if has_proj else 0)
    weights = list(weights)
    if len(weights) != n * num_layers:
        raise ValueError(
            f"weights: expected {n * num_layers} tensors for num_layers={num_layers}, "
            f"has_biases={has_biases}, got {len(weights)}")
    return [weights[l * n:(l + 1) * n] for l in range(num_layers)]


def _stack(layer_fn: Callable, x: Tensor, states: List[Tuple[Tensor, ...]],
           layers: List[List[Tensor]], dropout: float, training: bool,
           bidirectional: bool = False, lengths: Optional[Tensor] = None,
           packed: Optional["_Packed"] = None) -> Tuple[Tensor, List[Tuple[Tensor, ...]]]:
    """Stack layers: layer l's input at time t is layer l-1's output at time t.

    ``states`` and ``layers`` hold one entry per layer and direction, in the
    order l0 (forward), [l0 reverse,] l1, …; ``layer_fn(x, *state, weights,
    reverse=…)`` runs one of them.  With ``bidirectional`` a layer's output is
    the forward and reverse outputs concatenated on the last dimension.

    Between layers (never after the last) the whole output sequence of a
    layer goes through ``F.dropout(out, p=dropout, training=True)`` when
    ``training`` and ``dropout > 0`` (for a packed batch, ``packed``, on the
    packed rows of the output, as torch.nn does).
    """
    D = 2 if bidirectional else 1
    finals = []
    num_layers = len(layers) // D
    for l in range(num_layers):
        outs = []
        for d in range(D):
            k = l * D + d
            out, final = layer_fn(x, *states[k], layers[k], reverse=(d == 1), lengths=lengths)
            outs.append(out)
            finals.append(final)
        x = torch.cat(outs, dim=-1) if D == 2 else outs[0]
        if training and dropout > 0 and l < num_layers - 1:
            x = (packed.dropout(x, dropout) if packed is not None
                 else F.dropout(x, p=dropout, training=True))
    return x, finals


class _Packed:
    """A PackedSequence input, padded for the per-timestep loops: ``lengths``
    (B,) in the caller's batch order, and how to pack the outputs again into
    the input's packed layout (step t holds sequences sorted_indices[:bs[t]])."""

    def __init__(self, packed: PackedSequence):
        self.batch_sizes = packed.batch_sizes
        self.sorted_indices = packed.sorted_indices
        self.padded, self.lengths = pad_packed_sequence(packed)  # (T, B, I), caller's order

    def _order(self, out: Tensor) -> Tensor:
        return (self.sorted_indices.to(out.device) if self.sorted_indices is not None
                else torch.arange(out.shape[1], device=out.device))

    def rows(self, out: Tensor) -> Tensor:
        """The packed rows (N, ·) of a padded (T, B, ·) tensor."""
        order = self._order(out)
        rows = [out[t].index_select(0, order[:int(n)]) for t, n in enumerate(self.batch_sizes)]
        return torch.cat(rows, 0) if rows else out.new_zeros((0, out.shape[-1]))

    def unrows(self, data: Tensor, like: Tensor) -> Tensor:
        """The inverse of :meth:`rows`: a padded tensor shaped like ``like``,
        zero at the padding."""
        order = self._order(like)
        steps, start = [], 0
        for n in self.batch_sizes.tolist():
            step = like.new_zeros(like.shape[1:])
            steps.append(step.index_copy(0, order[:n], data[start:start + n]))
            start += n
        return torch.stack(steps, 0)

    def dropout(self, x: Tensor, p: float) -> Tensor:
        """Dropout between layers acts on the packed rows, as in torch.nn
        (so that masks coincide with fusedrnn's under the same seed)."""
        return self.unrows(F.dropout(self.rows(x), p=p, training=True), x)

    def pack(self, out: Tensor) -> PackedSequence:
        unsorted = None if self.sorted_indices is None else torch.argsort(self.sorted_indices)
        return PackedSequence(self.rows(out), self.batch_sizes, self.sorted_indices, unsorted)


def _prepare_input(input, batch_first: bool
                   ) -> Tuple[Tensor, bool, Optional[Tensor], Optional[_Packed]]:
    """Return the input as (T, B, I), whether it was unbatched (T, I), and for
    a PackedSequence its lengths and packing (else None, None)."""
    if isinstance(input, PackedSequence):
        packed = _Packed(input)
        return packed.padded, False, packed.lengths, packed
    if input.dim() == 2:
        return input.unsqueeze(1), True, None, None
    if input.dim() != 3:
        raise ValueError(f"input: expected a 2-D (unbatched) or 3-D (batched) tensor, "
                         f"got {input.dim()}-D")
    if batch_first:
        input = input.transpose(0, 1)
    return input, False, None, None


def lstm(input, hx: Optional[Tuple[Tensor, Tensor]], weights: Sequence[Tensor], *,
         num_layers: int, has_biases: bool = True, batch_first: bool = False,
         dropout: float = 0.0, training: bool = False, bidirectional: bool = False,
         proj_size: int = 0):
    r"""A stacked LSTM with ``torch.nn.LSTM``'s calling convention.

    ``input``: (T, B, I); (B, T, I) when ``batch_first``; or unbatched (T, I).
    ``hx``: ``(h0, c0)``, each (L, B, H) — (L, H) for unbatched input — or
    ``None`` for zeros.  ``weights``: the flat list ``[w_ih_l0, w_hh_l0,
    b_ih_l0, b_hh_l0, w_ih_l1, …]`` (no biases when ``has_biases=False``);
    layer 0's ``w_ih`` is (4H, I), the others' (4H, H).

    Layer l runs :func:`lstm_layer` from ``(h0[l], c0[l])`` on the output
    sequence of layer l-1 (layer 0 on ``input``).  In training mode with
    ``dropout > 0`` each layer's output but the last passes through
    ``F.dropout(·, p=dropout, training=True)`` before it feeds the next layer.

    Returns ``(output, (h_n, c_n))``: ``output`` is the last layer's h_t for
    every t, (T, B, H) (batch_first / unbatched like the input); ``h_n`` and
    ``c_n`` are every layer's final state, (L, B, H) (or (L, H)).

    With ``bidirectional`` (``torch.nn``'s convention): ``weights`` holds per
    layer the forward then the ``_reverse`` tensors, layers above the first
    take 2H inputs, ``hx`` and the final states are (2L, B, H) ordered
    [l0 forward, l0 reverse, l1 forward, …], and ``output`` has 2H features,
    the forward and reverse outputs of the last layer concatenated.

    ``proj_size > 0`` (``torch.nn.LSTM``'s projection): each layer's weights end
    with ``w_hr`` (P, H); h, ``h0``/``h_n`` and the output have P features
    (2P bidirectional) and ``w_hh`` is (4H, P).

    A ``PackedSequence`` input (variable lengths) runs every sequence over its
    own length only (see :func:`lstm_layer`'s ``lengths``); ``hx`` and the
    final states are in the caller's batch order, the final states taken at
    each sequence's own last step, and the output is a PackedSequence with the
    input's layout.
    """
    x, unbatched, lengths, packed = _prepare_input(input, batch_first)
    n = num_layers * (2 if bidirectional else 1)
    layers = split_weights(weights, n, has_biases, has_proj=proj_size > 0)
    H = layers[0][1].shape[0] // 4
    P = proj_size if proj_size > 0 else H
    B = x.shape[1]
    if hx is None:
        h0, c0 = x.new_zeros((n, B, P)), x.new_zeros((n, B, H))
    else:
        h0, c0 = hx
        if unbatched:
            h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
    states = [(h0[k], c0[k]) for k in range(n)]
    out, finals = _stack(lstm_layer, x, states, layers, dropout, training, bidirectional,
                         lengths, packed)
    h_n = torch.stack([h for h, _ in finals], dim=0)
    c_n = torch.stack([c for _, c in finals], dim=0)
    if packed is not None:
        return packed.pack(out), (h_n, c_n)
    if unbatched:
        return out.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
    if batch_first:
        out = out.transpose(0, 1)
    return out, (h_n, c_n)


# --------------------------------------------------------------------------
# GRU
# --------------------------------------------------------------------------

def gru_cell(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor,
             b_ih: Optional[Tensor] = None, b_hh: Optional[Tensor] = None) -> Tensor:
    r"""One GRU step (``torch.nn.GRU``'s conventions, gate order r, z, n).

    Shapes: ``x`` (B, I), ``h`` (B, H), ``w_ih`` (3H, I), ``w_hh`` (3H, H),
    ``b_ih`` and ``b_hh`` (3H) or ``None``::

        gx = x W_ihᵀ + b_ih,   gh = h W_hhᵀ + b_hh              (B, 3H)
        r = σ(gx_r + gh_r)          reset gate
        z = σ(gx_z + gh_z)          update gate
        n = tanh(gx_n + r ⊙ gh_n)   candidate (b_hn sits inside the r product)
        h' = (1 − z) ⊙ n + z ⊙ h

    Returns ``h'`` (B, H).
    """
    gx = x @ w_ih.t()
    gh = h @ w_hh.t()
    if b_ih is not None:
        gx = gx + b_ih
    if b_hh is not None:
        gh = gh + b_hh
    x_r, x_z, x_n = gx.chunk(3, dim=-1)
    h_r, h_z, h_n = gh.chunk(3, dim=-1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return (1 - z) * n + z * h


def _run_layer(cell: Callable, x: Tensor, h0: Tensor, layer_weights: Sequence[Tensor],
               reverse: bool = False, lengths: Optional[Tensor] = None,
               **kw) -> Tuple[Tensor, Tuple[Tensor]]:
    """Run a single-state cell over the sequence: ``h_t = cell(x_t, h_{t-1}, …)``
    (with ``reverse``, t = T-1 … 0 and ``h_t = cell(x_t, h_{t+1}, …)``).
    Returns ``(out (T, B, H) in time order, (h_last,))``; for T = 0 the output
    is empty and the final state is ``h0``.  ``lengths``: variable-length
    sequences, as in :func:`lstm_layer`."""
    h = h0
    outs: List[Tensor] = []
    for t in _time_steps(x.shape[0], reverse):
        h = _masked(t, lengths, cell(x[t], h, *layer_weights, **kw), h)
        outs.append(_pad_outputs(t, lengths, h))
    if reverse:
        outs.reverse()
    if outs:
        out = torch.stack(outs, dim=0)
    else:
        out = x.new_zeros((0, h0.shape[0], h0.shape[1]))
    return out, (h,)


def gru_layer(x: Tensor, h0: Tensor, layer_weights: Sequence[Tensor],
              reverse: bool = False, lengths: Optional[Tensor] = None
              ) -> Tuple[Tensor, Tuple[Tensor]]:
    r"""Run one GRU layer over a sequence (backwards in time with ``reverse``):
    ``x`` (T, B, I), ``h0`` (B, H), ``layer_weights`` = ``(w_ih, w_hh)`` or
    ``(w_ih, w_hh, b_ih, b_hh)``.  Returns ``(out (T, B, H), (h_last,))``."""
    return _run_layer(gru_cell, x, h0, layer_weights, reverse, lengths)


def _single_state_stack(layer_fn: Callable, input, hx: Optional[Tensor],
                        weights: Sequence[Tensor], num_layers: int, has_biases: bool,
                        batch_first: bool, dropout: float, training: bool,
                        bidirectional: bool = False):
    """A GRU/RNN stack with nn.GRU/nn.RNN's calling convention (one state h);
    a PackedSequence input as in :func:`lstm`."""
    x, unbatched, lengths, packed = _prepare_input(input, batch_first)
    n = num_layers * (2 if bidirectional else 1)
    layers = split_weights(weights, n, has_biases)
    H = layers[0][1].shape[1]
    B = x.shape[1]
    if hx is None:
        h0 = x.new_zeros((n, B, H))
    else:
        h0 = hx.unsqueeze(1) if unbatched else hx
    states = [(h0[k],) for k in range(n)]
    out, finals = _stack(layer_fn, x, states, layers, dropout, training, bidirectional,
                         lengths, packed)
    h_n = torch.stack([h for (h,) in finals], dim=0)
    if packed is not None:
        return packed.pack(out), h_n
    if unbatched:
        return out.squeeze(1), h_n.squeeze(1)
    if batch_first:
        out = out.transpose(0, 1)
    return out, h_n


def gru(input: Tensor, hx: Optional[Tensor], weights: Sequence[Tensor], *,
        num_layers: int, has_biases: bool = True, batch_first: bool = False,
        dropout: float = 0.0, training: bool = False, bidirectional: bool = False
        ) -> Tuple[Tensor, Tensor]:
    r"""A stacked GRU with ``torch.nn.GRU``'s calling convention.

    ``input``: (T, B, I); (B, T, I) when ``batch_first``; or unbatched (T, I).
    ``hx``: h0 of shape (L, B, H) — (L, H) for unbatched input — or ``None``
    for zeros.  ``weights``: the flat list ``[w_ih_l0, w_hh_l0, b_ih_l0,
    b_hh_l0, w_ih_l1, …]`` (no biases when ``has_biases=False``); layer 0's
    ``w_ih`` is (3H, I), the others' (3H, H).  Layer l runs :func:`gru_layer`
    from ``h0[l]`` on layer l-1's output sequence; dropout as in :func:`lstm`.

    Returns ``(output, h_n)``: ``output`` (T, B, H) (batch_first / unbatched
    like the input), ``h_n`` (L, B, H) (or (L, H)).  ``bidirectional`` as in
    :func:`lstm`: 2L states, output with 2H features.
    """
    return _single_state_stack(gru_layer, input, hx, weights, num_layers, has_biases,
                               batch_first, dropout, training, bidirectional)


# --------------------------------------------------------------------------
# Plain (Elman) RNN, tanh or ReLU
# --------------------------------------------------------------------------

def rnn_cell(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor,
             b_ih: Optional[Tensor] = None, b_hh: Optional[Tensor] = None, *,
             nonlinearity: str = "tanh") -> Tensor:
    r"""One plain RNN step (``torch.nn.RNN``)::

        h' = act(x W_ihᵀ + b_ih + h W_hhᵀ + b_hh),   act = tanh or relu

    Shapes: ``x`` (B, I), ``h`` (B, H), ``w_ih`` (H, I), ``w_hh`` (H, H),
    ``b_ih``, ``b_hh`` (H) or ``None``.  Returns ``h'`` (B, H).
    """
    pre = x @ w_ih.t() + h @ w_hh.t()
    if b_ih is not None:
        pre = pre + b_ih
    if b_hh is not None:
        pre = pre + b_hh
    if nonlinearity == "tanh":
        return torch.tanh(pre)
    if nonlinearity == "relu":
        return torch.relu(pre)
    raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")


def rnn_layer(x: Tensor, h0: Tensor, layer_weights: Sequence[Tensor],
              reverse: bool = False, lengths: Optional[Tensor] = None, *,
              nonlinearity: str = "tanh") -> Tuple[Tensor, Tuple[Tensor]]:
    r"""Run one plain RNN layer over a sequence (backwards in time with
    ``reverse``): ``x`` (T, B, I), ``h0`` (B, H).  Returns
    ``(out (T, B, H), (h_last,))``."""
    return _run_layer(rnn_cell, x, h0, layer_weights, reverse, lengths,
                      nonlinearity=nonlinearity)


def rnn(input: Tensor, hx: Optional[Tensor], weights: Sequence[Tensor], *,
        num_layers: int, has_biases: bool = True, batch_first: bool = False,
        dropout: float = 0.0, training: bool = False, nonlinearity: str = "tanh",
        bidirectional: bool = False) -> Tuple[Tensor, Tensor]:
    r"""A stacked plain RNN with ``torch.nn.RNN``'s calling convention.

    Same arguments and results as :func:`gru`, with (H, ·) weight matrices and
    ``nonlinearity`` ``"tanh"`` or ``"relu"``; ``bidirectional`` as in
    :func:`lstm`.
    """
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")

    def layer_fn(x, h0, layer_weights, reverse=False, lengths=None):
        return rnn_layer(x, h0, layer_weights, reverse, lengths, nonlinearity=nonlinearity)

    return _single_state_stack(layer_fn, input, hx, weights, num_layers, has_biases,
                               batch_first, dropout, training, bidirectional)
