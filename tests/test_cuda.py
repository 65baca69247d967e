"""CUDA backend of fusedrnn: the LSTM's general tier (csrc/cuda/lstm_cuda.cu),
forced for every test here with cuda_tier = 'general' (conftest.general_tier).

Every test here needs a CUDA device *and* a build of fusedrnn._C that contains
the CUDA kernels; otherwise the module is skipped with the reason.

What is checked:
* float64 parity with the pure-PyTorch reference (outputs, h_n, c_n and the
  gradients of input, h0, c0 and every weight/bias), tight tolerance;
* float32 / float16 / bfloat16 parity with torch.nn.LSTM (cuDNN) holding the
  same weights, TF32 off for both (restored afterwards);
* the sizes that exercise the kernels' edges: 1-4 layers, odd sizes (I=3,
  H=5), batch 1, T=1, H=300 (not a tile multiple), batches on both sides of
  the 8/32-row tiles, a hidden size large enough for the 32-unit tiles,
  batch_first, no biases;
* float64 gradcheck of fusedrnn.ops.lstm and torch.library.opcheck of both
  ops on CUDA;
* bitwise determinism, inference (train=False) equal to training forward,
  T=0 / B=0, CPU vs CUDA, mixed devices refused, cuda:1 vs cuda:0;
* packed sequences (batch_sizes) and proj_size: float64 parity with
  torch.nn.LSTM on the CPU (PackedSequence / proj_size), float32 parity with
  cuDNN, the CPU op vs the CUDA op, equal-length packed == padded, backward
  leaves its incoming gradients untouched, opcheck and gradcheck;
* the step-launch modes (option cuda_step_launch): CUDA-graph replay and
  per-step launches give bitwise identical outputs, states, saved
  activations and gradients, also across calls with new tensors (the cached
  graph is updated to the new pointers), on a side stream, and inside the
  caller's own CUDA-graph capture (where the op launches per step).
"""
import pytest
import torch

from conftest import (CUDA, CUDA_TOL, assert_close_scaled, cuda_or_skip, flat_weights,
                      loss_weights, lstm_inputs, make_pair, reference)

fusedrnn = cuda_or_skip()
# The general tier (cuda_tier = 'general'): auto picks the persistent tier
# wherever it fits, which tests/test_cuda_persistent.py covers.
pytestmark = pytest.mark.usefixtures("no_tf32", "general_tier")

F64, F32, F16, BF16 = torch.float64, torch.float32, torch.float16, torch.bfloat16

# Per-dtype tolerance (conftest.CUDA_TOL, for assert_close_scaled): a result
# r passes against the expected e when |r - e| <= TOL * |e| + TOL * max(1, max|e|).
TOL = CUDA_TOL
# (The half-precision shapes below need about 6e-4 (float16) and 5e-3
# (bfloat16) against the float64 truth with the CPU kernels' rounding, so the
# limits leave room for cuDNN's own error on the other side.)


# --------------------------------------------------------------- helpers --

def _loss(vals, ws):
    return sum((v.to(w.dtype) * w).sum() for v, w in zip(vals, ws))


def _run_module(mod, x, h0, c0):
    """Outputs (output, h_n, c_n) and gradients [x, h0, c0, *weights]."""
    x, h0, c0 = (t.detach().clone().requires_grad_() for t in (x, h0, c0))
    mod.zero_grad(set_to_none=True)
    out, (hn, cn) = mod(x, (h0, c0))
    vals = [out, hn, cn]
    _loss(vals, loss_weights(vals)).backward()
    grads = [x.grad, h0.grad, c0.grad] + [w.grad for w in flat_weights(mod)]
    return [v.detach() for v in vals], grads


def _run_reference(weights, x, h0, c0, L, bias, batch_first):
    ws = [w.detach().clone().requires_grad_() for w in weights]
    x, h0, c0 = (t.detach().clone().requires_grad_() for t in (x, h0, c0))
    out, (hn, cn) = reference.lstm(x, (h0, c0), ws, num_layers=L, has_biases=bias,
                                   batch_first=batch_first)
    vals = [out, hn, cn]
    _loss(vals, loss_weights(vals)).backward()
    return [v.detach() for v in vals], [x.grad, h0.grad, c0.grad] + [w.grad for w in ws]


def _assert_results(got, want, tol, names_weights):
    (vals_g, grads_g), (vals_w, grads_w) = got, want
    for a, b, n in zip(vals_g, vals_w, ("output", "h_n", "c_n")):
        assert_close_scaled(a, b, tol, n)
    names = ["grad input", "grad h0", "grad c0"] + [f"grad {n}" for n in names_weights]
    assert len(grads_g) == len(grads_w) == len(names)
    for a, b, n in zip(grads_g, grads_w, names):
        assert a is not None and b is not None, f"{n} is missing"
        assert_close_scaled(a, b, tol, n)


# (L, I, H, T, B, batch_first, bias)
SHAPES = [
    (1, 3, 5, 1, 1, False, True),      # odd sizes, T=1, batch 1
    (2, 3, 5, 4, 1, False, True),
    (1, 4, 7, 6, 3, True, True),       # batch_first
    (3, 7, 300, 3, 3, False, True),    # H not a tile multiple
    (4, 5, 6, 3, 5, True, True),       # 4 layers
    (2, 10, 33, 3, 40, False, True),   # 32-row tiles with a remainder
    (2, 6, 17, 5, 17, False, False),   # no biases; B just above the 8/32 switch
    (1, 8, 64, 2, 16, False, True),    # two 8-row tiles exactly
]


def _ids(shapes):
    return [f"L{L}-I{I}-H{H}-T{T}-B{B}{'-bf' if bf else ''}{'' if b else '-nobias'}"
            for L, I, H, T, B, bf, b in shapes]


# ------------------------------------------------------ float64 vs reference --

@pytest.mark.parametrize("L,I,H,T,B,batch_first,bias", SHAPES, ids=_ids(SHAPES))
def test_float64_matches_reference(L, I, H, T, B, batch_first, bias):
    fused, _ = make_pair(I, H, L, bias=bias, batch_first=batch_first, dtype=F64, device=CUDA)
    x, h0, c0 = lstm_inputs(I, H, L, T, B, F64, batch_first=batch_first)
    got = _run_module(fused, x, h0, c0)
    want = _run_reference(flat_weights(fused), x, h0, c0, L, bias, batch_first)
    _assert_results(got, want, TOL[F64], fused._flat_weights_names)


# ------------------------------------------------------- vs cuDNN per dtype --

def _cudnn_compare(dtype, L, I, H, T, B, batch_first, bias):
    fused, ref = make_pair(I, H, L, bias=bias, batch_first=batch_first, dtype=dtype, device=CUDA)
    x, h0, c0 = lstm_inputs(I, H, L, T, B, dtype, batch_first=batch_first)
    got = _run_module(fused, x, h0, c0)
    try:
        want = _run_module(ref, x, h0, c0)
    except RuntimeError as e:  # e.g. a cuDNN without bfloat16 RNNs
        pytest.skip(f"torch.nn.LSTM (cuDNN) cannot run {dtype} here: {e}")
    _assert_results(got, want, TOL[dtype], fused._flat_weights_names)


@pytest.mark.parametrize("L,I,H,T,B,batch_first,bias", SHAPES, ids=_ids(SHAPES))
def test_float32_matches_cudnn(L, I, H, T, B, batch_first, bias):
    _cudnn_compare(F32, L, I, H, T, B, batch_first, bias)


# Half precision: short sequences keep the accumulated rounding comparable.
SHAPES_HALF = [
    (1, 3, 5, 1, 1, False, True),
    (2, 8, 32, 5, 4, False, True),
    (2, 7, 300, 3, 3, True, True),
    (3, 16, 48, 4, 40, False, False),
]


@pytest.mark.parametrize("dtype", [F16, BF16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("L,I,H,T,B,batch_first,bias", SHAPES_HALF, ids=_ids(SHAPES_HALF))
def test_half_precision_matches_cudnn(dtype, L, I, H, T, B, batch_first, bias):
    _cudnn_compare(dtype, L, I, H, T, B, batch_first, bias)


@pytest.mark.parametrize("dtype", [F16, BF16], ids=["float16", "bfloat16"])
def test_half_precision_close_to_float64(dtype):
    """The same rounded weights/inputs run in float64 are the truth; the
    half-precision run must stay within the dtype's tolerance of it."""
    L, I, H, T, B = 2, 8, 40, 4, 6
    fused, _ = make_pair(I, H, L, dtype=dtype, device=CUDA)
    x, h0, c0 = lstm_inputs(I, H, L, T, B, dtype)
    got = _run_module(fused, x, h0, c0)
    exact = _run_reference([w.double() for w in flat_weights(fused)], x.double(),
                           h0.double(), c0.double(), L, True, False)
    _assert_results(got, exact, TOL[dtype], fused._flat_weights_names)


@pytest.mark.parametrize("B", [3, 40])
def test_wide_hidden_uses_large_tiles(B):
    """H = 4500 gives ceil(H/32) = 141 CTAs per 8/32-row batch tile, at least
    one per SM on an H100/H200 (132 SMs), so the kernels run with 32-unit tiles;
    the smaller tests above run the 16-unit tiles."""
    _cudnn_compare(F32, 1, 8, 4500, 2, B, False, True)


# ------------------------------------------------------ gradcheck / opcheck --

def _raw_args(L=2, bias=True, dtype=F64, T=3, B=2, I=3, H=4, requires_grad=False):
    fused, _ = make_pair(I, H, L, bias=bias, dtype=dtype, device=CUDA)
    w = [p.detach().clone().requires_grad_(requires_grad) for p in flat_weights(fused)]
    x, h0, c0 = (t.requires_grad_(requires_grad) for t in lstm_inputs(I, H, L, T, B, dtype))
    return [x, h0, c0, w, bias]


@pytest.mark.parametrize("bias", [True, False])
def test_gradcheck_ops_lstm(bias):
    x, h0, c0, w, _ = _raw_args(L=2, bias=bias, requires_grad=True)

    def fn(x, h, c, *ws):
        return fusedrnn.ops.lstm(x, h, c, list(ws), bias)

    assert torch.autograd.gradcheck(fn, [x, h0, c0] + w, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("bias", [True, False])
def test_opcheck_lstm_forward(bias):
    op = torch.ops.fusedrnn.lstm_forward.default
    torch.library.opcheck(op, _raw_args(bias=bias) + [False])
    torch.library.opcheck(op, _raw_args(bias=bias) + [True])
    torch.library.opcheck(op, _raw_args(bias=bias, requires_grad=True) + [True])
    torch.library.opcheck(op, _raw_args(L=1, bias=bias, dtype=F32, requires_grad=True) + [True])


@pytest.mark.parametrize("L", [1, 3])
def test_opcheck_lstm_backward(L):
    x, h0, c0, w, bias = _raw_args(L=L)
    out, hy, cy, gates, cells, hiddens = torch.ops.fusedrnn.lstm_forward(x, h0, c0, w, bias, True)
    T, B, H = out.shape
    assert gates.shape == (L, T, B, 4 * H)
    assert cells.shape == (L, T, B, H)
    assert hiddens.shape == (L - 1, T, B, H)
    go, gh, gc = torch.randn_like(out), torch.randn_like(hy), torch.randn_like(cy)
    args = [go, gh, gc, x, h0, c0, w, bias, out, gates, cells, hiddens]
    torch.library.opcheck(torch.ops.fusedrnn.lstm_backward.default, args)


# ---------------------------------------------------------- determinism etc --

def test_two_runs_bitwise_identical():
    fused, _ = make_pair(10, 300, 2, dtype=F32, device=CUDA)
    x, h0, c0 = lstm_inputs(10, 300, 2, 6, 40, F32)
    (v1, g1), (v2, g2) = _run_module(fused, x, h0, c0), _run_module(fused, x, h0, c0)
    for a, b in zip(v1 + g1, v2 + g2):
        assert torch.equal(a, b)


@pytest.mark.parametrize("L", [1, 3])
def test_inference_matches_training_forward(L):
    """train=False (no saved activations, ping-pong scratch between layers)
    gives the same forward results as train=True: bitwise up to two layers;
    from the third on a layer's input sits at a different offset (in `hiddens`
    vs at the start of a scratch buffer), and cuBLAS may then pick another
    GEMM kernel for the input projection, so there only up to rounding."""
    fused, _ = make_pair(6, 37, L, dtype=F32, device=CUDA)
    x, h0, c0 = lstm_inputs(6, 37, L, 5, 9, F32)
    w = flat_weights(fused)
    a = torch.ops.fusedrnn.lstm_forward(x, h0, c0, w, True, False)
    b = torch.ops.fusedrnn.lstm_forward(x, h0, c0, w, True, True)
    for k in range(3):
        if L <= 2:
            assert torch.equal(a[k], b[k])
        else:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    for k in range(3, 6):
        assert a[k].shape == (0,)
    # The saved activations are consistent with the outputs.
    T, B, H = b[0].shape
    assert torch.equal(b[4][-1, -1], b[2][-1].to(b[4].dtype))      # cells[L-1, T-1] == c_n
    if L > 1:
        assert torch.equal(b[5][:, -1], b[1][:-1])                 # hiddens[:, T-1] == h_n[:-1]


def test_cpu_and_cuda_agree():
    L, I, H, T, B = 3, 5, 19, 4, 6
    fused_cpu, _ = make_pair(I, H, L, dtype=F64, device="cpu")
    fused_gpu, _ = make_pair(I, H, L, dtype=F64, device=CUDA)
    fused_gpu.load_state_dict(fused_cpu.state_dict())
    x, h0, c0 = lstm_inputs(I, H, L, T, B, F64, device="cpu")
    got = _run_module(fused_gpu, x.to(CUDA), h0.to(CUDA), c0.to(CUDA))
    want = _run_module(fused_cpu, x, h0, c0)
    _assert_results(got, want, TOL[F64], fused_cpu._flat_weights_names)


def test_zero_length_sequence_ops():
    """T = 0 through the functional: no kernel runs, h_n = h0, c_n = c0, and
    their gradients pass straight through."""
    L, I, H, B = 2, 3, 5, 4
    x, h0, c0, w, bias = _raw_args(L=L, T=0, B=B, I=I, H=H, requires_grad=True)
    out, hy, cy = fusedrnn.ops.lstm(x, h0, c0, w, bias)
    assert out.shape == (0, B, H)
    assert torch.equal(hy, h0) and torch.equal(cy, c0)
    gh, gc = torch.randn_like(hy), torch.randn_like(cy)
    ((hy * gh).sum() + (cy * gc).sum()).backward()
    assert torch.equal(h0.grad, gh) and torch.equal(c0.grad, gc)
    assert x.grad is None or x.grad.shape == x.shape
    for p in w:
        assert p.grad is None or torch.count_nonzero(p.grad) == 0


def test_zero_batch_ops():
    L, I, H, T = 2, 3, 5, 4
    x, h0, c0, w, bias = _raw_args(L=L, T=T, B=0, I=I, H=H, requires_grad=True)
    out, hy, cy = fusedrnn.ops.lstm(x, h0, c0, w, bias)
    assert out.shape == (T, 0, H) and hy.shape == (L, 0, H) and cy.shape == (L, 0, H)
    out.sum().backward()
    for p in w:
        assert p.grad is None or torch.count_nonzero(p.grad) == 0


# ------------------------------------------------------------ device errors --

def test_mixed_devices_refused():
    fused, _ = make_pair(3, 5, 2, dtype=F32, device="cpu")
    x, h0, c0 = lstm_inputs(3, 5, 2, 4, 2, F32)  # on cuda
    with pytest.raises((RuntimeError, ValueError), match="(?i)device|cuda|cpu"):
        fused(x, (h0, c0))
    # The raw op refuses it too, whichever argument is on the other device.
    w_cpu = flat_weights(fused)
    w_gpu = [p.detach().to(CUDA) for p in w_cpu]
    op = torch.ops.fusedrnn.lstm_forward
    with pytest.raises(RuntimeError, match="(?i)device"):
        op(x, h0, c0, w_cpu, True, False)
    with pytest.raises(RuntimeError, match="(?i)device"):
        op(x, h0.cpu(), c0, w_gpu, True, False)
    with pytest.raises(RuntimeError, match="(?i)device"):
        op(x.cpu(), h0.cpu(), c0.cpu(), w_gpu, True, False)


@pytest.mark.skipif(torch.cuda.device_count() < 2,
                    reason="needs at least two CUDA devices (cuda:1 vs cuda:0)")
def test_second_device_matches_first():
    L, I, H, T, B = 2, 5, 33, 4, 3
    fused0, _ = make_pair(I, H, L, dtype=F32, device="cuda:0")
    fused1, _ = make_pair(I, H, L, dtype=F32, device="cuda:1")
    fused1.load_state_dict(fused0.state_dict())
    x, h0, c0 = lstm_inputs(I, H, L, T, B, F32, device="cuda:0")
    with torch.cuda.device(0):  # the current device differs from the tensors'
        got = _run_module(fused1, x.to("cuda:1"), h0.to("cuda:1"), c0.to("cuda:1"))
    want = _run_module(fused0, x, h0, c0)
    assert all(t.device == torch.device("cuda:1") for t in got[0] + got[1])
    _assert_results(got, want, TOL[F32], fused0._flat_weights_names)


# ============================================ packed sequences, proj_size ==
#
# Ground truth: torch.nn.LSTM on the CPU in float64 (ATen's native LSTM,
# which supports both PackedSequence and proj_size), holding the same weights;
# float32 is also compared with cuDNN on the GPU.  fusedrnn runs through the
# differentiable functional fusedrnn.ops.lstm with the raw weights, so these
# tests do not depend on the modules' support of packed input / proj_size.

from torch.nn.utils.rnn import PackedSequence, pack_sequence  # noqa: E402


def _torch_lstm(I, H, L, P, bias, dtype, device, seed=0):
    torch.manual_seed(seed)
    return torch.nn.LSTM(I, H, L, bias=bias, proj_size=P or 0, dtype=dtype, device=device)


def _packed(lengths, I, seed=3):
    """A PackedSequence of random sequences with the given (non-increasing)
    lengths: (data (N, I), batch_sizes)."""
    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randn(n, I, generator=g) for n in lengths]
    p = pack_sequence(seqs, enforce_sorted=True)
    return p.data, p.batch_sizes


def _states(L, B, H, P, seed=4):
    g = torch.Generator().manual_seed(seed)
    return 0.5 * torch.randn(L, B, P or H, generator=g), 0.5 * torch.randn(L, B, H, generator=g)


def _data_and_states(I, H, L, P, lengths, T=None, B=None):
    """(data, batch_sizes, h0, c0) on the CPU: a packed batch of sequences of
    the given lengths when `lengths` is given, else a padded (T, B, I) input
    (batch_sizes None)."""
    if lengths is not None:
        data, bs = _packed(lengths, I)
        B = len(lengths)
    else:
        data, bs = torch.randn(T, B, I, generator=torch.Generator().manual_seed(3)), None
    h0, c0 = _states(L, B, H, P)
    return data, bs, h0, c0


def _run_ops(weights, data, h0, c0, bias, batch_sizes=None):
    """fusedrnn.ops.lstm: ([output, h_n, c_n], [grad data, h0, c0, *weights])."""
    ws = [w.detach().clone().requires_grad_() for w in weights]
    data, h0, c0 = (t.detach().clone().requires_grad_() for t in (data, h0, c0))
    out, hn, cn = fusedrnn.ops.lstm(data, h0, c0, ws, bias, batch_sizes)
    vals = [out, hn, cn]
    _loss(vals, loss_weights(vals)).backward()
    return [v.detach() for v in vals], [data.grad, h0.grad, c0.grad] + [w.grad for w in ws]


def _run_torch(mod, data, h0, c0, batch_sizes=None):
    """torch.nn.LSTM on (data, batch_sizes) as a PackedSequence, or padded."""
    data, h0, c0 = (t.detach().clone().requires_grad_() for t in (data, h0, c0))
    mod.zero_grad(set_to_none=True)
    inp = PackedSequence(data, batch_sizes) if batch_sizes is not None else data
    out, (hn, cn) = mod(inp, (h0, c0))
    if batch_sizes is not None:
        out = out.data
    vals = [out, hn, cn]
    _loss(vals, loss_weights(vals)).backward()
    return ([v.detach() for v in vals],
            [data.grad, h0.grad, c0.grad] + [w.grad for w in mod._flat_weights])


def _truth_and_fused(I, H, L, P, bias, lengths, dtype=F64, T=None, B=None):
    """Runs the CPU float64 torch.nn.LSTM and fusedrnn on CUDA in `dtype` on
    the same data: packed when `lengths` is given, else padded (T, B)."""
    ref = _torch_lstm(I, H, L, P, bias, F64, "cpu")
    data, bs, h0, c0 = _data_and_states(I, H, L, P, lengths, T, B)
    want = _run_torch(ref, data.double(), h0.double(), c0.double(), bs)
    w = [p.detach().to(CUDA, dtype) for p in ref._flat_weights]
    got = _run_ops(w, data.to(CUDA, dtype), h0.to(CUDA, dtype), c0.to(CUDA, dtype), bias, bs)
    return got, want, ref._flat_weights_names


# (L, I, H, P, bias, lengths): P = 0 means no projection.
PACKED = [
    (1, 3, 5, 0, True, [4, 3, 3, 1]),
    (2, 4, 7, 0, True, [5, 5, 2]),            # equal lengths at the top, one short
    (3, 5, 33, 0, False, [6, 4, 3, 3, 2, 1]),
    (2, 6, 17, 0, True, [3] + [2] * 20 + [1] * 19),   # B = 40 > the 32-row tiles
    (2, 3, 6, 0, True, [1, 1, 1]),            # T = 1
    (2, 4, 5, 0, True, [4]),                  # B = 1
    (2, 5, 9, 4, True, [5, 3, 3, 1]),         # projection + packed
    (3, 3, 40, 7, False, [4, 4, 2, 1, 1]),
]


def _pids(rows):
    return [f"L{L}-I{I}-H{H}-P{P}{'' if b else '-nobias'}-len{'_'.join(map(str, n[:6]))}"
            for L, I, H, P, b, n in rows]


@pytest.mark.parametrize("L,I,H,P,bias,lengths", PACKED, ids=_pids(PACKED))
def test_packed_float64_matches_torch(L, I, H, P, bias, lengths):
    got, want, names = _truth_and_fused(I, H, L, P, bias, lengths)
    _assert_results(got, want, TOL[F64], names)


# (L, I, H, P, T, B, bias)
PROJ = [
    (1, 3, 5, 2, 4, 3, True),
    (2, 4, 9, 4, 5, 1, True),
    (3, 6, 33, 16, 3, 40, False),
    (2, 7, 300, 45, 3, 3, True),
]


@pytest.mark.parametrize("L,I,H,P,T,B,bias", PROJ,
                         ids=[f"L{r[0]}-I{r[1]}-H{r[2]}-P{r[3]}-T{r[4]}-B{r[5]}" for r in PROJ])
def test_proj_float64_matches_torch(L, I, H, P, T, B, bias):
    got, want, names = _truth_and_fused(I, H, L, P, bias, None, T=T, B=B)
    _assert_results(got, want, TOL[F64], names)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("P", [0, 6], ids=["noproj", "proj"])
def test_float32_packed_proj_match_cudnn(packed, P):
    """torch.nn.LSTM on CUDA (cuDNN) with proj_size and/or a PackedSequence."""
    L, I, H = 2, 5, 21
    ref = _torch_lstm(I, H, L, P, True, F32, CUDA)
    lengths = [6, 5, 5, 3, 1] if packed else None
    data, bs, h0, c0 = _data_and_states(I, H, L, P, lengths, T=6, B=5)
    data, h0, c0 = (t.to(CUDA) for t in (data, h0, c0))
    want = _run_torch(ref, data, h0, c0, bs)
    got = _run_ops([p.detach() for p in ref._flat_weights], data, h0, c0, True, bs)
    _assert_results(got, want, TOL[F32], ref._flat_weights_names)


def test_packed_equal_lengths_matches_padded():
    """A packed batch whose sequences all have length T is the padded case:
    bitwise the same forward, gradients equal up to rounding order (grad_hy
    enters through a different path)."""
    L, I, H, T, B = 2, 4, 19, 5, 6
    fused, _ = make_pair(I, H, L, dtype=F64, device=CUDA)
    w = flat_weights(fused)
    x, h0, c0 = lstm_inputs(I, H, L, T, B, F64)
    bs = torch.full((T,), B, dtype=torch.long)
    a = torch.ops.fusedrnn.lstm_forward(x, h0, c0, w, True, True)
    b = torch.ops.fusedrnn.lstm_forward(x.reshape(T * B, I), h0, c0, w, True, True, bs)
    for k in range(6):
        assert torch.equal(a[k].reshape(b[k].shape), b[k]), k
    got = _run_ops(w, x.reshape(T * B, I), h0, c0, True, bs)
    want = _run_ops(w, x, h0, c0, True)
    want[0][0] = want[0][0].reshape(T * B, H)
    want[1][0] = want[1][0].reshape(T * B, I)
    _assert_results(got, want, TOL[F64], fused._flat_weights_names)


@pytest.mark.parametrize("P", [0, 3], ids=["noproj", "proj"])
def test_packed_cpu_and_cuda_ops_agree(P):
    """The CPU op is the reference of behaviour for packed sequences."""
    L, I, H = 2, 4, 11
    lengths = [5, 4, 4, 2, 1]
    ref = _torch_lstm(I, H, L, P, True, F64, "cpu")
    w = [p.detach() for p in ref._flat_weights]
    data, bs = _packed(lengths, I)
    h0, c0 = _states(L, len(lengths), H, P)
    data, h0, c0 = data.double(), h0.double(), c0.double()
    try:
        want = _run_ops(w, data, h0, c0, True, bs)
    except NotImplementedError as e:
        pytest.skip(f"the CPU op does not support this yet: {e}")
    got = _run_ops([t.to(CUDA) for t in w], data.to(CUDA), h0.to(CUDA), c0.to(CUDA), True, bs)
    _assert_results(got, want, TOL[F64], ref._flat_weights_names)


def test_packed_backward_does_not_modify_grad_output():
    L, I, H = 2, 3, 8
    lengths = [4, 2, 2, 1]
    ref = _torch_lstm(I, H, L, None, True, F64, CUDA)
    w = [p.detach() for p in ref._flat_weights]
    data, bs = _packed(lengths, I)
    data = data.to(CUDA, F64)
    h0, c0 = (t.to(CUDA, F64) for t in _states(L, len(lengths), H, 0))
    out, hy, cy, gates, cells, hiddens = torch.ops.fusedrnn.lstm_forward(
        data, h0, c0, w, True, True, bs)
    go, gh, gc = torch.randn_like(out), torch.randn_like(hy), torch.randn_like(cy)
    saved = [go.clone(), gh.clone(), gc.clone()]
    torch.ops.fusedrnn.lstm_backward(go, gh, gc, data, h0, c0, w, True, out, gates, cells,
                                     hiddens, bs)
    for a, b in zip((go, gh, gc), saved):
        assert torch.equal(a, b)


def test_opcheck_packed_proj():
    L, I, H, P = 2, 3, 6, 4
    lengths = [3, 2, 2, 1]
    ref = _torch_lstm(I, H, L, P, True, F64, CUDA)
    w = [p.detach() for p in ref._flat_weights]
    data, bs = _packed(lengths, I)
    data = data.to(CUDA, F64)
    h0, c0 = (t.to(CUDA, F64) for t in _states(L, len(lengths), H, P))
    fwd = torch.ops.fusedrnn.lstm_forward
    torch.library.opcheck(fwd.default, [data, h0, c0, w, True, False, bs])
    out, hy, cy, gates, cells, hiddens = fwd(data, h0, c0, w, True, True, bs)
    go, gh, gc = torch.randn_like(out), torch.randn_like(hy), torch.randn_like(cy)
    torch.library.opcheck(torch.ops.fusedrnn.lstm_backward.default,
                          [go, gh, gc, data, h0, c0, w, True, out, gates, cells, hiddens, bs])


def test_gradcheck_packed_proj():
    L, I, H, P = 2, 3, 5, 3
    lengths = [3, 2, 1]
    ref = _torch_lstm(I, H, L, P, True, F64, CUDA)
    w = [p.detach().clone().requires_grad_() for p in ref._flat_weights]
    data, bs = _packed(lengths, I)
    data = data.to(CUDA, F64).requires_grad_()
    h0, c0 = (t.to(CUDA, F64).requires_grad_() for t in _states(L, len(lengths), H, P))

    def fn(x, h, c, *ws):
        return fusedrnn.ops.lstm(x, h, c, list(ws), True, bs)

    assert torch.autograd.gradcheck(fn, [data, h0, c0] + w, eps=1e-6, atol=1e-7)


# ================================================ step launch: CUDA graphs ==

def _full_run(w, data, h0, c0, bias, bs):
    """Training forward + backward and inference forward through the raw ops:
    every output, state and gradient as one list."""
    fwd = torch.ops.fusedrnn.lstm_forward
    out, hy, cy, gates, cells, hiddens = fwd(data, h0, c0, w, bias, True, bs)
    g = torch.Generator().manual_seed(7)
    go, gh, gc = (torch.randn(t.shape, generator=g).to(t) for t in (out, hy, cy))
    gi, ghx, gcx, gw = torch.ops.fusedrnn.lstm_backward(
        go, gh, gc, data, h0, c0, w, bias, out, gates, cells, hiddens, bs)
    inf = fwd(data, h0, c0, w, bias, False, bs)
    return [out, hy, cy, gates, cells, hiddens, gi, ghx, gcx, *gw, *inf[:3]]


# (L, I, H, P, bias, dtype, T, B, lengths)
GRAPH_CASES = [
    (1, 3, 5, 0, True, F32, 1, 1, None),
    (2, 8, 64, 0, True, F32, 7, 16, None),
    (3, 10, 33, 0, False, F32, 5, 40, None),
    (2, 16, 300, 0, True, F16, 4, 5, None),
    (2, 6, 48, 0, True, BF16, 6, 9, None),
    (2, 5, 20, 0, True, F64, 0, 0, [6, 5, 5, 3, 1]),
    (2, 5, 20, 7, True, F32, 4, 3, None),     # projection: always per step
    (2, 5, 20, 7, True, F32, 0, 0, [4, 2, 2]),
]


@pytest.mark.parametrize("L,I,H,P,bias,dtype,T,B,lengths", GRAPH_CASES,
                         ids=[f"case{i}" for i in range(len(GRAPH_CASES))])
def test_graph_and_per_step_bitwise_identical(step_launch, L, I, H, P, bias, dtype, T, B,
                                              lengths):
    ref = _torch_lstm(I, H, L, P, bias, dtype, CUDA)
    w = [p.detach() for p in ref._flat_weights]
    data, bs, h0, c0 = _data_and_states(I, H, L, P, lengths, T, B)
    data, h0, c0 = (t.to(CUDA, dtype) for t in (data, h0, c0))
    step_launch("per_step")
    want = _full_run(w, data, h0, c0, bias, bs)
    step_launch("graph")
    keep = []
    for it in range(4):
        # New tensors every iteration (the old ones are kept alive, so the
        # pointers really change): the cached graph must follow them.
        args = [t.clone() for t in (data, h0, c0)]
        ws = [t.clone() for t in w] if it % 2 else w
        keep.append((args, ws))
        got = _full_run(ws, *args, bias, bs)
        assert len(got) == len(want)
        for k, (a, b) in enumerate(zip(got, want)):
            assert torch.equal(a, b), f"iteration {it}, result {k} differs from per_step"
        # The same tensors again: a plain replay.
        got = _full_run(ws, *args, bias, bs)
        for k, (a, b) in enumerate(zip(got, want)):
            assert torch.equal(a, b), f"iteration {it} (replay), result {k} differs"


def test_graph_mode_inside_users_cuda_graph(step_launch):
    """When the caller is capturing its own CUDA graph, the op launches per
    step into that capture (no nested capture), and the replay is correct."""
    L, I, H, T, B = 2, 6, 40, 5, 7
    fused, _ = make_pair(I, H, L, dtype=F32, device=CUDA)
    w = [p.detach() for p in flat_weights(fused)]
    x, h0, c0 = lstm_inputs(I, H, L, T, B, F32)
    step_launch("per_step")
    want = torch.ops.fusedrnn.lstm_forward(x, h0, c0, w, True, False)
    step_launch("graph")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm-up outside the capture
        torch.ops.fusedrnn.lstm_forward(x, h0, c0, w, True, False)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        got = torch.ops.fusedrnn.lstm_forward(x, h0, c0, w, True, False)
    g.replay()
    torch.cuda.synchronize()
    for a, b in zip(got[:3], want[:3]):
        assert torch.equal(a, b)


def test_graph_mode_on_side_stream(step_launch):
    """Graph replay on a non-default current stream gives the same results."""
    L, I, H, T, B = 2, 4, 24, 6, 3
    fused, _ = make_pair(I, H, L, dtype=F32, device=CUDA)
    w = [p.detach() for p in flat_weights(fused)]
    x, h0, c0 = lstm_inputs(I, H, L, T, B, F32)
    step_launch("per_step")
    want = _full_run(w, x, h0, c0, True, None)
    step_launch("graph")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        got = _full_run(w, x, h0, c0, True, None)
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_packed_refused_inside_cuda_graph_capture():
    """Packed sequences build row indices on the host per call, which a graph
    capture cannot replay: refused with a clear error, not replayed wrongly."""
    fused, _ = make_pair(3, 5, 1, dtype=F32, device=CUDA)
    x = torch.randn(4, 3, 3, device=CUDA)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([4, 2, 1]))
    fused(packed)  # warm-up outside the capture works
    g = torch.cuda.CUDAGraph()
    with pytest.raises(NotImplementedError, match=r"(?i)packed.*CUDA graph"):
        with torch.no_grad(), torch.cuda.graph(g):
            fused(packed)
