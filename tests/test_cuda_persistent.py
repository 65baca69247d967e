"""The persistent wavefront tier of the CUDA LSTM (csrc/cuda/lstm_persistent.cu).

Needs a CUDA device and a build of fusedrnn._C with the CUDA kernels;
otherwise the module is skipped with the reason.  The tier is chosen with
fusedrnn.set_option("cuda_tier", ...) ("general" / "persistent" / "auto"),
restored after every test; it applies to the forward and the backward op
(both have a persistent kernel; each consumes/produces the saved tensors in
the general tier's layout, so the tiers can also be mixed within one step).

What is checked:
* both tiers agree with each other and with fusedrnn.reference (float64) on
  outputs, h_n, c_n and every gradient, including H not a multiple of any
  tile or CTA slice, batch 1, T = 1, L = 8, no biases, D2L's shape;
* float32 and bfloat16 persistent vs general tier; the saved activations
  (gates, cells, hiddens) agree between the tiers;
* inference (train=False, ping-pong buffers) equals the training forward bitwise;
* bitwise determinism; auto picks the persistent kernel exactly where the
  planner says (bitwise equal to the forced tier of its choice);
* forward and backward on different tiers give the same gradients;
* forcing the persistent tier on sizes that do not fit, or on proj_size,
  raises a clear error; float64 gradcheck through the persistent tier;
* the bench-only op fusedrnn::wavefront_floor runs;
* the CTA-wide forward epilogue (persistent_cta_epilogue "on"; auto's choice
  except for float64 since 2026-12-04):
  the forward (training and inference, every saved tensor) against the lanes'
  epilogue and the float64 reference, also where the batch is staged in
  chunks; determinism;
* the EXPERIMENTAL two-unit forward tasks (persistent_fwd_task_units "2", 256
  threads, and 512 in float32): the forward against one-unit tasks and the
  float64 reference; determinism;
* the EXPERIMENTAL float32 forward weights in registers
  (persistent_fwd_task_units "regs"): the same checks;
* the 512-thread CTAs (persistent_threads "512", auto's choice for most
  float32 and 2-byte backward / float32 forward sizes; alone and with
  the CTA-wide epilogue): outputs, states, saved activations and gradients
  against 256 threads and the float64 reference; determinism;
* the EXPERIMENTAL tensor-core products (persistent_mma "on", bfloat16 and
  float16, forward and backward, every tile shape, padded rows, K slices):
  outputs, states, saved activations and gradients against the FMA kernels
  and the float64 reference, determinism, inference equal to training.
"""
import contextlib

import pytest
import torch

from conftest import (CUDA, assert_close_scaled, cuda_or_skip, flat_weights, loss_weights,
                      lstm_inputs, make_pair, option_set, reference)

fusedrnn = cuda_or_skip()

F64, F32, BF16 = torch.float64, torch.float32, torch.bfloat16
TOL = {F64: 1e-10, F32: 2e-5, BF16: 3e-2}


@pytest.fixture(autouse=True)
def restore_tier_and_tf32():
    old = fusedrnn.get_option("cuda_tier")
    old_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        fusedrnn.set_option("cuda_tier", old)
        torch.backends.cuda.matmul.allow_tf32 = old_tf32


def tier(name):
    return option_set("cuda_tier", name)


def _persistent_and_general(fn, *args):
    """(fn(*args) with cuda_tier 'persistent', fn(*args) with cuda_tier 'general')."""
    with tier("persistent"):
        p = fn(*args)
    with tier("general"):
        g = fn(*args)
    return p, g


def device_plan(H, L, B, dtype, T=8, backward=False, max_batch_split=1, mma=False,
                cta_epilogue=False, threads=256, fwd_task_units=1):
    """The planner's answer for this device; mma: the tensor-core tiles asked
    for (float32 as TF32 when torch.backends.cuda.matmul.allow_tf32 is on, as
    the op does); cta_epilogue: the forward's CTA-wide epilogue asked for;
    threads and fwd_task_units as persistent_plan takes them."""
    p = torch.cuda.get_device_properties(CUDA)
    smem_sm = getattr(p, "shared_memory_per_multiprocessor", 0)
    smem_block = getattr(p, "shared_memory_per_block_optin", 0)
    regs = getattr(p, "regs_per_multiprocessor", 65536)
    if not smem_sm or not smem_block:
        pytest.skip("torch does not report this device's shared memory limits")
    elem = torch.empty(0, dtype=dtype).element_size()
    return fusedrnn._C.persistent_plan(H, H, L, B, elem, smem_sm, smem_block, regs,
                                       p.multi_processor_count, T, 0, int(backward),
                                       max_batch_split,
                                       (2 if torch.backends.cuda.matmul.allow_tf32 else 1)
                                       if mma else 0, int(cta_epilogue), threads, fwd_task_units)


def _run_ops(weights, x, h0, c0, bias):
    """fusedrnn.ops.lstm: values (output, h_n, c_n) and grads [x, h0, c0, *weights]."""
    ws = [w.detach().clone().requires_grad_() for w in weights]
    x, h0, c0 = (t.detach().clone().requires_grad_() for t in (x, h0, c0))
    vals = list(fusedrnn.ops.lstm(x, h0, c0, ws, bias))
    sum((v.to(w.dtype) * w).sum() for v, w in zip(vals, loss_weights(vals))).backward()
    return [v.detach() for v in vals], [x.grad, h0.grad, c0.grad] + [w.grad for w in ws]


def _run_reference(weights, x, h0, c0, L, bias):
    ws = [w.detach().clone().double().requires_grad_() for w in weights]
    x, h0, c0 = (t.detach().clone().double().requires_grad_() for t in (x, h0, c0))
    out, (hn, cn) = reference.lstm(x, (h0, c0), ws, num_layers=L, has_biases=bias,
                                   batch_first=False)
    vals = [out, hn, cn]
    sum((v * w.double()).sum() for v, w in zip(vals, loss_weights(vals))).backward()
    return [v.detach() for v in vals], [x.grad, h0.grad, c0.grad] + [w.grad for w in ws]


def _assert_same(got, want, tol, what):
    names = ["output", "h_n", "c_n"]
    for a, b, n in zip(got[0], want[0], names):
        assert_close_scaled(a, b, tol, f"{what}: {n}")
    assert len(got[1]) == len(want[1])
    for k, (a, b) in enumerate(zip(got[1], want[1])):
        assert a is not None and b is not None, f"{what}: gradient {k} missing"
        assert_close_scaled(a, b, tol, f"{what}: gradient {k}")


def _weights(I, H, L, bias, dtype):
    fused, _ = make_pair(I, H, L, bias=bias, dtype=dtype, device=CUDA)
    return [w.detach() for w in flat_weights(fused)]


def _need_fit(H, L, B, dtype, T=8):
    """Skip unless both persistent kernels (forward and backward) fit."""
    for backward in (False, True):
        p = device_plan(H, L, B, dtype, T, backward)
        if not p["fits"]:
            pytest.skip(f"H={H} L={L} B={B} {dtype} does not fit the persistent "
                        f"{'backward' if backward else 'forward'} on this device: {p['why']}")


# (L, I, H, T, B, bias)
SHAPES = [
    (1, 3, 5, 1, 1, True),        # odd sizes, T = 1, batch 1
    (2, 3, 5, 4, 1, True),        # batch 1, two layers
    (2, 10, 33, 4, 3, True),
    (3, 7, 300, 3, 3, True),      # H not a multiple of the CTA slices
    (8, 5, 16, 4, 2, True),       # L = 8: a deep wavefront
    (2, 6, 17, 5, 17, False),     # no biases, B not a multiple of the warp rows
    (1, 8, 64, 2, 16, True),
    (2, 28, 256, 35, 32, True),   # D2L
    (4, 16, 128, 1, 5, True),     # T = 1 with several layers
]


def _ids(shapes):
    return [f"L{L}-I{I}-H{H}-T{T}-B{B}{'' if b else '-nobias'}" for L, I, H, T, B, b in shapes]


@pytest.mark.parametrize("L,I,H,T,B,bias", SHAPES, ids=_ids(SHAPES))
def test_float64_both_tiers_match_reference(L, I, H, T, B, bias):
    _need_fit(H, L, B, F64, T)
    w = _weights(I, H, L, bias, F64)
    x, h0, c0 = lstm_inputs(I, H, L, T, B, F64)
    want = _run_reference(w, x, h0, c0, L, bias)
    got_p, got_g = _persistent_and_general(_run_ops, w, x, h0, c0, bias)
    _assert_same(got_p, want, TOL[F64], "persistent vs reference")
    _assert_same(got_g, want, TOL[F64], "general vs reference")


@pytest.mark.parametrize("L,I,H,T,B,bias", SHAPES, ids=_ids(SHAPES))
def test_float32_persistent_matches_general_and_reference(L, I, H, T, B, bias):
    _need_fit(H, L, B, F32, T)
    w = _weights(I, H, L, bias, F32)
    x, h0, c0 = lstm_inputs(I, H, L, T, B, F32)
    got_p, got_g = _persistent_and_general(_run_ops, w, x, h0, c0, bias)
    _assert_same(got_p, got_g, TOL[F32], "persistent vs general")
    _assert_same(got_p, _run_reference(w, x, h0, c0, L, bias), 1e-4, "persistent vs reference")


SHAPES_BF16 = [(1, 3, 5, 1, 1, True), (2, 8, 32, 5, 4, True), (3, 7, 300, 3, 3, True),
               (2, 28, 256, 8, 32, True), (2, 6, 17, 4, 9, False)]


@pytest.mark.parametrize("L,I,H,T,B,bias", SHAPES_BF16, ids=_ids(SHAPES_BF16))
def test_bfloat16_persistent_matches_general_and_float64(L, I, H, T, B, bias):
    _need_fit(H, L, B, BF16, T)
    w = _weights(I, H, L, bias, BF16)
    x, h0, c0 = lstm_inputs(I, H, L, T, B, BF16)
    got_p, got_g = _persistent_and_general(_run_ops, w, x, h0, c0, bias)
    _assert_same(got_p, got_g, TOL[BF16], "persistent vs general")
    _assert_same(got_p, _run_reference(w, x, h0, c0, L, bias), TOL[BF16],
                 "persistent vs float64 reference")


@pytest.mark.parametrize("dtype", [F32, BF16], ids=["float32", "bfloat16"])
def test_saved_activations_match_general_tier(dtype):
    L, I, H, T, B = 3, 9, 70, 5, 6
    _need_fit(H, L, B, dtype, T)
    w = _weights(I, H, L, True, dtype)
    x, h0, c0 = lstm_inputs(I, H, L, T, B, dtype)
    op = torch.ops.fusedrnn.lstm_forward
    p, g = _persistent_and_general(op, x, h0, c0, w, True, True)
    names = ["output", "hy", "cy", "gates", "cells", "hiddens"]
    for a, b, n in zip(p, g, names):
        assert a.shape == b.shape, n
        assert_close_scaled(a, b, TOL[dtype], f"saved {n}")


@pytest.mark.parametrize("L", [1, 2, 5])
def test_inference_matches_training_forward(L):
    I, H, T, B = 6, 37, 7, 9
    _need_fit(H, L, B, F32, T)
    w = _weights(I, H, L, True, F32)
    x, h0, c0 = lstm_inputs(I, H, L, T, B, F32)
    op = torch.ops.fusedrnn.lstm_forward
    with tier("persistent"):
        a = op(x, h0, c0, w, True, False)
        b = op(x, h0, c0, w, True, True)
    for k in range(3):
        assert torch.equal(a[k], b[k]), k
    for k in range(3, 6):
        assert a[k].shape == (0,)
    assert torch.equal(b[4][-1, -1], b[2][-1])               # cells[L-1, T-1] == c_n
    if L > 1:
        assert torch.equal(b[5][:, -1], b[1][:-1])           # hiddens[:, T-1] == h_n[:-1]


@pytest.mark.parametrize("dtype", [F32, BF16], ids=["float32", "bfloat16"])
def test_two_runs_bitwise_identical(dtype):
    L, I, H, T, B = 3, 10, 300, 6, 12
    _need_fit(H, L, B, dtype, T)
    w = _weights(I, H, L, True, dtype)
    x, h0, c0 = lstm_inputs(I, H, L, T, B, dtype)
    with tier("persistent"):
        r1, r2 = _run_ops(w, x, h0, c0, True), _run_ops(w, x, h0, c0, True)
    for a, b in zip(r1[0] + r1[1], r2[0] + r2[1]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("B", [4, 100])
def test_auto_follows_the_planner(B):
    """auto runs exactly the tier the planner picks: bitwise equal to that tier forced."""
    L, I, H, T = 4, 12, 96, 20
    plan = device_plan(H, L, B, F32, T)
    w = _weights(I, H, L, True, F32)
    x, h0, c0 = lstm_inputs(I, H, L, T, B, F32)
    op = torch.ops.fusedrnn.lstm_forward
    with tier("auto"):
        a = op(x, h0, c0, w, True, True)
    with tier("persistent" if plan["persistent"] else "general"):
        b = op(x, h0, c0, w, True, True)
    assert plan["auto_eligible"] == (B <= 64)
    assert plan["persistent"] == (plan["auto_eligible"] and plan["auto_enabled"])
    for u, v in zip(a, b):
        assert torch.equal(u, v)


@pytest.mark.parametrize("fwd_tier,bwd_tier", [("persistent", "general"),
                                               ("general", "persistent")])
def test_mixed_tiers_same_gradients(fwd_tier, bwd_tier):
    """Forward on one tier, backward on the other: the saved tensors share one layout."""
    L, I, H, T, B = 3, 9, 70, 5, 6
    _need_fit(H, L, B, F32, T)
    w = [t.requires_grad_() for t in _weights(I, H, L, True, F32)]
    x, h0, c0 = (t.requires_grad_() for t in lstm_inputs(I, H, L, T, B, F32))
    with tier(fwd_tier):
        vals = list(fusedrnn.ops.lstm(x, h0, c0, w, True))
    loss = sum((v * g).sum() for v, g in zip(vals, loss_weights(vals)))
    with tier(bwd_tier):
        got = torch.autograd.grad(loss, [x, h0, c0] + w)
    with tier("general"):
        vals = list(fusedrnn.ops.lstm(x, h0, c0, w, True))
        loss = sum((v * g).sum() for v, g in zip(vals, loss_weights(vals)))
        want = torch.autograd.grad(loss, [x, h0, c0] + w)
    for k, (a, b) in enumerate(zip(got, want)):
        assert_close_scaled(a, b, TOL[F32], f"gradient {k}")


def _backward_op_args(L, I, H, T, B, dtype, seed):
    """The arguments of lstm_backward for one training forward (with biases)
    and random output/state gradients."""
    w = _weights(I, H, L, True, dtype)
    x, h0, c0 = lstm_inputs(I, H, L, T, B, dtype)
    out, hy, cy, gates, cells, hiddens = torch.ops.fusedrnn.lstm_forward(x, h0, c0, w, True, True)
    g = torch.Generator().manual_seed(seed)
    go, gh, gc = (torch.randn(t.shape, generator=g, dtype=dtype).to(CUDA) for t in (out, hy, cy))
    return [go, gh, gc, x, h0, c0, w, True, out, gates, cells, hiddens]


def test_backward_op_persistent_matches_general():
    """lstm_backward itself, on the saved tensors of one forward."""
    L, I, H, T, B = 2, 5, 33, 4, 7
    _need_fit(H, L, B, F64, T)
    args = _backward_op_args(L, I, H, T, B, F64, seed=5)
    p, q = _persistent_and_general(torch.ops.fusedrnn.lstm_backward, *args)
    for k in range(3):
        assert_close_scaled(p[k], q[k], TOL[F64], ["grad_input", "grad_hx", "grad_cx"][k])
    for k, (a, b) in enumerate(zip(p[3], q[3])):
        assert_close_scaled(a, b, TOL[F64], f"grad weight {k}")


@pytest.mark.parametrize("B", [32, 31, 33])
def test_backward_batch_split_matches_unsplit(B):
    """The backward's batch split (option persistent_bwd_split, auto = on;
    persistent_plan.h plan_lstm): where the plan splits the batch across CTAs,
    the gradients match the unsplit persistent backward's (to float32
    rounding: a row's place in its warp task, and so its summation order,
    may move) and are bitwise the same run to run, also when the split does
    not divide B."""
    L, I, H, T = 2, 28, 256, 12
    _need_fit(H, L, B, F32, T)
    split = device_plan(H, L, B, F32, T, backward=True, max_batch_split=4)
    if split["batch_split"] == 1:
        pytest.skip(f"the backward of H={H} L={L} B={B} float32 is not split on this device "
                    f"(its rows fit whole or no split fits): nothing to compare")
    args = _backward_op_args(L, I, H, T, B, F32, seed=7)
    with tier("persistent"):
        with option_set("persistent_bwd_split", "off"):
            whole = torch.ops.fusedrnn.lstm_backward(*args)
        with option_set("persistent_bwd_split", "auto"):
            parts = torch.ops.fusedrnn.lstm_backward(*args)
        with option_set("persistent_bwd_split", "on"):
            again = torch.ops.fusedrnn.lstm_backward(*args)
    flat = lambda r: list(r[:3]) + list(r[3])  # noqa: E731
    for k, (a, b, c) in enumerate(zip(flat(whole), flat(parts), flat(again))):
        assert_close_scaled(b, a, TOL[F32], f"result {k}: split vs unsplit backward")
        assert torch.equal(b, c), f"result {k}: split backward differs run to run (auto vs on)"


def test_auto_keeps_general_when_step_launch_is_set():
    """cuda_step_launch = per_step/graph only means something to the general
    tier: while it is set, auto runs the general tier (bitwise its results)."""
    L, I, H, T, B = 4, 12, 96, 20, 4
    assert device_plan(H, L, B, F32, T)["auto_eligible"]
    w = _weights(I, H, L, True, F32)
    x, h0, c0 = lstm_inputs(I, H, L, T, B, F32)
    op = torch.ops.fusedrnn.lstm_forward
    old = fusedrnn.get_option("cuda_step_launch")
    try:
        fusedrnn.set_option("cuda_step_launch", "per_step")
        with tier("auto"):
            a = op(x, h0, c0, w, True, True)
        with tier("general"):
            b = op(x, h0, c0, w, True, True)
    finally:
        fusedrnn.set_option("cuda_step_launch", old)
    for u, v in zip(a, b):
        assert torch.equal(u, v)


def test_forced_persistent_that_does_not_fit_raises():
    L, I, H, T, B = 4, 8, 2048, 2, 2   # 4 layers of 2048 units: far beyond shared memory
    assert not device_plan(H, L, B, F32, T)["fits"]
    w = _weights(I, H, L, True, F32)
    x, h0, c0 = lstm_inputs(I, H, L, T, B, F32)
    with tier("persistent"):
        with pytest.raises(RuntimeError, match=r"persistent.*do not fit"):
            torch.ops.fusedrnn.lstm_forward(x, h0, c0, w, True, False)
    with tier("auto"):   # auto falls back to the general tier
        torch.ops.fusedrnn.lstm_forward(x, h0, c0, w, True, False)


def test_forced_persistent_with_projection_raises():
    L, I, H, P, T, B = 1, 4, 8, 3, 2, 2
    mod = torch.nn.LSTM(I, H, L, proj_size=P).to(CUDA)
    w = [p.detach() for p in mod._flat_weights]
    x = torch.randn(T, B, I, device=CUDA)
    h0 = torch.zeros(L, B, P, device=CUDA)
    c0 = torch.zeros(L, B, H, device=CUDA)
    with tier("persistent"):
        with pytest.raises(RuntimeError, match=r"persistent.*proj_size"):
            torch.ops.fusedrnn.lstm_forward(x, h0, c0, w, True, False)


def test_gradcheck_through_persistent_forward():
    L, I, H, T, B = 2, 3, 4, 3, 2
    w = [t.requires_grad_() for t in _weights(I, H, L, True, F64)]
    x, h0, c0 = (t.requires_grad_() for t in lstm_inputs(I, H, L, T, B, F64))

    def fn(x, h, c, *ws):
        return fusedrnn.ops.lstm(x, h, c, list(ws), True)

    with tier("persistent"):
        assert torch.autograd.gradcheck(fn, [x, h0, c0] + w, eps=1e-6, atol=1e-7)


def test_module_end_to_end():
    """fusedrnn.LSTM on the persistent tier against torch.nn.LSTM (cuDNN), TF32 off."""
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        fused, ref = make_pair(28, 256, 2, dtype=F32, device=CUDA)
        _need_fit(256, 2, 32, F32, 35)
        x, h0, c0 = lstm_inputs(28, 256, 2, 35, 32, F32)
        with tier("persistent"):
            out, (hn, cn) = fused(x, (h0, c0))
        want, (hr, cr) = ref(x, (h0, c0))
        for a, b, n in ((out, want, "output"), (hn, hr, "h_n"), (cn, cr, "c_n")):
            assert_close_scaled(a, b, 1e-4, n)
    finally:
        torch.backends.cudnn.allow_tf32 = old


def test_wavefront_floor_op():
    ms = torch.ops.fusedrnn.wavefront_floor(35, 2, 32, 256)
    assert 0.0 < ms < 1000.0


# ------------------------------------------- tensor cores (EXPERIMENTAL) --

F16 = torch.float16
TOL_MMA = {BF16: 3e-2, F16: 1e-2}


@contextlib.contextmanager
def mma(value):
    old = fusedrnn.get_option("persistent_mma")
    fusedrnn.set_option("persistent_mma", value)
    try:
        yield
    finally:
        fusedrnn.set_option("persistent_mma", old)


# (L, I, H, T, B, bias), chosen so that the tiles fit on an H100/H200 (132 SMs):
# forward 16x16 tiles with 4 K slices (D2L), 8x32 tiles (U = 2), B = 33 (two
# column tiles, padded), 16x16 with 2 slices, L = 8 (4U = 128, one slice);
# backward 32x8 tiles (U <= 8, units padded) and 16x16 (U = 16 at H = 512,
# L = 4 and 8); H = 100: the forward keeps its FMA products (H is not a
# multiple of 16), the backward takes tensor cores.
SHAPES_MMA = [(2, 28, 256, 8, 32, True), (1, 8, 256, 5, 8, True), (2, 6, 128, 6, 33, True),
              (4, 16, 512, 4, 8, False), (8, 5, 512, 3, 3, True), (2, 5, 100, 4, 6, True)]


def _need_mma(H, L, B, dtype, T):
    _need_fit(H, L, B, dtype, T)
    if torch.cuda.get_device_capability(CUDA)[0] < 8:
        pytest.skip("tensor-core (WMMA bfloat16/float16) products need compute capability 8.0+")
    fwd = device_plan(H, L, B, dtype, T, mma=True)
    bwd = device_plan(H, L, B, dtype, T, backward=True, mma=True)
    if not (fwd["mma"] or bwd["mma"]):
        pytest.skip("the tensor-core tiles do not fit these plans on this device: "
                    f"{fwd['mma_why']}; {bwd['mma_why']}")
    return fwd


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("L,I,H,T,B,bias", SHAPES_MMA, ids=_ids(SHAPES_MMA))
def test_mma_matches_fma_and_reference(L, I, H, T, B, bias, dtype):
    _need_mma(H, L, B, dtype, T)
    w = _weights(I, H, L, bias, dtype)
    x, h0, c0 = lstm_inputs(I, H, L, T, B, dtype)
    with tier("persistent"):
        with mma("on"):
            got = _run_ops(w, x, h0, c0, bias)
        with mma("off"):
            fma = _run_ops(w, x, h0, c0, bias)
    _assert_same(got, fma, TOL_MMA[dtype], "tensor-core vs FMA kernels")
    _assert_same(got, _run_reference(w, x, h0, c0, L, bias), TOL_MMA[dtype],
                 "tensor-core kernels vs float64 reference")


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bfloat16", "float16"])
def test_mma_backward_op_matches_fma_and_is_deterministic(dtype):
    L, I, H, T, B = 2, 6, 128, 5, 33
    _need_mma(H, L, B, dtype, T)
    args = _backward_op_args(L, I, H, T, B, dtype, seed=11)
    op = torch.ops.fusedrnn.lstm_backward
    with tier("persistent"):
        with mma("on"):
            a = op(*args)
            b = op(*args)
        with mma("off"):
            f = op(*args)
    flat = lambda r: [r[0], r[1], r[2], *r[3]]  # noqa: E731
    for u, v in zip(flat(a), flat(b)):
        assert torch.equal(u, v), "tensor-core backward not deterministic"
    for k, (u, v) in enumerate(zip(flat(a), flat(f))):
        assert_close_scaled(u, v, TOL_MMA[dtype], f"backward result {k}, tensor-core vs FMA")


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bfloat16", "float16"])
def test_mma_saved_activations_inference_and_determinism(dtype):
    L, I, H, T, B = 2, 10, 128, 7, 33
    _need_mma(H, L, B, dtype, T)
    w = _weights(I, H, L, True, dtype)
    x, h0, c0 = lstm_inputs(I, H, L, T, B, dtype)
    op = torch.ops.fusedrnn.lstm_forward
    with tier("persistent"):
        with mma("on"):
            train1 = op(x, h0, c0, w, True, True)
            train2 = op(x, h0, c0, w, True, True)
            infer = op(x, h0, c0, w, True, False)
        with mma("off"):
            fma = op(x, h0, c0, w, True, True)
    names = ["output", "hy", "cy", "gates", "cells", "hiddens"]
    for a, b, n in zip(train1, train2, names):
        assert torch.equal(a, b), f"tensor-core forward not deterministic: {n}"
    for a, b, n in zip(train1[:3], infer[:3], names):
        assert torch.equal(a, b), f"inference differs from the training forward: {n}"
    for a, b, n in zip(train1, fma, names):
        assert a.shape == b.shape, n
        assert_close_scaled(a, b, TOL_MMA[dtype], f"saved {n}, tensor-core vs FMA")


def test_mma_option_leaves_float32_alone_without_tf32():
    """persistent_mma 'on' with float32 and TF32 not allowed (this module's
    fixture turns it off): no tiles, the FMA kernels run, bitwise as with the
    option off."""
    L, I, H, T, B = 2, 8, 128, 5, 8
    _need_fit(H, L, B, F32, T)
    assert not torch.backends.cuda.matmul.allow_tf32
    assert not device_plan(H, L, B, F32, T, mma=True)["mma"]
    w = _weights(I, H, L, True, F32)
    x, h0, c0 = lstm_inputs(I, H, L, T, B, F32)
    op = torch.ops.fusedrnn.lstm_forward
    with tier("persistent"):
        with mma("on"):
            a = op(x, h0, c0, w, True, False)
        with mma("off"):
            b = op(x, h0, c0, w, True, False)
    for u, v in zip(a[:3], b[:3]):
        assert torch.equal(u, v)


def test_mma_tf32_float32_matches_reference():
    """float32 with TF32 allowed and persistent_mma 'on': the forward takes
    16 x 16 x 8 TF32 tiles (D2L size; the backward keeps its FMA plan there)
    and stays within TF32 accuracy of the float64 reference; off, the FMA
    kernels give the same results to float32 accuracy."""
    L, I, H, T, B = 2, 28, 256, 6, 32
    _need_fit(H, L, B, F32, T)
    if torch.cuda.get_device_capability(CUDA)[0] < 8:
        pytest.skip("TF32 tensor cores need compute capability 8.0+")
    w = _weights(I, H, L, True, F32)
    x, h0, c0 = lstm_inputs(I, H, L, T, B, F32)
    want = _run_reference(w, x, h0, c0, L, True)
    torch.backends.cuda.matmul.allow_tf32 = True  # the fixture restores it
    if not device_plan(H, L, B, F32, T, mma=True)["mma"]:
        pytest.skip("the TF32 tiles do not fit this plan on this device")
    with tier("persistent"):
        with mma("on"):
            got = _run_ops(w, x, h0, c0, True)
        with mma("off"):
            fma = _run_ops(w, x, h0, c0, True)
    _assert_same(got, want, 5e-3, "TF32 tensor-core kernels vs float64 reference")
    _assert_same(fma, want, 5e-3, "FMA kernels (TF32 projection GEMM) vs float64 reference")


# ------------------------------------------------ the CTA-wide epilogue --
# persistent_cta_epilogue "on" (written without a GPU; auto's choice since its
# first GPU run, H200 2026-12-04, except for float64): the
# forward's warp tasks store their products in shared memory and every thread
# then applies the cell to (unit, batch row) pairs.  The products and the
# order of each gate's sum (bias, layer 0's projection, product) are the
# lanes' epilogue's, so the results agree to rounding at most.

# + B = 200: staged in chunks; D2L at L = 8: 16 units per CTA, 8 tasks per warp.
SHAPES_CTA = SHAPES + [(2, 28, 256, 6, 200, True), (8, 28, 256, 5, 32, True)]
# float32 on every shape; float64 and bfloat16 on a few (the device call that
# runs these has minutes, not hours).
CASES_CTA = ([(s, F32) for s in SHAPES_CTA] +
             [(s, F64) for s in (SHAPES[0], SHAPES[3], SHAPES[5])] +
             [(s, BF16) for s in (SHAPES[2], SHAPES[7], SHAPES_CTA[-1])])
IDS_CTA = [f"{i}-{str(d).replace('torch.', '')}" for i, (_, d) in
           zip(_ids([s for s, _ in CASES_CTA]), CASES_CTA)]


SAVED_NAMES = ["output", "hy", "cy", "gates", "cells", "hiddens"]


def _case_inputs(shape, dtype):
    """Weights and (x, h0, c0) of one (L, I, H, T, B, bias) case."""
    L, I, H, T, B, bias = shape
    return (_weights(I, H, L, bias, dtype),) + tuple(lstm_inputs(I, H, L, T, B, dtype))


def _need_cta_epilogue(H, L, B, dtype, T):
    """Skip unless the CTA-wide epilogue's product area fits beside the plan."""
    p = device_plan(H, L, B, dtype, T, cta_epilogue=True)
    if not p["cta_epilogue"]:
        pytest.skip(f"the CTA-wide epilogue's product area does not fit beside this plan: "
                    f"{p['why']}")


def _check_forward_variant(new, old, again, new_inf, dtype, what):
    """A forward variant's saved results (training op calls) against the
    default kernel's, run to run (`again`) and against its own inference call."""
    for a, b, c, n in zip(new, old, again, SAVED_NAMES):
        assert a.shape == b.shape, n
        assert_close_scaled(a, b, TOL[dtype], f"{what}: {n}")
        assert torch.equal(a, c), f"{what}: not deterministic: {n}"
    for a, b, n in zip(new_inf[:3], new[:3], SAVED_NAMES):
        assert torch.equal(a, b), f"{what}: inference differs from training: {n}"


def _check_with_reference(got, w, x, h0, c0, L, bias, dtype, what):
    tol = {F64: TOL[F64], F32: 1e-4, BF16: TOL[BF16]}[dtype]
    _assert_same(got, _run_reference(w, x, h0, c0, L, bias), tol, what)


@pytest.mark.parametrize("shape,dtype", CASES_CTA, ids=IDS_CTA)
def test_cta_epilogue_matches_lane_epilogue_and_reference(shape, dtype):
    L, I, H, T, B, bias = shape
    _need_fit(H, L, B, dtype, T)
    _need_cta_epilogue(H, L, B, dtype, T)
    w, x, h0, c0 = _case_inputs(shape, dtype)
    op, names = torch.ops.fusedrnn.lstm_forward, SAVED_NAMES
    with tier("persistent"):
        with option_set("persistent_cta_epilogue", "off"):
            lanes = op(x, h0, c0, w, bias, True)
            lanes_inf = op(x, h0, c0, w, bias, False)
        with option_set("persistent_cta_epilogue", "on"):
            cta = op(x, h0, c0, w, bias, True)
            again = op(x, h0, c0, w, bias, True)
            cta_inf = op(x, h0, c0, w, bias, False)
            got = _run_ops(w, x, h0, c0, bias)
    _check_forward_variant(cta, lanes, again, cta_inf, dtype, "CTA-wide vs lanes' epilogue")
    for a, b, n in zip(cta_inf[:3], lanes_inf[:3], names):
        assert_close_scaled(a, b, TOL[dtype], f"inference, CTA-wide vs lanes' epilogue: {n}")
    _check_with_reference(got, w, x, h0, c0, L, bias, dtype,
                          "CTA-wide epilogue (forward) + persistent backward vs reference")


# --------------------------------------------------- 512 threads per CTA --
# persistent_threads "512" (written without a GPU; auto's choice for most
# float32 / 2-byte sizes since its first GPU run, H200 2026-12-04): the same
# partition, layout and warp tasks, spread over 16 warps instead of 8.


@pytest.mark.parametrize("shape,dtype", CASES_CTA, ids=IDS_CTA)
def test_wide_ctas_match_256_threads_and_reference(shape, dtype):
    L, I, H, T, B, bias = shape
    _need_fit(H, L, B, dtype, T)
    w, x, h0, c0 = _case_inputs(shape, dtype)
    op, names = torch.ops.fusedrnn.lstm_forward, SAVED_NAMES
    with tier("persistent"):
        with option_set("persistent_threads", "512"):
            wide = _run_ops(w, x, h0, c0, bias)
            again = _run_ops(w, x, h0, c0, bias)
            saved_wide = op(x, h0, c0, w, bias, True)
            inf_wide = op(x, h0, c0, w, bias, False)
            with option_set("persistent_cta_epilogue", "on"):
                wide_cta = _run_ops(w, x, h0, c0, bias)
        with option_set("persistent_threads", "256"):
            narrow = _run_ops(w, x, h0, c0, bias)
            saved_narrow = op(x, h0, c0, w, bias, True)
    _assert_same(wide, narrow, TOL[dtype], "512 vs 256 threads per CTA")
    _assert_same(wide_cta, narrow, TOL[dtype], "512 threads + CTA-wide epilogue vs 256")
    for a, b in zip(wide[0] + wide[1], again[0] + again[1]):
        assert torch.equal(a, b), "512 threads per CTA: not deterministic"
    for a, b, n in zip(saved_wide, saved_narrow, names):
        assert a.shape == b.shape, n
        assert_close_scaled(a, b, TOL[dtype], f"512 vs 256 threads: saved {n}")
    for a, b, n in zip(inf_wide[:3], saved_wide[:3], names):
        assert torch.equal(a, b), f"512 threads: inference differs from training: {n}"
    _check_with_reference(wide, w, x, h0, c0, L, bias, dtype, "512 threads per CTA vs reference")


# ------------------------------------------------ two-unit forward tasks --
# persistent_fwd_task_units "2" (EXPERIMENTAL, written without a GPU): each
# forward warp task covers two hidden units (8 weight rows x 8 staged rows),
# with the CTA-wide epilogue at 256 threads per CTA.  Odd unit counts per CTA
# (H = 5, 17, 33, 300 on these shapes) leave a task with one real unit.


@pytest.mark.parametrize("threads", ["256", "512"])
@pytest.mark.parametrize("shape,dtype", CASES_CTA, ids=IDS_CTA)
def test_two_unit_tasks_match_one_unit_and_reference(shape, dtype, threads):
    L, I, H, T, B, bias = shape
    if threads == "512" and dtype != F32:
        pytest.skip("two-unit tasks run with 512 threads per CTA in float32 only")
    _need_fit(H, L, B, dtype, T)
    _need_cta_epilogue(H, L, B, dtype, T)
    plan = device_plan(H, L, B, dtype, T, cta_epilogue=True, threads=int(threads),
                       fwd_task_units=2)
    if plan["fwd_task_units"] != 2:
        pytest.skip(f"the two-unit tasks do not fit this plan on this device ({threads} threads, "
                    f"batch_chunk {plan['batch_chunk']})")
    _check_task_units_variant(shape, dtype, threads, "2", "two-unit forward tasks")


def _check_task_units_variant(shape, dtype, threads, units, what):
    """persistent_fwd_task_units `units` against "1" (threads pinned, the
    CTA-wide epilogue): the forward's saved results, run to run, inference
    against training, and forward + persistent backward against the
    reference."""
    L, I, H, T, B, bias = shape
    w, x, h0, c0 = _case_inputs(shape, dtype)
    op = torch.ops.fusedrnn.lstm_forward
    with tier("persistent"), option_set("persistent_threads", threads), \
            option_set("persistent_cta_epilogue", "on"):
        with option_set("persistent_fwd_task_units", "1"):
            one = op(x, h0, c0, w, bias, True)
        with option_set("persistent_fwd_task_units", units):
            new = op(x, h0, c0, w, bias, True)
            again = op(x, h0, c0, w, bias, True)
            new_inf = op(x, h0, c0, w, bias, False)
            got = _run_ops(w, x, h0, c0, bias)
    _check_forward_variant(new, one, again, new_inf, dtype, f"{what} vs one-unit tasks")
    _check_with_reference(got, w, x, h0, c0, L, bias, dtype,
                          f"{what} + persistent backward vs reference")


def test_two_unit_tasks_auto_threads():
    """persistent_fwd_task_units "2" with threads and epilogue on auto (D2L
    L = 2 float32: 8 two-unit tasks a CTA, so 256 threads, where one-unit
    tasks run 512): the same results as pinning 256 threads and the CTA-wide
    epilogue."""
    _check_units_auto_threads(2, 6, "2")


def _check_units_auto_threads(L, T, units):
    """persistent_fwd_task_units `units` with threads and epilogue on auto, at
    the D2L sizes with L layers and T steps: the same results as pinning 256
    threads and the CTA-wide epilogue."""
    I, H, B = 28, 256, 32
    _need_fit(H, L, B, F32, T)
    code = {"2": 2, "regs": 3}[units]
    plan = device_plan(H, L, B, F32, T, cta_epilogue=-1, threads=-1, fwd_task_units=code)
    if plan["fwd_task_units"] != code:
        pytest.skip(f"persistent_fwd_task_units {units!r} does not fit this device's auto plan "
                    f"(units_per_cta {plan['units_per_cta']}, threads {plan['threads']})")
    w, x, h0, c0 = _case_inputs((L, I, H, T, B, True), F32)
    op = torch.ops.fusedrnn.lstm_forward
    with tier("persistent"), option_set("persistent_fwd_task_units", units):
        auto = op(x, h0, c0, w, True, True)
        with option_set("persistent_threads", "256"), option_set("persistent_cta_epilogue", "on"):
            pinned = op(x, h0, c0, w, True, True)
    for a, b in zip(auto, pinned):
        assert torch.equal(a, b)


# ------------------------------------- forward weights in registers --
# persistent_fwd_task_units "regs" (EXPERIMENTAL, written without a GPU on
# 2026-12-05): float32, 256 threads, the CTA-wide epilogue; each warp keeps up
# to 8 gate rows in registers.  H = 20 at L = 3 leaves one unit (4 rows) a CTA,
# so 7 of the 8 warps own no row; B = 200 stages the batch in chunks.  The
# staged row is K = H at L = 1, 2H above, at most 512.  Added after a review
# (2026-12-05; units per CTA as a 132-SM device plans them): H = 136 at L = 4
# (5 units a CTA, the last CTA of a layer 1; K = 136 / 272: the guarded chunk
# loop with a partial chunk), also with B = 600 (chunks of the batch besides);
# H = 124 at L = 8 (8 units, the last CTA 4); H = 200 at L = 4 (K = 400, a
# partial fourth chunk); H = 192 at L = 2 (K = 384 above layer 0: three whole
# chunks); L = 1 with H = 384 and 512 (three and four whole chunks at layer 0).
SHAPES_REGS = [s for s in SHAPES_CTA
               if s[2] % 4 == 0 and (s[2] if s[0] == 1 else 2 * s[2]) <= 512] + \
    [(3, 7, 20, 3, 3, True), (2, 9, 12, 4, 7, False), (4, 8, 136, 3, 5, True),
     (8, 6, 124, 3, 3, True), (4, 5, 200, 3, 3, False), (2, 7, 192, 3, 8, True),
     (1, 8, 384, 3, 8, True), (1, 8, 512, 2, 8, True), (4, 8, 136, 2, 600, True)]


@pytest.mark.parametrize("shape", SHAPES_REGS, ids=_ids(SHAPES_REGS))
def test_register_weights_match_one_unit_and_reference(shape):
    L, I, H, T, B, bias = shape
    _need_fit(H, L, B, F32, T)
    plan = device_plan(H, L, B, F32, T, cta_epilogue=True, fwd_task_units=3)
    if plan["fwd_task_units"] != 3:
        pytest.skip(f"the register-resident weights do not fit this plan on this device "
                    f"(units_per_cta {plan['units_per_cta']}, K {plan['K']})")
    _check_task_units_variant(shape, F32, "256", "regs", "register-resident forward weights")


def test_register_weights_auto_threads():
    """persistent_fwd_task_units "regs" with threads and epilogue on auto (D2L
    L = 8, where one-unit tasks run 512 threads): 256 threads, the same
    results as pinning them."""
    _check_units_auto_threads(8, 5, "regs")


def test_wide_ctas_backward_split():
    """The backward's batch split with 512 threads per CTA (D2L, B = 33: the
    split does not divide B) against 256 threads."""
    L, I, H, T, B = 2, 28, 256, 12, 33
    _need_fit(H, L, B, F32, T)
    args = _backward_op_args(L, I, H, T, B, F32, seed=5)
    with tier("persistent"):
        with option_set("persistent_threads", "512"):
            wide = torch.ops.fusedrnn.lstm_backward(*args)
        with option_set("persistent_threads", "256"):
            narrow = torch.ops.fusedrnn.lstm_backward(*args)
    flat = lambda r: list(r[:3]) + list(r[3])  # noqa: E731
    for k, (a, b) in enumerate(zip(flat(wide), flat(narrow))):
        assert_close_scaled(a, b, TOL[F32], f"backward result {k}: 512 vs 256 threads")


def test_wide_ctas_ignore_tensor_cores():
    """persistent_mma "on" with 512 threads: the planner keeps the FMA kernels
    (the tensor-core path runs with 256 threads only), so the results equal
    the FMA kernels' at 512 threads."""
    L, I, H, T, B = 2, 28, 256, 6, 32
    _need_fit(H, L, B, BF16, T)
    w = _weights(I, H, L, True, BF16)
    x, h0, c0 = lstm_inputs(I, H, L, T, B, BF16)
    op = torch.ops.fusedrnn.lstm_forward
    with tier("persistent"), option_set("persistent_threads", "512"):
        with mma("on"):
            a = op(x, h0, c0, w, True, True)
        with mma("off"):
            b = op(x, h0, c0, w, True, True)
    for u, v in zip(a, b):
        assert torch.equal(u, v), "512 threads: the tensor-core option changed the results"
