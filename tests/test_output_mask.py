"""The backward ops' output_mask ([input, initial states, weights]).

* Op level, every cell: each of the 8 masks returns exactly the wanted
  gradients of the full call, and (0,) tensors / an empty weight list for the
  others; padded and packed input, one and two directions, an LSTM with a
  projection.  On the CPU always; on CUDA (the general tier, and the
  persistent LSTM tier) when a GPU is present.
* Autograd: the mask the backward op receives is what needs a gradient
  (recorded with a TorchDispatchMode), and the gradients that do come back
  equal torch.nn's.
* opcheck with a mask (the fake implementation agrees with the kernels).
"""
import contextlib
import itertools

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import fusedrnn_or_skip, option_set

fusedrnn = fusedrnn_or_skip()

F64 = torch.float64
MASKS = list(itertools.product([True, False], repeat=3))
NN = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}
# Where the op runs: the CPU; CUDA with the LSTM's cuda_tier forced to the
# general or the persistent tier (bidirectional LSTMs then run the composite
# of csrc/bidirectional.cpp, a persistent call per direction); CUDA with
# cuda_bidirectional "separate" (two directions: the composite for every
# cell, which auto leaves to one launch per step).
WHERE = ["cpu", "cuda-general", "cuda-persistent", "cuda-separate"]


def _cuda_ready():
    return torch.cuda.is_available() and getattr(fusedrnn._C, "cuda_compiled", 0)


@contextlib.contextmanager
def _placed(where):
    """The device for `where`, with the CUDA LSTM tier set for the block;
    skips (with the reason) where this machine cannot run it."""
    if where == "cpu":
        yield torch.device("cpu")
        return
    if not _cuda_ready():
        pytest.skip("needs a CUDA device and fusedrnn._C built with its CUDA kernels")
    if where == "cuda-separate":
        with option_set("cuda_bidirectional", "separate"):
            yield torch.device("cuda", 0)
        return
    with option_set("cuda_tier", where.split("-")[1]):
        yield torch.device("cuda", 0)


def _op_args(kind, L, D, packed, proj, device, T=4, B=3, seed=0):
    """(backward op, its positional arguments) after one training forward."""
    g = torch.Generator().manual_seed(seed)
    I, H = 3, 5
    kw = {"proj_size": proj} if proj else {}
    mod = NN[kind](I, H, L, bidirectional=D == 2, **kw)
    w = [p.detach().to(F64).to(device) for p in mod._flat_weights]
    P = proj or H

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=F64).to(device)
    if packed:
        batch_sizes = torch.tensor([3, 3, 2, 1])
        x = randn(int(batch_sizes.sum()), I)
    else:
        batch_sizes = None
        x = randn(T, B, I)
    h0 = randn(D * L, B, P)
    ops = torch.ops.fusedrnn
    if kind == "lstm":
        c0 = randn(D * L, B, H)
        out, hy, cy, gates, cells, hiddens = ops.lstm_forward(x, h0, c0, w, True, True,
                                                              batch_sizes, D)
        go, gh, gc = randn(*out.shape), randn(*hy.shape), randn(*cy.shape)
        return ops.lstm_backward, [go, gh, gc, x, h0, c0, w, True, out, gates, cells, hiddens,
                                   batch_sizes, D]
    if kind == "gru":
        out, hy, saved, hiddens = ops.gru_forward(x, h0, w, True, True, batch_sizes, D)
        return ops.gru_backward, [randn(*out.shape), randn(*hy.shape), x, h0, w, True, out,
                                  saved, hiddens, batch_sizes, D]
    out, hy, hiddens = ops.rnn_forward(x, h0, w, True, False, True, batch_sizes, D)
    return ops.rnn_backward, [randn(*out.shape), randn(*hy.shape), x, h0, w, True, False, out,
                              hiddens, batch_sizes, D]


def _split(kind, res):
    """(grad_input, [state gradients], [weight gradients]) of a backward op."""
    res = list(res)
    return res[0], res[1:-1], list(res[-1])


def _check_masked(kind, full, got, mask):
    gi, states, gw = _split(kind, full)
    mi, mstates, mw = _split(kind, got)

    def same(a, b, name):
        assert a.shape == b.shape, f"{name}: shape {tuple(a.shape)} != {tuple(b.shape)}"
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=lambda m: f"{name}: {m}")

    def empty(a, name):
        assert a.shape == (0,), f"{name} was left out by the mask but has shape {tuple(a.shape)}"

    (same if mask[0] else empty)(*((mi, gi) if mask[0] else (mi,)), "grad_input")
    for k, (a, b) in enumerate(zip(mstates, states)):
        (same if mask[1] else empty)(*((a, b) if mask[1] else (a,)), f"grad state {k}")
    if mask[2]:
        assert len(mw) == len(gw)
        for k, (a, b) in enumerate(zip(mw, gw)):
            same(a, b, f"grad weight {k}")
    else:
        assert mw == [], "the weights' gradients were left out but the list is not empty"


CASES = [  # kind, L, D, packed, proj, T, B
    ("lstm", 1, 1, False, 0, 4, 3),
    ("lstm", 2, 1, False, 0, 4, 3),
    ("lstm", 2, 1, True, 0, 4, 3),
    ("lstm", 2, 2, False, 0, 4, 3),
    ("lstm", 2, 2, True, 0, 4, 3),
    ("lstm", 2, 1, False, 2, 4, 3),
    ("lstm", 2, 2, False, 2, 4, 3),   # both directions with proj_size
    ("lstm", 2, 1, False, 0, 0, 3),   # no timesteps: grad_hx = grad_hy
    ("lstm", 2, 1, False, 0, 4, 0),   # an empty batch
    ("gru", 2, 1, False, 0, 4, 3),
    ("gru", 2, 2, True, 0, 4, 3),
    ("gru", 2, 1, False, 0, 0, 3),
    ("rnn", 2, 1, True, 0, 4, 3),
    ("rnn", 2, 2, False, 0, 4, 3),
    ("rnn", 2, 1, False, 0, 4, 0),
]


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("kind,L,D,packed,proj,T,B", CASES)
def test_masks_match_full_call(where, kind, L, D, packed, proj, T, B):
    if where == "cuda-persistent" and (kind != "lstm" or packed or proj or T == 0 or B == 0):
        pytest.skip("the persistent tier runs padded LSTMs without proj_size, with T and B > 0 "
                    "(empty sizes never reach it)")
    if where == "cuda-separate" and D != 2:
        pytest.skip("cuda_bidirectional matters for two directions only")
    with _placed(where) as device:
        op, args = _op_args(kind, L, D, packed, proj, device, T, B)
        full = op(*args)
        for mask in MASKS:
            got = op(*args, output_mask=list(mask))
            _check_masked(kind, full, got, mask)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_opcheck_with_mask(kind):
    op, args = _op_args(kind, 2, 1, False, 0, torch.device("cpu"))
    for mask in ([False, True, True], [True, False, False], [False, False, True]):
        torch.library.opcheck(op.default, args, {"output_mask": mask})


class _RecordMasks(TorchDispatchMode):
    """Records the output_mask of every fusedrnn backward op called."""

    def __init__(self):
        super().__init__()
        self.masks = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        if name.startswith("fusedrnn::") and name.endswith("_backward"):
            names = [a.name for a in func._schema.arguments]
            i = names.index("output_mask")
            mask = kwargs.get("output_mask", args[i] if len(args) > i else [True] * 3)
            self.masks.append(tuple(bool(v) for v in mask))
        return func(*args, **kwargs)


def _modules(kind, seed=0):
    torch.manual_seed(seed)
    ref = NN[kind](4, 6, 2).double()
    fused = getattr(fusedrnn, kind.upper())(4, 6, 2).double()
    fused.load_state_dict(ref.state_dict())
    return fused, ref


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("x_grad,h_grad,w_grad", [
    (False, False, True),    # the D2L chapter: one-hot input, fresh or detached state
    (True, False, True),
    (True, False, False),    # frozen recurrent weights, an upstream layer training
    (False, True, False),
    (True, True, True),
])
def test_autograd_passes_needs_input_grad(kind, x_grad, h_grad, w_grad):
    fused, ref = _modules(kind)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 2, 4, generator=g, dtype=F64)
    n_states = 2 if kind == "lstm" else 1
    states = [torch.randn(2, 2, 6, generator=g, dtype=F64) for _ in range(n_states)]
    for m in (fused, ref):
        m.requires_grad_(w_grad)
    results = []
    for m, record in ((fused, True), (ref, False)):
        xs = x.clone().requires_grad_(x_grad)
        hs = [s.clone().requires_grad_(h_grad) for s in states]
        rec = _RecordMasks()
        with rec if record else contextlib.nullcontext():
            out, hn = m(xs, tuple(hs) if kind == "lstm" else hs[0])
            loss = (out * out).sum() + sum((t * t).sum() for t in
                                           (hn if isinstance(hn, tuple) else (hn,)))
            loss.backward()
        if record:
            assert rec.masks == [(x_grad, h_grad, w_grad)]
        results.append((xs.grad, [h.grad for h in hs], [p.grad for p in m.parameters()]))
    (fx, fh, fw), (rx, rh, rw) = results
    assert (fx is None) == (not x_grad) and (rx is None) == (not x_grad)
    if x_grad:
        torch.testing.assert_close(fx, rx)
    for a, b in zip(fh, rh):
        assert (a is None) == (not h_grad)
        if h_grad:
            torch.testing.assert_close(a, b)
    for a, b in zip(fw, rw):
        assert (a is None) == (not w_grad)
        if w_grad:
            torch.testing.assert_close(a, b)
