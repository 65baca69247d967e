"""The ops' autograd (csrc/autograd.cpp), on the CPU, for LSTM, GRU and RNN.

* the raw forward ops are differentiable in output and final states, and
  their saved activations are outputs that do not require grad;
* gradients of the raw op reach every tensor argument and match the module's;
* only some outputs in the loss (h_n alone, c_n alone, output alone): the
  gradients match the reference;
* backward twice with retain_graph=True gives the same gradients twice;
* backward after a train=False forward, a second derivative through
  create_graph=True, and an input modified in place after the forward all
  raise clear errors (and the first-order create_graph gradients are right);
* no_grad: outputs carry no grad_fn;
* hx=None: the cached zero states (fusedrnn.modules._zero_states) stay zero
  after forward and backward of every cell and layout (CPU, and CUDA when
  present), give the results of explicit zeros, and are not cached in
  inference mode.
"""
import pytest
import torch

from conftest import fusedrnn_or_skip, reference

fusedrnn = fusedrnn_or_skip()
F64 = torch.float64
KINDS = ("lstm", "gru", "rnn")


class _Reference(torch.nn.Module):
    """The pure-PyTorch reference functional with a copy of a module's weights
    (parameters in the same order as the module's)."""

    def __init__(self, kind, module):
        super().__init__()
        self.kind, self.num_layers = kind, module.num_layers
        self.weights = torch.nn.ParameterList(
            [torch.nn.Parameter(p.detach().clone()) for p in module.parameters()])

    def forward(self, x, hx=None):
        return getattr(reference, self.kind)(x, hx, list(self.weights),
                                             num_layers=self.num_layers)


def _pair(kind, I=3, H=4, L=2):
    """A float64 fusedrnn module and the reference with the same weights."""
    torch.manual_seed(1)
    fused = {"lstm": fusedrnn.LSTM, "gru": fusedrnn.GRU, "rnn": fusedrnn.RNN}[kind](I, H, L)
    fused = fused.double()
    return fused, _Reference(kind, fused)


def _raw_call(kind, x, h, weights, train=True):
    """The raw forward op; returns all its outputs."""
    ops = torch.ops.fusedrnn
    if kind == "lstm":
        return ops.lstm_forward(x, h, torch.zeros_like(h), weights, True, train)
    if kind == "gru":
        return ops.gru_forward(x, h, weights, True, train)
    return ops.rnn_forward(x, h, weights, True, False, train)


def _n_differentiable(kind):
    return 3 if kind == "lstm" else 2  # output, h_n (, c_n)


@pytest.mark.parametrize("kind", KINDS)
def test_raw_op_outputs_requires_grad(kind):
    fused, _ = _pair(kind)
    x = torch.randn(5, 2, 3, dtype=F64, requires_grad=True)
    h = torch.zeros(2, 2, 4, dtype=F64)
    outs = _raw_call(kind, x, h, list(fused._flat_weights))
    n = _n_differentiable(kind)
    assert all(o.requires_grad and o.grad_fn is not None for o in outs[:n])
    assert not any(o.requires_grad for o in outs[n:]), "saved activations must not require grad"
    assert "Fused" in outs[0].grad_fn.name() and "Backward" in outs[0].grad_fn.name()


@pytest.mark.parametrize("kind", KINDS)
def test_raw_op_gradients_reach_every_argument_and_match_module(kind):
    fused, _ = _pair(kind)
    x = torch.randn(5, 2, 3, dtype=F64, requires_grad=True)
    h = torch.randn(2, 2, 4, dtype=F64, requires_grad=True)
    weights = [w.detach().clone().requires_grad_() for w in fused._flat_weights]
    outs = _raw_call(kind, x, h, weights)
    gy = torch.randn_like(outs[0])
    gh = torch.randn_like(outs[1])
    torch.autograd.backward([outs[0], outs[1]], [gy, gh])
    assert x.grad is not None and h.grad is not None
    assert all(w.grad is not None for w in weights)
    # the same through the module
    xm = x.detach().clone().requires_grad_()
    hm = h.detach().clone().requires_grad_()
    if kind == "lstm":
        y, (hn, _) = fused(xm, (hm, torch.zeros_like(hm)))
    else:
        y, hn = fused(xm, hm)
    torch.autograd.backward([y, hn], [gy, gh])
    torch.testing.assert_close(x.grad, xm.grad)
    torch.testing.assert_close(h.grad, hm.grad)
    for w, p in zip(weights, fused._flat_weights):
        torch.testing.assert_close(w.grad, p.grad)


def _grads(kind, module, x, h, pick):
    """Gradients of sum(pick(outputs) * fixed weights) with respect to x, h_0
    and every parameter."""
    x = x.detach().clone().requires_grad_()
    h = h.detach().clone().requires_grad_()
    module.zero_grad(set_to_none=True)
    if kind == "lstm":
        y, (hn, cn) = module(x, (h, torch.zeros_like(h)))
        outs = {"output": y, "h_n": hn, "c_n": cn}
    else:
        y, hn = module(x, h)
        outs = {"output": y, "h_n": hn}
    torch.manual_seed(7)
    loss = sum((outs[k] * torch.randn_like(outs[k])).sum() for k in pick)
    loss.backward()
    return [x.grad, h.grad] + [p.grad for p in module.parameters()]


@pytest.mark.parametrize("kind,pick", [
    ("lstm", ("h_n",)), ("lstm", ("c_n",)), ("lstm", ("output",)), ("lstm", ("h_n", "c_n")),
    ("gru", ("h_n",)), ("gru", ("output",)), ("rnn", ("h_n",)), ("rnn", ("output",)),
])
def test_subset_of_outputs_in_loss_matches_reference(kind, pick):
    fused, ref = _pair(kind)
    x = torch.randn(6, 3, 3, dtype=F64)
    h = torch.randn(2, 3, 4, dtype=F64)
    got = _grads(kind, fused, x, h, pick)
    want = _grads(kind, ref, x, h, pick)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g is not None
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
def test_backward_twice_with_retain_graph(kind):
    fused, _ = _pair(kind)
    x = torch.randn(4, 2, 3, dtype=F64, requires_grad=True)
    y = fused(x)[0]
    g1, = torch.autograd.grad(y.sum(), x, retain_graph=True)
    g2, = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(g1, g2, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match=r"(?i)backward through the graph a second time"):
        torch.autograd.grad(y.sum(), x)


@pytest.mark.parametrize("kind", KINDS)
def test_backward_after_inference_forward_is_an_error(kind):
    fused, _ = _pair(kind)
    x = torch.randn(4, 2, 3, dtype=F64, requires_grad=True)
    h = torch.zeros(2, 2, 4, dtype=F64)
    outs = _raw_call(kind, x, h, list(fused._flat_weights), train=False)
    assert outs[0].requires_grad  # the graph is recorded ...
    with pytest.raises(RuntimeError, match=rf"fusedrnn\.{kind}_forward was called with "
                                           r"train=False.*train=True"):
        outs[0].sum().backward()  # ... but nothing was kept for it


@pytest.mark.parametrize("kind", KINDS)
def test_second_derivative_is_a_clear_error(kind):
    fused, ref = _pair(kind)
    x = torch.randn(4, 2, 3, dtype=F64)
    xf = x.clone().requires_grad_()
    xr = x.clone().requires_grad_()
    gf, = torch.autograd.grad(fused(xf)[0].pow(2).sum(), xf, create_graph=True)
    gr, = torch.autograd.grad(ref(xr)[0].pow(2).sum(), xr, create_graph=True)
    torch.testing.assert_close(gf, gr, rtol=1e-9, atol=1e-10)  # first order still right
    with pytest.raises(RuntimeError, match=rf"fusedrnn\.{kind}: the backward .* not "
                                           r"differentiable.*create_graph=True"):
        gf.sum().backward()


@pytest.mark.parametrize("kind", KINDS)
def test_input_modified_in_place_after_forward_is_caught(kind):
    fused, _ = _pair(kind)
    x = torch.randn(4, 2, 3, dtype=F64, requires_grad=True)
    xi = x * 1.0  # a non-leaf the forward saves
    y = fused(xi)[0]
    with torch.no_grad():
        xi.add_(1.0)
    with pytest.raises(RuntimeError, match=r"modified by an inplace operation"):
        y.sum().backward()


@pytest.mark.parametrize("kind", KINDS)
def test_no_grad_outputs_have_no_graph(kind):
    fused, _ = _pair(kind)
    x = torch.randn(4, 2, 3, dtype=F64, requires_grad=True)
    with torch.no_grad():
        outs = fused(x)
    y = outs[0]
    assert not y.requires_grad and y.grad_fn is None


# ------------------------------------------------ cached zero initial states --

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not (torch.cuda.is_available() and fusedrnn.cuda_compiled()),
    reason="needs a CUDA device and a build with the CUDA kernels"))]


@pytest.mark.parametrize("device", DEVICES)
def test_zero_initial_states_are_cached_and_never_written(device):
    """hx=None uses one cached zero tensor per (device, dtype, shape)
    (fusedrnn.modules._zero_states); the ops only read their states, so after
    forward and backward of every cell and layout the cached tensors are
    still zero, and the results equal those with explicit zero states."""
    from fusedrnn import modules
    from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

    modules._ZERO_STATES.clear()
    cases = [(fusedrnn.LSTM, {}), (fusedrnn.LSTM, {"proj_size": 3}),
             (fusedrnn.LSTM, {"bidirectional": True}), (fusedrnn.GRU, {}),
             (fusedrnn.GRU, {"bidirectional": True}), (fusedrnn.RNN, {"nonlinearity": "relu"})]
    for cls, kw in cases:
        m = cls(3, 5, 2, **kw).to(device=device, dtype=F64)
        x = torch.randn(6, 4, 3, dtype=F64, device=device, requires_grad=True)
        for inp in (x, pack_padded_sequence(x, torch.tensor([6, 5, 3, 2]))):
            y = m(inp)[0]
            (y.data if isinstance(y, PackedSequence) else y).sum().backward()
        D = 2 if kw.get("bidirectional") else 1
        zeros = lambda *shape: torch.zeros(*shape, dtype=F64, device=device)  # noqa: E731
        states = (zeros(2 * D, 4, kw.get("proj_size") or 5),)
        if cls is fusedrnn.LSTM:
            states = (states[0], zeros(2 * D, 4, 5))
        hx = states if cls is fusedrnn.LSTM else states[0]
        got, want = m(x)[0], m(x, hx)[0]
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert modules._ZERO_STATES, "hx=None did not use the cache"
    for key, z in modules._ZERO_STATES.items():
        assert not z.requires_grad and torch.count_nonzero(z) == 0, key
    # the same object is handed out again for the same key
    key = next(iter(modules._ZERO_STATES))
    x = torch.empty(1, dtype=key[1], device=key[0])
    assert modules._zero_states(x, [key[2]])[0] is modules._ZERO_STATES[key]


def test_zero_initial_states_not_cached_in_inference_mode():
    from fusedrnn import modules
    modules._ZERO_STATES.clear()
    m = fusedrnn.GRU(3, 5, 1)
    with torch.inference_mode():
        m(torch.randn(4, 2, 3))
    assert not modules._ZERO_STATES
    # ... so a later training call can save its (normal) zero state for backward
    x = torch.randn(4, 2, 3, requires_grad=True)
    m(x)[0].sum().backward()
    assert x.grad is not None
