"""The pure-PyTorch reference (fusedrnn/reference.py) against torch.nn.LSTM.

These tests need no native library: the reference is the ground truth for
everything else, so it is itself checked against PyTorch's own LSTM (outputs,
final states, gradients of input, states and every weight), in float64.
"""
import pytest
import torch

from conftest import reference

DT = torch.float64
TOL = dict(rtol=1e-10, atol=1e-12)


def _torch_lstm(I, H, L, bias=True, batch_first=False, dropout=0.0):
    torch.manual_seed(1)
    return torch.nn.LSTM(I, H, L, bias=bias, batch_first=batch_first,
                         dropout=dropout, dtype=DT)


def _run_both(m, x, hx, batch_first=False, dropout=0.0, training=False):
    """Return outputs and gradients of nn.LSTM ``m`` and of the reference."""
    results = []
    for use_ref in (False, True):
        xi = x.detach().clone().requires_grad_()
        hxi = None if hx is None else tuple(t.detach().clone().requires_grad_() for t in hx)
        for p in m.parameters():
            p.grad = None
        torch.manual_seed(123)  # same dropout masks for both
        if use_ref:
            out, (h, c) = reference.lstm(
                xi, hxi, m._flat_weights, num_layers=m.num_layers, has_biases=m.bias,
                batch_first=batch_first, dropout=dropout, training=training)
        else:
            out, (h, c) = m(xi, hxi)
        # A loss touching output, h_n and c_n with distinct random weights.
        g = torch.Generator().manual_seed(7)
        loss = ((out * torch.randn(out.shape, generator=g, dtype=DT)).sum()
                + (h * torch.randn(h.shape, generator=g, dtype=DT)).sum()
                + (c * torch.randn(c.shape, generator=g, dtype=DT)).sum())
        loss.backward()
        grads = [xi.grad] + ([] if hxi is None else [t.grad for t in hxi]) \
            + [p.grad.clone() for p in m._flat_weights]
        results.append(((out, h, c), grads))
    return results


def _assert_same(results):
    (vals_t, grads_t), (vals_r, grads_r) = results
    for a, b, name in zip(vals_t, vals_r, ("output", "h_n", "c_n")):
        assert a.shape == b.shape, name
        torch.testing.assert_close(b, a, **TOL, msg=lambda m: f"{name}: {m}")
    assert len(grads_t) == len(grads_r)
    for k, (a, b) in enumerate(zip(grads_t, grads_r)):
        torch.testing.assert_close(b, a, **TOL, msg=lambda m: f"grad #{k}: {m}")


def test_cell_matches_lstmcell():
    cell = torch.nn.LSTMCell(3, 5, dtype=DT)
    x = torch.randn(4, 3, dtype=DT)
    h = torch.randn(4, 5, dtype=DT)
    c = torch.randn(4, 5, dtype=DT)
    h1, c1 = cell(x, (h, c))
    h2, c2 = reference.lstm_cell(x, h, c, cell.weight_ih, cell.weight_hh,
                                 cell.bias_ih, cell.bias_hh)
    torch.testing.assert_close(h2, h1, **TOL)
    torch.testing.assert_close(c2, c1, **TOL)


def test_cell_without_bias():
    cell = torch.nn.LSTMCell(3, 5, bias=False, dtype=DT)
    x, h, c = (torch.randn(2, n, dtype=DT) for n in (3, 5, 5))
    h1, c1 = cell(x, (h, c))
    h2, c2 = reference.lstm_cell(x, h, c, cell.weight_ih, cell.weight_hh)
    torch.testing.assert_close(h2, h1, **TOL)
    torch.testing.assert_close(c2, c1, **TOL)


@pytest.mark.parametrize("L", [1, 2, 3])
@pytest.mark.parametrize("with_hx", [False, True])
def test_stack(L, with_hx):
    I, H, T, B = 3, 5, 7, 2
    m = _torch_lstm(I, H, L)
    x = torch.randn(T, B, I, dtype=DT)
    hx = (torch.randn(L, B, H, dtype=DT), torch.randn(L, B, H, dtype=DT)) if with_hx else None
    _assert_same(_run_both(m, x, hx))


@pytest.mark.parametrize("L", [1, 2])
def test_batch_first(L):
    I, H, T, B = 4, 6, 5, 3
    m = _torch_lstm(I, H, L, batch_first=True)
    x = torch.randn(B, T, I, dtype=DT)
    hx = (torch.randn(L, B, H, dtype=DT), torch.randn(L, B, H, dtype=DT))
    _assert_same(_run_both(m, x, hx, batch_first=True))


@pytest.mark.parametrize("with_hx", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_unbatched(with_hx, batch_first):
    I, H, T, L = 3, 5, 6, 2
    m = _torch_lstm(I, H, L, batch_first=batch_first)
    x = torch.randn(T, I, dtype=DT)
    hx = (torch.randn(L, H, dtype=DT), torch.randn(L, H, dtype=DT)) if with_hx else None
    results = _run_both(m, x, hx, batch_first=batch_first)
    assert results[1][0][0].shape == (T, H)
    assert results[1][0][1].shape == (L, H)
    _assert_same(results)


@pytest.mark.parametrize("L", [1, 3])
def test_no_bias(L):
    I, H, T, B = 3, 5, 4, 2
    m = _torch_lstm(I, H, L, bias=False)
    assert len(m._flat_weights) == 2 * L
    x = torch.randn(T, B, I, dtype=DT)
    hx = (torch.randn(L, B, H, dtype=DT), torch.randn(L, B, H, dtype=DT))
    _assert_same(_run_both(m, x, hx))


def test_single_step_batch_one():
    m = _torch_lstm(3, 5, 2)
    _assert_same(_run_both(m, torch.randn(1, 1, 3, dtype=DT), None))


def test_dropout_matches_torch_cpu():
    """On CPU nn.LSTM applies at::dropout to each layer's output in layer order,
    the same draws as F.dropout in the reference: same seed, same masks."""
    L = 3
    m = _torch_lstm(3, 5, L, dropout=0.5)
    m.train()
    x = torch.randn(6, 2, 3, dtype=DT)
    _assert_same(_run_both(m, x, None, dropout=0.5, training=True))


def test_dropout_not_applied_in_eval_or_after_last_layer():
    w = _torch_lstm(3, 5, 1)._flat_weights
    x = torch.randn(4, 2, 3, dtype=DT)
    plain, (h0, c0) = reference.lstm(x, None, w, num_layers=1)
    # One layer: no layer boundary, so training with dropout changes nothing.
    dropped, (h1, c1) = reference.lstm(x, None, w, num_layers=1, dropout=0.9, training=True)
    torch.testing.assert_close(dropped, plain, rtol=0, atol=0)
    torch.testing.assert_close(h1, h0, rtol=0, atol=0)
    # Two layers, dropout>0 but not training: identical to dropout=0.
    w2 = _torch_lstm(3, 5, 2)._flat_weights
    a, _ = reference.lstm(x, None, w2, num_layers=2, dropout=0.9, training=False)
    b, _ = reference.lstm(x, None, w2, num_layers=2)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_float32_close_to_torch():
    torch.manual_seed(1)
    m = torch.nn.LSTM(3, 5, 2)
    x = torch.randn(6, 2, 3)
    out_t, (h_t, c_t) = m(x)
    out_r, (h_r, c_r) = reference.lstm(x, None, m._flat_weights, num_layers=2)
    assert out_r.dtype == torch.float32
    torch.testing.assert_close(out_r, out_t, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c_r, c_t, rtol=1e-5, atol=1e-6)


def test_wrong_number_of_weights():
    w = _torch_lstm(3, 5, 2)._flat_weights
    with pytest.raises(ValueError, match="weights"):
        reference.lstm(torch.randn(2, 1, 3, dtype=DT), None, w[:-1], num_layers=2)
