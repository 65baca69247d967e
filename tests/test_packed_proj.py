"""Packed sequences (variable lengths) and the LSTM projection (proj_size), CPU.

What is checked, for LSTM, GRU and RNN (tanh/relu):
* module parity with torch.nn and with fusedrnn.reference over
  cell × layers × bidirectional × proj_size × packed/padded × batch_first:
  the output (packed layout identical), the final states and the gradients of
  the input, the initial states and every parameter (float64, tight);
* float32 with the AVX-512 step kernels on and off (where the CPU has them);
* unsorted batches (enforce_sorted=False), batch 1, every sequence of equal
  length, one step, dropout between layers (same masks as the reference under
  the same seed), unbatched input with a projection;
* the ops directly: padding rows cost nothing (their values never reach the
  result), final states at each sequence's own end;
* float64 gradcheck and torch.library.opcheck of every op with batch_sizes
  and of the LSTM op with a projection;
* bad input: unsorted lengths with enforce_sorted=True, lengths longer than T,
  zero lengths, proj_size >= hidden_size, unknown nonlinearity (as torch.nn);
  malformed batch_sizes and wrong state sizes at the op/module level.
"""
import itertools

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from conftest import assert_raises, fusedrnn_or_skip, reference

fusedrnn = fusedrnn_or_skip()

F64, F32 = torch.float64, torch.float32
KINDS = ("lstm", "gru", "rnn_tanh", "rnn_relu")


def _modules(kind, I, H, L, dtype=F64, **kw):
    """(fused, torch.nn) modules of one kind with identical weights."""
    torch.manual_seed(0)
    if kind.startswith("rnn"):
        kw["nonlinearity"] = kind.split("_")[1]
        name = "RNN"
    else:
        name = kind.upper()
    fused = getattr(fusedrnn, name)(I, H, L, dtype=dtype, **kw)
    ref = getattr(torch.nn, name)(I, H, L, dtype=dtype, **kw)
    ref.load_state_dict(fused.state_dict())
    return fused, ref


def _ref_fn(kind, module):
    """The fusedrnn.reference function with the module's configuration."""
    kw = dict(num_layers=module.num_layers, has_biases=module.bias,
              batch_first=module.batch_first, dropout=module.dropout,
              training=module.training, bidirectional=module.bidirectional)
    if kind == "lstm":
        kw["proj_size"] = module.proj_size
        fn = reference.lstm
    elif kind == "gru":
        fn = reference.gru
    else:
        kw["nonlinearity"] = module.nonlinearity
        fn = reference.rnn

    def run(input, hx):
        return fn(input, hx, module._flat_weights, **kw)
    return run


def _states(kind, module, B, dtype, seed=3):
    g = torch.Generator().manual_seed(seed)
    D = 2 if module.bidirectional else 1
    hs = module.proj_size if kind == "lstm" and module.proj_size else module.hidden_size
    h0 = (0.5 * torch.randn(D * module.num_layers, B, hs, generator=g)).to(dtype)
    if kind != "lstm":
        return [h0.requires_grad_()]
    c0 = (0.5 * torch.randn(D * module.num_layers, B, module.hidden_size, generator=g)).to(dtype)
    return [h0.requires_grad_(), c0.requires_grad_()]


def _run(kind, fn, x, lengths, states, batch_first, enforce_sorted, params):
    """Run fn (a module or a reference function taking (input, hx)) on the
    packed or padded batch; returns ([padded output, *final states],
    [gradients of x, states, params]) for a fixed weighted loss."""
    hx = tuple(states) if kind == "lstm" else states[0]
    if lengths is not None:
        inp = pack_padded_sequence(x, lengths, batch_first=batch_first,
                                   enforce_sorted=enforce_sorted)
    else:
        inp = x
    out, st = fn(inp, hx)
    if lengths is not None:
        assert isinstance(out, PackedSequence)
        assert torch.equal(out.batch_sizes, inp.batch_sizes)
        packed_data = out.data
        out, out_len = pad_packed_sequence(out, batch_first=batch_first)
        assert torch.equal(out_len, lengths)
    else:
        packed_data = None
    finals = list(st) if kind == "lstm" else [st]
    w = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    loss = (out * w).sum() + sum((f * f).sum() for f in finals)
    grads = torch.autograd.grad(loss, [x, *states, *params])
    values = [out, *finals] + ([packed_data] if packed_data is not None else [])
    return values, list(grads)


def _compare(a, b, tol, what):
    for i, (x, y) in enumerate(zip(a[0] + a[1], b[0] + b[1])):
        assert x.shape == y.shape, f"{what}: item {i}: shape {tuple(x.shape)} vs {tuple(y.shape)}"
        torch.testing.assert_close(x, y, **tol, msg=lambda m: f"{what}: item {i}: {m}")


TIGHT = dict(rtol=1e-10, atol=1e-10)
F32_TOL = dict(rtol=2e-4, atol=2e-5)

GRID = [
    (kind, L, bidir, proj, packed, bf)
    for kind, L, bidir, proj, packed, bf in itertools.product(
        KINDS, (1, 3), (False, True), (0, 3), (True, False), (False, True))
    if not (proj and kind != "lstm") and (packed or proj)
]


@pytest.mark.parametrize("kind,L,bidir,proj,packed,batch_first", GRID)
def test_parity_float64(kind, L, bidir, proj, packed, batch_first):
    """Module vs torch.nn vs reference: outputs, states, every gradient."""
    I, H, T, B = 4, 6, 7, 5
    kw = dict(bidirectional=bidir, batch_first=batch_first)
    if proj:
        kw["proj_size"] = proj
    fused, ref = _modules(kind, I, H, L, **kw)
    g = torch.Generator().manual_seed(1)
    x = torch.randn((B, T, I) if batch_first else (T, B, I), generator=g, dtype=F64)
    lengths = torch.tensor([5, 7, 1, 7, 3]) if packed else None
    results = []
    for fn, params in ((fused, list(fused.parameters())), (ref, list(ref.parameters())),
                       (_ref_fn(kind, fused), list(fused.parameters()))):
        xx = x.clone().requires_grad_()
        st = _states(kind, fused, B, F64)
        results.append(_run(kind, fn, xx, lengths, st, batch_first, False, params))
    _compare(results[0], results[1], TIGHT, "fusedrnn vs torch.nn")
    _compare(results[0], results[2], TIGHT, "fusedrnn vs reference")


@pytest.mark.parametrize("kind", KINDS)
def test_packed_float32_both_step_paths(cpu_step_path, kind):
    I, H, L, T, B = 16, 40, 2, 9, 6
    fused, ref = _modules(kind, I, H, L, dtype=F32)
    x = torch.randn(T, B, I)
    lengths = torch.tensor([9, 8, 8, 4, 2, 1])
    out = []
    for m in (fused, ref):
        xx = x.clone().requires_grad_()
        out.append(_run(kind, m, xx, lengths, _states(kind, m, B, F32), False, True,
                        list(m.parameters())))
    _compare(out[0], out[1], F32_TOL, f"float32 packed {kind} ({cpu_step_path} path)")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("lengths", ([1], [3, 3, 3], [4, 1, 1], [1, 1]))
def test_packed_edge_lengths(kind, lengths):
    """Batch 1, all equal lengths, one long and many length-1, T = 1."""
    fused, ref = _modules(kind, 3, 5, 2, bidirectional=True)
    lengths = torch.tensor(lengths)
    T, B = int(lengths.max()), lengths.numel()
    x = torch.randn(T, B, 3, dtype=F64)
    out = []
    for m in (fused, ref):
        xx = x.clone().requires_grad_()
        out.append(_run(kind, m, xx, lengths, _states(kind, m, B, F64), False, False,
                        list(m.parameters())))
    _compare(out[0], out[1], TIGHT, f"lengths {lengths.tolist()}")


def test_packed_without_hx_and_unsorted_states_order():
    """hx=None gives zeros; given states follow the caller's batch order."""
    fused, ref = _modules("lstm", 3, 5, 2)
    x = torch.randn(6, 4, 3, dtype=F64)
    lengths = torch.tensor([2, 6, 3, 5])
    pk = pack_padded_sequence(x, lengths, enforce_sorted=False)
    a, (ha, ca) = fused(pk)
    b, (hb, cb) = ref(pk)
    torch.testing.assert_close(a.data, b.data, **TIGHT)
    torch.testing.assert_close(ha, hb, **TIGHT)
    torch.testing.assert_close(ca, cb, **TIGHT)
    # The final state of sequence b is the output at its own last step.
    padded, _ = pad_packed_sequence(a)
    for b_ in range(4):
        torch.testing.assert_close(ha[-1, b_], padded[lengths[b_] - 1, b_], **TIGHT)


@pytest.mark.parametrize("kind", ("lstm", "gru"))
def test_packed_dropout_matches_reference(kind):
    fused, _ = _modules(kind, 3, 5, 3, dropout=0.5, bidirectional=True)
    fused.train()
    x = torch.randn(5, 3, 3, dtype=F64)
    lengths = torch.tensor([5, 4, 2])
    res = []
    for fn in (fused, _ref_fn(kind, fused)):
        torch.manual_seed(123)
        xx = x.clone().requires_grad_()
        res.append(_run(kind, fn, xx, lengths, _states(kind, fused, 3, F64), False, True,
                        list(fused.parameters())))
    _compare(res[0], res[1], TIGHT, "dropout, packed")


def test_proj_unbatched_and_state_dict():
    fused, ref = _modules("lstm", 3, 6, 2, proj_size=2, bidirectional=True)
    assert fused.state_dict().keys() == ref.state_dict().keys()
    x = torch.randn(4, 3, dtype=F64)
    h0 = torch.randn(4, 2, dtype=F64)
    c0 = torch.randn(4, 6, dtype=F64)
    a, (ha, ca) = fused(x, (h0, c0))
    b, (hb, cb) = ref(x, (h0, c0))
    assert a.shape == (4, 4) and ha.shape == (4, 2) and ca.shape == (4, 6)
    for u, v in ((a, b), (ha, hb), (ca, cb)):
        torch.testing.assert_close(u, v, **TIGHT)


def test_proj_float32_matches_torch():
    fused, ref = _modules("lstm", 16, 32, 2, dtype=F32, proj_size=8)
    x = torch.randn(10, 4, 16)
    out = []
    for m in (fused, ref):
        xx = x.clone().requires_grad_()
        out.append(_run("lstm", m, xx, None, _states("lstm", m, 4, F32), False, True,
                        list(m.parameters())))
    _compare(out[0], out[1], F32_TOL, "float32 proj")


# ------------------------------------------------------------------ ops --

def _op_args(kind, I=3, H=4, L=2, proj=0, B=3, seed=0):
    """(weights, states) for calling the ops directly, float64."""
    g = torch.Generator().manual_seed(seed)
    G = {"lstm": 4, "gru": 3}.get(kind, 1)
    P = proj or H
    w = []
    for l in range(L):
        w += [torch.randn(G * H, I if l == 0 else P, generator=g, dtype=F64),
              torch.randn(G * H, P, generator=g, dtype=F64),
              torch.randn(G * H, generator=g, dtype=F64),
              torch.randn(G * H, generator=g, dtype=F64)]
        if proj:
            w.append(torch.randn(P, H, generator=g, dtype=F64))
    w = [0.3 * t for t in w]
    h0 = torch.randn(L, B, P, generator=g, dtype=F64)
    c0 = torch.randn(L, B, H, generator=g, dtype=F64)
    return w, h0, c0


def _call(kind, x, h0, c0, w, bs):
    if kind == "lstm":
        return fusedrnn.ops.lstm(x, h0, c0, w, True, bs)
    if kind == "gru":
        return fusedrnn.ops.gru(x, h0, w, True, bs)
    return fusedrnn.ops.rnn(x, h0, w, True, kind.split("_")[1], bs)


@pytest.mark.parametrize("kind", KINDS)
def test_padding_rows_do_no_work(kind):
    """The op sees only the packed rows: replacing the padding of the padded
    batch by NaN changes nothing, and the states are those at each end."""
    lengths = torch.tensor([5, 3, 3, 1])
    x = torch.randn(5, 4, 3, dtype=F64)
    mask = torch.arange(5).unsqueeze(1) < lengths.unsqueeze(0)
    x_nan = torch.where(mask.unsqueeze(2), x, torch.full_like(x, float("nan")))
    w, h0, c0 = _op_args(kind, B=4)
    pk = pack_padded_sequence(x_nan, lengths)
    res = _call(kind, pk.data, h0, c0, w, pk.batch_sizes)
    assert all(torch.isfinite(r).all() for r in res)
    # Each sequence alone (no padding at all) gives the same rows and states.
    y = pad_packed_sequence(PackedSequence(res[0], pk.batch_sizes), total_length=5)[0]
    for b in range(4):
        n = int(lengths[b])
        alone = _call(kind, x[:n, b:b + 1], h0[:, b:b + 1], c0[:, b:b + 1], w, None)
        torch.testing.assert_close(y[:n, b:b + 1], alone[0], **TIGHT)
        for got, want in zip(res[1:], alone[1:]):
            torch.testing.assert_close(got[:, b:b + 1], want, **TIGHT)


@pytest.mark.parametrize("kind,proj,packed", [
    ("lstm", 0, True), ("lstm", 2, True), ("lstm", 2, False),
    ("gru", 0, True), ("rnn_tanh", 0, True), ("rnn_relu", 0, True)])
def test_gradcheck(kind, proj, packed):
    w, h0, c0 = _op_args(kind, proj=proj)
    bs = torch.tensor([3, 2, 2, 1]) if packed else None
    x = torch.randn(8 if packed else 4, 3, dtype=F64) if packed else torch.randn(4, 3, 3, dtype=F64)
    ins = [x, h0, c0] + w if kind == "lstm" else [x, h0] + w
    ins = [t.requires_grad_() for t in ins]

    def f(*a):
        if kind == "lstm":
            return _call(kind, a[0], a[1], a[2], list(a[3:]), bs)
        return _call(kind, a[0], a[1], None, list(a[2:]), bs)
    assert torch.autograd.gradcheck(f, ins, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind,proj", [("lstm", 0), ("lstm", 2), ("gru", 0), ("rnn_tanh", 0)])
def test_opcheck(kind, proj):
    w, h0, c0 = _op_args(kind, proj=proj)
    bs = torch.tensor([3, 2, 2, 1])
    x = torch.randn(8, 3, dtype=F64, requires_grad=True)
    w = [t.requires_grad_() for t in w]
    h0.requires_grad_()
    if kind == "lstm":
        op, args = torch.ops.fusedrnn.lstm_forward, (x, h0, c0, w, True, True, bs)
    elif kind == "gru":
        op, args = torch.ops.fusedrnn.gru_forward, (x, h0, w, True, True, bs)
    else:
        op, args = torch.ops.fusedrnn.rnn_forward, (x, h0, w, True, False, True, bs)
    torch.library.opcheck(op, args)


# --------------------------------------------------------------- errors --

def test_errors_like_torch_nn():
    x = torch.randn(4, 3, 2)
    # Lengths not sorted with enforce_sorted=True, longer than T, zero.
    assert_raises(RuntimeError, lambda: pack_padded_sequence(x, torch.tensor([2, 4, 1])),
                  r"sorted")
    # pack_padded_sequence does not refuse lengths > T itself; it builds a
    # PackedSequence whose batch_sizes do not match its data.  torch.nn then
    # fails with an index error, fusedrnn says what is wrong.
    bad = pack_padded_sequence(x, torch.tensor([5, 4, 1]))
    assert_raises(RuntimeError, lambda: fusedrnn.LSTM(2, 3)(bad), r"9 rows",
                  r"batch_sizes sums to 10")
    assert_raises(RuntimeError, lambda: pack_padded_sequence(x, torch.tensor([4, 2, 0])),
                  r"(?i)length")
    # proj_size >= hidden_size and a bad nonlinearity: the nn constructors' own errors.
    assert_raises(ValueError, lambda: fusedrnn.LSTM(2, 4, proj_size=4), r"proj_size")
    assert_raises(ValueError, lambda: fusedrnn.LSTM(2, 4, proj_size=-1), r"proj_size")
    assert_raises(ValueError, lambda: fusedrnn.RNN(2, 4, nonlinearity="gelu"), r"gelu")


@pytest.mark.parametrize("bs,rows,msg", [
    (torch.tensor([2, 3]), 5, r"non-increasing"),
    (torch.tensor([3, 0]), 3, r"at least one row"),
    (torch.tensor([3, 2]), 4, r"sums to 5"),
    (torch.tensor([3.0, 2.0]), 5, r"int64"),
    (torch.tensor([[3, 2]]), 5, r"1-D"),
])
@pytest.mark.parametrize("kind", ("lstm", "gru", "rnn_tanh"))
def test_bad_batch_sizes(kind, bs, rows, msg):
    w, h0, c0 = _op_args(kind)
    x = torch.randn(rows, 3, dtype=F64)
    assert_raises(RuntimeError, lambda: _call(kind, x, h0, c0, w, bs), msg)


def test_bad_packed_shapes():
    w, h0, c0 = _op_args("lstm")
    bs = torch.tensor([3, 2])
    # 3-D input with batch_sizes; states for another batch size.
    assert_raises(RuntimeError, lambda: _call("lstm", torch.randn(5, 1, 3, dtype=F64), h0, c0,
                                              w, bs), r"\(N, I\)")
    assert_raises(RuntimeError, lambda: _call("lstm", torch.randn(5, 3, dtype=F64),
                                              h0[:, :2], c0, w, bs), r"hx")
    # Module: hx sized for another batch.
    fused, _ = _modules("gru", 3, 5, 1)
    pk = pack_padded_sequence(torch.randn(4, 3, 3, dtype=F64), torch.tensor([4, 2, 1]))
    assert_raises(RuntimeError, lambda: fused(pk, torch.zeros(1, 2, 5, dtype=F64)),
                  r"\(1, 3, 5\)")
    # Projection: h0 with hidden_size features instead of proj_size.
    lstm, _ = _modules("lstm", 3, 5, 1, proj_size=2)
    x = torch.randn(4, 2, 3, dtype=F64)
    assert_raises(RuntimeError, lambda: lstm(x, (torch.zeros(1, 2, 5, dtype=F64),
                                                 torch.zeros(1, 2, 5, dtype=F64))),
                  r"\(1, 2, 2\)")
