"""fusedrnn.GRU / fusedrnn.RNN (tanh and ReLU) and their ops on CPU.

Ground truths: the per-timestep reference (reference.gru / reference.rnn) and
torch.nn.GRU / torch.nn.RNN holding the same weights.  Covered here, for each
of the three cells ("gru", "rnn_tanh", "rnn_relu"):

* parity of output, h_n and every gradient over a representative grid (layers
  1-3, I=3 H=5, batch 1, T=1, long T, batch_first, bias=False, unbatched
  input, hx given or not, float32 and float64) and the D2L size;
* drop-in behaviour: subclass of nn.GRU / nn.RNN, state_dict both ways,
  identical initialisation;
* dropout between layers (same masks as the reference under the same seed);
* gradcheck of fusedrnn.ops.gru / rnn and torch.library.opcheck of the raw ops;
* bad inputs give clear Python exceptions (module, functional and raw ops);
* non-contiguous inputs, states and weights; T=0 / B=0; NaN; bf16/half.
"""
import warnings

import pytest
import torch

from conftest import assert_parity, assert_raises, flat_weights, fusedrnn_or_skip, reference, tolerances

fusedrnn = fusedrnn_or_skip()

F32, F64 = torch.float32, torch.float64
KINDS = ["gru", "rnn_tanh", "rnn_relu"]


# --------------------------------------------------------------- helpers --

def _leaf(t, requires_grad=True):
    return t.detach().clone().requires_grad_(requires_grad)


def _nl(kind):
    return kind.split("_")[1] if kind.startswith("rnn") else None


def make_pair(kind, I, H, L=1, seed=0, **kw):
    """A fused module and the torch.nn module of the same kind with identical
    weights (the torch one receives the fused one's state_dict)."""
    extra = {} if kind == "gru" else dict(nonlinearity=_nl(kind))
    fcls, tcls = (fusedrnn.GRU, torch.nn.GRU) if kind == "gru" else (fusedrnn.RNN, torch.nn.RNN)
    torch.manual_seed(seed)
    fused = fcls(I, H, L, **extra, **kw)
    ref_mod = tcls(I, H, L, **extra, **kw)
    ref_mod.load_state_dict(fused.state_dict())
    return fused, ref_mod


def run_reference(kind, x, hx, weights, module):
    kw = dict(num_layers=module.num_layers, has_biases=module.bias,
              batch_first=module.batch_first, dropout=module.dropout,
              training=module.training)
    if kind == "gru":
        return reference.gru(x, hx, weights, **kw)
    return reference.rnn(x, hx, weights, nonlinearity=_nl(kind), **kw)


def _loss_weights(shapes, dtype):
    g = torch.Generator().manual_seed(1234)
    return [torch.randn(s, generator=g, dtype=dtype) for s in shapes]


def run_impl(impl, kind, fused, ref_mod, x, hx, input_grad=True):
    """Forward + backward through "fused", "torch" or "ref" (the reference with
    the fused module's parameters).  Returns ``(output, h_n), grads`` with the
    gradients of input (if input_grad), h0 (if given) and every flat weight."""
    xi = _leaf(x, input_grad)
    hi = None if hx is None else _leaf(hx)
    module = ref_mod if impl == "torch" else fused
    if impl == "fused":
        out, h = fused(xi, hi)
    elif impl == "torch":
        out, h = ref_mod(xi, hi)
    else:
        out, h = run_reference(kind, xi, hi, flat_weights(fused), fused)
    wo, wh = _loss_weights([out.shape, h.shape], out.dtype)
    loss = (out * wo).sum() + (h * wh).sum()
    wrt = ([xi] if input_grad else []) + ([] if hi is None else [hi]) + flat_weights(module)
    grads = torch.autograd.grad(loss, wrt)
    return (out.detach(), h.detach()), [g.detach() for g in grads]


def grad_names(fused, input_grad, with_hx):
    return (["input"] if input_grad else []) + (["h0"] if with_hx else []) \
        + list(fused._flat_weights_names)




def make_inputs(I, H, L, T, B, dtype, batch_first=False, unbatched=False, with_hx=True):
    if unbatched:
        x = torch.randn(T, I, dtype=dtype)
        st = (L, H)
    else:
        x = torch.randn(B, T, I, dtype=dtype) if batch_first else torch.randn(T, B, I, dtype=dtype)
        st = (L, B, H)
    return x, (torch.randn(st, dtype=dtype) if with_hx else None)




def functional(kind, x, h, w, bias):
    if kind == "gru":
        return fusedrnn.ops.gru(x, h, w, bias)
    return fusedrnn.ops.rnn(x, h, w, bias, _nl(kind))


# ----------------------------------------------------------- the library --

def test_ops_registered():
    for name in ("gru_forward", "gru_backward", "rnn_forward", "rnn_backward"):
        assert hasattr(torch.ops.fusedrnn, name)


# ---------------------------------------------------------------- parity --

# (L, I, H, T, B, batch_first, bias, unbatched, with_hx, dtype)
GRID = [
    pytest.param(1, 3, 5, 4, 2, False, True, False, True, F32, id="L1-f32-hx"),
    pytest.param(1, 3, 5, 1, 1, False, True, False, False, F64, id="L1-T1-B1-f64"),
    pytest.param(2, 3, 5, 1, 1, False, True, False, True, F32, id="L2-T1-B1-f32-hx"),
    pytest.param(2, 3, 5, 5, 3, True, True, False, True, F32, id="L2-batch_first-f32-hx"),
    pytest.param(2, 3, 5, 5, 3, True, False, False, False, F64, id="L2-batch_first-nobias-f64"),
    pytest.param(3, 3, 5, 60, 2, False, True, False, True, F32, id="L3-longT-f32-hx"),
    pytest.param(2, 3, 5, 60, 1, False, True, False, True, F64, id="L2-longT-B1-f64-hx"),
    pytest.param(3, 3, 5, 6, 3, False, False, False, True, F32, id="L3-nobias-f32-hx"),
    pytest.param(1, 3, 5, 7, 1, False, False, False, True, F64, id="L1-nobias-f64-hx"),
    pytest.param(2, 3, 5, 7, 1, False, True, True, True, F32, id="L2-unbatched-f32-hx"),
    pytest.param(3, 3, 5, 7, 1, True, True, True, False, F64, id="L3-unbatched-batch_first-f64"),
    pytest.param(2, 19, 37, 9, 7, False, True, False, True, F32, id="L2-I19-H37-B7-f32-hx"),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("L,I,H,T,B,batch_first,bias,unbatched,with_hx,dtype", GRID)
def test_parity(kind, L, I, H, T, B, batch_first, bias, unbatched, with_hx, dtype):
    fused, ref_mod = make_pair(kind, I, H, L, bias=bias, batch_first=batch_first, dtype=dtype)
    x, hx = make_inputs(I, H, L, T, B, dtype, batch_first, unbatched, with_hx)
    got = run_impl("fused", kind, fused, ref_mod, x, hx)
    names = grad_names(fused, True, with_hx)
    tol = tolerances(dtype)
    assert_parity(got, run_impl("ref", kind, fused, ref_mod, x, hx), names, tol, "vs reference")
    assert_parity(got, run_impl("torch", kind, fused, ref_mod, x, hx), names, tol, "vs torch.nn")
    if unbatched:
        assert got[0][0].shape == (T, H) and got[0][1].shape == (L, H)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("L,I,H,T,B,bias", [(2, 3, 5, 7, 3, True), (2, 19, 37, 9, 33, True),
                                            (1, 8, 16, 4, 1, False), (2, 28, 64, 12, 32, True),
                                            (3, 5, 17, 3, 2, False)])
def test_parity_both_float32_step_paths(cpu_step_path, kind, L, I, H, T, B, bias):
    fused, ref_mod = make_pair(kind, I, H, L, bias=bias)
    x, hx = make_inputs(I, H, L, T, B, F32)
    got = run_impl("fused", kind, fused, ref_mod, x, hx)
    names = grad_names(fused, True, True)
    tol = tolerances(F32)
    assert_parity(got, run_impl("ref", kind, fused, ref_mod, x, hx), names, tol, "vs reference")
    assert_parity(got, run_impl("torch", kind, fused, ref_mod, x, hx), names, tol, "vs torch.nn")
    with torch.no_grad():  # inference (train=False) through the same path
        out, h = fused(x, hx)
    torch.testing.assert_close(out, got[0][0], **tol)
    torch.testing.assert_close(h, got[0][1], **tol)


@pytest.mark.parametrize("kind", KINDS)
def test_float32_paths_agree_at_d2l_size(kind):
    """The fused kernel and the generic path give the same float32 results
    (up to summation order) at B=32 H=256."""
    C = fusedrnn._C
    if not C.cpu_fast_step_available():
        pytest.skip("this CPU has no AVX-512")
    fused, ref_mod = make_pair(kind, 28, 256, 2)
    x, hx = make_inputs(28, 256, 2, 20, 32, F32)
    before = C.cpu_fast_step_enabled()
    try:
        res = {}
        for on in (True, False):
            C.set_cpu_fast_step_enabled(on)
            res[on] = run_impl("fused", kind, fused, ref_mod, x, hx)
    finally:
        C.set_cpu_fast_step_enabled(before)
    for a, b in zip(res[True][0], res[False][0]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    if kind != "rnn_relu":  # see test_parity_d2l_size
        for a, b in zip(res[True][1], res[False][1]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_parity_d2l_size(kind):
    """B=32 T=35 I=28 H=256 L=2, float32; the input is data (no gradient).

    Weight gradients sum T·B = 1120 float32 products in a different order than
    the per-step reference, hence atol 1e-4 for gradients (as for the LSTM).
    For ReLU, a pre-activation within rounding of 0 may switch sides between
    implementations, which changes that unit's gradient outright; so ReLU is
    compared on outputs only at this size (its gradients are covered above)."""
    B, T, I, H, L = 32, 35, 28, 256, 2
    fused, ref_mod = make_pair(kind, I, H, L)
    x, _ = make_inputs(I, H, L, T, B, F32)
    vf, gf = run_impl("fused", kind, fused, ref_mod, x, None, input_grad=False)
    names = grad_names(fused, False, False)
    for impl in ("ref", "torch"):
        vo, go = run_impl(impl, kind, fused, ref_mod, x, None, input_grad=False)
        for a, b, n in zip(vf, vo, ("output", "h_n")):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m: f"{impl} {n}: {m}")
        if kind == "rnn_relu":
            continue
        for a, b, n in zip(gf, go, names):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4,
                                       msg=lambda m: f"{impl} grad {n}: {m}")


@pytest.mark.parametrize("kind", KINDS)
def test_no_grad_inference_matches(kind):
    fused, ref_mod = make_pair(kind, 3, 5, 3)
    x, hx = make_inputs(3, 5, 3, 6, 2, F32)
    with torch.no_grad():
        out_f, h_f = fused(x, hx)
        out_t, h_t = ref_mod(x, hx)
    assert not out_f.requires_grad
    tol = tolerances(F32)
    torch.testing.assert_close(out_f, out_t, **tol)
    torch.testing.assert_close(h_f, h_t, **tol)
    out_g, h_g = fused(x, hx)  # training path (weights require grad)
    assert torch.equal(out_g.detach(), out_f) and torch.equal(h_g.detach(), h_f)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("used", ["output", "h_n"])
def test_gradients_when_only_some_outputs_are_used(kind, used):
    fused, _ = make_pair(kind, 3, 5, 3, dtype=F64)
    x, hx = make_inputs(3, 5, 3, 5, 2, F64)
    grads = []
    for impl in ("fused", "ref"):
        xs = [_leaf(x), _leaf(hx)]
        if impl == "fused":
            out, h = fused(*xs)
        else:
            out, h = run_reference(kind, xs[0], xs[1], flat_weights(fused), fused)
        loss = ((out if used == "output" else h) ** 2).sum()
        grads.append(torch.autograd.grad(loss, xs + flat_weights(fused)))
    for a, b, n in zip(*grads, ["input", "h0"] + fused._flat_weights_names):
        torch.testing.assert_close(a, b, **tolerances(F64), msg=lambda m: f"grad {n}: {m}")


@pytest.mark.parametrize("kind", KINDS)
def test_frozen_weights_input_gradient_only(kind):
    fused, ref_mod = make_pair(kind, 3, 5, 2, dtype=F64)
    for p in list(fused.parameters()) + list(ref_mod.parameters()):
        p.requires_grad_(False)
    x = torch.randn(4, 2, 3, dtype=F64)
    gs = []
    for m in (fused, ref_mod):
        xi = _leaf(x)
        out, h = m(xi)
        gs.append(torch.autograd.grad(out.sum() + h.sum(), xi)[0])
    torch.testing.assert_close(gs[0], gs[1], **tolerances(F64))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", KINDS)
def test_low_precision_close_to_float32(kind, dtype):
    """bf16/half run (accumulating the cell math in float) and stay close to
    the float32 result of the same weights."""
    fused, _ = make_pair(kind, 3, 8, 2)
    x, hx = make_inputs(3, 8, 2, 6, 4, F32)
    out32, h32 = fused(x, hx)
    low = fused.to(dtype)
    xl, hl = _leaf(x.to(dtype)), _leaf(hx.to(dtype))
    out, h = low(xl, hl)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), out32.detach(), rtol=0, atol=5e-2)
    torch.testing.assert_close(h.float(), h32.detach(), rtol=0, atol=5e-2)
    (out.float().sum() + h.float().sum()).backward()
    assert xl.grad.dtype == dtype and torch.isfinite(xl.grad.float()).all()


# ------------------------------------------------------------- drop-in --

@pytest.mark.parametrize("kind", KINDS)
def test_is_nn_subclass(kind):
    fused, _ = make_pair(kind, 3, 5)
    assert isinstance(fused, torch.nn.GRU if kind == "gru" else torch.nn.RNN)
    assert isinstance(fused, torch.nn.RNNBase)
    if kind != "gru":
        assert fused.nonlinearity == _nl(kind)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("L,bias", [(1, True), (3, True), (2, False)])
def test_state_dict_both_ways(kind, L, bias):
    fused, ref_mod = make_pair(kind, 3, 5, L, seed=1, bias=bias)
    torch.manual_seed(2)
    other = type(ref_mod)(3, 5, L, bias=bias, **({} if kind == "gru" else dict(nonlinearity=_nl(kind))))
    sd_f, sd_t = fused.state_dict(), other.state_dict()
    assert list(sd_f.keys()) == list(sd_t.keys())
    for k in sd_t:
        assert sd_f[k].shape == sd_t[k].shape and sd_f[k].dtype == sd_t[k].dtype, k
    fused.load_state_dict(sd_t)  # torch.nn -> fusedrnn
    for k, v in fused.state_dict().items():
        assert torch.equal(v, sd_t[k]), k
    x = torch.randn(4, 2, 3)
    torch.testing.assert_close(fused(x)[0], other(x)[0], **tolerances(F32))
    fused2, _ = make_pair(kind, 3, 5, L, seed=3, bias=bias)
    other.load_state_dict(fused2.state_dict())  # fusedrnn -> torch.nn
    for k, v in other.state_dict().items():
        assert torch.equal(v, fused2.state_dict()[k]), k
    torch.testing.assert_close(fused2(x)[0], other(x)[0], **tolerances(F32))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("kw", [dict(), dict(num_layers=3, bias=False),
                                dict(num_layers=2, batch_first=True, dropout=0.3)])
def test_same_initialisation_as_torch_nn(kind, kw):
    extra = {} if kind == "gru" else dict(nonlinearity=_nl(kind))
    fcls, tcls = (fusedrnn.GRU, torch.nn.GRU) if kind == "gru" else (fusedrnn.RNN, torch.nn.RNN)
    torch.manual_seed(42)
    fused = fcls(7, 11, **extra, **kw)
    after_fused = torch.rand(3)
    torch.manual_seed(42)
    ref_mod = tcls(7, 11, **extra, **kw)
    after_torch = torch.rand(3)
    assert [n for n, _ in fused.named_parameters()] == [n for n, _ in ref_mod.named_parameters()]
    for (n, a), (_, b) in zip(fused.named_parameters(), ref_mod.named_parameters()):
        assert torch.equal(a, b), n
    assert torch.equal(after_fused, after_torch)  # same random numbers consumed


def test_rnn_positional_nonlinearity_and_relu_dtype():
    m = fusedrnn.RNN(3, 5, 2, "relu", dtype=F64)
    assert m.nonlinearity == "relu" and m.num_layers == 2
    assert all(p.dtype == F64 for p in m.parameters())


# ------------------------------------------------------------- dropout --

@pytest.mark.parametrize("kind", KINDS)
def test_dropout_training_matches_reference(kind):
    """L=3, p=0.5, training: same seed → same masks as the reference (and as
    torch.nn on CPU, which applies the same dropout per layer output)."""
    fused, ref_mod = make_pair(kind, 3, 5, 3, dropout=0.5, dtype=F64)
    fused.train()
    ref_mod.train()
    x, hx = make_inputs(3, 5, 3, 6, 4, F64)
    names = grad_names(fused, True, True)
    results = {}
    for impl in ("fused", "ref", "torch"):
        torch.manual_seed(99)
        results[impl] = run_impl(impl, kind, fused, ref_mod, x, hx)
    assert_parity(results["fused"], results["ref"], names, tolerances(F64), "dropout vs reference")
    assert_parity(results["fused"], results["torch"], names, tolerances(F64), "dropout vs torch.nn")
    fused.eval()
    assert not torch.allclose(fused(x, hx)[0], results["fused"][0][0])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batch_first,unbatched", [(True, False), (False, True)])
def test_dropout_layouts_match_reference(kind, batch_first, unbatched):
    fused, ref_mod = make_pair(kind, 3, 5, 2, dropout=0.4, batch_first=batch_first)
    fused.train()
    x, hx = make_inputs(3, 5, 2, 5, 3, F32, batch_first, unbatched)
    torch.manual_seed(11)
    a = run_impl("fused", kind, fused, ref_mod, x, hx)
    torch.manual_seed(11)
    b = run_impl("ref", kind, fused, ref_mod, x, hx)
    assert_parity(a, b, grad_names(fused, True, True), tolerances(F32), "dropout layout")


@pytest.mark.parametrize("kind", KINDS)
def test_no_dropout_after_last_layer_and_none_in_eval(kind):
    fused, _ = make_pair(kind, 3, 5, 2, dropout=0.9, dtype=F64)
    fused.train()
    x, _ = make_inputs(3, 5, 2, 8, 16, F64)
    out, h = fused(x)
    assert torch.equal(out[-1], h[-1])
    fused.eval()
    out1, _ = fused(x)
    ro, _ = run_reference(kind, x, None, flat_weights(fused), fused)
    torch.testing.assert_close(out1, ro, **tolerances(F64))


# ------------------------------------------------------ gradcheck / opcheck --

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bias", [True, False])
def test_gradcheck_functional(kind, bias):
    fused, _ = make_pair(kind, 2, 3, 2, bias=bias, dtype=F64)
    w = [_leaf(p) for p in flat_weights(fused)]
    x, h0 = make_inputs(2, 3, 2, 3, 2, F64)
    if kind == "rnn_relu":
        # Keep pre-activations away from the kink at 0, where the finite
        # difference and the (one-sided) derivative legitimately disagree.
        x = x * 3

    def fn(x, h, *ws):
        return functional(kind, x, h, list(ws), bias)

    assert torch.autograd.gradcheck(fn, [_leaf(x), _leaf(h0)] + w, eps=1e-6, atol=1e-7)


def _raw_args(kind, L=2, bias=True, dtype=F64, T=3, B=2, I=3, H=4, requires_grad=False):
    fused, _ = make_pair(kind, I, H, L, bias=bias, dtype=dtype)
    w = [_leaf(p, requires_grad) for p in flat_weights(fused)]
    x, h0 = make_inputs(I, H, L, T, B, dtype)
    return [_leaf(x, requires_grad), _leaf(h0, requires_grad), w, bias]


def _forward_op(kind):
    return torch.ops.fusedrnn.gru_forward if kind == "gru" else torch.ops.fusedrnn.rnn_forward


def _op_flags(kind, train):
    return [train] if kind == "gru" else [kind == "rnn_relu", train]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bias", [True, False])
def test_opcheck_forward(kind, bias):
    op = _forward_op(kind).default
    torch.library.opcheck(op, _raw_args(kind, bias=bias) + _op_flags(kind, False))
    torch.library.opcheck(op, _raw_args(kind, bias=bias) + _op_flags(kind, True))
    torch.library.opcheck(op, _raw_args(kind, bias=bias, requires_grad=True) + _op_flags(kind, True))
    torch.library.opcheck(op, _raw_args(kind, L=1, bias=bias, dtype=F32, requires_grad=True)
                          + _op_flags(kind, True))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("L", [1, 2])
def test_opcheck_backward(kind, L):
    x, h0, w, bias = _raw_args(kind, L=L)
    T, B, H = x.shape[0], x.shape[1], h0.shape[-1]
    res = _forward_op(kind)(x, h0, w, bias, *_op_flags(kind, True))
    out, hy = res[0], res[1]
    go, gh = torch.randn_like(out), torch.randn_like(hy)
    if kind == "gru":
        saved, hiddens = res[2:]
        assert saved.shape == (L, T, B, 4 * H)
        assert hiddens.shape == (L - 1, T, B, H)
        op = torch.ops.fusedrnn.gru_backward
        args = [go, gh, x, h0, w, bias, out, saved, hiddens]
    else:
        (hiddens,) = res[2:]
        assert hiddens.shape == (L - 1, T, B, H)
        op = torch.ops.fusedrnn.rnn_backward
        args = [go, gh, x, h0, w, bias, kind == "rnn_relu", out, hiddens]
    torch.library.opcheck(op.default, args)
    gi, ghx, gw = op(*args)
    xs, ws = [_leaf(x), _leaf(h0)], [_leaf(t) for t in w]
    mod = make_pair(kind, 3, 4, L)[0]
    ro, rh = run_reference(kind, xs[0], xs[1], ws, mod)
    ref_grads = torch.autograd.grad((ro * go).sum() + (rh * gh).sum(), xs + ws)
    for a, b in zip([gi, ghx] + list(gw), ref_grads):
        torch.testing.assert_close(a, b, **tolerances(F64))


@pytest.mark.parametrize("kind", KINDS)
def test_train_false_outputs_match_train_true(kind):
    x, h0, w, bias = _raw_args(kind)
    a = _forward_op(kind)(x, h0, w, bias, *_op_flags(kind, False))
    b = _forward_op(kind)(x, h0, w, bias, *_op_flags(kind, True))
    for t in a[2:]:
        assert t.shape == (0,)
    for s, t in zip(a[:2], b[:2]):
        assert torch.equal(s, t)


def test_gru_bias_gradients_differ_for_n_gate():
    """db_ih and db_hh agree on the r and z blocks but not on n (b_hn sits
    inside the reset product)."""
    fused, _ = make_pair("gru", 3, 5, 1, dtype=F64)
    x, hx = make_inputs(3, 5, 1, 4, 2, F64)
    out, h = fused(x, hx)
    (out.sum() + h.sum()).backward()
    H = 5
    torch.testing.assert_close(fused.bias_ih_l0.grad[:2 * H], fused.bias_hh_l0.grad[:2 * H])
    assert not torch.allclose(fused.bias_ih_l0.grad[2 * H:], fused.bias_hh_l0.grad[2 * H:])


# ----------------------------------------------------------- bad inputs --

@pytest.mark.parametrize("kind", KINDS)
def test_error_wrong_input_rank(kind):
    fused, ref_mod = make_pair(kind, 3, 5, 2)
    assert_raises(ValueError, lambda: ref_mod(torch.randn(4, 2, 3, 1)))
    assert_raises(ValueError, lambda: fused(torch.randn(4, 2, 3, 1)), r"input", r"3D", r"4D")
    assert_raises(ValueError, lambda: fused(torch.randn(3)), r"input", r"1D")


@pytest.mark.parametrize("kind", KINDS)
def test_error_wrong_input_size(kind):
    fused, _ = make_pair(kind, 3, 5, 2)
    assert_raises(RuntimeError, lambda: fused(torch.randn(4, 2, 4)), r"input", r"\b3\b", r"\b4\b")
    assert_raises(RuntimeError, lambda: fused(torch.randn(4, 4)), r"input", r"\b3\b", r"\b4\b")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad", [(2, 3, 5), (1, 2, 5), (2, 2, 4), (3, 2, 5)])
def test_error_h0_shape(kind, bad):
    fused, ref_mod = make_pair(kind, 3, 5, 2)
    x = torch.randn(4, 2, 3)
    h0 = torch.randn(bad)
    assert_raises(RuntimeError, lambda: ref_mod(x, h0))
    actual = r"\D+".join(str(n) for n in bad)
    assert_raises(RuntimeError, lambda: fused(x, h0), r"hidden|h_?0", r"2\D+2\D+5", actual)


@pytest.mark.parametrize("kind", KINDS)
def test_error_h0_rank_and_type(kind):
    fused, ref_mod = make_pair(kind, 3, 5, 2)
    assert_raises(RuntimeError, lambda: ref_mod(torch.randn(4, 3), torch.randn(2, 1, 5)))
    assert_raises(RuntimeError, lambda: fused(torch.randn(4, 3), torch.randn(2, 1, 5)),
                  r"hx", r"2-D", r"3-D")
    assert_raises(RuntimeError, lambda: fused(torch.randn(4, 2, 3), torch.randn(2, 5)),
                  r"hx", r"3-D", r"2-D")
    assert_raises(TypeError, lambda: fused(torch.randn(4, 2, 3), (torch.randn(2, 2, 5),)),
                  r"hx", r"Tensor")
    assert_raises(TypeError, lambda: fused([1.0, 2.0]), r"input", r"Tensor")


@pytest.mark.parametrize("kind", KINDS)
def test_error_dtype_mismatch(kind):
    fused, ref_mod = make_pair(kind, 3, 5, 2)
    x = torch.randn(4, 2, 3, dtype=F64)
    assert_raises(ValueError, lambda: ref_mod(x))
    assert_raises(ValueError, lambda: fused(x), r"input", r"float64", r"float32")
    h0 = torch.randn(2, 2, 5, dtype=F64)
    assert_raises((RuntimeError, ValueError), lambda: fused(torch.randn(4, 2, 3), h0),
                  r"h_?0", r"dtype|float64")


@pytest.mark.parametrize("kind", KINDS)
def test_error_device_mismatch(kind):
    fused, _ = make_pair(kind, 3, 5, 2)
    assert_raises(RuntimeError, lambda: fused(torch.randn(4, 2, 3, device="meta")),
                  r"device|\bon\b", r"meta", r"cpu")
    assert_raises(RuntimeError, lambda: fused(torch.randn(4, 2, 3), torch.randn(2, 2, 5, device="meta")),
                  r"h_?0", r"meta", r"cpu")


def test_error_bad_nonlinearity():
    assert_raises(ValueError, lambda: torch.nn.RNN(3, 5, nonlinearity="sigmoid"))
    assert_raises(ValueError, lambda: fusedrnn.RNN(3, 5, nonlinearity="sigmoid"),
                  r"sigmoid", r"tanh", r"relu")
    m = fusedrnn.RNN(3, 5)
    m.nonlinearity = "gelu"
    assert_raises(ValueError, lambda: m(torch.randn(4, 2, 3)), r"gelu", r"tanh", r"relu")
    x, h0, w, bias = _raw_args("rnn_tanh")
    assert_raises(ValueError, lambda: fusedrnn.ops.rnn(x, h0, w, bias, "Tanh"),
                  r"nonlinearity", r"Tanh", r"relu")
    assert_raises(ValueError, lambda: reference.rnn(x, h0, w, num_layers=2, nonlinearity="x"),
                  r"nonlinearity")


@pytest.mark.parametrize("kind", KINDS)
def test_raw_op_errors(kind):
    op = _forward_op(kind)
    flags = _op_flags(kind, False)
    G = 3 if kind == "gru" else 1
    name = "gru" if kind == "gru" else "rnn"
    x, h0, w, bias = _raw_args(kind, L=2, bias=True)  # T3 B2 I3 H4, float64
    assert_raises(RuntimeError, lambda: op(x[0], h0, w, True, *flags),
                  rf"fusedrnn\.{name}", r"input", r"\(T, B, I\)")
    assert_raises(RuntimeError, lambda: op(x, h0, w[:-1], True, *flags), r"weights", r"\b7\b")
    assert_raises(RuntimeError, lambda: op(x, h0, [], True, *flags), r"weights")
    bad = list(w)
    bad[0] = torch.randn(4 * G, 4, dtype=F64)
    assert_raises(RuntimeError, lambda: op(x, h0, bad, True, *flags), r"w_ih_l0",
                  rf"{4 * G}, 3", rf"{4 * G}, 4")
    bad = list(w)
    bad[1] = torch.randn(4 * G, 5, dtype=F64)
    assert_raises(RuntimeError, lambda: op(x, h0, bad, True, *flags), r"w_hh",
                  r"\(3\*H, H\)" if G == 3 else r"\(H, H\)")
    bad = list(w)
    bad[7] = torch.randn(4 * G + 1, dtype=F64)
    assert_raises(RuntimeError, lambda: op(x, h0, bad, True, *flags), r"b_hh_l1", rf"{4 * G + 1}")
    assert_raises(RuntimeError, lambda: op(x, h0[:1], w, True, *flags), r"hx", r"1, 2, 4")
    assert_raises(RuntimeError, lambda: op(x, h0.float(), w, True, *flags), r"hx", r"dtype|Float")
    assert_raises(RuntimeError, lambda: op(x.long(), h0.long(), [t.long() for t in w], True,
                                           *flags), r"input", r"floating")
    # backward: gradients or saved tensors of the wrong shape, or no saved tensors
    res = op(x, h0, w, True, *_op_flags(kind, True))
    out, hy = res[0], res[1]
    if kind == "gru":
        bwd = torch.ops.fusedrnn.gru_backward

        def call(go=out, gh=hy, saved=res[2:]):
            return bwd(go, gh, x, h0, w, True, out, *saved)
        assert_raises(RuntimeError, lambda: call(saved=(res[2][:, :2], res[3])),
                      r"saved", r"2, 3, 2, 16")
    else:
        bwd = torch.ops.fusedrnn.rnn_backward

        def call(go=out, gh=hy, saved=res[2:]):
            return bwd(go, gh, x, h0, w, True, kind == "rnn_relu", out, *saved)
    assert_raises(RuntimeError, lambda: call(go=torch.ones(3, 2, 5, dtype=F64)),
                  r"grad_output", r"3, 2, 4", r"3, 2, 5")
    assert_raises(RuntimeError, lambda: call(gh=hy[:1]), r"grad_hy")
    no_train = op(x, h0, w, True, *flags)
    assert_raises(RuntimeError, lambda: call(saved=no_train[2:]), r"train=True")


def test_backward_after_train_false_raises():
    x, h0, w, bias = _raw_args("gru", requires_grad=True)
    out, *_ = torch.ops.fusedrnn.gru_forward(x, h0, w, bias, False)
    assert_raises(RuntimeError, lambda: out.sum().backward(), r"train=True")


# ------------------------------------------- strided inputs and edge cases --

@pytest.mark.parametrize("kind", KINDS)
def test_non_contiguous_inputs_and_states(kind):
    L, I, H, T, B = 2, 3, 5, 6, 3
    fused, ref_mod = make_pair(kind, I, H, L)
    tol = tolerances(F32)
    names = grad_names(fused, True, True)
    h0 = torch.randn(L, B, H)
    cases = {
        "transposed input": (torch.randn(B, T, I).transpose(0, 1), h0),
        "sliced input": (torch.randn(2 * T, B, 2 * I)[::2, :, ::2][:, :, :I], h0),
        "expanded input": (torch.randn(T, 1, I).expand(T, B, I), h0),
        "expanded state": (torch.randn(T, B, I), torch.randn(L, 1, H).expand(L, B, H)),
        "transposed state": (torch.randn(T, B, I), torch.randn(B, L, H).transpose(0, 1)),
    }
    for what, (x, h) in cases.items():
        assert not (x.is_contiguous() and h.is_contiguous()), what
        a = run_impl("fused", kind, fused, ref_mod, x, h)
        b = run_impl("torch", kind, fused, ref_mod, x.contiguous(), h.contiguous())
        assert_parity(a, b, names, tol, what)


@pytest.mark.parametrize("kind", KINDS)
def test_non_contiguous_weights_in_functional(kind):
    fused, _ = make_pair(kind, 3, 5, 2, dtype=F64)
    w = [p.detach() for p in flat_weights(fused)]
    w_nc = [t.t().contiguous().t() if t.dim() == 2 else torch.stack([t, t], 1)[:, 0] for t in w]
    assert all(not t.is_contiguous() for t in w_nc)
    x, h0 = make_inputs(3, 5, 2, 4, 2, F64)
    a = functional(kind, x, h0, w_nc, True)
    b = run_reference(kind, x, h0, w, fused.eval())
    torch.testing.assert_close(a[0], b[0], **tolerances(F64))
    torch.testing.assert_close(a[1], b[1], **tolerances(F64))


@pytest.mark.parametrize("kind", KINDS)
def test_zero_length_sequence_raises_like_torch_nn(kind):
    fused, ref_mod = make_pair(kind, 3, 5, 2)
    for x in (torch.randn(0, 2, 3), torch.randn(0, 3)):
        with pytest.raises(RuntimeError):
            ref_mod(x)
        assert_raises(RuntimeError, lambda: fused(x), r"(?i)sequence|length|timestep")


@pytest.mark.parametrize("kind", KINDS)
def test_raw_ops_zero_length_sequence(kind):
    """The ops themselves accept T=0: h_n = h_0, and backward passes grad_hy
    through to grad_hx with zero weight gradients."""
    x, h0, w, bias = _raw_args(kind, T=0, requires_grad=True)
    out, hy = functional(kind, x, h0, w, bias)
    assert out.shape == (0, 2, 4)
    assert torch.equal(hy, h0)
    gh = torch.randn_like(hy)
    grads = torch.autograd.grad((hy * gh).sum(), [x, h0] + w)
    assert grads[0].shape == x.shape
    assert torch.equal(grads[1], gh)
    for g in grads[2:]:
        assert torch.count_nonzero(g) == 0


@pytest.mark.parametrize("kind", KINDS)
def test_zero_batch_like_torch_nn(kind):
    fused, ref_mod = make_pair(kind, 3, 5, 2)
    x = torch.randn(4, 0, 3, requires_grad=True)
    out_t, h_t = ref_mod(x)
    out_f, h_f = fused(x)
    assert out_f.shape == out_t.shape == (4, 0, 5)
    assert h_f.shape == h_t.shape == (2, 0, 5)
    (out_f.sum() + h_f.sum()).backward()
    assert x.grad.shape == x.shape
    for p in fused.parameters():
        assert p.grad is None or torch.count_nonzero(p.grad) == 0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [F32, F64])
def test_nan_propagates(kind, dtype):
    fused, ref_mod = make_pair(kind, 3, 5, 2, dtype=dtype)
    x, hx = make_inputs(3, 5, 2, 6, 3, dtype)
    x[2, 0, 1] = float("nan")      # batch 0 from t=2 on
    hx[1, 2, 3] = float("nan")     # h0 of layer 1, batch 2
    out_f, h_f = fused(x, hx)
    out_t, h_t = ref_mod(x, hx)
    for a, b, n in ((out_f, out_t, "output"), (h_f, h_t, "h_n")):
        assert torch.equal(torch.isnan(a), torch.isnan(b)), n
        torch.testing.assert_close(a, b, equal_nan=True, **tolerances(dtype))
    assert torch.isnan(out_f[2:, 0]).all() and not torch.isnan(out_f[:, 1]).any()
    assert torch.isnan(out_f[:, 2]).any()


@pytest.mark.parametrize("kind", KINDS)
def test_second_call_bitwise_identical(kind):
    fused, ref_mod = make_pair(kind, 28, 64, 2)
    x = torch.randn(20, 8, 28)
    a = run_impl("fused", kind, fused, ref_mod, x, None)
    b = run_impl("fused", kind, fused, ref_mod, x, None)
    for s, t in zip(a[0] + tuple(a[1]), b[0] + tuple(b[1])):
        assert torch.equal(s, t)


# -------------------------------------------------------- not implemented --

@pytest.mark.parametrize("cls", ["GRU", "RNN"])
def test_bidirectional_now_implemented(cls):
    # Full coverage in test_bidirectional.py; here only that it is no longer refused.
    out, h = getattr(fusedrnn, cls)(3, 5, bidirectional=True)(torch.randn(4, 2, 3))
    assert out.shape == (4, 2, 10) and h.shape == (2, 2, 5)


def test_proj_size_rejected_like_torch_nn():
    # nn.GRU / nn.RNN reject proj_size themselves (it only exists for LSTM).
    for cls in (fusedrnn.GRU, fusedrnn.RNN):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert_raises(ValueError, lambda: cls(3, 5, proj_size=2), r"proj_size")
