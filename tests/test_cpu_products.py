"""The CPU path's own matrix products (csrc/cpu/gemm.cpp) and its single-step
path, seen through the modules.

* Sizes that take every form of the product: a decoding step (T = 1, a few
  rows: the dot-product form, no W_hh pack), a batch of 16 at T = 1, and sizes
  with several K blocks, partial tiles and narrow inputs (computed transposed);
  outputs and every gradient against torch.nn, LSTM, GRU and RNN, with the
  fused float32 kernels on and off.
* A decoding loop of one-step calls, state carried, equals one call over the
  whole sequence.
* Bitwise determinism: the same outputs and gradients run to run and with one
  or two threads.
"""
import pytest
import torch

from conftest import fusedrnn_or_skip, tolerances

fusedrnn = fusedrnn_or_skip()

CELLS = ["LSTM", "GRU", "RNN"]


def _pair(cell, I, H, L):
    torch.manual_seed(0)
    fused = getattr(fusedrnn, cell)(I, H, L)
    ref = getattr(torch.nn, cell)(I, H, L)
    ref.load_state_dict(fused.state_dict())
    return fused, ref


def _states(cell, L, B, H, seed=3):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(L, B, H, generator=g)
    return (h, torch.randn(L, B, H, generator=g)) if cell == "LSTM" else h


def _flat(out):
    y, s = out
    return [y, *s] if isinstance(s, tuple) else [y, s]


def _run(mod, x, hx):
    """Outputs, then the gradients of x, the states and every parameter."""
    x = x.clone().requires_grad_()
    hx = tuple(s.clone().requires_grad_() for s in hx) if isinstance(hx, tuple) \
        else hx.clone().requires_grad_()
    for p in mod.parameters():
        p.grad = None
    outs = _flat(mod(x, hx))
    g = torch.Generator().manual_seed(7)
    torch.autograd.backward(outs, [torch.randn(o.shape, generator=g) for o in outs])
    states = list(hx) if isinstance(hx, tuple) else [hx]
    return ([o.detach() for o in outs]
            + [x.grad] + [s.grad for s in states] + [p.grad.clone() for p in mod.parameters()])


# (T, B, I, H, L): one decoding step with a few rows, a batch of 16 at T = 1,
# several K blocks and partial tiles, a narrow input (I < 64: the input
# products run transposed), more rows than one block of the product.
SIZES = [(1, 1, 37, 70, 2), (1, 3, 64, 33, 1), (1, 16, 40, 48, 2), (9, 33, 70, 67, 2),
         (35, 8, 28, 96, 1), (3, 130, 300, 20, 1)]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("T,B,I,H,L", SIZES)
def test_products_match_torch(cpu_step_path, cell, T, B, I, H, L):
    fused, ref = _pair(cell, I, H, L)
    x = torch.randn(T, B, I, generator=torch.Generator().manual_seed(1))
    hx = _states(cell, L, B, H)
    got, want = _run(fused, x, hx), _run(ref, x, hx)
    names = [n for n, _ in fused.named_parameters()]
    names = ["output", "h_n", "c_n"][:len(got) - len(names) - (len(got) - len(names)) // 2] + \
        ["grad input"] + ["grad h_0", "grad c_0"][:(len(got) - len(names)) // 2 - 1] + \
        [f"grad {n}" for n in names]
    assert len(names) == len(got)
    # Gradients here are sums over up to 390 rows in float32, in another
    # order than torch's: absolute differences of 1-2e-5 occur on values of
    # about 0.05.  A wrong product is off by about the values themselves.
    tol = dict(rtol=1e-4, atol=5e-5)
    for a, b, n in zip(got, want, names):
        torch.testing.assert_close(a, b, **tol,
                                   msg=lambda m, n=n: f"{cell}: {n}: {m}")


# A forward computes its input projection a chunk of steps at a time, about
# CHUNK_BYTES of it (FUSEDRNN_CHUNK_BYTES in csrc/cpu/stack_common.h).
CHUNK_BYTES = 8 << 20
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


@pytest.mark.parametrize("cell", CELLS + ["LSTM-proj"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "inference"])
def test_chunks_match_torch(cpu_step_path, cell, train):
    """Sequences long enough for 3 chunks of the forward's input projection
    and of the backward's gradient rows, packed with lengths from T down to
    1, so chunks start mid-batch-shrink and the last ones hold fewer rows."""
    B, I, H, L = 64, 20, 128, 2
    proj = cell == "LSTM-proj"
    cell = "LSTM" if proj else cell
    T = 5 * (CHUNK_BYTES // (GATES[cell] * H * 4) // B) // 2
    lengths = torch.linspace(T, 1, B).long()
    if proj:
        torch.manual_seed(0)
        fused = fusedrnn.LSTM(I, H, L, proj_size=48)
        ref = torch.nn.LSTM(I, H, L, proj_size=48)
        ref.load_state_dict(fused.state_dict())
    else:
        fused, ref = _pair(cell, I, H, L)
    x = torch.randn(T, B, I, generator=torch.Generator().manual_seed(1))
    hx = _states(cell, L, B, H)
    if proj:
        hx = (hx[0][..., :48].contiguous(), hx[1])
    for packed in (False, True):
        def run(mod):
            inp = x.clone().requires_grad_(train)
            seq = torch.nn.utils.rnn.pack_padded_sequence(inp, lengths) if packed else inp
            with torch.set_grad_enabled(train):
                y, state = mod(seq, hx)
            y = y.data if packed else y
            if not train:
                return [y, *_flat((None, state))[1:]]
            (y.square().sum() + sum(s.sum() for s in _flat((None, state))[1:])).backward()
            return [y.detach(), inp.grad] + [p.grad for p in mod.parameters()]
        for p in [*fused.parameters(), *ref.parameters()]:
            p.grad = None
        # The weight gradients sum 10^4 rows, to values of about 10^4: float32
        # rounding differs from torch's by about 10^-5 of the largest value.
        for a, b in zip(run(fused), run(ref)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=max(5e-5, 2e-5 * b.abs().max()))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("B", [1, 5, 16])
def test_decoding_loop_equals_one_call(cell, B):
    """One-step calls with the state carried give the outputs of one call over
    the whole sequence (the first takes the single-step path, the second the
    fused step kernels)."""
    fused, _ = _pair(cell, 24, 40, 2)
    x = torch.randn(6, B, 24, generator=torch.Generator().manual_seed(1))
    hx = _states(cell, 2, B, 40)
    with torch.no_grad():
        whole, last = fused(x, hx)
        state, ys = hx, []
        for t in range(x.shape[0]):
            y, state = fused(x[t:t + 1], state)
            ys.append(y)
    tol = tolerances(torch.float32)
    torch.testing.assert_close(torch.cat(ys), whole, **tol)
    for a, b in zip(_flat((None, state))[1:], _flat((None, last))[1:]):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("T,B", [(1, 2), (1, 16), (12, 32)])
def test_bitwise_same_run_to_run_and_across_thread_counts(cell, T, B):
    fused, _ = _pair(cell, 72, 80, 2)
    x = torch.randn(T, B, 72, generator=torch.Generator().manual_seed(1))
    hx = _states(cell, 2, B, 80)
    before = torch.get_num_threads()
    try:
        runs = []
        for threads in (2, 2, 1):
            torch.set_num_threads(threads)
            runs.append(_run(fused, x, hx))
    finally:
        torch.set_num_threads(before)
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)


@pytest.mark.parametrize("cell", CELLS)
def test_concurrent_calls_from_python_threads(cell):
    """Calls from several Python threads at once (each holding its own team of
    OpenMP threads for its step loops) give the results of serial calls."""
    import threading
    fused, _ = _pair(cell, 32, 48, 2)
    xs = [torch.randn(20, 8, 32, generator=torch.Generator().manual_seed(s)) for s in range(6)]
    with torch.no_grad():
        want = [_flat(fused(x))[0] for x in xs]
    got = [None] * len(xs)

    def work(i):
        with torch.no_grad():
            for _ in range(3):
                got[i] = _flat(fused(xs[i]))[0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a call did not return"
    for a, b in zip(got, want):
        assert torch.equal(a, b)
