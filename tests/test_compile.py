"""torch.compile(fullgraph=True) of models built from fusedrnn.LSTM / GRU / RNN.

fullgraph=True makes any graph break an error, so these tests check that the
modules' forward (validation, layout handling, the `train` decision of the
functionals, dropout between layers) and the custom ops' fake and autograd
registrations trace into one graph, and that the compiled forward and backward
equal eager's.

Dynamo (torch 2.14) refuses to wrap any instance of nn.RNN / nn.GRU / nn.LSTM
— subclasses included, so fusedrnn's drop-ins too — before it looks at their
forward, unless ``torch._dynamo.config.allow_rnn`` is True (builder.py,
"Attempted to wrap RNN, GRU, or LSTM").  That is a check on the class, not a
graph break in fusedrnn's code: with the flag (scoped here with
``config.patch``) the modules trace into one graph.  The functionals
(fusedrnn.ops.lstm / gru / rnn) need no flag, which the last test checks.

Backend: "inductor" on the CPU (it compiles the graph's glue — the Linear head,
transposes, the loss — to C++ with g++ and calls the fusedrnn ops as extern
kernels).  One model holds all three modules, so the suite pays for one
inductor compile per mode.  Set FUSEDRNN_COMPILE_BACKEND=aot_eager to trace
through AOTAutograd without code generation (much faster, same graph checks).
"""
import os

import pytest
import torch
from torch import nn

from conftest import fusedrnn_or_skip

fusedrnn = fusedrnn_or_skip()

BACKEND = os.environ.get("FUSEDRNN_COMPILE_BACKEND", "inductor")


class StackModel(nn.Module):
    """input (B, T, 6) -> LSTM -> GRU -> RNN(relu) -> Linear on the last step."""

    def __init__(self, dropout=0.0):
        super().__init__()
        self.lstm = fusedrnn.LSTM(6, 8, 2, batch_first=True, dropout=dropout)
        self.gru = fusedrnn.GRU(8, 7, 2, batch_first=True, dropout=dropout)
        self.rnn = fusedrnn.RNN(7, 5, 1, nonlinearity="relu", batch_first=True)
        self.head = nn.Linear(5, 3)

    def forward(self, x, h_gru):
        y, (h, c) = self.lstm(x)
        y, hg = self.gru(y, h_gru)
        y, hr = self.rnn(torch.tanh(y))
        return self.head(y[:, -1]), h.sum() + c.sum() + hg.sum() + hr.sum()


def _inputs(dtype=torch.float32):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(4, 9, 6, generator=g, dtype=dtype)
    h = torch.randn(2, 4, 7, generator=g, dtype=dtype)
    return x, h


def _run(model, x, h):
    xi = x.clone().requires_grad_()
    hi = h.clone().requires_grad_()
    out, extra = model(xi, hi)
    loss = (out * torch.arange(out.numel(), dtype=out.dtype).view_as(out)).sum() + extra
    params = [p for p in model.parameters()]
    grads = torch.autograd.grad(loss, [xi, hi] + params)
    return out.detach(), extra.detach(), grads


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    with torch._dynamo.config.patch(allow_rnn=True):
        yield
    torch._dynamo.reset()


def test_compile_fullgraph_forward_backward_matches_eager():
    torch.manual_seed(0)
    model = StackModel()
    x, h = _inputs()
    eager = _run(model, x, h)
    compiled_model = torch.compile(model, fullgraph=True, backend=BACKEND)
    got = _run(compiled_model, x, h)
    torch.testing.assert_close(got[0], eager[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[1], eager[1], rtol=1e-5, atol=1e-6)
    names = ["input", "h_gru"] + [n for n, _ in model.named_parameters()]
    for a, b, n in zip(got[2], eager[2], names):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m: f"grad {n}: {m}")


def test_compile_fullgraph_inference_no_grad():
    """Under no_grad the functionals call the ops with train=False (nothing
    saved); the compiled graph must make the same decision."""
    torch.manual_seed(0)
    model = StackModel().eval()
    x, h = _inputs()
    with torch.no_grad():
        eager = model(x, h)
        compiled = torch.compile(model, fullgraph=True, backend=BACKEND)
        got = compiled(x, h)
    for a, b in zip(got, eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_compile_fullgraph_with_dropout_between_layers():
    """Training with dropout: the per-layer op calls with F.dropout between them
    trace into one graph.  Compiled RNG streams differ from eager's, so only the
    graph, shapes and finiteness are checked here (the masks' parity with the
    reference is tested eagerly in the CPU test files)."""
    torch.manual_seed(0)
    model = StackModel(dropout=0.3).train()
    x, h = _inputs()
    compiled = torch.compile(model, fullgraph=True, backend=BACKEND)
    out, extra, grads = _run(compiled, x, h)
    assert out.shape == (4, 3)
    assert all(torch.isfinite(g).all() for g in grads)
    # eval mode after training: no dropout, equal to eager.
    model.eval()
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend=BACKEND)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, h)[0], model(x, h)[0], rtol=1e-5, atol=1e-6)


class FunctionalModel(nn.Module):
    """The same stack through fusedrnn.ops functionals and plain Parameters
    (weights taken from fused modules), so no nn.RNNBase instance is involved."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lstm_w = nn.ParameterList(fusedrnn.LSTM(6, 8, 2)._flat_weights)
        self.gru_w = nn.ParameterList(fusedrnn.GRU(8, 7, 2)._flat_weights)
        self.rnn_w = nn.ParameterList(fusedrnn.RNN(7, 5, 1, bias=False)._flat_weights)
        self.head = nn.Linear(5, 3)

    def forward(self, x, h_gru):
        x = x.transpose(0, 1)  # (T, B, I)
        z = x.new_zeros((2, x.shape[1], 8))
        y, h, c = fusedrnn.ops.lstm(x, z, z, list(self.lstm_w), True)
        y, hg = fusedrnn.ops.gru(y, h_gru, list(self.gru_w), True)
        y, hr = fusedrnn.ops.rnn(torch.tanh(y), y.new_zeros((1, y.shape[1], 5)),
                                 list(self.rnn_w), False, "relu")
        return self.head(y[-1]), h.sum() + c.sum() + hg.sum() + hr.sum()


def test_compile_functionals_fullgraph_without_allow_rnn():
    model = FunctionalModel()
    x, h = _inputs()
    eager = _run(model, x, h)
    with torch._dynamo.config.patch(allow_rnn=False):
        got = _run(torch.compile(model, fullgraph=True, backend=BACKEND), x, h)
    torch.testing.assert_close(got[0], eager[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[1], eager[1], rtol=1e-5, atol=1e-6)
    for a, b in zip(got[2], eager[2]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_compile_packed_sequence_and_projection():
    """A PackedSequence input (bidirectional GRU) and an LSTM with proj_size
    compile into one graph; forward and backward equal eager's.  (The packing
    itself happens outside: dynamo skips torch's pack_padded_sequence.)"""
    from torch.nn.utils.rnn import pack_padded_sequence
    torch.manual_seed(0)
    gru = fusedrnn.GRU(3, 5, 2, bidirectional=True)
    lstm = fusedrnn.LSTM(3, 6, 2, proj_size=2)

    def f(pk, x):
        out, h = gru(pk)
        y, (hl, cl) = lstm(x)
        return out.data.square().sum() + h.sum() + y.sum() + hl.sum() + cl.sum()

    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 3, 3, generator=g)
    lengths = torch.tensor([5, 3, 2])
    results = []
    for fn in (f, torch.compile(f, fullgraph=True, backend=BACKEND)):
        xx = x.clone().requires_grad_()
        with torch._dynamo.config.patch(allow_rnn=True):
            loss = fn(pack_padded_sequence(xx, lengths), xx)
        params = list(gru.parameters()) + list(lstm.parameters())
        results.append([loss] + list(torch.autograd.grad(loss, [xx] + params)))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
