"""torch.autocast: the fused ops run in the autocast dtype (bfloat16 on the CPU;
float16/bfloat16 on CUDA, the LSTM test at the end, which needs a GPU),
and gradients reach the float32 parameters in float32."""
import pytest
import torch

from conftest import fusedrnn_or_skip, reference

fusedrnn = fusedrnn_or_skip()

CELLS = {
    "lstm": (lambda *a, **k: fusedrnn.LSTM(*a, **k), reference.lstm),
    "gru": (lambda *a, **k: fusedrnn.GRU(*a, **k), reference.gru),
    "rnn": (lambda *a, **k: fusedrnn.RNN(*a, **k), reference.rnn),
}


def _outputs(result):
    out, state = result
    return [out, *(state if isinstance(state, tuple) else (state,))]


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_cpu_autocast_runs_in_bfloat16(cell, bidirectional):
    make, ref = CELLS[cell]
    torch.manual_seed(0)
    m = make(6, 16, 2, bidirectional=bidirectional)
    x = torch.randn(9, 4, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = _outputs(m(x))
        loss = sum(t.float().sum() for t in got)
    assert all(t.dtype == torch.bfloat16 for t in got)
    loss.backward()
    grads = [p.grad for p in m.parameters()]
    assert all(g is not None and g.dtype == torch.float32 for g in grads)

    # Against the float32 ground truth: bfloat16 has 8 bits of mantissa.
    want = _outputs(ref(x, None, m._flat_weights, num_layers=2, bidirectional=bidirectional))
    for g, w in zip(got, want):
        torch.testing.assert_close(g.float(), w.detach(), rtol=5e-2, atol=3e-2)
    m.zero_grad()
    sum(t.sum() for t in _outputs(m(x))).backward()
    # Gradients are sums over T·B terms rounded to bfloat16 on the way: compare
    # each against its tensor's scale (observed: at most 0.9% of the largest entry).
    for g_low, p in zip(grads, m.parameters()):
        scale = p.grad.abs().max().item()
        torch.testing.assert_close(g_low, p.grad, rtol=0, atol=0.03 * scale)


def test_autocast_off_is_float32():
    m = fusedrnn.LSTM(3, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
        out, _ = m(torch.randn(4, 2, 3))
    assert out.dtype == torch.float32


def test_autocast_leaves_float64_alone():
    m = fusedrnn.GRU(3, 5).double()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = m(torch.randn(4, 2, 3, dtype=torch.float64))
    assert out.dtype == torch.float64


@pytest.mark.skipif(not (torch.cuda.is_available() and fusedrnn.cuda_compiled()),
                    reason="needs a CUDA device and a fusedrnn build with its CUDA kernels")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast_lstm(dtype):
    """CUDA autocast: the LSTM ops run in float16/bfloat16, gradients of the
    float32 parameters come back in float32, values close to the float32
    reference (half: 11-bit, bfloat16: 8-bit mantissa)."""
    torch.manual_seed(0)
    m = fusedrnn.LSTM(6, 16, 2).cuda()
    x = torch.randn(9, 4, 6, device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        got = _outputs(m(x))
        loss = sum(t.float().sum() for t in got)
    assert all(t.dtype == dtype for t in got)
    loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in m.parameters())
    want = _outputs(reference.lstm(x, None, m._flat_weights, num_layers=2))
    tol = 5e-2 if dtype == torch.bfloat16 else 5e-3
    for g, w in zip(got, want):
        torch.testing.assert_close(g.float(), w.detach(), rtol=tol, atol=tol)
