"""CPU tests of the persistent LSTM tier's planner (csrc/cuda/persistent_plan.h).

The planner is plain host C++; fusedrnn._C.persistent_plan runs it for given
sizes and device limits, so these tests need no GPU (and run in CPU-only
builds too).  What is checked:
* the known device shapes: what fits on an H100 / A100, in float32 and bfloat16;
* the partition: every hidden unit of every layer is owned by exactly one CTA,
  each CTA owns units of one layer only, the layers' CTAs are contiguous, the
  grid is at most one CTA per SM, no CTA is empty;
* the shared memory the plan asks for fits the device and holds the resident
  weights, bias, cell state and the staging area;
* refusals (with a reason) and the tier choice of cuda_tier auto / general /
  persistent.
"""
import pytest

from conftest import fusedrnn_or_skip

fusedrnn = fusedrnn_or_skip()
if not hasattr(fusedrnn._C, "persistent_plan"):
    pytest.skip("this build of fusedrnn._C has no persistent_plan (built from an older "
                "checkout?); rebuild", allow_module_level=True)

# (smem_per_sm, smem_per_block_optin, regs_per_sm, num_sms), from cudaDeviceProp.
H100 = (233472, 232448, 65536, 132)
A100 = (167936, 166912, 65536, 108)
RESERVED = 1024   # shared memory the driver keeps per CTA
F32, BF16, F64 = 4, 2, 8


def plan(H, L, B, elem=F32, dev=H100, I=None, T=16, option=0, backward=False, split=1):
    return fusedrnn._C.persistent_plan(H, I if I is not None else H, L, B, elem, *dev, T, option,
                                       int(backward), split)


def _align16(n):
    return (n + 15) // 16 * 16


def test_d2l_fits_h100_float32():
    p = plan(256, 2, 32)
    assert p["fits"] and p["auto"] and p["auto_eligible"], p["why"]
    assert p["K"] == 512
    assert p["units_per_cta"] == 4 and p["ctas_per_layer"] == 64 and p["num_ctas"] == 128
    assert p["batch_chunk"] == 32
    # weights 4U x K floats, bias 4U, cell state U x B, staging B x K
    want = _align16(4 * 4 * 512 * 4) + _align16(4 * 4 * 4) + _align16(4 * 32 * 4) + \
        _align16(32 * 512 * 4)
    assert p["smem_bytes"] == want


def test_single_layer_stages_only_h():
    p = plan(256, 1, 8)
    assert p["fits"] and p["K"] == 256


SIZES = [(1, 1, 1), (5, 3, 1), (7, 1, 3), (33, 2, 40), (256, 2, 32), (300, 3, 3),
         (512, 4, 64), (768, 2, 16), (17, 8, 2), (1000, 1, 4), (131, 4, 5)]


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "bwd"])
@pytest.mark.parametrize("dev", [H100, A100], ids=["h100", "a100"])
@pytest.mark.parametrize("elem", [F32, BF16, F64], ids=["float32", "bfloat16", "float64"])
@pytest.mark.parametrize("H,L,B", SIZES)
def test_partition_covers_every_unit_once(H, L, B, elem, dev, backward):
    p = plan(H, L, B, elem, dev, backward=backward)
    if not p["fits"]:
        assert p["why"] and p["ctas"] == []
        return
    ctas = p["ctas"]
    assert len(ctas) == p["num_ctas"] == L * p["ctas_per_layer"] <= dev[3]
    owner = {}
    prev_layer = 0
    for c, (layer, j0, j1) in enumerate(ctas):
        assert 0 <= layer < L
        assert layer >= prev_layer, "the CTAs of a layer must be contiguous"
        prev_layer = layer
        assert c // p["ctas_per_layer"] == layer
        assert 0 <= j0 < j1 <= H, f"CTA {c} owns an empty or out-of-range slice"
        assert j1 - j0 <= p["units_per_cta"]
        for j in range(j0, j1):
            assert (layer, j) not in owner, f"unit {j} of layer {layer} owned twice"
            owner[(layer, j)] = c
    assert len(owner) == L * H, "some unit has no CTA"
    # Shared memory within the device's limits.
    assert p["smem_bytes"] <= dev[1] and p["smem_bytes"] + RESERVED <= dev[0]
    acc = 8 if elem == F64 else 4
    U, K = p["units_per_cta"], p["K"]
    assert K == (4 if backward else 1) * (2 * H if L > 1 else H)
    weight_rows = U if backward else 4 * U   # backward: one column of 4H (or 8H) per unit
    assert p["smem_bytes"] >= weight_rows * K * elem + 4 * U * acc + U * B * acc + \
        p["batch_chunk"] * K * elem
    assert 1 <= p["batch_chunk"] <= B
    assert p["threads"] % 32 == 0


def test_large_does_not_fit():
    p = plan(1024, 4, 256)
    assert not p["fits"] and not p["auto"] and not p["persistent"]
    assert "shared memory" in p["why"]


def test_bfloat16_fits_where_float32_does_not():
    assert not plan(512, 4, 8, F32)["fits"]
    p = plan(512, 4, 8, BF16)
    assert p["fits"] and p["auto"], p["why"]


def test_smaller_device_fits_less():
    # Appleyard's H=512 L=2 in float32: fits the H100's 132 SMs, not the A100's 108.
    assert plan(512, 2, 8, F32, H100)["fits"]
    assert not plan(512, 2, 8, F32, A100)["fits"]


def test_more_layers_than_sms_refused():
    p = plan(16, 20, 2, dev=(233472, 232448, 65536, 16))
    assert not p["fits"] and "SMs" in p["why"]
    p = plan(16, 65, 2)  # beyond the kernel's parameter block (kMaxLayers = 64)
    assert not p["fits"] and "layers" in p["why"]


def test_too_few_registers_refused():
    p = plan(64, 2, 4, dev=(233472, 232448, 32768, 132))
    assert not p["fits"] and "registers" in p["why"]


def test_empty_sizes_refused():
    assert not plan(0, 2, 4)["fits"]
    assert not plan(8, 2, 0)["fits"]


def test_large_batch_is_chunked_and_left_to_general_by_auto():
    p = plan(256, 2, 4096)
    assert p["fits"] and p["batch_chunk"] < 4096
    assert not p["auto"] and not p["persistent"]
    assert plan(256, 2, 4096, option=2)["persistent"]


def test_auto_batch_limit():
    assert plan(64, 2, 64)["auto"]
    p = plan(64, 2, 65)
    assert p["fits"] and not p["auto"] and "B >" in p["why"]


def test_tier_option():
    # 1: general always; 2: persistent, or an error when it does not fit.
    assert not plan(256, 2, 32, option=1)["persistent"]
    assert plan(256, 2, 32, option=1)["error"] == ""
    p = plan(256, 2, 32, option=2)
    assert p["persistent"] and p["error"] == ""
    p = plan(1024, 4, 256, option=2)
    assert not p["persistent"] and "do not fit" in p["error"]
    # No minimum wavefront length (kAutoMinSteps = 1): a single step is auto's too.
    assert plan(256, 2, 4, T=1)["auto_eligible"] and plan(256, 2, 4, T=1)["persistent"]
    assert plan(16, 2, 1, T=1)["auto_eligible"] and plan(256, 1, 4, T=1)["auto_eligible"]


@pytest.mark.parametrize("L", [1, 2, 3, 4, 8])
def test_auto_picks_persistent_at_d2l_size(L):
    """Auto is on (kAutoEnabled) and picks the persistent tier at the D2L size
    for every depth (kAutoMinLayers = 1): an H100 measured it faster than the
    general tier there, single layers included."""
    p = plan(256, L, 32, I=28, T=35)
    assert p["auto_enabled"] is True
    assert p["fits"] and p["auto"], p["why"]
    assert p["auto_eligible"] and p["persistent"]


def test_units_spread_evenly():
    # H=300 on 132 SMs, L=3: at most 44 CTAs a layer -> U = 7 -> 43 CTAs.
    p = plan(300, 3, 3)
    assert p["units_per_cta"] == 7 and p["ctas_per_layer"] == 43
    sizes = [j1 - j0 for _, j0, j1 in p["ctas"][:43]]
    assert sizes.count(7) == 42 and sizes[-1] == 300 - 42 * 7


def test_backward_plan_d2l():
    """The backward stages [dG above | dG_{t+1}] rows of 8H: at D2L in float32
    the batch is staged in chunks, which auto accepts for the backward."""
    p = plan(256, 2, 32, backward=True)
    assert p["fits"] and p["K"] == 2048
    assert p["units_per_cta"] == 4 and p["num_ctas"] == 128
    assert 1 <= p["batch_chunk"] < 32
    assert p["auto"] and p["auto_eligible"]
    assert plan(256, 1, 32, backward=True)["auto_eligible"]   # one layer too
    # Same resident weight bytes as the forward (U columns of 8H vs 4U rows of 2H).
    f = plan(256, 2, 32)
    assert p["units_per_cta"] * p["K"] == 4 * f["units_per_cta"] * f["K"]
    assert plan(256, 2, 32, BF16, backward=True)["batch_chunk"] == 32


def test_backward_single_layer_row_is_4h():
    assert plan(100, 1, 4, backward=True)["K"] == 400


def test_backward_batch_split_d2l():
    """With a batch split allowed (the option persistent_bwd_split, auto = on),
    the D2L backward, whose 32 rows of 8H do not fit one CTA's shared memory
    at once, is split over 2 CTAs per unit block: twice the units, 16 rows
    each, one chunk, the same 128 CTAs."""
    whole = plan(256, 2, 32, backward=True)
    assert whole["batch_split"] == 1 and whole["batch_chunk"] < 32
    p = plan(256, 2, 32, backward=True, split=4)
    assert p["fits"] and p["auto"], p["why"]
    assert p["batch_split"] == 2 and p["rows_per_cta"] == 16 and p["batch_chunk"] == 16
    assert p["units_per_cta"] == 8 and p["ctas_per_layer"] == 32 and p["num_ctas"] == 128
    assert p["smem_bytes"] <= H100[1] and p["smem_bytes"] <= H100[0] - RESERVED
    # The forward never splits; a batch that fits whole is not split either.
    assert plan(256, 2, 32, split=4)["batch_split"] == 1
    assert plan(256, 2, 8, backward=True, split=4)["batch_split"] == 1


@pytest.mark.parametrize("H,L,B", [(256, 2, 32), (256, 2, 33), (256, 2, 31), (300, 3, 40),
                                   (512, 1, 64), (128, 4, 64)])
def test_backward_batch_split_partition(H, L, B):
    """Every (layer, unit, batch row) belongs to exactly one CTA of a split plan,
    every CTA to one layer, at most one CTA per SM."""
    p = plan(H, L, B, backward=True, split=4)
    if not p["fits"]:
        pytest.skip(p["why"])
    S = p["batch_split"]
    assert p["num_ctas"] == L * p["ctas_per_layer"] * S <= H100[3]
    seen = {}
    for (layer, j0, j1), (b0, b1) in zip(p["ctas"], p["cta_rows"]):
        assert 0 <= layer < L and 0 <= j0 < j1 <= H and 0 <= b0 <= b1 <= B
        assert b1 - b0 <= p["rows_per_cta"] and j1 - j0 <= p["units_per_cta"]
        for j in range(j0, j1):
            for b in range(b0, b1):
                seen[(layer, j, b)] = seen.get((layer, j, b), 0) + 1
    assert len(seen) == L * H * B and set(seen.values()) == {1}
    if S > 1:
        assert p["batch_chunk"] >= p["rows_per_cta"]


# ----------------------------------------------------- tensor-core tiles --
# (EXPERIMENTAL path, option persistent_mma; the planner's part runs here.)

def mma_plan(H, L, B, elem=BF16, dev=H100, backward=False, tf32=False):
    """The plan with the tensor-core tiles asked for (float32 as TF32 with tf32)."""
    return fusedrnn._C.persistent_plan(H, H, L, B, elem, *dev, 16, 0, int(backward), 1,
                                       2 if tf32 else 1)


MMA_SIZES = [(256, 2, 32), (256, 1, 8), (512, 4, 8), (256, 8, 32), (128, 2, 1), (64, 3, 5),
             (1024, 1, 16), (256, 2, 33), (96, 2, 7)]


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
@pytest.mark.parametrize("H,L,B", MMA_SIZES)
def test_mma_tiles_and_layout(H, L, B, backward):
    p = mma_plan(H, L, B, backward=backward)
    if not p["fits"]:
        pytest.skip(f"does not fit at all: {p['why']}")
    U, K, bc = p["units_per_cta"], p["K"], p["batch_chunk"]
    if not p["mma"]:
        assert p["mma_why"], p
        return
    tm, tn = p["mma_tile"]
    mpad, npad = p["mma_product"]
    if backward:
        # M = staged batch rows, N = units
        assert (tm, tn) == ((32, 8) if U <= 8 else (16, 16))
        stage_rows, weight_rows = mpad, npad
        assert mpad % tm == 0 and bc <= mpad < bc + tm
        assert npad % tn == 0 and U <= npad < U + tn
        shortest_k = 4 * H      # the layer above's dG alone, at the last step
    else:
        # M = the 4U gate rows, N = staged batch rows
        rows = 4 * U
        assert (tm, tn) == ((16, 16) if rows % 16 == 0 else (8, 32))
        assert mpad == rows
        stage_rows, weight_rows = npad, rows
        assert npad % tn == 0 and bc <= npad < bc + tn
        shortest_k = H          # layer 0
    tiles = (mpad // tm) * (npad // tn)
    ks = p["mma_ksplit"]
    assert 1 <= ks <= shortest_k // 16 and (tiles * ks <= 8 or ks == 1)
    if tiles < 8 and shortest_k // 16 >= 8 // tiles:
        assert ks == 8 // tiles  # small products still use every warp
    # areas 128-byte aligned, in order, large enough, within the device limit
    w, b, c, st, pr = p["smem_offsets"]
    acc = 4
    assert all(o % 128 == 0 for o in (w, b, c, st, pr))
    assert w == 0 and b >= weight_rows * K * BF16 and c - b >= 4 * U * acc
    assert st - c >= U * B * acc
    assert pr - st >= stage_rows * K * BF16               # the padded stage
    assert p["smem_bytes"] - pr >= ks * mpad * npad * 4   # the partial sums
    assert p["smem_bytes"] <= H100[1] and p["smem_bytes"] + RESERVED <= H100[0]
    # never fewer staged rows than the FMA plan
    q = plan(H, L, B, elem=BF16, backward=backward)
    assert bc == q["batch_chunk"] and p["num_ctas"] == q["num_ctas"]


def test_mma_d2l_bfloat16():
    p = mma_plan(256, 2, 32)
    assert p["mma"] and p["mma_tile"] == (16, 16)
    assert p["units_per_cta"] == 4 and p["batch_chunk"] == 32
    assert p["mma_ksplit"] == 4          # 1 x 2 tiles, 4 K slices: 8 warps
    assert p["mma_product"] == (16, 32)
    b = mma_plan(256, 2, 32, backward=True)
    assert b["mma"] and b["mma_tile"] == (32, 8) and b["mma_product"] == (32, 8)
    assert b["mma_ksplit"] == 8          # one 32 x 8 tile (4 units padded to 8), 8 K slices
    # the same CTAs as without tensor cores
    q = plan(256, 2, 32, elem=BF16)
    assert (p["num_ctas"], p["units_per_cta"]) == (q["num_ctas"], q["units_per_cta"])
    assert not q["mma"] and q["mma_why"] == ""   # not asked for


@pytest.mark.parametrize("elem,H,what", [(F32, 256, "TF32 allowed"), (F64, 256, "TF32 allowed"),
                                         (BF16, 100, "multiple of 16")])
def test_mma_refusals_keep_the_fma_plan(elem, H, what):
    p = mma_plan(H, 2, 8, elem=elem)
    q = plan(H, 2, 8, elem=elem)
    assert not p["mma"] and what in p["mma_why"]
    assert p["smem_bytes"] == q["smem_bytes"] and p["batch_chunk"] == q["batch_chunk"]


def test_mma_backward_needs_h_multiple_of_4():
    p = mma_plan(30, 2, 8, backward=True)
    assert not p["mma"] and "multiple of 4" in p["mma_why"]
    assert mma_plan(28, 2, 8, backward=True)["mma"]


def test_mma_never_costs_staging_rows():
    """Where the tensor-core areas would shrink the batch chunk (or not fit at
    all), the plan is the FMA one, with the reason."""
    seen_fallback = False
    for H, L, B, bwd in [(1024, 1, 64, False), (768, 2, 64, False), (512, 2, 64, False),
                         (1024, 2, 8, False), (256, 2, 32, False), (512, 2, 64, True),
                         (1024, 1, 64, True)]:
        p = mma_plan(H, L, B, backward=bwd)
        q = plan(H, L, B, elem=BF16, backward=bwd)
        assert p["fits"] == q["fits"] and p["batch_chunk"] == q["batch_chunk"], (H, L, B)
        if not p["mma"] and "do not fit in shared memory" in p["mma_why"]:
            seen_fallback = True
            assert p["smem_bytes"] == q["smem_bytes"]
    assert seen_fallback, "no size exercised the fallback"


def test_mma_tf32_float32():
    """float32 takes tensor cores only as TF32 (when the caller's TF32 policy
    allows it): 16 x 16 x 8 tiles; where the padded areas would cost staged
    rows (the D2L backward: 4 units padded to 16 columns), the FMA plan."""
    assert not mma_plan(256, 2, 32, elem=F32)["mma"]           # TF32 not allowed
    p = mma_plan(256, 2, 32, elem=F32, tf32=True)
    assert p["mma"] and p["mma_tile"] == (16, 16) and p["mma_depth"] == 8
    assert p["mma_ksplit"] == 4 and p["mma_product"] == (16, 32)
    q = plan(256, 2, 32)
    assert p["batch_chunk"] == q["batch_chunk"] == 32 and p["num_ctas"] == q["num_ctas"]
    assert all(o % 128 == 0 for o in p["smem_offsets"])
    assert mma_plan(256, 2, 32, tf32=True)["mma_depth"] == 16  # bf16 keeps 16-deep tiles
    b = mma_plan(256, 2, 32, elem=F32, tf32=True, backward=True)
    assert not b["mma"] and "do not fit in shared memory" in b["mma_why"]
    assert b["batch_chunk"] == plan(256, 2, 32, backward=True)["batch_chunk"]
    # U = 2 (4U = 8) has no TF32 tile; H not a multiple of 8 neither
    assert "multiple of 16" in mma_plan(256, 1, 8, elem=F32, tf32=True)["mma_why"]
    assert "multiple of 8" in mma_plan(100, 2, 8, elem=F32, tf32=True)["mma_why"]
    assert not mma_plan(256, 2, 32, elem=F64, tf32=True)["mma"]


# The tensor-core products replayed on the CPU (csrc/cuda/mma_layout.h): the
# kernels' own item partition, K slices, padded tiles and partial-sum offsets
# (the same functions the CUDA code calls), with every padding row NaN and
# every access bounds-checked.  Not covered: the WMMA fragment semantics.
MMA_CHECK = [(256, 2, 32), (256, 1, 8), (512, 4, 8), (256, 8, 32), (128, 2, 33), (64, 3, 5),
             (100, 2, 6), (300, 3, 3), (96, 2, 7), (1024, 1, 16), (512, 2, 64), (48, 1, 1)]


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
@pytest.mark.parametrize("elem,tf32", [(BF16, False), (F32, True)], ids=["bf16", "tf32"])
@pytest.mark.parametrize("H,L,B", MMA_CHECK)
def test_mma_products_replayed_on_cpu(H, L, B, elem, tf32, backward):
    p = mma_plan(H, L, B, elem=elem, backward=backward, tf32=tf32)
    if not p["mma"]:
        # no tiles for this plan: the emulation refuses, and the kernel runs FMA
        with pytest.raises(ValueError, match="no tensor-core tiles"):
            fusedrnn._C.persistent_mma_check(H, L, B, elem, *H100, int(backward), int(tf32))
        return
    err = fusedrnn._C.persistent_mma_check(H, L, B, elem, *H100, int(backward), int(tf32), 7)
    assert err == err, "a padding value reached an output the epilogue reads"
    assert err < 1e-9, err


def test_mma_replay_covers_both_tile_kinds():
    """The parametrized replay above is not vacuous: it runs every tile shape."""
    shapes = set()
    for H, L, B in MMA_CHECK:
        for backward in (False, True):
            for elem, tf32 in ((BF16, False), (F32, True)):
                p = mma_plan(H, L, B, elem=elem, backward=backward, tf32=tf32)
                if p["mma"]:
                    shapes.add((p["mma_tile"], p["mma_depth"]))
    assert {((16, 16), 16), ((8, 32), 16), ((32, 8), 16), ((16, 16), 8)} <= shapes, shapes


# ------------------------------------------------------ the staging copy --
# csrc/cuda/stage_layout.h: each step every CTA copies [x_t | h_{t-1}]
# (backward: [dG above | dG_{t+1}]) into shared memory, each thread walking its
# elements by additions.  The replay runs every thread of one CTA on arrays.

THREADS = 256   # persistent::kThreads


@pytest.mark.parametrize("rows,kv,kav,ldv", [
    (32, 128, 64, 64),     # D2L L2 forward, layer 1: [h^0_t | h^1_{t-1}], 16-byte vectors
    (32, 64, 0, 64),       # D2L forward, layer 0: h_{t-1} only
    (16, 512, 256, 256),   # D2L L2 backward (split): [dG above | dG_{t+1}]
    (16, 256, 256, 256),   # backward, last step below the top: the layer above's part only
    (16, 256, 0, 256),     # backward, top layer
    (8, 1024, 512, 512),   # small batch B8 H512 L4 bfloat16 forward (8 per vector)
    (1, 5, 2, 3),          # batch 1, odd row
    (3, 1, 0, 1),          # one column
    (7, 300, 150, 150),    # rows longer than the CTA (kv > threads, not a multiple)
    (33, 37, 17, 20),      # neither divides: carries every step
    (5, 256, 128, 128),    # kv == threads
    (64, 3, 1, 2),         # many short rows
])
def test_stage_copy_replay(rows, kv, kav, ldv):
    fusedrnn._C.persistent_stage_check(THREADS, rows, kv, kav, ldv, kv)
    fusedrnn._C.persistent_stage_check(THREADS, rows, kv, kav, ldv, kv + 4)   # padded rows


@pytest.mark.parametrize("threads", [1, 32, 96, 512])
def test_stage_copy_replay_other_thread_counts(threads):
    for rows, kv, kav in [(1, 1, 0), (9, 40, 13), (32, 128, 64), (4, 700, 350)]:
        fusedrnn._C.persistent_stage_check(threads, rows, kv, kav, max(kav, kv - kav), kv)


def test_stage_copy_nothing_to_stage():
    # The backward's top layer has no columns at its last step (kv = 0).
    fusedrnn._C.persistent_stage_check(THREADS, 16, 0, 0, 256, 512)
    fusedrnn._C.persistent_stage_check(THREADS, 0, 128, 64, 64, 128)


def test_stage_copy_check_rejects_bad_arguments():
    # The replay's own guard: a dst row shorter than the staged row is refused.
    with pytest.raises(ValueError, match="invalid arguments"):
        fusedrnn._C.persistent_stage_check(THREADS, 4, 64, 0, 64, 32)


# ------------------------------------------- the CTA-wide forward epilogue --
# persistent_cta_epilogue "on" (EXPERIMENTAL): the forward's FMA path stores
# its products, [4][batch_chunk][U] accumulators, in a product area.

def cta_plan(H, L, B, elem=F32, dev=H100, backward=False, mma=0):
    return fusedrnn._C.persistent_plan(H, H, L, B, elem, *dev, 16, 0, int(backward), 1, mma, 1)


@pytest.mark.parametrize("H,L,B,elem", [(256, 2, 32, F32), (256, 8, 32, F32), (256, 1, 32, F32),
                                        (512, 4, 8, BF16), (300, 3, 3, F32), (64, 2, 5, F64),
                                        (256, 2, 200, F32)])
def test_cta_epilogue_product_area(H, L, B, elem):
    off, on = plan(H, L, B, elem=elem), cta_plan(H, L, B, elem=elem)
    assert off["fits"] and on["fits"]
    assert not off["cta_epilogue"] and on["cta_epilogue"]
    U, bc = on["units_per_cta"], on["batch_chunk"]
    acc = 8 if elem == F64 else 4
    assert U == off["units_per_cta"] and on["num_ctas"] == off["num_ctas"]
    weights, bias, cstate, stage, product = on["smem_offsets"]
    # Without it the product area is empty; with it, 4 x batch_chunk x U
    # accumulators after the stage, within the CTA's shared memory.
    assert off["smem_bytes"] == off["smem_offsets"][4]
    assert product == stage + _align16(bc * on["K"] * elem)
    assert on["smem_bytes"] == product + _align16(4 * bc * U * acc)
    assert on["smem_bytes"] <= H100[1] and on["smem_bytes"] + RESERVED <= H100[0]
    # It costs no staged rows where the whole batch fits either way.
    if off["batch_chunk"] == B:
        assert bc == B and on["auto"] == off["auto"]


def test_cta_epilogue_is_forward_fma_only():
    b = cta_plan(256, 2, 32, backward=True)
    assert not b["cta_epilogue"] and b["smem_bytes"] == plan(256, 2, 32, backward=True)["smem_bytes"]
    m = cta_plan(256, 2, 32, elem=BF16, mma=1)   # the tensor-core path has its own epilogue
    assert m["mma"] and not m["cta_epilogue"]


# ------------------------------------------------ 512 threads per CTA --
# persistent_threads "512" (EXPERIMENTAL): the same partition and layout,
# twice the warps; no tensor-core tiles.

def wide_plan(H, L, B, elem=F32, backward=False, mma=0, split=1):
    return fusedrnn._C.persistent_plan(H, H, L, B, elem, *H100, 16, 0, int(backward), split,
                                       mma, 0, 512)


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "bwd"])
@pytest.mark.parametrize("H,L,B", [(256, 2, 32), (256, 8, 32), (512, 4, 8), (33, 2, 40)])
def test_wide_ctas_same_partition_and_layout(H, L, B, backward):
    narrow = plan(H, L, B, backward=backward, split=4 if backward else 1)
    wide = wide_plan(H, L, B, backward=backward, split=4 if backward else 1)
    assert narrow["threads"] == 256 and wide["threads"] == 512
    for key in ("fits", "auto", "units_per_cta", "num_ctas", "batch_chunk", "batch_split",
                "smem_bytes", "smem_offsets", "ctas", "cta_rows"):
        assert wide[key] == narrow[key], key


def test_wide_ctas_have_no_tensor_cores_and_other_counts_are_refused():
    w = wide_plan(256, 2, 32, elem=BF16, mma=1)
    assert w["fits"] and not w["mma"] and "256 threads" in w["mma_why"]
    bad = fusedrnn._C.persistent_plan(256, 256, 2, 32, F32, *H100, 16, 0, 0, 1, 0, 0, 384)
    assert not bad["fits"] and "384" in bad["why"]
    # A register file too small for 512 threads x 128 registers is refused.
    small = (H100[0], H100[1], 32768, H100[3])
    r = fusedrnn._C.persistent_plan(256, 256, 2, 32, F32, *small, 16, 0, 0, 1, 0, 0, 512)
    assert not r["fits"] and "registers" in r["why"]


# ------------------------------------------------ the options' auto values --
# persistent_cta_epilogue / persistent_threads auto (persistent_plan.h,
# plan_lstm_auto; measured on an H200, 2026-12-04): the CTA-wide forward
# epilogue for float32 and 2-byte scalars where it costs no staged rows; 512
# threads for their backward and for the float32 forward with at least 16
# warp tasks per CTA (units x row groups of 8); float64 keeps the earlier
# defaults.  The binding takes -1 for auto.
AUTO = -1


def auto_plan(H, L, B, elem=F32, dev=H100, backward=False, mma=0, split=1, cta=AUTO,
              threads=AUTO):
    return fusedrnn._C.persistent_plan(H, H, L, B, elem, *dev, 16, 0, int(backward), split, mma,
                                       cta, threads)


def fwd_tasks(p):
    return p["units_per_cta"] * -(-p["batch_chunk"] // 8)


@pytest.mark.parametrize("L", [1, 2, 4, 8])
def test_auto_float32_d2l(L):
    fwd, bwd = auto_plan(256, L, 32), auto_plan(256, L, 32, backward=True, split=4)
    assert fwd["fits"] and bwd["fits"]
    assert fwd["cta_epilogue"] and not bwd["cta_epilogue"]
    # D2L on an H100: 2 units per CTA at L = 1 (8 tasks), 4 at L = 2 (16), ...
    assert fwd_tasks(fwd) == {1: 8, 2: 16, 4: 32, 8: 64}[L]
    assert fwd["threads"] == (512 if L >= 2 else 256)
    assert bwd["threads"] == 512
    # Otherwise the same plan as the pinned settings it resolves to.
    pinned = auto_plan(256, L, 32, cta=1, threads=fwd["threads"])
    for key in ("units_per_cta", "num_ctas", "batch_chunk", "smem_bytes", "smem_offsets",
                "auto", "cta_epilogue", "threads"):
        assert fwd[key] == pinned[key], key


@pytest.mark.parametrize("H,L,B,threads", [
    (512, 1, 64, 512),    # fastrnns: 4 units x 8 row groups
    (16, 2, 1, 256),      # one-step: 1 task
    (256, 1, 64, 512),    # 2 units x 8 row groups
    (256, 1, 40, 256),    # 2 units x 5 row groups
])
def test_auto_float32_forward_threads_follow_the_tasks(H, L, B, threads):
    p = auto_plan(H, L, B)
    assert p["fits"], p["why"]
    assert (fwd_tasks(p) >= 16) == (threads == 512)
    assert p["threads"] == threads


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "bwd"])
def test_auto_for_other_dtypes(backward):
    for L in (1, 2, 8):
        b = auto_plan(256, L, 32, elem=BF16, backward=backward, split=4 if backward else 1)
        assert b["fits"], b["why"]
        # bfloat16 / float16: CTA-wide forward epilogue at 256 threads, backward at 512.
        assert b["cta_epilogue"] == (not backward)
        assert b["threads"] == (512 if backward else 256)
        d = auto_plan(64, L, 8, elem=F64, backward=backward)
        assert d["fits"], d["why"]
        assert d["threads"] == 256 and not d["cta_epilogue"]


def test_auto_threads_leave_room_for_tensor_cores():
    """Where the tensor-core products are asked for and can apply (bfloat16;
    float32 as TF32), auto keeps 256 threads so they can run."""
    b = auto_plan(256, 2, 32, elem=BF16, mma=1)
    assert b["threads"] == 256 and b["mma"], b["mma_why"]
    t = auto_plan(256, 2, 32, mma=2)              # float32, TF32 allowed
    assert t["threads"] == 256
    f = auto_plan(256, 2, 32, mma=1)              # float32, TF32 not allowed: no tiles
    assert f["threads"] == 512 and not f["mma"]


def test_auto_explicit_values_win():
    assert not auto_plan(256, 2, 32, cta=0)["cta_epilogue"]
    assert auto_plan(256, 2, 32, threads=256)["threads"] == 256
    assert auto_plan(256, 1, 32, threads=512)["threads"] == 512
    assert auto_plan(64, 2, 8, elem=BF16, cta=1)["cta_epilogue"]


def test_auto_drops_cta_epilogue_where_it_costs_staged_rows():
    """Where the product area would shrink the forward's batch chunk (or not
    fit), auto takes the lanes' epilogue: the same plan as cta_epilogue off.
    Explicit "on" keeps it.  The search must find such sizes (a test that
    cannot fail otherwise)."""
    found = 0
    for H in (256, 384, 512, 640):
        for L in (1, 2, 4):
            for B in (32, 64, 128, 256):
                on, off = auto_plan(H, L, B, cta=1), auto_plan(H, L, B, cta=0)
                a = auto_plan(H, L, B)
                if not off["fits"]:
                    continue
                if not on["fits"] or on["batch_chunk"] < off["batch_chunk"]:
                    found += 1
                    assert not a["cta_epilogue"], (H, L, B)
                    for key in ("batch_chunk", "smem_bytes", "auto"):
                        assert a[key] == off[key], (H, L, B, key)
                else:
                    assert a["cta_epilogue"] and a["batch_chunk"] == on["batch_chunk"], (H, L, B)
    assert found > 0


# ------------------------------------------------ two-unit forward tasks --
# persistent_fwd_task_units "2" (EXPERIMENTAL): the forward's FMA warp tasks
# cover two hidden units, only with the CTA-wide epilogue, at 256 threads or
# (float32 only) 512.

def units_plan(H, L, B, units, elem=F32, backward=False, mma=0, cta=1, threads=256):
    return fusedrnn._C.persistent_plan(H, H, L, B, elem, *H100, 16, 0, int(backward), 1, mma,
                                       cta, threads, units)


@pytest.mark.parametrize("H,L,B,elem", [(256, 2, 32, F32), (256, 8, 32, F32), (33, 2, 40, F32),
                                        (300, 3, 3, F32), (256, 4, 32, BF16), (64, 2, 5, F64)])
def test_two_unit_tasks_same_plan_otherwise(H, L, B, elem):
    one, two = units_plan(H, L, B, 1, elem=elem), units_plan(H, L, B, 2, elem=elem)
    assert one["fits"] and two["fits"]
    assert one["fwd_task_units"] == 1 and two["fwd_task_units"] == 2
    for key in ("units_per_cta", "num_ctas", "batch_chunk", "smem_bytes", "smem_offsets",
                "threads", "cta_epilogue", "auto"):
        assert one[key] == two[key], key


def test_two_unit_tasks_only_where_they_can_run():
    assert units_plan(256, 2, 32, 2, cta=0)["fwd_task_units"] == 1       # lanes' epilogue
    assert units_plan(256, 2, 32, 2, threads=512)["fwd_task_units"] == 2  # float32: 512 too
    for elem in (BF16, F64):                     # their 512-thread kernels would spill
        assert units_plan(256, 2, 32, 2, elem=elem, threads=512)["fwd_task_units"] == 1
        assert units_plan(256, 2, 32, 2, elem=elem)["fwd_task_units"] == 2
    assert units_plan(256, 2, 32, 2, backward=True)["fwd_task_units"] == 1
    m = units_plan(256, 2, 32, 2, elem=BF16, mma=1)                      # tensor cores
    assert m["mma"] and m["fwd_task_units"] == 1
    # Asked for with threads and epilogue on auto: auto threads count the
    # two-unit tasks, 512 from 16 a CTA (float32 D2L L = 2 has 8 of them, where
    # one-unit tasks would make 16 and run 512; L = 8 has 32).
    a = units_plan(256, 2, 32, 2, cta=AUTO, threads=AUTO)
    assert a["threads"] == 256 and a["cta_epilogue"] and a["fwd_task_units"] == 2
    a8 = units_plan(256, 8, 32, 2, cta=AUTO, threads=AUTO)
    assert a8["threads"] == 512 and a8["cta_epilogue"] and a8["fwd_task_units"] == 2
    assert units_plan(256, 2, 32, 2, cta=AUTO, threads=AUTO, backward=True)["threads"] == 512
    # auto (and 1) means one unit a task.
    for units in (AUTO, 1):
        assert units_plan(256, 2, 32, units, cta=AUTO, threads=AUTO)["fwd_task_units"] == 1


# ------------------------------------- forward weights in registers --
# persistent_fwd_task_units "regs" (EXPERIMENTAL; fwd_task_units 3 in a plan):
# float32 only, 256 threads, the CTA-wide epilogue, H % 4 == 0, a staged row
# of at most 512 and at most 8 gate rows per warp (4U <= 64).

REGS = 3


@pytest.mark.parametrize("L", [1, 2, 4, 8])
def test_register_weights_d2l_plans(L):
    """At the D2L size (H 256, B 32) every depth can keep its weights in
    registers, in the same layout as the one-unit plan."""
    one, regs = units_plan(256, L, 32, 1), units_plan(256, L, 32, REGS)
    assert one["fits"] and regs["fits"]
    assert regs["fwd_task_units"] == REGS and one["fwd_task_units"] == 1
    assert 4 * regs["units_per_cta"] <= 8 * 8 and regs["K"] <= 512
    for key in ("units_per_cta", "num_ctas", "batch_chunk", "smem_bytes", "smem_offsets",
                "threads", "cta_epilogue"):
        assert one[key] == regs[key], key


def test_register_weights_only_where_they_can_run():
    assert units_plan(256, 2, 32, REGS, cta=0)["fwd_task_units"] == 1         # lanes' epilogue
    assert units_plan(256, 2, 32, REGS, threads=512)["fwd_task_units"] == 1   # 256 threads only
    for elem in (BF16, F64):                                                   # float32 only
        assert units_plan(256, 2, 32, REGS, elem=elem)["fwd_task_units"] == 1
    assert units_plan(256, 2, 32, REGS, backward=True)["fwd_task_units"] == 1
    assert units_plan(512, 2, 64, REGS)["fwd_task_units"] == 1   # a staged row of 1024
    assert units_plan(512, 1, 64, REGS)["fwd_task_units"] == REGS  # L = 1: K = H = 512
    assert units_plan(258, 2, 32, REGS)["fwd_task_units"] == 1   # H % 4 != 0
    assert units_plan(255, 1, 8, REGS)["fwd_task_units"] == 1
    # Asked for with threads on auto: 256 (where one-unit tasks would run 512).
    a = units_plan(256, 8, 32, REGS, cta=AUTO, threads=AUTO)
    assert a["threads"] == 256 and a["cta_epilogue"] and a["fwd_task_units"] == REGS
    assert units_plan(256, 8, 32, 1, cta=AUTO, threads=AUTO)["threads"] == 512
    # Asked for where they do not fit: the one-unit plan, auto threads included
    # (a staged row of 1024 at H 512, L 2; 4U = 80 > 64 rows at H 256, L 10,
    # whose rows are 512 long, and 20 one-unit tasks a CTA: 512 threads).
    for H, L, B in ((512, 2, 8), (256, 10, 8)):
        got = units_plan(H, L, B, REGS, cta=AUTO, threads=AUTO)
        want = units_plan(H, L, B, 1, cta=AUTO, threads=AUTO)
        assert got["fwd_task_units"] == 1 and got["fits"], (H, L)
        for key in ("threads", "cta_epilogue", "units_per_cta", "batch_chunk", "smem_bytes"):
            assert got[key] == want[key], (H, L, key)
    assert units_plan(256, 10, 8, REGS, cta=AUTO, threads=AUTO)["threads"] == 512


def test_register_weights_with_a_partial_last_cta():
    """H 136 at L 4 on 132 SMs: 5 units a CTA, 28 CTAs a layer, the last with
    one unit; K = 272 (not whole 128-element chunks): still register-resident."""
    p = units_plan(136, 4, 5, REGS)
    assert p["fits"] and p["fwd_task_units"] == REGS
    assert p["units_per_cta"] == 5 and 136 % p["units_per_cta"] == 1 and p["K"] == 272
