// Planning of the persistent wavefront LSTM tier (csrc/cuda/lstm_persistent.cu).
//
// Host-only, header-only plain C++ (no CUDA or torch includes), so that the
// same code decides on the GPU and in the CPU tests (tests/test_persistent_plan.py
// reach it through fusedrnn._C.persistent_plan, csrc/module.cpp).
//
// The kernel's layout, which the planner sizes:
//   * a grid of L * ctas_per_layer CTAs, one CTA per SM (the grid is one wave
//     and every CTA is co-resident, which the grid barrier needs);
//   * CTA c belongs to layer c / ctas_per_layer and owns the hidden units
//     [j0, j1) of that layer, j0 = (c % ctas_per_layer) * units_per_cta,
//     j1 = min(j0 + units_per_cta, H): all four gate rows of each of its units;
//   * its dynamic shared memory holds, for the whole kernel,
//       weights  forward: 4 * U rows of K = (L > 1 ? 2H : H) scalars,
//                [W_ih row | W_hh row] of each gate of each unit (layer 0:
//                only the W_hh row; its input projection is one GEMM before
//                the kernel), U = units_per_cta;
//                backward: U rows of K = (L > 1 ? 8H : 4H) scalars, for unit j
//                [column j of W_ih of the layer above | column j of W_hh]
//                (the top layer: only the W_hh column) -- the same bytes;
//       bias     4 * U accumulators (forward: b_ih + b_hh of layers > 0);
//       c state  U * B accumulators (the cell state, or backward its gradient dc);
//     and per step a staging area of batch_chunk rows of K scalars (the step's
//     input -- forward [x_t | h_{t-1}], backward [dG of the layer above at t |
//     dG_{t+1}] -- of batch_chunk batch rows at a time).
//
// Selection (the "cuda_tier" option): 1 general, 2 persistent (an error when
// the plan does not fit), 0 auto = persistent when `fits` and `auto_ok` (and
// the rules below), kAutoEnabled being on.
//
// TUNING KNOBS (provisional: only kAutoMinLayers comes from a measurement; a
// GPU session should sweep the others with benchmarks/bench_layers.py):
//   kThreads           threads per CTA (the kernels are compiled for it and
//                      for kThreadsWide, twice the warps to hide latency
//                      with, at most 128 registers a thread; option
//                      persistent_threads picks, auto: auto_threads below,
//                      measured on an H200, 2026-12-04).
//   kFwdTaskRows       forward: batch rows of one warp task (a task is the
//                      four gate rows of one unit x these batch rows, 32
//                      products, one per lane after the warp reduction).
//   kBwdTaskUnits, kBwdTaskRows  backward: units x batch rows of one task.
//   one CTA per SM     the planner picks the smallest units_per_cta for which
//                      L * ceil(H / U) <= num_sms; more CTAs per SM would need
//                      smaller per-CTA shared memory, fewer would leave SMs idle.
//   kAutoMaxBatch      auto picks the persistent tier only for B <= this and,
//                      forward, only when the whole batch is staged at once (no
//                      chunking; the backward's staged rows are 4x longer, so
//                      auto accepts chunking there).
//   kAutoMinSteps      ... and only for T + L - 1 >= this many wavefront steps.
//                      1 (no minimum) since an H200 measured the persistent
//                      tier faster on the shortest stack benchmarked, the
//                      one-step config (B1 T1 I16 H16 L2, float32, 2026-12-04:
//                      forward 0.155 vs 0.262 ms general, forward+backward
//                      0.997 vs 1.280; auto, then 16, ran the general tier).
//                      The general tier's tests force it (tests/test_cuda.py).
//   kAutoMinLayers     ... and only for stacks of at least this many layers.
//                      Measured on an H100 (2026-11-23, bench_layers.py,
//                      float32, benchmarks/results/cuda-nvidia-h100-*): with
//                      the 16-byte staging loads (_persistent-vec.md) the
//                      persistent tier beat the general one at every
//                      benchmarked size that fits, single layers included
//                      (D2L L=1 forward 0.374 vs 0.670 ms, forward+backward
//                      1.589 vs 2.454; B64 T100 I512 H512 L=1 2.881 vs 3.026
//                      and 9.02 vs 10.60), so it is 1: no layer minimum.
//                      (Before that change, single layers lost or tied.)
// Auto also leaves every call to the general tier while the option
// "cuda_step_launch" is set explicitly (per_step or graph): that option only
// means something to the general tier, so setting it asks for that tier.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace fusedrnn {
namespace persistent {

constexpr int64_t kThreads = 256;
constexpr int64_t kThreadsWide = 512;
constexpr int64_t kFwdTaskRows = 8;
constexpr int64_t kBwdTaskUnits = 4;
constexpr int64_t kBwdTaskRows = 4;
constexpr int64_t kAutoMaxBatch = 64;
constexpr int64_t kAutoMinSteps = 1;
constexpr int64_t kAutoMinLayers = 1;
// Whether "auto" may pick the persistent tier at all.  On since the kernels
// passed tests/test_cuda_persistent.py on an H100 (2026-11-23, 41 tests) and
// bench_layers.py showed where they win (kAutoMinLayers above); auto follows
// the eligibility rule below (auto_eligible).
constexpr bool kAutoEnabled = true;
// The kernels are compiled with __launch_bounds__(threads, 1): at most 255
// registers a thread (128 for 512 threads), which the planner takes as the
// worst case.
constexpr int64_t kMaxRegsPerThread = 255;
inline int64_t max_regs_per_thread(int64_t threads) {
  const int64_t r = 65536 / threads / 8 * 8;  // the register file of sm_80 / sm_90
  return r < kMaxRegsPerThread ? r : kMaxRegsPerThread;
}
// Shared memory the driver reserves per resident CTA (1 KiB on sm_80/sm_90).
constexpr int64_t kReservedSmemPerCta = 1024;
// Most layers the kernel's parameter block holds pointers for.
constexpr int64_t kMaxLayers = 64;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t align16(int64_t n) { return (n + 15) / 16 * 16; }
inline int64_t align_to(int64_t n, int64_t a) { return (n + a - 1) / a * a; }

// ------------------------------------------------- tensor-core products --
//
// EXPERIMENTAL, off unless the option persistent_mma is "on"; written without
// a GPU (2026-11-23, fourth session) and NOT yet run on one.  For bfloat16 and
// float16 (and float32 as TF32 when the call's TF32 policy allows it, 16 x 16
// x 8 tiles) a CTA's per-step product can run on WMMA tiles (tm x tn x 16,
// float accumulators) instead of the FMA warp tasks.  In both directions it is
//   P[M x N] = A[M x K] . Bop[N x K]^T   (A row-major, Bop read as the
//                                         column-major K x N operand)
//   forward:  A = the 4U resident gate rows (M = 4U), Bop = the bc staged rows
//             (N = batch); 16 x 16 tiles when 4U is a multiple of 16, 8 x 32
//             when it is a multiple of 8, none otherwise;
//   backward: A = the bc staged dG rows (M = batch), Bop = the U resident
//             weight columns (N = units); 32 x 8 tiles for U <= 8, else 16 x 16.
// The kernel's 8 warps take (output tile, K slice) items, K split in `ksplit`
// slices so that small products still use every warp; each warp stores its
// partial sum into the product area, [ksplit][mpad][npad] floats, and the
// epilogue adds the ksplit partials in a fixed order (deterministic).  The
// areas are padded to whole tiles: the staging area to mpad or npad batch
// rows, the backward's weight area to npad unit rows; what the padding rows
// hold is never used (each output element depends on its own row and column
// only).  Every area then starts at a multiple of 128 bytes (WMMA loads and
// stores need 32-byte aligned pointers).
constexpr int64_t kWarpsPerCta = kThreads / 32;
constexpr int64_t kMmaK = 16;
constexpr int64_t kMmaAlign = 128;

struct MmaTiles {
  int64_t tm = 0, tn = 0;  // tile rows and columns; 0: no tensor cores
  int64_t tk = kMmaK;      // tile depth: 16, or 8 for float32 as TF32
  bool backward = false;
  std::string why;         // when tm == 0 although they were asked for: why not
  bool on() const { return tm > 0; }
  // Staged rows the tiles read, for bc staged rows.
  int64_t stage_rows(int64_t bc) const {
    if (!on()) return bc;
    return backward ? ceil_div(bc, tm) * tm : ceil_div(bc, tn) * tn;
  }
  // Resident weight rows, with the tiles on (the backward's padded to whole
  // column tiles).
  int64_t weight_rows(int64_t U) const { return backward ? ceil_div(U, tn) * tn : 4 * U; }
  // The product area's rows (per K slice) and row length.
  int64_t mpad(int64_t U, int64_t bc) const { return backward ? stage_rows(bc) : 4 * U; }
  int64_t npad(int64_t U, int64_t bc) const { return backward ? weight_rows(U) : stage_rows(bc); }
  // K slices per output tile: enough to give every warp work, at most the
  // tk-deep steps of the shortest product (forward: layer 0's K = H;
  // backward: the layer above's 4H at the last step).
  int64_t ksplit(int64_t U, int64_t bc, int64_t H) const {
    if (!on() || bc <= 0) return 1;
    const int64_t tiles = (mpad(U, bc) / tm) * (npad(U, bc) / tn);
    int64_t k = kWarpsPerCta / tiles;
    const int64_t steps = (backward ? 4 * H : H) / tk;
    if (k > steps) k = steps;
    return k < 1 ? 1 : k;
  }
  int64_t product_bytes(int64_t U, int64_t bc, int64_t H) const {
    return on() && bc > 0 ? ksplit(U, bc, H) * mpad(U, bc) * npad(U, bc) * 4 : 0;
  }
};

// The tiles for U units per CTA, hidden size H and `elem`-byte scalars;
// `tf32`: float32 may use TF32 tensor cores (the caller's TF32 policy), with
// 16 x 16 x 8 tiles, the only TF32 WMMA shape.
inline MmaTiles mma_tiles(int64_t U, int64_t H, int64_t elem, bool backward, bool tf32 = false) {
  MmaTiles m;
  m.backward = backward;
  if (elem == 4 && tf32) {
    m.tk = 8;
    if (!backward && H % 8 != 0) {
      m.why = "TF32 tensor-core forward products need H to be a multiple of 8";
    } else if (backward && H % 2 != 0) {
      m.why = "TF32 tensor-core backward products need H to be even";
    } else if (!backward && (4 * U) % 16 != 0) {
      m.why = "TF32 tensor-core forward products need 4 x units_per_cta (" +
              std::to_string(4 * U) + ") to be a multiple of 16";
    } else {
      m.tm = 16;
      m.tn = 16;
    }
    return m;
  }
  if (elem != 2) {
    m.why = "tensor-core products need bfloat16 or float16, or float32 with TF32 allowed "
            "(torch.backends.cuda.matmul.allow_tf32)";
  } else if (!backward && H % kMmaK != 0) {
    m.why = "tensor-core forward products need H to be a multiple of 16";
  } else if (backward && (4 * H) % kMmaK != 0) {
    m.why = "tensor-core backward products need H to be a multiple of 4";
  } else if (backward) {
    m.tm = U <= 8 ? 32 : 16;
    m.tn = U <= 8 ? 8 : 16;
  } else if ((4 * U) % 16 == 0) {
    m.tm = 16;
    m.tn = 16;
  } else if ((4 * U) % 8 == 0) {
    m.tm = 8;
    m.tn = 32;
  } else {
    m.why = "tensor-core forward products need 4 x units_per_cta (" + std::to_string(4 * U) +
            ") to be a multiple of 8";
  }
  return m;
}

// What the planner needs to know about the device.
struct DeviceLimits {
  int64_t smem_per_sm = 0;     // cudaDevAttrMaxSharedMemoryPerMultiprocessor
  int64_t smem_per_block = 0;  // cudaDevAttrMaxSharedMemoryPerBlockOptin
  int64_t regs_per_sm = 0;     // cudaDevAttrMaxRegistersPerMultiprocessor
  int64_t num_sms = 0;         // cudaDevAttrMultiProcessorCount
};

// The forward's FMA path with its epilogue CTA-wide (option
// persistent_cta_epilogue; written without a GPU, first run on an H200 on
// 2026-12-04 and on by auto since, except for float64: plan_lstm_auto):
// the warp tasks store their gate pre-activation products in shared memory,
// [4][batch_chunk][U] accumulators, and after a __syncthreads every thread
// applies the cell to (unit, batch row) pairs, units fastest.  The default
// (lanes) has lane r of each task apply it to its batch row right after the
// task, so 8 of 32 lanes run each epilogue and a warp runs one per task.
inline int64_t cta_epilogue_bytes(int64_t U, int64_t bc, int64_t acc) { return 4 * U * bc * acc; }

// Two-unit forward tasks (option persistent_fwd_task_units "2"; EXPERIMENTAL,
// written without a GPU, 2026-12-04).  A forward warp task is one unit's 4
// gate rows x kFwdTaskRows staged rows: per 16-byte chunk position a lane
// loads 4 + 8 chunks for 4 x 8 x E products, so in float32 12 LDS.128 (48
// cycles of an SM's 128-byte-a-cycle shared-memory pipe per warp) feed 128
// FFMA (128 issue cycles on one of its 4 schedulers).  With every scheduler
// busy that is 192 shared-memory cycles per 128 FFMA cycles: the k loop is
// bound by shared-memory bandwidth (the H200 measured D2L L8 forward at about
// a quarter of FP32 peak; sass_report.py: 167 instructions, 128 FFMA, 12 LDS
// per iteration).  A two-unit task (8 weight rows x 8 staged rows, 64
// products a lane) loads 8 + 8 chunks for 256 FFMA: 64 shared-memory cycles
// per 64 FFMA cycles, balanced.  It needs 64 accumulators a lane: with
// kThreads (255 registers a thread) in every dtype, with kThreadsWide (128)
// in float32 only, where the k loop holds one staged chunk at a time and
// stays free of spills (lane_products_pair; the 2-byte and float64 kernels
// would spill in it; outside the k loop the float32 512-thread kernel does
// spill: ptxas sm_90, 2026-12-05, 180 bytes stored and 464 loaded, per task
// and per step).  It stores its products for the CTA-wide epilogue (the
// only epilogue it has) and halves the task count, so it can pay only where
// a CTA has at least 2 tasks per warp (D2L L = 4, 8).
constexpr int64_t kMaxFwdTaskUnits = 2;

// Forward weights resident in registers (option persistent_fwd_task_units
// "regs", fwd_task_units = kFwdRegs in a plan; EXPERIMENTAL, written without a
// GPU on 2026-12-05).  Each warp of a kThreads CTA owns up to kRegRows of the
// CTA's 4U gate rows for the whole kernel, its lanes splitting K in 16-byte
// chunks (lane l: k = 4 (l + 32 c), c < kRegChunks), the weights held in
// kRegRows x kRegChunks x 4 float registers; per staged batch row a lane
// loads kRegChunks chunks of it and forms kRegRows partial sums, which one
// warp_reduce_scatter completes.  Shared-memory traffic per step is the
// stage read once per warp (8 rows of reuse), no weight reads: at D2L L = 8
// 0.5 MB a CTA against 1.5 MB for the one-unit tasks and 1.0 for the
// two-unit ones (benchmarks/NOTES_gpu.md, 2026-12-05).  float32 only, the
// CTA-wide epilogue, K <= 4 * 32 * kRegChunks with H % 4 == 0, and 4U <=
// kRegRows warps' rows: D2L (H = 256) at every L.  The weights still get
// their shared-memory area (the layout is the other kernels'), unused.
constexpr int64_t kFwdRegs = 3;
constexpr int64_t kRegRows = 8;
constexpr int64_t kRegChunks = 4;

// Byte offsets of the parts of one CTA's dynamic shared memory (each 16-byte
// aligned; 128-byte with the tensor-core path).  `elem` = sizeof(scalar_t),
// `acc` = sizeof(accumulator type).  `product` is the tensor-core path's
// partial-sum area, or the CTA-wide epilogue's products (forward, FMA path,
// `cta_epilogue`); empty without either.
struct SmemLayout {
  int64_t weights = 0, bias = 0, cstate = 0, stage = 0, product = 0, total = 0;
};

inline SmemLayout smem_layout(int64_t U, int64_t K, int64_t B, int64_t batch_chunk,
                              int64_t elem, int64_t acc, bool backward = false,
                              const MmaTiles& mma = MmaTiles(), int64_t H = 0,
                              bool cta_epilogue = false) {
  const int64_t a = mma.on() ? kMmaAlign : 16;
  SmemLayout s;
  s.weights = 0;
  const int64_t weight_rows = !backward ? 4 * U : (mma.on() ? mma.weight_rows(U) : U);
  s.bias = align_to(weight_rows * K * elem, a);
  s.cstate = s.bias + align_to(4 * U * acc, a);
  s.stage = s.cstate + align_to(U * B * acc, a);
  s.product = s.stage + align_to(mma.stage_rows(batch_chunk) * K * elem, a);
  const int64_t product = mma.on() ? mma.product_bytes(U, batch_chunk, H)
                          : (!backward && cta_epilogue ? cta_epilogue_bytes(U, batch_chunk, acc)
                                                        : 0);
  s.total = s.product + align_to(product, a);
  return s;
}

struct Plan {
  bool backward = false;  // a plan of the backward kernel (else the forward's)
  bool fits = false;      // the persistent kernel can run these sizes here
  bool auto_ok = false;   // auto (cuda_tier = 0) would choose it
  std::string why;        // when !fits: why not (a sentence fragment); else notes on auto
  int64_t H = 0, L = 0, B = 0;
  int64_t K = 0;                // staged row length: forward 2H (L > 1) or H,
                                //   backward 8H (L > 1) or 4H
  int64_t units_per_cta = 0;    // U
  int64_t batch_split = 1;      // S: CTAs that share a unit block, each with its
                                //   own block of batch rows (backward only; 1
                                //   unless the caller allowed a split)
  int64_t rows_per_cta = 0;     // ceil(B / S): rows of one batch block
  int64_t ctas_per_layer = 0;   // unit blocks per layer, ceil(H / U)
  int64_t num_ctas = 0;         // L * ctas_per_layer * S
  int64_t batch_chunk = 0;      // batch rows staged at once (<= rows_per_cta)
  int64_t threads = kThreads;   // per CTA: kThreads or kThreadsWide
  int64_t fwd_task_units = 1;   // hidden units per forward FMA warp task (1 or 2), or
                                //   kFwdRegs (the weights in registers)
  SmemLayout smem;              // smem.total = dynamic shared memory per CTA
  MmaTiles mma;                 // tensor-core tiles (mma.on()), when asked for
  int64_t mma_ksplit = 1;       // K slices per tile (tensor-core path)
  int64_t mma_mpad = 0;         // the product area's rows per K slice
  int64_t mma_npad = 0;         // ... and its row length
  bool cta_epilogue = false;    // forward, FMA path: the epilogue CTA-wide (see
                                //   cta_epilogue_bytes), when asked for

  // The layer of CTA c, its units [j0, j1) and its batch rows [b0, b1) (may
  // be empty when S does not divide B).  Within a layer, CTA c is unit block
  // (c % (ctas_per_layer * S)) / S, batch block c % S.
  int64_t cta_layer(int64_t c) const { return c / (ctas_per_layer * batch_split); }
  int64_t cta_j0(int64_t c) const {
    return ((c % (ctas_per_layer * batch_split)) / batch_split) * units_per_cta;
  }
  int64_t cta_b0(int64_t c) const {
    const int64_t b0 = (c % batch_split) * rows_per_cta;
    return b0 < B ? b0 : B;
  }
  int64_t cta_b1(int64_t c) const {
    const int64_t b1 = cta_b0(c) + rows_per_cta;
    return b1 < B ? b1 : B;
  }
  int64_t cta_j1(int64_t c) const {
    const int64_t j1 = cta_j0(c) + units_per_cta;
    return j1 < H ? j1 : H;
  }
};

// The plan for one batch split S (see plan_lstm).
inline Plan plan_lstm_split(int64_t H, int64_t L, int64_t B, int64_t elem, int64_t acc,
                            const DeviceLimits& d, bool backward, int64_t S,
                            bool mma = false, bool tf32 = false, bool cta_epilogue = false,
                            int64_t threads = kThreads) {
  Plan p;
  p.backward = backward;
  p.threads = threads;
  p.H = H;
  p.L = L;
  p.B = B;
  p.batch_split = S;
  // A batch block is a whole number of backward warp tasks' rows (when split).
  p.rows_per_cta = S > 1 ? ceil_div(ceil_div(B, S), kBwdTaskRows) * kBwdTaskRows : B;
  p.K = (backward ? 4 : 1) * (L > 1 ? 2 * H : H);
  if (H <= 0 || L <= 0 || B <= 0) {
    p.why = "the sizes are empty (H, L and B must be positive)";
    return p;
  }
  if (elem <= 0 || acc <= 0) {
    p.why = "the element sizes must be positive";
    return p;
  }
  if (L > kMaxLayers) {
    p.why = "it supports at most " + std::to_string(kMaxLayers) + " layers, got " +
            std::to_string(L);
    return p;
  }
  if (d.num_sms <= 0 || d.smem_per_sm <= 0 || d.smem_per_block <= 0) {
    p.why = "the device limits are unknown";
    return p;
  }
  if (threads != kThreads && threads != kThreadsWide) {
    p.why = "the kernels are compiled for " + std::to_string(kThreads) + " or " +
            std::to_string(kThreadsWide) + " threads per CTA, not " + std::to_string(threads);
    return p;
  }
  if (threads * max_regs_per_thread(threads) > d.regs_per_sm) {
    p.why = "one CTA of " + std::to_string(threads) + " threads may need more registers (" +
            std::to_string(threads * max_regs_per_thread(threads)) + ") than an SM has (" +
            std::to_string(d.regs_per_sm) + ")";
    return p;
  }
  if (L > d.num_sms) {
    p.why = "every layer needs at least one CTA on its own SM, but L = " + std::to_string(L) +
            " exceeds the " + std::to_string(d.num_sms) + " SMs";
    return p;
  }
  if (S < 1 || L * S > d.num_sms) {
    p.why = "a batch split of " + std::to_string(S) + " needs L * S <= " +
            std::to_string(d.num_sms) + " CTAs";
    return p;
  }
  // Smallest U with L * S * ceil(H / U) <= num_sms: one CTA per SM.
  const int64_t per_layer_max = d.num_sms / (L * S);  // >= 1
  int64_t U = ceil_div(H, per_layer_max);
  // ceil(H / U) <= per_layer_max holds for this U; take the same number of
  // CTAs with the units spread as evenly as possible (smallest U for it).
  const int64_t cpl = ceil_div(H, U);
  U = ceil_div(H, cpl);
  p.units_per_cta = U;
  p.ctas_per_layer = ceil_div(H, U);
  p.num_ctas = L * p.ctas_per_layer * S;
  if (mma) p.mma = mma_tiles(U, H, elem, backward, tf32);  // plan_lstm: kThreads only
  const MmaTiles& mt = p.mma;
  // The tensor-core path has its own CTA-wide epilogue.
  p.cta_epilogue = cta_epilogue && !backward && !mt.on();
  const bool ce = p.cta_epilogue;

  // The largest batch chunk whose layout fits one CTA per SM.
  const int64_t limit_block = d.smem_per_block;
  const int64_t limit_sm = d.smem_per_sm - kReservedSmemPerCta;
  const int64_t limit = limit_block < limit_sm ? limit_block : limit_sm;
  const SmemLayout base = smem_layout(U, p.K, B, 0, elem, acc, backward, mt, H, ce);
  if (smem_layout(U, p.K, B, 1, elem, acc, backward, mt, H, ce).total > limit) {
    p.smem = smem_layout(U, p.K, B, 1, elem, acc, backward, mt, H, ce);
    p.why = "its resident weights and state need " + std::to_string(p.smem.total) +
            " bytes of shared memory per CTA (" + std::to_string(U) + " units of " +
            std::to_string(L) + " layer(s) on each of " + std::to_string(p.num_ctas) +
            " CTAs, one per SM), more than the " + std::to_string(limit) + " bytes available";
    return p;
  }
  int64_t bc = (limit - base.total) / (p.K * elem);  // align16 may need a little more
  if (bc > p.rows_per_cta) bc = p.rows_per_cta;
  while (bc > 1 && smem_layout(U, p.K, B, bc, elem, acc, backward, mt, H, ce).total > limit) --bc;
  p.batch_chunk = bc;
  p.smem = smem_layout(U, p.K, B, bc, elem, acc, backward, mt, H, ce);
  p.mma_ksplit = mt.ksplit(U, bc, H);
  p.mma_mpad = mt.on() ? mt.mpad(U, bc) : 0;
  p.mma_npad = mt.on() ? mt.npad(U, bc) : 0;
  p.fits = true;

  if (B > kAutoMaxBatch) {
    p.why = "auto leaves B > " + std::to_string(kAutoMaxBatch) + " to the general tier";
  } else if (bc < B && !backward) {
    p.why = "auto leaves a batch that must be staged in chunks to the general tier";
  } else {
    p.auto_ok = true;
  }
  return p;
}

// Plans the persistent forward (or, with `backward`, the reverse wavefront) of
// an L-layer LSTM with hidden size H, input size I (which does not matter:
// layer 0's input projection, and the backward's input gradient, are GEMMs
// outside the kernel), batch B, `elem`-byte scalars, `acc`-byte accumulators.
//
// `max_batch_split` > 1 (backward only; 4 unless the option
// persistent_bwd_split is off, lstm_persistent.cu backward_batch_split) lets the
// backward split the batch across CTAs when its staged rows (8H long) do not
// fit whole: S = 2, 4, ... CTAs then share each unit block, each staging only
// its ceil(B / S) rows (with S times the units, so the same SMs), and the
// first S whose rows fit in one chunk is taken; without one, the unsplit plan.
//
// `mma` (EXPERIMENTAL, see "tensor-core products" above) plans the
// tensor-core path where its tiles allow and it costs no staging rows
// (plan.mma.on()); otherwise the plan is the FMA one and plan.mma.why says why.
// `tf32`: float32 may take TF32 tiles (the call's TF32 policy allows it).
// `cta_epilogue` (forward, FMA path): the epilogue CTA-wide,
// with its product area (cta_epilogue_bytes) in the layout.  `threads`:
// kThreads or kThreadsWide per CTA; the layout does not
// depend on it.
inline Plan plan_lstm(int64_t H, int64_t I, int64_t L, int64_t B, int64_t elem, int64_t acc,
                      const DeviceLimits& d, bool backward = false,
                      int64_t max_batch_split = 1, bool mma = false, bool tf32 = false,
                      bool cta_epilogue = false, int64_t threads = kThreads) {
  (void)I;
  Plan fma = plan_lstm_split(H, L, B, elem, acc, d, backward, 1, false, false, cta_epilogue,
                             threads);
  if (backward && max_batch_split > 1 && fma.fits && fma.batch_chunk < B) {
    for (int64_t S = 2; S <= max_batch_split && S <= B; S *= 2) {
      const Plan split = plan_lstm_split(H, L, B, elem, acc, d, backward, S, false, false,
                                         false, threads);
      if (split.fits && split.batch_chunk >= split.rows_per_cta) {
        fma = split;
        break;
      }
    }
  }
  if (!mma || !fma.fits) return fma;
  if (threads != kThreads) {
    fma.mma.why = "tensor-core products run with " + std::to_string(kThreads) +
                  " threads per CTA only";
    return fma;
  }
  Plan with = plan_lstm_split(H, L, B, elem, acc, d, backward, fma.batch_split, true, tf32);
  if (with.mma.on() && with.fits && with.batch_chunk == fma.batch_chunk) return with;
  fma.mma.why = with.mma.on() ? "the tensor-core path's padded areas and partial sums do not "
                                "fit in shared memory beside the FMA plan's batch chunk"
                              : with.mma.why;
  return fma;
}

// ------------------------------------------------ the options' auto values --
// What auto means for the options persistent_cta_epilogue and
// persistent_threads (csrc/options.h), from their GPU runs on an H200,
// 2026-12-04 (benchmarks/results/cuda-nvidia-h200_2026-12-04_variants*.md),
// each setting pinned and timed side by side.  float32, B = 32, H = 256
// (D2L) unless named, forward ms:
//                      L=1    L=2    L=4    L=8    fastrnns (H=512 B=64 L=1)
//   256, lanes'        0.287  0.422  0.538  0.943  1.749
//   256, CTA-wide      0.283  0.401  0.495  0.863  1.674
//   512, lanes'        0.312  0.383  0.479  0.815  1.545
//   512, CTA-wide      0.314  0.384  0.471  0.800  1.565
// 512 threads win where a CTA has at least 16 forward warp tasks (U units x
// ceil(batch_chunk / 8) row groups: 16 at D2L L=2, 32 for fastrnns) and lose
// where it has fewer (8 at D2L L=1: half the 16 warps idle).  The backward
// gains at 512 at every size measured (float32 and bfloat16).  bfloat16
// (D2L L=2 / L=8 forward: 256 0.411 / 0.959, 256 CTA-wide 0.394 / 0.877, 512
// 0.438 / 0.906): its 512-thread forward spills registers and loses; the
// CTA-wide epilogue wins.  float16 takes bfloat16's choices (the same
// kernels for 2-byte scalars, not measured separately); float64 (not
// measured; its 512-thread kernels spill) keeps the lanes' epilogue and 256.
constexpr int64_t kAutoOption = -1;  // plan_lstm_auto: the option is auto

// persistent_cta_epilogue auto: on for float32 and 2-byte scalars (the FMA
// forward only; plan_lstm_auto drops it where it costs staged rows).
inline bool auto_cta_epilogue(int64_t elem) { return elem == 4 || elem == 2; }

// Forward warp tasks per CTA of a plan (the forward kernel's (unit, group of
// kFwdTaskRows rows) tasks of one batch chunk).
// `units`: hidden units per task (1, or 2 for the two-unit tasks).
inline int64_t fwd_tasks_per_cta(const Plan& p, int64_t units = 1) {
  return ceil_div(p.units_per_cta, units) * ceil_div(p.batch_chunk, kFwdTaskRows);
}

// persistent_threads auto for a plan made with kThreads: kThreadsWide for the
// backward of float32 and 2-byte scalars, and for the float32 forward with at
// least one task per warp of the wide CTA; kThreads otherwise, and where the
// tensor-core products may apply (`mma`: they run with kThreads only).
// `units`: hidden units per forward task (2: the two-unit tasks, which count
// half as many tasks).
inline int64_t auto_threads(const Plan& p, int64_t elem, bool mma, int64_t units = 1) {
  if (mma || !p.fits) return kThreads;
  if (p.backward) return elem == 4 || elem == 2 ? kThreadsWide : kThreads;
  return elem == 4 && fwd_tasks_per_cta(p, units) >= kThreadsWide / 32 ? kThreadsWide
                                                                        : kThreads;
}

// Whether a forward plan can run the two-unit tasks: the CTA-wide epilogue,
// no tensor cores, and kThreads, or kThreadsWide in float32 (its 512-thread
// kernel keeps the k loop free of spills; the 2-byte and float64 ones do not).
inline bool fwd_pairs_fit(const Plan& p, int64_t elem) {
  return !p.backward && p.fits && p.cta_epilogue && !p.mma.on() &&
         (p.threads == kThreads || (p.threads == kThreadsWide && elem == 4));
}

// Whether a forward plan can keep its weights in registers (kFwdRegs): see
// there.  `elem`, `acc`: the scalar's and the accumulator's sizes (float32:
// 4 and 4).
inline bool fwd_regs_fit(const Plan& p, int64_t elem, int64_t acc) {
  return !p.backward && p.fits && p.cta_epilogue && !p.mma.on() && elem == 4 && acc == 4 &&
         p.threads == kThreads && p.H % 4 == 0 && p.K <= 4 * 32 * kRegChunks &&
         4 * p.units_per_cta <= (kThreads / 32) * kRegRows;
}

// plan_lstm with the options resolved: `cta_epilogue` is kAutoOption, 0
// (off) or 1 (on); `threads` kAutoOption, kThreads or kThreadsWide;
// `fwd_task_units` 1 (also for auto), 2 (forward only, where
// fwd_pairs_fit; else 1) or kFwdRegs (forward only, where fwd_regs_fit
// on the kThreads plan, auto threads then kThreads; else as 1, auto threads
// included).  Where
// auto turns the CTA-wide epilogue on but its product area would cost the
// plan its fit or batch rows of its chunk, the plan without it is taken.
// The layout does not depend on the threads, so auto threads re-plans the
// kThreads plan with kThreadsWide where auto_threads picks it.
inline Plan plan_lstm_auto(int64_t H, int64_t I, int64_t L, int64_t B, int64_t elem,
                           int64_t acc, const DeviceLimits& d, bool backward,
                           int64_t max_batch_split, bool mma, bool tf32, int64_t cta_epilogue,
                           int64_t threads, int64_t fwd_task_units = 1) {
  const bool auto_ce = cta_epilogue == kAutoOption;
  const bool ce = !backward && (auto_ce ? auto_cta_epilogue(elem) : cta_epilogue != 0);
  const int64_t t0 = threads == kAutoOption ? kThreads : threads;
  auto make = [&](bool c, int64_t t) {
    return plan_lstm(H, I, L, B, elem, acc, d, backward, max_batch_split, mma, tf32, c, t);
  };
  Plan p = make(ce, t0);
  if (auto_ce && ce && !p.mma.on()) {
    Plan lanes = make(false, t0);
    if (lanes.fits && (!p.fits || p.batch_chunk < lanes.batch_chunk)) p = lanes;
  }
  // Two-unit forward tasks (auto: 1), where fwd_pairs_fit; asked for, auto
  // threads count their (half as many) tasks.
  const bool pairs = !backward && fwd_task_units == 2;
  // Register-resident weights, where they fit the kThreads plan (auto
  // threads then stay at kThreads, their only size); where they do not, the
  // plan goes on as for one-unit tasks, auto threads included.
  if (!backward && fwd_task_units == kFwdRegs && fwd_regs_fit(p, elem, acc)) {
    p.fwd_task_units = kFwdRegs;
    return p;
  }
  if (threads == kAutoOption) {
    // Tensor cores apply to 2-byte scalars, and to float32 as TF32 only.
    const bool mma_may = mma && (elem == 2 || (elem == 4 && tf32));
    if (auto_threads(p, elem, mma_may, pairs ? 2 : 1) == kThreadsWide) {
      Plan wide = make(p.cta_epilogue, kThreadsWide);
      if (wide.fits) p = wide;
    }
  }
  if (pairs && fwd_pairs_fit(p, elem)) p.fwd_task_units = 2;
  return p;
}

// The tier decision for one call.  `option` is get_option(Option::kCudaTier):
// 0 auto, 1 general, 2 persistent.  `supported` is false (with `unsupported`
// saying why) for what the persistent kernel does not implement at all
// (packed sequences, proj_size, dtypes).  Returns true for the persistent
// tier; `error` is set when persistent was forced but cannot run (the caller
// raises it).  `steps` is T + L - 1, `layers` L; `step_launch_set` is whether the option
// cuda_step_launch is set to a non-auto value (auto then keeps the general tier).
struct TierChoice {
  bool persistent = false;
  bool auto_eligible = false;  // what auto would pick with kAutoEnabled
  std::string error;
};

inline TierChoice choose_tier(int64_t option, bool supported, const std::string& unsupported,
                              const Plan& p, int64_t steps, int64_t layers,
                              bool step_launch_set = false) {
  TierChoice c;
  if (option == 1) return c;
  if (option == 2) {
    if (!supported) {
      c.error = unsupported;
    } else if (!p.fits) {
      c.error = "these sizes do not fit the persistent kernel on this device: " + p.why;
    } else {
      c.persistent = true;
    }
    return c;
  }
  c.auto_eligible =
      supported && p.fits && p.auto_ok && steps >= kAutoMinSteps && layers >= kAutoMinLayers &&
      !step_launch_set;
  c.persistent = kAutoEnabled && c.auto_eligible;
  return c;
}

}  // namespace persistent
}  // namespace fusedrnn
