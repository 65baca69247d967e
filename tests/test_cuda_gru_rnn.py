"""CUDA backend of the GRU and plain RNN ops (csrc/cuda/gru_rnn_cuda.cu).

Every test here needs a CUDA device *and* a build of fusedrnn._C that contains
the CUDA kernels; otherwise the module is skipped with the reason.  The ops are
called through the functionals fusedrnn.ops.gru / fusedrnn.ops.rnn and the raw
torch.ops.fusedrnn.* ops; the module-level tests (fusedrnn.GRU / fusedrnn.RNN
on CUDA) run only once the modules accept CUDA input (_has_cuda_kernels).

What is checked, for each cell ("gru", "rnn_tanh", "rnn_relu"):
* float64 parity with the pure-PyTorch reference (output, h_n and the
  gradients of input, h0 and every weight/bias), tight tolerance;
* float32 / float16 / bfloat16 parity with torch.nn.GRU / nn.RNN (cuDNN)
  holding the same weights, TF32 off for both (restored afterwards);
* the sizes at the kernels' edges: 1-3 layers, odd sizes (I=3, H=5), batch 1,
  T=1, H=300 (not a tile multiple), batches on both sides of the 8/32-row
  tiles, a hidden size large enough for the 32-unit tiles, no biases;
* packed sequences (batch_sizes): float64 vs the reference run per sequence,
  float32 vs cuDNN on a PackedSequence, vs the CPU op on the same inputs,
  equal lengths equal to the padded call, gradcheck and opcheck;
* float64 gradcheck of the functionals and torch.library.opcheck of all four
  ops on CUDA;
* the saved activations ([r | z | n | gh_n] for the GRU) equal the CPU op's,
  and each backend's backward accepts the other's forward;
* bitwise determinism, inference (train=False) equal to the training forward,
  T=0 / B=0, mixed devices refused, cuda:1 vs cuda:0.
"""
import pytest
import torch
from torch.nn.utils.rnn import PackedSequence

from conftest import CUDA, CUDA_TOL, assert_close_scaled, cuda_or_skip, loss_weights, reference

fusedrnn = cuda_or_skip()
pytestmark = pytest.mark.usefixtures("no_tf32")

F64, F32, F16, BF16 = torch.float64, torch.float32, torch.float16, torch.bfloat16
KINDS = ["gru", "rnn_tanh", "rnn_relu"]

# Per-dtype tolerance, as in test_cuda.py (conftest.CUDA_TOL, for
# assert_close_scaled): a result r passes against the expected e when
# |r - e| <= TOL * |e| + TOL * max(1, max|e|).
TOL = CUDA_TOL


# --------------------------------------------------------------- helpers --

def _nl(kind):
    return "relu" if kind == "rnn_relu" else "tanh"


def _torch_module(kind, I, H, L, bias=True, dtype=F32, device=CUDA, seed=0):
    """torch.nn.GRU / nn.RNN with a seeded initialisation."""
    torch.manual_seed(seed)
    kw = dict(bias=bias, device=device, dtype=dtype)
    if kind == "gru":
        return torch.nn.GRU(I, H, L, **kw)
    return torch.nn.RNN(I, H, L, nonlinearity=_nl(kind), **kw)


def _weights(kind, I, H, L, bias=True, dtype=F64, device=CUDA, seed=0):
    """nn.GRU/nn.RNN's initial flat weights, scaled by 2 so the cells work in
    their nonlinear range, as detached tensors."""
    mod = _torch_module(kind, I, H, L, bias, F64, "cpu", seed)
    return [(2 * p.detach()).to(device=device, dtype=dtype) for p in mod._flat_weights]


def _inputs(I, H, L, T, B, dtype, device=CUDA, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, I, generator=g)
    h0 = 0.5 * torch.randn(L, B, H, generator=g)
    return [t.to(device=device, dtype=dtype) for t in (x, h0)]


def _leaf(t, requires_grad=True):
    return t.detach().clone().requires_grad_(requires_grad)


def _backward(vals):
    ws = loss_weights(vals)
    sum((v.to(w.dtype) * w).sum() for v, w in zip(vals, ws)).backward()


def _op(kind, x, h0, weights, bias, batch_sizes=None):
    if kind == "gru":
        return fusedrnn.ops.gru(x, h0, weights, bias, batch_sizes=batch_sizes)
    return fusedrnn.ops.rnn(x, h0, weights, bias, _nl(kind), batch_sizes=batch_sizes)


def _run_op(kind, x, h0, weights, bias, batch_sizes=None):
    """(output, h_n) and the gradients [input, h0, *weights] of fusedrnn's op."""
    x, h0 = _leaf(x), _leaf(h0)
    ws = [_leaf(w) for w in weights]
    out, hn = _op(kind, x, h0, ws, bias, batch_sizes)
    _backward([out, hn])
    return [out.detach(), hn.detach()], [x.grad, h0.grad] + [w.grad for w in ws]


def _ref_stack(kind, x, h0, ws, L, bias):
    if kind == "gru":
        return reference.gru(x, h0, ws, num_layers=L, has_biases=bias)
    return reference.rnn(x, h0, ws, num_layers=L, has_biases=bias, nonlinearity=_nl(kind))


def _run_reference(kind, x, h0, weights, L, bias):
    x, h0 = _leaf(x), _leaf(h0)
    ws = [_leaf(w) for w in weights]
    out, hn = _ref_stack(kind, x, h0, ws, L, bias)
    _backward([out, hn])
    return [out.detach(), hn.detach()], [x.grad, h0.grad] + [w.grad for w in ws]


def _run_torch(mod, x, h0, batch_sizes=None):
    """torch.nn's module (cuDNN) on the same inputs; packed when batch_sizes."""
    x, h0 = _leaf(x), _leaf(h0)
    mod.zero_grad(set_to_none=True)
    inp = x if batch_sizes is None else PackedSequence(x, batch_sizes)
    out, hn = mod(inp, h0)
    if batch_sizes is not None:
        out = out.data
    _backward([out, hn])
    return [out.detach(), hn.detach()], [x.grad, h0.grad] + [w.grad for w in mod._flat_weights]


def _names(L, bias):
    per = ["w_ih", "w_hh", "b_ih", "b_hh"] if bias else ["w_ih", "w_hh"]
    return [f"{n}_l{l}" for l in range(L) for n in per]


def _assert_results(got, want, tol, L, bias, what="", grads=True):
    (vals_g, grads_g), (vals_w, grads_w) = got, want
    for a, b, n in zip(vals_g, vals_w, ("output", "h_n")):
        assert_close_scaled(a, b, tol, f"{what} {n}")
    if not grads:
        return
    names = ["grad input", "grad h0"] + [f"grad {n}" for n in _names(L, bias)]
    assert len(grads_g) == len(grads_w) == len(names)
    for a, b, n in zip(grads_g, grads_w, names):
        assert a is not None and b is not None, f"{what} {n} is missing"
        assert_close_scaled(a, b, tol, f"{what} {n}")


# (L, I, H, T, B, bias)
SHAPES = [
    (1, 3, 5, 1, 1, True),       # odd sizes, T=1, batch 1
    (2, 3, 5, 4, 1, True),
    (3, 4, 7, 6, 3, False),      # 3 layers, no biases
    (3, 7, 300, 3, 3, True),     # H not a tile multiple
    (2, 10, 33, 3, 40, True),    # 32-row tiles with a remainder
    (2, 6, 17, 5, 17, False),    # no biases; B just above the 8/32 switch
    (1, 8, 64, 2, 16, True),     # two 8-row tiles exactly
]


def _ids(shapes):
    return [f"L{L}-I{I}-H{H}-T{T}-B{B}{'' if b else '-nobias'}" for L, I, H, T, B, b in shapes]


# ------------------------------------------------------ float64 vs reference --

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("L,I,H,T,B,bias", SHAPES, ids=_ids(SHAPES))
def test_float64_matches_reference(kind, L, I, H, T, B, bias):
    w = _weights(kind, I, H, L, bias)
    x, h0 = _inputs(I, H, L, T, B, F64)
    got = _run_op(kind, x, h0, w, bias)
    want = _run_reference(kind, x, h0, w, L, bias)
    _assert_results(got, want, TOL[F64], L, bias, kind)


# ------------------------------------------------------- vs cuDNN per dtype --

def _cudnn_compare(kind, dtype, L, I, H, T, B, bias, grads=True):
    mod = _torch_module(kind, I, H, L, bias, dtype)
    x, h0 = _inputs(I, H, L, T, B, dtype)
    got = _run_op(kind, x, h0, [p.detach() for p in mod._flat_weights], bias)
    try:
        want = _run_torch(mod, x, h0)
    except RuntimeError as e:  # e.g. a cuDNN without bfloat16 RNNs
        pytest.skip(f"torch.nn ({kind}, cuDNN) cannot run {dtype} here: {e}")
    _assert_results(got, want, TOL[dtype], L, bias, f"{kind} {dtype}", grads=grads)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("L,I,H,T,B,bias", SHAPES, ids=_ids(SHAPES))
def test_float32_matches_cudnn(kind, L, I, H, T, B, bias):
    _cudnn_compare(kind, F32, L, I, H, T, B, bias)


# Half precision: short sequences keep the accumulated rounding comparable.
SHAPES_HALF = [
    (1, 3, 5, 1, 1, True),
    (2, 8, 32, 5, 4, True),
    (2, 7, 300, 3, 3, True),
    (3, 16, 48, 4, 40, False),
]


@pytest.mark.parametrize("dtype", [F16, BF16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("L,I,H,T,B,bias", SHAPES_HALF, ids=_ids(SHAPES_HALF))
def test_half_precision_matches_cudnn(dtype, kind, L, I, H, T, B, bias):
    # ReLU's gradient is discontinuous at 0: a pre-activation within rounding
    # of 0 switches a unit's whole gradient on or off, in either
    # implementation (the CPU op differs from float64 the same way), so in
    # half precision the ReLU RNN is compared on its outputs only.
    _cudnn_compare(kind, dtype, L, I, H, T, B, bias, grads=kind != "rnn_relu")


@pytest.mark.parametrize("dtype", [F16, BF16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("kind", ["gru", "rnn_tanh"])
def test_half_precision_close_to_float64(dtype, kind):
    """The same rounded weights/inputs run in float64 are the truth."""
    L, I, H, T, B = 2, 8, 40, 4, 6
    mod = _torch_module(kind, I, H, L, True, dtype)
    w = [p.detach() for p in mod._flat_weights]
    x, h0 = _inputs(I, H, L, T, B, dtype)
    got = _run_op(kind, x, h0, w, True)
    exact = _run_reference(kind, x.double(), h0.double(), [p.double() for p in w], L, True)
    _assert_results(got, exact, TOL[dtype], L, True, f"{kind} {dtype}")


@pytest.mark.parametrize("kind", ["gru", "rnn_tanh"])
@pytest.mark.parametrize("B", [3, 40])
def test_wide_hidden_uses_large_tiles(kind, B):
    """H = 4500 gives ceil(H/32) = 141 CTAs per 8/32-row batch tile, at least
    one per SM on an H100/H200 (132 SMs), so the kernels run with 32-unit tiles;
    the smaller tests above run the 16-unit tiles."""
    _cudnn_compare(kind, F32, 1, 8, 4500, 2, B, True)


# ---------------------------------------------------------- packed sequences --

def _packed_inputs(lengths, I, H, L, dtype, device=CUDA, seed=3):
    """Packed data (N, I), batch_sizes and h0 for sequences of the given
    (non-increasing) lengths."""
    T = max(lengths)
    bs = torch.tensor([sum(1 for n in lengths if n > t) for t in range(T)], dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    data = torch.randn(int(bs.sum()), I, generator=g)
    h0 = 0.5 * torch.randn(L, len(lengths), H, generator=g)
    return data.to(device=device, dtype=dtype), bs, h0.to(device=device, dtype=dtype)


def _run_reference_packed(kind, data, bs, h0, weights, L, bias):
    """The reference run sequence by sequence on the packed rows: row
    off[t] + b is step t of sequence b; h_n[:, b] is b's state at its end."""
    data, h0 = _leaf(data), _leaf(h0)
    ws = [_leaf(w) for w in weights]
    off = [0] + torch.cumsum(bs, 0).tolist()
    B = int(bs[0])
    rows, finals = [None] * off[-1], []
    for b in range(B):
        n = int((bs > b).sum())
        idx = torch.tensor([off[t] + b for t in range(n)], device=data.device)
        out, hn = _ref_stack(kind, data[idx].unsqueeze(1), h0[:, b:b + 1], ws, L, bias)
        for t in range(n):
            rows[off[t] + b] = out[t, 0]
        finals.append(hn[:, 0])
    out, hn = torch.stack(rows), torch.stack(finals, 1)
    _backward([out, hn])
    return [out.detach(), hn.detach()], [data.grad, h0.grad] + [w.grad for w in ws]


# lengths (non-increasing), L, I, H, bias
PACKED = [
    ([1], 1, 3, 5, True),                                  # T=1, batch 1
    ([4, 2, 2, 1], 2, 3, 5, True),
    ([3, 3, 3], 3, 4, 7, False),                           # equal lengths, no biases
    ([6, 5, 5, 3, 1, 1] + [1] * 15, 2, 5, 33, True),      # 21 rows, then 6, then 4…
    ([3] * 20 + [2] * 5 + [1] * 3, 1, 5, 40, False),       # 32-row tiles shrink to 8
    ([5, 4, 2], 2, 6, 300, True),                          # H not a tile multiple
]


def _packed_ids():
    return [f"len{'-'.join(map(str, ls[:6]))}{'…' if len(ls) > 6 else ''}-L{L}-H{H}"
            f"{'' if b else '-nobias'}" for ls, L, I, H, b in PACKED]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("lengths,L,I,H,bias", PACKED, ids=_packed_ids())
def test_packed_float64_matches_reference(kind, lengths, L, I, H, bias):
    data, bs, h0 = _packed_inputs(lengths, I, H, L, F64)
    w = _weights(kind, I, H, L, bias)
    got = _run_op(kind, data, h0, w, bias, bs)
    want = _run_reference_packed(kind, data, bs, h0, w, L, bias)
    _assert_results(got, want, TOL[F64], L, bias, f"packed {kind}")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("lengths,L,I,H,bias", PACKED, ids=_packed_ids())
def test_packed_float32_matches_cudnn(kind, lengths, L, I, H, bias):
    mod = _torch_module(kind, I, H, L, bias, F32)
    data, bs, h0 = _packed_inputs(lengths, I, H, L, F32)
    got = _run_op(kind, data, h0, [p.detach() for p in mod._flat_weights], bias, bs)
    want = _run_torch(mod, data, h0, bs)
    _assert_results(got, want, TOL[F32], L, bias, f"packed {kind}")


def _cpu_packed_or_skip(kind, data, bs, h0, w, bias):
    try:
        return _run_op(kind, data, h0, w, bias, bs)
    except (RuntimeError, NotImplementedError) as e:
        pytest.skip(f"the CPU {kind} op does not take packed sequences in this build: "
                    f"{str(e).splitlines()[0]}")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("lengths,L,I,H,bias", PACKED[1:5], ids=_packed_ids()[1:5])
def test_packed_matches_cpu_op(kind, lengths, L, I, H, bias):
    """The same packed inputs through the CPU op and the CUDA op."""
    data, bs, h0 = _packed_inputs(lengths, I, H, L, F64, device="cpu")
    w = _weights(kind, I, H, L, bias, device="cpu")
    want = _cpu_packed_or_skip(kind, data, bs, h0, w, bias)
    got = _run_op(kind, data.to(CUDA), h0.to(CUDA), [p.to(CUDA) for p in w], bias, bs)
    _assert_results(got, want, TOL[F64], L, bias, f"packed {kind} CPU vs CUDA")


@pytest.mark.parametrize("kind", KINDS)
def test_packed_equal_lengths_match_padded(kind):
    """Equal lengths: the packed rows are the padded (T, B) rows."""
    L, I, H, T, B = 2, 5, 19, 4, 6
    w = _weights(kind, I, H, L, True)
    x, h0 = _inputs(I, H, L, T, B, F64)
    bs = torch.full((T,), B, dtype=torch.long)
    (vp, gp) = _run_op(kind, x.reshape(T * B, I), h0, w, True, bs)
    (vd, gd) = _run_op(kind, x, h0, w, True)
    assert_close_scaled(vp[0], vd[0].reshape(T * B, H), TOL[F64], "output")
    assert_close_scaled(vp[1], vd[1], TOL[F64], "h_n")
    assert_close_scaled(gp[0], gd[0].reshape(T * B, I), TOL[F64], "grad input")
    for a, b, n in zip(gp[1:], gd[1:], ["h0"] + _names(L, True)):
        assert_close_scaled(a, b, TOL[F64], f"grad {n}")


@pytest.mark.parametrize("kind", KINDS)
def test_packed_gradcheck(kind):
    L, I, H = 2, 3, 4
    data, bs, h0 = _packed_inputs([4, 3, 3, 1], I, H, L, F64)
    w = [_leaf(p) for p in _weights(kind, I, H, L, True, seed=4)]
    data, h0 = _leaf(data), _leaf(h0)

    def fn(x, h, *ws):
        return _op(kind, x, h, list(ws), True, bs)

    assert torch.autograd.gradcheck(fn, [data, h0] + w, eps=1e-6, atol=1e-7)


# ------------------------------------------------------ gradcheck / opcheck --

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bias", [True, False])
def test_gradcheck_ops(kind, bias):
    L, I, H, T, B = 2, 3, 4, 3, 2
    w = [_leaf(p) for p in _weights(kind, I, H, L, bias, seed=4)]
    x, h0 = (_leaf(t) for t in _inputs(I, H, L, T, B, F64))

    def fn(x, h, *ws):
        return _op(kind, x, h, list(ws), bias)

    assert torch.autograd.gradcheck(fn, [x, h0] + w, eps=1e-6, atol=1e-7)


def _raw_args(kind, L=2, bias=True, dtype=F64, T=3, B=2, I=3, H=4, requires_grad=False,
              lengths=None):
    """[input, hx, weights, has_biases] (+ relu for the RNN), and batch_sizes."""
    w = [_leaf(p, requires_grad) for p in _weights(kind, I, H, L, bias, dtype)]
    if lengths is None:
        x, h0 = _inputs(I, H, L, T, B, dtype)
        bs = None
    else:
        x, bs, h0 = _packed_inputs(lengths, I, H, L, dtype)
    x, h0 = _leaf(x, requires_grad), _leaf(h0, requires_grad)
    args = [x, h0, w, bias] + ([] if kind == "gru" else [kind == "rnn_relu"])
    return args, bs


def _forward_op(kind):
    return torch.ops.fusedrnn.gru_forward if kind == "gru" else torch.ops.fusedrnn.rnn_forward


def _backward_op(kind):
    return torch.ops.fusedrnn.gru_backward if kind == "gru" else torch.ops.fusedrnn.rnn_backward


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_opcheck_forward(kind, bias, packed):
    op = _forward_op(kind).default
    lengths = [3, 2, 2] if packed else None
    for train, rg, dtype in [(False, False, F64), (True, False, F64), (True, True, F64),
                             (True, True, F32)]:
        args, bs = _raw_args(kind, bias=bias, dtype=dtype, requires_grad=rg, lengths=lengths)
        torch.library.opcheck(op, args + [train, bs])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("L", [1, 3])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_opcheck_backward(kind, L, packed):
    args, bs = _raw_args(kind, L=L, lengths=[3, 2, 2] if packed else None)
    res = _forward_op(kind)(*args, True, bs)
    out, hy, hiddens = res[0], res[1], res[-1]
    H = hy.shape[-1]
    rows = tuple(out.shape[:-1])
    assert hiddens.shape == (L - 1,) + rows + (H,)
    if kind == "gru":
        assert res[2].shape == (L,) + rows + (4 * H,)
    go, gh = torch.randn_like(out), torch.randn_like(hy)
    x, h0, w, bias, *relu = args
    saved = [out] + ([res[2]] if kind == "gru" else []) + [hiddens]
    bargs = [go, gh, x, h0, w, bias] + relu + saved + [bs]
    torch.library.opcheck(_backward_op(kind).default, bargs)


# -------------------------------------------- saved tensors, CPU vs CUDA --

@pytest.mark.parametrize("kind", KINDS)
def test_saved_activations_match_cpu(kind):
    """train=True returns what the CPU op returns (GRU: saved rows
    [r | z | n | gh_n]; hiddens), and each backend's backward accepts the
    other's forward."""
    L, I, H, T, B, bias = 3, 5, 19, 4, 6, True
    w = _weights(kind, I, H, L, bias, device="cpu")
    x, h0 = _inputs(I, H, L, T, B, F64, device="cpu")
    args_c, args_g = [x, h0, w, bias], [x.to(CUDA), h0.to(CUDA), [p.to(CUDA) for p in w], bias]
    if kind != "gru":
        args_c.append(kind == "rnn_relu")
        args_g.append(kind == "rnn_relu")
    fwd, bwd = _forward_op(kind), _backward_op(kind)
    res_c = fwd(*args_c, True)
    res_g = fwd(*args_g, True)
    for k, (a, b) in enumerate(zip(res_g, res_c)):
        assert_close_scaled(a, b, TOL[F64], f"forward result {k}")
    g = torch.Generator().manual_seed(7)
    go, gh = torch.randn(res_c[0].shape, generator=g, dtype=F64), torch.randn(res_c[1].shape, generator=g, dtype=F64)
    saved_c, saved_g = list(res_c[:1]) + list(res_c[2:]), list(res_g[:1]) + list(res_g[2:])
    want = bwd(go, gh, *args_c, *saved_c)
    got = bwd(go.to(CUDA), gh.to(CUDA), *args_g, *saved_g)
    # The CPU backward on the CUDA forward's results, and the other way round.
    cross_c = bwd(go, gh, *args_c, *[t.cpu() for t in saved_g])
    cross_g = bwd(go.to(CUDA), gh.to(CUDA), *args_g, *[t.to(CUDA) for t in saved_c])
    for res in (got, cross_c, cross_g):
        assert_close_scaled(res[0], want[0], TOL[F64], "grad input")
        assert_close_scaled(res[1], want[1], TOL[F64], "grad hx")
        for a, b, n in zip(res[2], want[2], _names(L, bias)):
            assert_close_scaled(a, b, TOL[F64], f"grad {n}")


@pytest.mark.parametrize("kind", KINDS)
def test_cpu_and_cuda_agree(kind):
    L, I, H, T, B = 3, 5, 19, 4, 6
    w = _weights(kind, I, H, L, True, device="cpu")
    x, h0 = _inputs(I, H, L, T, B, F64, device="cpu")
    got = _run_op(kind, x.to(CUDA), h0.to(CUDA), [p.to(CUDA) for p in w], True)
    want = _run_op(kind, x, h0, w, True)
    _assert_results(got, want, TOL[F64], L, True, kind)


# ---------------------------------------------------------- determinism etc --

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_two_runs_bitwise_identical(kind, packed):
    L, I, H = 2, 10, 300
    mod = _torch_module(kind, I, H, L, True, F32)
    w = [p.detach() for p in mod._flat_weights]
    if packed:
        x, bs, h0 = _packed_inputs([6] * 20 + [4] * 15 + [1] * 5, I, H, L, F32)
    else:
        (x, h0), bs = _inputs(I, H, L, 6, 40, F32), None
    (v1, g1), (v2, g2) = _run_op(kind, x, h0, w, True, bs), _run_op(kind, x, h0, w, True, bs)
    for a, b in zip(v1 + g1, v2 + g2):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("L", [1, 2, 3])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_inference_matches_training_forward(kind, L, packed):
    """train=False keeps nothing (shape (0,) results) and computes the same
    forward.  Bitwise for L <= 2; with 3 layers the inner layers' inputs sit
    in a scratch buffer in inference but at an offset inside `hiddens` in
    training, and a library GEMM may pick another kernel for the other
    alignment, so the third layer is compared within rounding."""
    args, bs = _raw_args(kind, L=L, dtype=F32, T=5, B=9, I=6, H=37,
                         lengths=[5, 5, 4, 4, 4, 2, 1, 1, 1] if packed else None)
    a = _forward_op(kind)(*args, False, bs)
    b = _forward_op(kind)(*args, True, bs)
    for k in range(2):
        if L <= 2:
            assert torch.equal(a[k], b[k])
        else:
            assert_close_scaled(a[k], b[k], 1e-6, f"result {k}")
    for k in range(2, len(a)):
        assert a[k].shape == (0,)
    # The saved activations are consistent with the outputs.
    out, hy, hiddens = b[0], b[1], b[-1]
    if not packed:
        if L > 1:
            assert torch.equal(hiddens[:, -1], hy[:-1])  # hiddens[:, T-1] == h_n[:-1]
        assert torch.equal(out[-1], hy[-1])
    if kind == "gru":
        H = hy.shape[-1]
        saved = b[2]
        r, z, n = saved[..., :H], saved[..., H:2 * H], saved[..., 2 * H:3 * H]
        assert ((r >= 0) & (r <= 1)).all() and ((z >= 0) & (z <= 1)).all()
        assert (n.abs() <= 1).all()


def test_packed_final_states_are_each_sequences_last_step():
    lengths = [5, 4, 4, 2, 1]
    for kind in KINDS:
        args, bs = _raw_args(kind, L=1, dtype=F32, H=6, lengths=lengths)
        out, hy = _forward_op(kind)(*args, False, bs)[:2]
        off = [0] + torch.cumsum(bs, 0).tolist()
        for b, n in enumerate(lengths):
            assert torch.equal(hy[0, b], out[off[n - 1] + b]), f"{kind}: sequence {b}"


@pytest.mark.parametrize("kind", KINDS)
def test_zero_length_sequence_ops(kind):
    """T = 0 through the functional: no kernel runs, h_n = h0, and its
    gradient passes straight through."""
    (x, h0, w, bias, *_), _ = _raw_args(kind, L=2, T=0, B=4, I=3, H=5, requires_grad=True)
    out, hy = _op(kind, x, h0, w, bias)
    assert out.shape == (0, 4, 5)
    assert torch.equal(hy, h0)
    gh = torch.randn_like(hy)
    (hy * gh).sum().backward()
    assert torch.equal(h0.grad, gh)
    assert x.grad is None or x.grad.shape == x.shape
    for p in w:
        assert p.grad is None or torch.count_nonzero(p.grad) == 0


@pytest.mark.parametrize("kind", KINDS)
def test_zero_batch_ops(kind):
    L, T = 2, 4
    (x, h0, w, bias, *_), _ = _raw_args(kind, L=L, T=T, B=0, I=3, H=5, requires_grad=True)
    out, hy = _op(kind, x, h0, w, bias)
    assert out.shape == (T, 0, 5) and hy.shape == (L, 0, 5)
    out.sum().backward()
    for p in w:
        assert p.grad is None or torch.count_nonzero(p.grad) == 0


# ------------------------------------------------------- CUDA graph replay --

# (L, I, H, T, B, bias, dtype, lengths)
GRAPH_CASES = [
    (1, 3, 5, 1, 1, True, F32, None),
    (2, 8, 64, 7, 16, True, F32, None),
    (3, 10, 33, 5, 40, False, F32, None),
    (2, 16, 300, 4, 5, True, F16, None),
    (2, 6, 48, 6, 9, True, BF16, None),
    (2, 5, 20, 0, 0, True, F64, [6, 5, 5, 3, 1]),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", GRAPH_CASES, ids=[f"case{i}" for i in range(len(GRAPH_CASES))])
def test_graph_and_per_step_bitwise_identical(step_launch, kind, case):
    """cuda_step_launch = graph replays each layer's step loop from a cached
    CUDA graph: outputs, states and every gradient, training and inference,
    are bitwise those of per-step launches, also when the tensors (and so the
    pointers baked into the graph) change from call to call."""
    L, I, H, T, B, bias, dtype, lengths = case
    w = _weights(kind, I, H, L, bias, dtype)
    if lengths is None:
        x, h0 = _inputs(I, H, L, T, B, dtype)
        bs = None
    else:
        x, bs, h0 = _packed_inputs(lengths, I, H, L, dtype)

    def full(x, h0, ws):
        outs, grads = _run_op(kind, x, h0, ws, bias, bs)
        with torch.no_grad():
            inf = _op(kind, x, h0, ws, bias, bs)
        return outs + grads + list(inf)

    step_launch("per_step")
    want = full(x, h0, w)
    step_launch("graph")
    keep = []
    for it in range(3):
        xs, hs = x.clone(), h0.clone()
        ws = [p.clone() for p in w] if it % 2 else w
        keep.append((xs, hs, ws))  # kept alive: the next iteration's pointers differ
        for rep in range(2):       # rep 1: the same tensors, a plain replay
            got = full(xs, hs, ws)
            assert len(got) == len(want)
            for k, (a, b) in enumerate(zip(got, want)):
                assert torch.equal(a, b), f"iteration {it}.{rep}: result {k} differs from per_step"


# ------------------------------------------------------------ device errors --

@pytest.mark.parametrize("kind", KINDS)
def test_mixed_devices_refused(kind):
    (x, h0, w, bias, *relu), _ = _raw_args(kind, dtype=F32)  # on cuda
    w_cpu = [p.cpu() for p in w]
    op = _forward_op(kind)
    with pytest.raises(RuntimeError, match="(?i)device"):
        op(x, h0, w_cpu, bias, *relu, False)
    with pytest.raises(RuntimeError, match="(?i)device"):
        op(x, h0.cpu(), w, bias, *relu, False)
    with pytest.raises(RuntimeError, match="(?i)device"):
        op(x.cpu(), h0.cpu(), w, bias, *relu, False)
    # batch_sizes is a PackedSequence's: on the CPU, whatever the data's device.
    data, bs, hp = _packed_inputs([3, 2], 3, 4, 2, F32)
    with pytest.raises(RuntimeError, match="(?i)batch_sizes"):
        op(data, hp, w, bias, *relu, False, bs.to(CUDA))


@pytest.mark.skipif(torch.cuda.device_count() < 2,
                    reason="needs at least two CUDA devices (cuda:1 vs cuda:0)")
@pytest.mark.parametrize("kind", KINDS)
def test_second_device_matches_first(kind):
    L, I, H, T, B = 2, 5, 33, 4, 3
    w = _weights(kind, I, H, L, True, F32, device="cuda:0")
    x, h0 = _inputs(I, H, L, T, B, F32, device="cuda:0")
    with torch.cuda.device(0):  # the current device differs from the tensors'
        got = _run_op(kind, x.to("cuda:1"), h0.to("cuda:1"), [p.to("cuda:1") for p in w], True)
    want = _run_op(kind, x, h0, w, True)
    assert all(t.device == torch.device("cuda:1") for t in got[0] + got[1])
    _assert_results(got, want, TOL[F32], L, True, kind)


# ---------------------------------------------------------------- modules --

needs_cuda_modules = pytest.mark.skipif(
    not (fusedrnn.GRU._has_cuda_kernels and fusedrnn.RNN._has_cuda_kernels),
    reason="fusedrnn.GRU / fusedrnn.RNN do not take CUDA input yet (_has_cuda_kernels is False)")


def _module_pair(kind, I, H, L, **kw):
    torch.manual_seed(0)
    if kind == "gru":
        fused = fusedrnn.GRU(I, H, L, **kw)
        ref = torch.nn.GRU(I, H, L, **kw)
    else:
        fused = fusedrnn.RNN(I, H, L, nonlinearity=_nl(kind), **kw)
        ref = torch.nn.RNN(I, H, L, nonlinearity=_nl(kind), **kw)
    ref.load_state_dict(fused.state_dict())
    return fused, ref


def _run_module(mod, x, h0):
    x, h0 = _leaf(x), _leaf(h0)
    mod.zero_grad(set_to_none=True)
    out, hn = mod(x, h0)
    _backward([out, hn])
    return [out.detach(), hn.detach()], [x.grad, h0.grad] + [w.grad for w in mod._flat_weights]


@needs_cuda_modules
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_module_matches_torch_nn(kind, batch_first, bias):
    L, I, H, T, B = 2, 6, 33, 5, 7
    fused, ref = _module_pair(kind, I, H, L, bias=bias, batch_first=batch_first,
                              device=CUDA, dtype=F32)
    x, h0 = _inputs(I, H, L, T, B, F32)
    if batch_first:
        x = x.transpose(0, 1).contiguous()
    got, want = _run_module(fused, x, h0), _run_module(ref, x, h0)
    _assert_results(got, want, TOL[F32], L, bias, f"module {kind}")


@needs_cuda_modules
@pytest.mark.parametrize("kind", KINDS)
def test_module_bidirectional(kind):
    """The module's layer-by-layer path (bidirectional: the reverse direction
    is the op on the time-flipped input) with the CUDA ops."""
    L, I, H, T, B = 2, 4, 9, 3, 5
    fused, ref = _module_pair(kind, I, H, L, bidirectional=True, device=CUDA, dtype=F32)
    x, h0 = _inputs(I, H, 2 * L, T, B, F32)
    got, want = _run_module(fused, x, h0), _run_module(ref, x, h0)
    (vg, gg), (vw, gw) = got, want
    for a, b, n in zip(vg + gg, vw + gw, ["output", "h_n", "grad input", "grad h0"] +
                       list(fused._flat_weights_names)):
        assert_close_scaled(a, b, TOL[F32], f"bidirectional {kind} {n}")


@needs_cuda_modules
@pytest.mark.parametrize("kind", KINDS)
def test_module_unbatched_and_default_state(kind):
    L, I, H, T = 2, 3, 5, 4
    fused, ref = _module_pair(kind, I, H, L, device=CUDA, dtype=F32)
    x = torch.randn(T, I, device=CUDA)
    (o1, h1), (o2, h2) = fused(x), ref(x)
    assert_close_scaled(o1, o2, TOL[F32], "output")
    assert_close_scaled(h1, h2, TOL[F32], "h_n")
