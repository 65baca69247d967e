// CUDA implementation of fusedrnn::gru_forward / gru_backward and
// fusedrnn::rnn_forward / rnn_backward (the general tier): the whole stack in
// one op call, layers one after another, one fused kernel per layer-timestep.
// Same architecture as lstm_cuda.cu; the saved tensors are exactly the CPU
// ops' (csrc/cpu/gru_cpu.cpp, rnn_cpu.cpp), so either backend's backward can
// consume the other's forward.
//
// Rows.  Every per-row tensor is a row space of N rows (SeqLayout in
// rnn_checks.h): padded input (T, B, ·) has step t at rows [t·B, t·B + B);
// packed input (N, ·) with batch_sizes bs has step t at rows
// [off[t], off[t] + bs[t]), row off[t] + b holding sequence b.  The active
// sequences of a step are a prefix of the batch and their previous states are
// the first bs[t] rows of step t-1, so a step is the same kernel on bs[t] rows
// with pointers offset to its rows; no work is done for padding.
//
// Forward, per layer l (input X_l: the op's input for l = 0, the layer
// below's h_t otherwise):
//   1. the input projection of all N rows as ONE GEMM (at::addmm, follows
//      allow_tf32):  GRU  Gx = X_l W_ihᵀ + b_ih         (N, 3H)  — b_hh is NOT
//                         folded in: b_hn sits inside r·(W_hn h + b_hn);
//                    RNN  Gx = X_l W_ihᵀ + b_ih + b_hh  (N, H).
//   2. for t = 0..T-1 ONE kernel (gru_fwd_step_kernel / rnn_fwd_step_kernel):
//      a shared-memory tiled product h_{t-1} · W_hhᵀ in which every CTA owns
//      all gates (GRU: r, z, n) of a tile of hidden units, so the epilogue
//      (gru_cell_forward / rnn_cell_forward of cell_math.h) is local to the
//      thread that holds the accumulators.  It writes h_t, (train, GRU) the
//      saved row [r | z | n | gh_n] (gh_n = W_hn h_{t-1} + b_hn), and the
//      final state hy of the sequences whose last step is t.
// Backward, per layer from the top down, t = T-1..0, ONE kernel per step:
//   GRU  dh_t = dy_t + z_{t+1}·dh_{t+1} + dGh_{t+1} · W_hh   (carry + product)
//        then gru_cell_backward gives dGx_t and dGh_t (equal except in the n
//        block: dGh_n = r·dGx_n) and the next carry z_t·dh_t;
//   RNN  dpre_t = act'(h_t) · (dy_t + dpre_{t+1} · W_hh).
//   A sequence b whose last step is t (b >= bs[t+1], bs[T] = 0) gets no
//   recurrent term and no carry; grad_hy[l, b] is added to its dh instead.
//   Afterwards dW_ih, dW_hh, db_ih, db_hh and dX are large GEMMs / reductions
//   over all N rows (as csrc/cpu/stack_common.h's layer_param_grads), with
//   h_{t-1}'s rows gathered for packed input.
//
// Precision: every kernel accumulates in acc_type (float, or double for
// double).  The recurrent products are full FMA in acc_type (never TF32); the
// large GEMMs follow torch.backends.cuda.matmul.allow_tf32.  For half and
// bfloat16 the GRU's carry z·dh is kept in float between backward steps.
//
// Determinism: no atomics; each output element of a step kernel is produced
// by one thread in a fixed order, and the GEMMs / reductions / index_select
// afterwards are deterministic on one stream.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>
#include <type_traits>
#include <vector>

#include "cell_math.h"
#include "rnn_checks.h"
#include "cuda/capture_check.h"

namespace fusedrnn {
namespace {

using at::Tensor;

// Depth of one K slice of the tiled products.
constexpr int kBK = 32;

// Resident CTAs per SM the forward kernels are compiled for (see lstm_cuda.cu).
template <typename scalar_t>
constexpr int kMinBlocks = std::is_same<scalar_t, double>::value ? 1 : 2;

// A CTA tile: BM batch rows x BN hidden units, TM rows per thread, NT threads.
template <int BM_, int BN_, int TM_>
struct Tile {
  static constexpr int BM = BM_, BN = BN_, TM = TM_;
  static constexpr int NT = BN * (BM / TM);
  static_assert(BM % TM == 0, "BM must be a multiple of TM");
};

// ------------------------------------------------------- tiled products --
//
// Forward product of one CTA: for the thread (tx, ty) = (tid % BN, tid / BN)
//   acc[q][m] = Σ_k h_prev[b0 + ty·TM + m, k] · w_hh[q·H + j0 + tx, k]
// for every gate block q < NG and m < TM; rows >= B and units >= H read as
// zero.  h_prev (B, H) and w_hh (NG·H, H) are row-major.  Per K slice the CTA
// stages h_prev[b0:b0+BM, k0:k0+kBK] as As[k][b] and the NG·BN weight rows as
// Ws[q][k][j] (both padded by one column so the transposing stores are free
// of bank conflicts; the inner-loop reads are broadcasts or consecutive
// words); the next slice is prefetched into registers meanwhile.  Staging
// map: thread `tid` loads column kk = tid % kBK of a slice for rows
// rr + r·RS (rr = tid / kBK, RS = NT / kBK); weight row rr + r·RS of the
// NG·BN staged rows is gate (r·RS) / BN, unit rr + (r·RS) % BN (RS | BN).
template <typename scalar_t, int NG, int BM, int BN, int TM>
__device__ __forceinline__ void fwd_product(const scalar_t* __restrict__ h_prev,
                                            const scalar_t* __restrict__ w_hh, int64_t B,
                                            int64_t H, int64_t b0, int64_t j0,
                                            typename acc_type<scalar_t>::type (&acc)[NG][TM]) {
  using acc_t = typename acc_type<scalar_t>::type;
  constexpr int NT = BN * (BM / TM);
  constexpr int A_LOADS = BM * kBK / NT;
  constexpr int W_LOADS = NG * BN * kBK / NT;
  constexpr int RS = NT / kBK;
  static_assert((BM * kBK) % NT == 0 && (NG * BN * kBK) % NT == 0 && A_LOADS >= 1,
                "tile loads must divide evenly among the threads");
  static_assert(NT % kBK == 0 && BN % RS == 0, "staging map needs kBK | NT and NT/kBK | BN");

  __shared__ acc_t As[kBK][BM + 1];
  __shared__ acc_t Ws[NG][kBK][BN + 1];

  const int tid = threadIdx.x;
  const int tx = tid % BN;
  const int ty = tid / BN;
  const int kk = tid % kBK;
  const int rr = tid / kBK;

#pragma unroll
  for (int q = 0; q < NG; ++q)
#pragma unroll
    for (int m = 0; m < TM; ++m) acc[q][m] = acc_t(0);

  acc_t a_reg[A_LOADS];
  acc_t w_reg[W_LOADS];
  const scalar_t* a_base = h_prev + (b0 + rr) * H + kk;
  const scalar_t* w_base = w_hh + (j0 + rr) * H + kk;

  auto load = [&](int64_t k0) {
    const bool k_ok = k0 + kk < H;
#pragma unroll
    for (int r = 0; r < A_LOADS; ++r) {
      const bool ok = k_ok && b0 + rr + r * RS < B;
      a_reg[r] = ok ? static_cast<acc_t>(a_base[static_cast<int64_t>(r * RS) * H + k0]) : acc_t(0);
    }
#pragma unroll
    for (int r = 0; r < W_LOADS; ++r) {
      const int q = (r * RS) / BN, c = (r * RS) % BN;
      const bool ok = k_ok && j0 + rr + c < H;
      w_reg[r] = ok ? static_cast<acc_t>(w_base[(q * H + c) * H + k0]) : acc_t(0);
    }
  };
  auto store = [&]() {
#pragma unroll
    for (int r = 0; r < A_LOADS; ++r) As[kk][rr + r * RS] = a_reg[r];
#pragma unroll
    for (int r = 0; r < W_LOADS; ++r) Ws[(r * RS) / BN][kk][rr + (r * RS) % BN] = w_reg[r];
  };

  const int64_t num_k = (H + kBK - 1) / kBK;
  if (num_k > 0) {
    load(0);
    store();
    __syncthreads();
  }
  for (int64_t kt = 0; kt < num_k; ++kt) {
    const bool more = kt + 1 < num_k;
    if (more) load((kt + 1) * kBK);
#pragma unroll
    for (int k = 0; k < kBK; ++k) {
      acc_t a[TM];
#pragma unroll
      for (int m = 0; m < TM; ++m) a[m] = As[k][ty * TM + m];
#pragma unroll
      for (int q = 0; q < NG; ++q) {
        const acc_t w = Ws[q][k][tx];
#pragma unroll
        for (int m = 0; m < TM; ++m) acc[q][m] += w * a[m];
      }
    }
    __syncthreads();
    if (more) {
      store();
      __syncthreads();
    }
  }
}

// Backward product of one CTA: for the thread (tx, ty)
//   acc[m] = Σ_{k<K} A[b0 + ty·TM + m, k] · W[k, j0 + tx]
// A (a_rows, K) and W (K, H) row-major; rows >= a_rows and units >= H read as
// zero.  A == nullptr or a_rows <= b0 (no row of this CTA has a recurrent
// term; uniform over the CTA) skips the product: acc = 0.
template <typename scalar_t, int BM, int BN, int TM>
__device__ __forceinline__ void bwd_product(const scalar_t* __restrict__ A, int64_t a_rows,
                                            int64_t K, const scalar_t* __restrict__ W,
                                            int64_t H, int64_t b0, int64_t j0,
                                            typename acc_type<scalar_t>::type (&acc)[TM]) {
  using acc_t = typename acc_type<scalar_t>::type;
  constexpr int NT = BN * (BM / TM);
  constexpr int A_LOADS = BM * kBK / NT;
  constexpr int W_LOADS = kBK * BN / NT;
  static_assert((BM * kBK) % NT == 0 && (kBK * BN) % NT == 0 && A_LOADS >= 1 && W_LOADS >= 1,
                "tile loads must divide evenly among the threads");

  __shared__ acc_t As[kBK][BM + 1];
  __shared__ acc_t Ws[kBK][BN];

  const int tid = threadIdx.x;
  const int tx = tid % BN;
  const int ty = tid / BN;

#pragma unroll
  for (int m = 0; m < TM; ++m) acc[m] = acc_t(0);

  acc_t a_reg[A_LOADS];
  acc_t w_reg[W_LOADS];

  auto load = [&](int64_t k0) {
#pragma unroll
    for (int r = 0; r < A_LOADS; ++r) {
      const int idx = tid + r * NT;
      const int k = idx % kBK, b = idx / kBK;
      const int64_t gb = b0 + b, gk = k0 + k;
      a_reg[r] = (gb < a_rows && gk < K) ? static_cast<acc_t>(A[gb * K + gk]) : acc_t(0);
    }
#pragma unroll
    for (int r = 0; r < W_LOADS; ++r) {
      const int idx = tid + r * NT;
      const int j = idx % BN, k = idx / BN;
      const int64_t gj = j0 + j, gk = k0 + k;
      w_reg[r] = (gj < H && gk < K) ? static_cast<acc_t>(W[gk * H + gj]) : acc_t(0);
    }
  };
  auto store = [&]() {
#pragma unroll
    for (int r = 0; r < A_LOADS; ++r) {
      const int idx = tid + r * NT;
      As[idx % kBK][idx / kBK] = a_reg[r];
    }
#pragma unroll
    for (int r = 0; r < W_LOADS; ++r) {
      const int idx = tid + r * NT;
      Ws[idx / BN][idx % BN] = w_reg[r];
    }
  };

  const int64_t num_k = (A == nullptr || a_rows <= b0) ? 0 : (K + kBK - 1) / kBK;
  if (num_k > 0) {
    load(0);
    store();
    __syncthreads();
  }
  for (int64_t kt = 0; kt < num_k; ++kt) {
    const bool more = kt + 1 < num_k;
    if (more) load((kt + 1) * kBK);
#pragma unroll
    for (int k = 0; k < kBK; ++k) {
      const acc_t w = Ws[k][tx];
#pragma unroll
      for (int m = 0; m < TM; ++m) acc[m] += w * As[k][ty * TM + m];
    }
    __syncthreads();
    if (more) {
      store();
      __syncthreads();
    }
  }
}

// ----------------------------------------------------------- GRU kernels --
//
// Forward step (B = the step's rows):
//   h_prev (B, H)  h_{t-1} (rows of step t-1, or hx[l]); must not alias h_out
//   w_hh (3H, H); b_hh (3H) or nullptr; gx (B, 3H) this step's Gx (with b_ih)
//   h_out (B, H)   h_t
//   saved_out (B, 4H)  [r | z | n | gh_n], or nullptr (inference)
//   hy_out (B', H) rows b >= hy_from also go to hy_out[b] (the sequences whose
//                  last step this is; hy_from >= B: none)
template <typename scalar_t, int BM, int BN, int TM>
__global__ void __launch_bounds__(BN * (BM / TM), kMinBlocks<scalar_t>)
gru_fwd_step_kernel(const scalar_t* __restrict__ h_prev, const scalar_t* __restrict__ w_hh,
                    const scalar_t* __restrict__ b_hh, const scalar_t* __restrict__ gx,
                    scalar_t* __restrict__ h_out, scalar_t* __restrict__ saved_out,
                    scalar_t* __restrict__ hy_out, int64_t hy_from, int64_t B, int64_t H) {
  using acc_t = typename acc_type<scalar_t>::type;
  const int tx = threadIdx.x % BN, ty = threadIdx.x / BN;
  const int64_t b0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int64_t j0 = static_cast<int64_t>(blockIdx.y) * BN;
  acc_t acc[3][TM];
  fwd_product<scalar_t, 3, BM, BN, TM>(h_prev, w_hh, B, H, b0, j0, acc);

  const int64_t j = j0 + tx;
  if (j >= H) return;
  const int64_t G3 = 3 * H, G4 = 4 * H;
  const acc_t bhr = b_hh != nullptr ? static_cast<acc_t>(b_hh[j]) : acc_t(0);
  const acc_t bhz = b_hh != nullptr ? static_cast<acc_t>(b_hh[H + j]) : acc_t(0);
  const acc_t bhn = b_hh != nullptr ? static_cast<acc_t>(b_hh[2 * H + j]) : acc_t(0);
#pragma unroll
  for (int m = 0; m < TM; ++m) {
    const int64_t b = b0 + ty * TM + m;
    if (b >= B) continue;
    const int64_t bj = b * H + j;
    const scalar_t* g = gx + b * G3 + j;
    const acc_t hn = acc[2][m] + bhn;
    const GruFwdOut<acc_t> r = gru_cell_forward<acc_t>(
        static_cast<acc_t>(g[0]), static_cast<acc_t>(g[H]), static_cast<acc_t>(g[2 * H]),
        acc[0][m] + bhr, acc[1][m] + bhz, hn, static_cast<acc_t>(h_prev[bj]));
    const scalar_t h = static_cast<scalar_t>(r.h);
    h_out[bj] = h;
    if (saved_out != nullptr) {
      scalar_t* s = saved_out + b * G4 + j;
      s[0] = static_cast<scalar_t>(r.r);
      s[H] = static_cast<scalar_t>(r.z);
      s[2 * H] = static_cast<scalar_t>(r.n);
      s[3 * H] = static_cast<scalar_t>(hn);
    }
    if (b >= hy_from) hy_out[bj] = h;
  }
}

// Backward step (B = the step's rows, nrec = bs[t+1], 0 at t = T-1):
//   dG_next (nrec, 3H)  dGh_{t+1}, or nullptr when nrec = 0
//   w_hh (3H, H);  dy (B, H) gradient from above;  dhy (B', H) grad_hy[l]
//   saved (B, 4H) [r | z | n | gh_n] of step t;  h_prev (B, H) h_{t-1}
//   carry (B', H) acc_t: on entry z_{t+1}·dh_{t+1} for rows < nrec; on exit
//                 z_t·dh_t for rows < B (in place, one thread per element)
//   dgx_out, dgh_out (B, 3H)  dGx_t, dGh_t; must not alias dG_next
// Row b < nrec: dh = dy + carry + dG_next·W_hh; row b >= nrec (its sequence
// ends at t): dh = dy + dhy.
template <typename scalar_t, int BM, int BN, int TM>
__global__ void __launch_bounds__(BN * (BM / TM))
gru_bwd_step_kernel(const scalar_t* __restrict__ dG_next, const scalar_t* __restrict__ w_hh,
                    const scalar_t* __restrict__ dy, const scalar_t* __restrict__ dhy,
                    const scalar_t* __restrict__ saved, const scalar_t* __restrict__ h_prev,
                    typename acc_type<scalar_t>::type* __restrict__ carry,
                    scalar_t* __restrict__ dgx_out, scalar_t* __restrict__ dgh_out,
                    int64_t nrec, int64_t B, int64_t H) {
  using acc_t = typename acc_type<scalar_t>::type;
  const int tx = threadIdx.x % BN, ty = threadIdx.x / BN;
  const int64_t b0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int64_t j0 = static_cast<int64_t>(blockIdx.y) * BN;
  const int64_t G3 = 3 * H, G4 = 4 * H;
  acc_t acc[TM];
  bwd_product<scalar_t, BM, BN, TM>(dG_next, nrec, G3, w_hh, H, b0, j0, acc);

  const int64_t j = j0 + tx;
  if (j >= H) return;
#pragma unroll
  for (int m = 0; m < TM; ++m) {
    const int64_t b = b0 + ty * TM + m;
    if (b >= B) continue;
    const int64_t bj = b * H + j;
    acc_t dh = static_cast<acc_t>(dy[bj]);
    if (b < nrec) {
      dh += carry[bj] + acc[m];
    } else {
      dh += static_cast<acc_t>(dhy[bj]);
    }
    const scalar_t* s = saved + b * G4 + j;
    const GruBwdOut<acc_t> r = gru_cell_backward<acc_t>(
        dh, static_cast<acc_t>(s[0]), static_cast<acc_t>(s[H]), static_cast<acc_t>(s[2 * H]),
        static_cast<acc_t>(s[3 * H]), static_cast<acc_t>(h_prev[bj]));
    scalar_t* dx = dgx_out + b * G3 + j;
    dx[0] = static_cast<scalar_t>(r.dr);
    dx[H] = static_cast<scalar_t>(r.dz);
    dx[2 * H] = static_cast<scalar_t>(r.dxn);
    scalar_t* dr = dgh_out + b * G3 + j;
    dr[0] = static_cast<scalar_t>(r.dr);
    dr[H] = static_cast<scalar_t>(r.dz);
    dr[2 * H] = static_cast<scalar_t>(r.dhn);
    carry[bj] = r.dh_prev;
  }
}

// ----------------------------------------------------------- RNN kernels --
//
// Forward step: h_out = act(gx + h_prev · W_hhᵀ), gx (B, H) with both biases;
// hy_out / hy_from as in gru_fwd_step_kernel.
template <typename scalar_t, int BM, int BN, int TM>
__global__ void __launch_bounds__(BN * (BM / TM), kMinBlocks<scalar_t>)
rnn_fwd_step_kernel(const scalar_t* __restrict__ h_prev, const scalar_t* __restrict__ w_hh,
                    const scalar_t* __restrict__ gx, scalar_t* __restrict__ h_out,
                    scalar_t* __restrict__ hy_out, int64_t hy_from, bool relu, int64_t B,
                    int64_t H) {
  using acc_t = typename acc_type<scalar_t>::type;
  const int tx = threadIdx.x % BN, ty = threadIdx.x / BN;
  const int64_t b0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int64_t j0 = static_cast<int64_t>(blockIdx.y) * BN;
  acc_t acc[1][TM];
  fwd_product<scalar_t, 1, BM, BN, TM>(h_prev, w_hh, B, H, b0, j0, acc);

  const int64_t j = j0 + tx;
  if (j >= H) return;
#pragma unroll
  for (int m = 0; m < TM; ++m) {
    const int64_t b = b0 + ty * TM + m;
    if (b >= B) continue;
    const int64_t bj = b * H + j;
    const scalar_t h =
        static_cast<scalar_t>(rnn_cell_forward<acc_t>(acc[0][m] + static_cast<acc_t>(gx[bj]), relu));
    h_out[bj] = h;
    if (b >= hy_from) hy_out[bj] = h;
  }
}

// Backward step: dG_out = act'(h) · (dy + dG_next · W_hh) for rows < nrec,
// act'(h) · (dy + dhy) for the rows whose sequence ends here.
//   dG_next (nrec, H) or nullptr; w_hh (H, H); dy (B, H); dhy (B', H);
//   h (B, H) h_t;  dG_out (B, H), must not alias dG_next.
template <typename scalar_t, int BM, int BN, int TM>
__global__ void __launch_bounds__(BN * (BM / TM))
rnn_bwd_step_kernel(const scalar_t* __restrict__ dG_next, const scalar_t* __restrict__ w_hh,
                    const scalar_t* __restrict__ dy, const scalar_t* __restrict__ dhy,
                    const scalar_t* __restrict__ h, scalar_t* __restrict__ dG_out, bool relu,
                    int64_t nrec, int64_t B, int64_t H) {
  using acc_t = typename acc_type<scalar_t>::type;
  const int tx = threadIdx.x % BN, ty = threadIdx.x / BN;
  const int64_t b0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int64_t j0 = static_cast<int64_t>(blockIdx.y) * BN;
  acc_t acc[TM];
  bwd_product<scalar_t, BM, BN, TM>(dG_next, nrec, H, w_hh, H, b0, j0, acc);

  const int64_t j = j0 + tx;
  if (j >= H) return;
#pragma unroll
  for (int m = 0; m < TM; ++m) {
    const int64_t b = b0 + ty * TM + m;
    if (b >= B) continue;
    const int64_t bj = b * H + j;
    acc_t dh = static_cast<acc_t>(dy[bj]);
    dh += b < nrec ? acc[m] : static_cast<acc_t>(dhy[bj]);
    dG_out[bj] = static_cast<scalar_t>(rnn_cell_backward<acc_t>(dh, static_cast<acc_t>(h[bj]), relu));
  }
}

// ------------------------------------------------------------ launching --
//
// Tile shapes as lstm_cuda.cu's: BM = 8 rows (TM = 1) for <= 16 rows, else
// BM = 32 (TM = 4); BN = 32 units when that already gives every SM a CTA,
// else 16 (the small problems are latency bound: more, smaller CTAs win).
// Chosen per step, since packed steps shrink.
struct StepConfig {
  int bm;  // 8 or 32
  int bn;  // 16 or 32
};

StepConfig choose_config(int64_t rows, int64_t H, int64_t sms) {
  StepConfig cfg;
  cfg.bm = rows <= 16 ? 8 : 32;
  const int64_t ctas32 = ((rows + cfg.bm - 1) / cfg.bm) * ((H + 31) / 32);
  cfg.bn = ctas32 >= sms ? 32 : 16;
  return cfg;
}

// Calls f(Tile<...>{}) for the tile of cfg.
template <typename F>
void with_tile(const StepConfig& cfg, F&& f) {
  if (cfg.bm == 8) {
    if (cfg.bn == 16) {
      f(Tile<8, 16, 1>{});
    } else {
      f(Tile<8, 32, 1>{});
    }
  } else {
    if (cfg.bn == 16) {
      f(Tile<32, 16, 4>{});
    } else {
      f(Tile<32, 32, 4>{});
    }
  }
}

// The grid of one step over `rows` rows; the op checks H against the grid's
// y limit once per call (check_grid), rows fit the x limit.
template <typename TL>
dim3 step_grid(int64_t rows, int64_t H) {
  return dim3(static_cast<unsigned>((rows + TL::BM - 1) / TL::BM),
              static_cast<unsigned>((H + TL::BN - 1) / TL::BN));
}

void check_grid(const char* op, int64_t B, int64_t H) {
  // The smallest tiles (BM = 8, BN = 16) give the largest grid.
  TORCH_CHECK((H + 15) / 16 <= 65535 && (B + 7) / 8 <= 2147483647LL, op,
              " (CUDA): hidden size ", H, " and batch size ", B,
              " exceed the grid limits of the step kernels");
}

int64_t sm_count() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

// ------------------------------------------------------------- op helpers --

void check_cuda_args(const Tensor& input, const char* op) {
  TORCH_CHECK(input.is_cuda(), "fusedrnn.", op,
              " (CUDA): expected input on a CUDA device, but it is on ", input.device(),
              "; move every tensor of the call to the same CUDA device");
}

at::ScalarType acc_scalar_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

std::vector<Tensor> contiguous_all(at::TensorList ts) {
  std::vector<Tensor> v;
  v.reserve(ts.size());
  for (const auto& t : ts) v.push_back(t.contiguous());
  return v;
}

// Where layer l writes its h_t rows: output for the last layer, hiddens[l] in
// training, else one scratch buffer shared by the inner layers (each layer's
// input projection reads all of its input before the steps overwrite it).
Tensor layer_out(int64_t l, int64_t L, bool train, const Tensor& output, const Tensor& hiddens,
                 Tensor& scratch) {
  if (l == L - 1) return output;
  if (train) return hiddens[l];
  if (!scratch.defined()) scratch = at::empty_like(output);
  return scratch;
}

// For packed input: the index of h_{t-1}'s row in the layer output for every
// row of the steps t >= 1, i.e. off[t-1] + b for row off[t] + b (N - B
// entries, on `device`).  Padded input needs none: those rows are the first
// N - B rows of the output.
Tensor prev_row_index(const SeqLayout& seq, const at::Device& device) {
  const int64_t n = seq.N - seq.B;
  Tensor idx = at::empty({n}, at::TensorOptions().dtype(at::kLong));
  int64_t* p = idx.data_ptr<int64_t>();
  for (int64_t t = 1; t < seq.T; ++t)
    for (int64_t b = 0; b < seq.bs[t]; ++b) *p++ = seq.off[t - 1] + b;
  return idx.to(device);
}

// A layer's weight, bias and input gradients once its reverse recurrence has
// produced every row's pre-activation gradients (stack_common.h's
// layer_param_grads over the row space):
//   dgx (N, G)  gradients of x W_ihᵀ + b_ih;  dgh (N, G) of h W_hhᵀ + b_hh
//               (the same tensor for the RNN);  x2 (N, I_l) the layer input;
//   h0 (B, H);  out2 (N, H) the layer's h_t rows;  prev_idx: see prev_row_index
//   (undefined for padded input).
// Writes grad_w[base .. base+3]; returns dX (N, I_l).
Tensor layer_param_grads(const Tensor& dgx, const Tensor& dgh, const Tensor& x2,
                         const Tensor& h0, const Tensor& out2, const Tensor& w_ih,
                         const Tensor& prev_idx, bool has_biases, std::vector<Tensor>& grad_w,
                         int64_t base) {
  const int64_t N = dgx.size(0), B = h0.size(0);
  grad_w[base] = at::mm(dgx.t(), x2);
  Tensor dw_hh = at::mm(dgh.narrow(0, 0, B).t(), h0);
  if (N > B) {
    const Tensor prev =
        prev_idx.defined() ? out2.index_select(0, prev_idx) : out2.narrow(0, 0, N - B);
    dw_hh.addmm_(dgh.narrow(0, B, N - B).t(), prev);
  }
  grad_w[base + 1] = dw_hh;
  if (has_biases) {
    grad_w[base + 2] = dgx.sum(0);
    grad_w[base + 3] = dgh.is_same(dgx) ? grad_w[base + 2].clone() : dgh.sum(0);
  }
  return at::mm(dgx, w_ih);
}

// The backward of an empty recurrence (no rows or H = 0): hy = hx, so grad_hy
// passes straight to grad_hx; nothing else receives a gradient.
std::tuple<Tensor, Tensor, std::vector<Tensor>> empty_backward(const Tensor& input,
                                                               const Tensor& grad_hy,
                                                               at::TensorList weights) {
  const auto opts = input.options();
  std::vector<Tensor> grad_w(weights.size());
  for (size_t k = 0; k < weights.size(); ++k) grad_w[k] = at::zeros(weights[k].sizes(), opts);
  return {at::zeros(input.sizes(), opts), grad_hy.clone(at::MemoryFormat::Contiguous), grad_w};
}

// ==================================================================== GRU ==

constexpr const char* kGru = "fusedrnn.gru";
constexpr const char* kRnn = "fusedrnn.rnn";

std::tuple<Tensor, Tensor, Tensor, Tensor> gru_forward_cuda(
    const Tensor& input_, const Tensor& hx_, at::TensorList weights_, bool has_biases,
    bool train, const std::optional<Tensor>& batch_sizes) {
  // The shared checks compare every tensor's device and dtype with input's,
  // so together with this one all tensors are on input's CUDA device.
  check_cuda_args(input_, "gru_forward");
  const RnnSizes s = check_stack_args(kGru, 3, input_, hx_, {}, weights_, has_biases, batch_sizes);
  const c10::cuda::CUDAGuard guard(input_.device());
  check_packed_not_capturing(s.seq, "gru_forward");
  const SeqLayout& seq = s.seq;
  const int64_t T = s.T, B = s.B, H = s.H, L = s.L, N = seq.N, G3 = 3 * H, G4 = 4 * H;

  const auto opts = input_.options();
  Tensor output = at::empty(s.rows_shape(H), opts);
  Tensor hy = at::empty({L, B, H}, opts);
  Tensor saved = train ? at::empty(s.rows_shape(G4, L), opts) : at::empty({0}, opts);
  Tensor hiddens = train ? at::empty(s.rows_shape(H, L - 1), opts) : at::empty({0}, opts);
  if (N == 0 || H == 0) {
    // Nothing to run (and no zero-size grids to launch): hy = hx.
    hy.copy_(hx_);
    return {output, hy, saved, hiddens};
  }
  check_grid(kGru, B, H);

  const Tensor input = input_.contiguous();
  const Tensor hx = hx_.contiguous();
  const std::vector<Tensor> w = contiguous_all(weights_);
  const int64_t sms = sm_count();
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  Tensor gx = at::empty({N, G3}, opts);  // one layer's input projection
  Tensor scratch;
  Tensor x = input;
  for (int64_t l = 0; l < L; ++l) {
    const Tensor* wl = &w[l * s.per_layer];
    const Tensor x2 = x.reshape({N, x.size(-1)});
    if (has_biases) {
      at::addmm_out(gx, wl[2], x2, wl[0].t());
    } else {
      at::mm_out(gx, x2, wl[0].t());
    }
    Tensor out = layer_out(l, L, train, output, hiddens, scratch);

    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                    "fusedrnn_gru_forward_cuda", [&] {
      const scalar_t* w_hh = wl[1].data_ptr<scalar_t>();
      const scalar_t* b_hh = has_biases ? wl[3].data_ptr<scalar_t>() : nullptr;
      const scalar_t* gx_p = gx.data_ptr<scalar_t>();
      const scalar_t* h0 = hx.data_ptr<scalar_t>() + l * B * H;
      scalar_t* out_p = out.data_ptr<scalar_t>();
      scalar_t* saved_p = train ? saved.data_ptr<scalar_t>() + l * N * G4 : nullptr;
      scalar_t* hy_p = hy.data_ptr<scalar_t>() + l * B * H;
      for (int64_t t = 0; t < T; ++t) {
        const int64_t rows = seq.rows(t), off = seq.offset(t);
        const scalar_t* h_prev = t == 0 ? h0 : out_p + seq.offset(t - 1) * H;
        scalar_t* sv = saved_p != nullptr ? saved_p + off * G4 : nullptr;
        const int64_t hy_from = seq.ended_begin(t);
        with_tile(choose_config(rows, H, sms), [&](auto tile) {
          using TL = decltype(tile);
          gru_fwd_step_kernel<scalar_t, TL::BM, TL::BN, TL::TM><<<step_grid<TL>(rows, H), TL::NT, 0, stream>>>(
              h_prev, w_hh, b_hh, gx_p + off * G3, out_p + off * H, sv, hy_p, hy_from, rows, H);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      }
    });
    x = out;
  }
  return {output, hy, saved, hiddens};
}

std::tuple<Tensor, Tensor, std::vector<Tensor>> gru_backward_cuda(
    const Tensor& grad_output_, const Tensor& grad_hy_, const Tensor& input_, const Tensor& hx_,
    at::TensorList weights_, bool has_biases, const Tensor& output_, const Tensor& saved_,
    const Tensor& hiddens_, const std::optional<Tensor>& batch_sizes) {
  check_cuda_args(input_, "gru_backward");
  const RnnSizes s = check_stack_args(kGru, 3, input_, hx_, {}, weights_, has_biases, batch_sizes);
  check_gru_backward_args(s, input_, grad_output_, grad_hy_, output_, saved_, hiddens_);
  const c10::cuda::CUDAGuard guard(input_.device());
  check_packed_not_capturing(s.seq, "gru_backward");
  const SeqLayout& seq = s.seq;
  const int64_t T = s.T, B = s.B, H = s.H, L = s.L, N = seq.N, G3 = 3 * H, G4 = 4 * H;
  if (N == 0 || H == 0) return empty_backward(input_, grad_hy_, weights_);
  check_grid(kGru, B, H);

  const Tensor input = input_.contiguous(), hx = hx_.contiguous();
  const Tensor output = output_.contiguous(), saved = saved_.contiguous();
  const Tensor hiddens = hiddens_.contiguous(), grad_hy = grad_hy_.contiguous();
  const std::vector<Tensor> w = contiguous_all(weights_);
  const int64_t sms = sm_count();
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const auto opts = input.options();

  const Tensor prev_idx = seq.packed ? prev_row_index(seq, input.device()) : Tensor();
  Tensor grad_hx = at::empty({L, B, H}, opts);
  std::vector<Tensor> grad_w(w.size());
  Tensor dgx = at::empty({N, G3}, opts), dgh = at::empty({N, G3}, opts);
  Tensor carry = at::empty({B, H}, opts.dtype(acc_scalar_type(input.scalar_type())));
  Tensor dy = grad_output_.contiguous();  // gradient reaching the layer's h_t rows
  Tensor grad_input;
  for (int64_t l = L - 1; l >= 0; --l) {
    const Tensor* wl = &w[l * s.per_layer];
    const Tensor x = l == 0 ? input : hiddens[l - 1];     // layer input rows
    const Tensor out = l == L - 1 ? output : hiddens[l];  // layer output h_t rows

    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                    "fusedrnn_gru_backward_cuda", [&] {
      using acc_t = typename acc_type<scalar_t>::type;
      const scalar_t* w_hh = wl[1].data_ptr<scalar_t>();
      const scalar_t* dy_p = dy.data_ptr<scalar_t>();
      const scalar_t* dhy = grad_hy.data_ptr<scalar_t>() + l * B * H;
      const scalar_t* saved_p = saved.data_ptr<scalar_t>() + l * N * G4;
      const scalar_t* out_p = out.data_ptr<scalar_t>();
      const scalar_t* h0 = hx.data_ptr<scalar_t>() + l * B * H;
      scalar_t* dgx_p = dgx.data_ptr<scalar_t>();
      scalar_t* dgh_p = dgh.data_ptr<scalar_t>();
      acc_t* carry_p = carry.data_ptr<acc_t>();
      for (int64_t t = T - 1; t >= 0; --t) {
        const int64_t rows = seq.rows(t), off = seq.offset(t);
        const int64_t nrec = seq.ended_begin(t);  // rows with a step t+1
        const scalar_t* dG_next = nrec > 0 ? dgh_p + seq.offset(t + 1) * G3 : nullptr;
        const scalar_t* h_prev = t == 0 ? h0 : out_p + seq.offset(t - 1) * H;
        with_tile(choose_config(rows, H, sms), [&](auto tile) {
          using TL = decltype(tile);
          gru_bwd_step_kernel<scalar_t, TL::BM, TL::BN, TL::TM><<<step_grid<TL>(rows, H), TL::NT, 0, stream>>>(
              dG_next, w_hh, dy_p + off * H, dhy, saved_p + off * G4, h_prev, carry_p,
              dgx_p + off * G3, dgh_p + off * G3, nrec, rows, H);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      }
    });

    // The gradient reaching h_{-1} = hx[l]: the carry z_0·dh_0 plus the
    // recurrent part dGh_0 · W_hh (step 0 holds all B sequences).
    grad_hx[l].copy_(carry + at::mm(dgh.narrow(0, 0, B), wl[1]));
    // Weight, bias and input gradients: large GEMMs over all rows.  A new dy
    // (mm's result) for the layer below: it does not alias dgx/dgh.
    dy = layer_param_grads(dgx, dgh, x.reshape({N, x.size(-1)}), hx[l], out.reshape({N, H}),
                           wl[0], prev_idx, has_biases, grad_w, l * s.per_layer);
    if (l == 0) grad_input = dy.view(input_.sizes());
  }
  return {grad_input, grad_hx, grad_w};
}

// ==================================================================== RNN ==

std::tuple<Tensor, Tensor, Tensor> rnn_forward_cuda(const Tensor& input_, const Tensor& hx_,
                                                    at::TensorList weights_, bool has_biases,
                                                    bool relu, bool train,
                                                    const std::optional<Tensor>& batch_sizes) {
  check_cuda_args(input_, "rnn_forward");
  const RnnSizes s = check_stack_args(kRnn, 1, input_, hx_, {}, weights_, has_biases, batch_sizes);
  const c10::cuda::CUDAGuard guard(input_.device());
  check_packed_not_capturing(s.seq, "rnn_forward");
  const SeqLayout& seq = s.seq;
  const int64_t T = s.T, B = s.B, H = s.H, L = s.L, N = seq.N;

  const auto opts = input_.options();
  Tensor output = at::empty(s.rows_shape(H), opts);
  Tensor hy = at::empty({L, B, H}, opts);
  Tensor hiddens = train ? at::empty(s.rows_shape(H, L - 1), opts) : at::empty({0}, opts);
  if (N == 0 || H == 0) {
    hy.copy_(hx_);
    return {output, hy, hiddens};
  }
  check_grid(kRnn, B, H);

  const Tensor input = input_.contiguous();
  const Tensor hx = hx_.contiguous();
  const std::vector<Tensor> w = contiguous_all(weights_);
  const int64_t sms = sm_count();
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  Tensor gx = at::empty({N, H}, opts);  // one layer's projection, both biases in
  Tensor scratch;
  Tensor x = input;
  for (int64_t l = 0; l < L; ++l) {
    const Tensor* wl = &w[l * s.per_layer];
    const Tensor x2 = x.reshape({N, x.size(-1)});
    if (has_biases) {
      at::addmm_out(gx, wl[2] + wl[3], x2, wl[0].t());
    } else {
      at::mm_out(gx, x2, wl[0].t());
    }
    Tensor out = layer_out(l, L, train, output, hiddens, scratch);

    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                    "fusedrnn_rnn_forward_cuda", [&] {
      const scalar_t* w_hh = wl[1].data_ptr<scalar_t>();
      const scalar_t* gx_p = gx.data_ptr<scalar_t>();
      const scalar_t* h0 = hx.data_ptr<scalar_t>() + l * B * H;
      scalar_t* out_p = out.data_ptr<scalar_t>();
      scalar_t* hy_p = hy.data_ptr<scalar_t>() + l * B * H;
      for (int64_t t = 0; t < T; ++t) {
        const int64_t rows = seq.rows(t), off = seq.offset(t);
        const scalar_t* h_prev = t == 0 ? h0 : out_p + seq.offset(t - 1) * H;
        const int64_t hy_from = seq.ended_begin(t);
        with_tile(choose_config(rows, H, sms), [&](auto tile) {
          using TL = decltype(tile);
          rnn_fwd_step_kernel<scalar_t, TL::BM, TL::BN, TL::TM><<<step_grid<TL>(rows, H), TL::NT, 0, stream>>>(
              h_prev, w_hh, gx_p + off * H, out_p + off * H, hy_p, hy_from, relu, rows, H);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      }
    });
    x = out;
  }
  return {output, hy, hiddens};
}

std::tuple<Tensor, Tensor, std::vector<Tensor>> rnn_backward_cuda(
    const Tensor& grad_output_, const Tensor& grad_hy_, const Tensor& input_, const Tensor& hx_,
    at::TensorList weights_, bool has_biases, bool relu, const Tensor& output_,
    const Tensor& hiddens_, const std::optional<Tensor>& batch_sizes) {
  check_cuda_args(input_, "rnn_backward");
  const RnnSizes s = check_stack_args(kRnn, 1, input_, hx_, {}, weights_, has_biases, batch_sizes);
  check_rnn_backward_args(s, input_, grad_output_, grad_hy_, output_, hiddens_);
  const c10::cuda::CUDAGuard guard(input_.device());
  check_packed_not_capturing(s.seq, "rnn_backward");
  const SeqLayout& seq = s.seq;
  const int64_t T = s.T, B = s.B, H = s.H, L = s.L, N = seq.N;
  if (N == 0 || H == 0) return empty_backward(input_, grad_hy_, weights_);
  check_grid(kRnn, B, H);

  const Tensor input = input_.contiguous(), hx = hx_.contiguous();
  const Tensor output = output_.contiguous(), hiddens = hiddens_.contiguous();
  const Tensor grad_hy = grad_hy_.contiguous();
  const std::vector<Tensor> w = contiguous_all(weights_);
  const int64_t sms = sm_count();
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const auto opts = input.options();

  const Tensor prev_idx = seq.packed ? prev_row_index(seq, input.device()) : Tensor();
  Tensor grad_hx = at::empty({L, B, H}, opts);
  std::vector<Tensor> grad_w(w.size());
  Tensor dG = at::empty({N, H}, opts);  // one layer's pre-activation gradients
  Tensor dy = grad_output_.contiguous();
  Tensor grad_input;
  for (int64_t l = L - 1; l >= 0; --l) {
    const Tensor* wl = &w[l * s.per_layer];
    const Tensor x = l == 0 ? input : hiddens[l - 1];
    const Tensor out = l == L - 1 ? output : hiddens[l];

    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                    "fusedrnn_rnn_backward_cuda", [&] {
      const scalar_t* w_hh = wl[1].data_ptr<scalar_t>();
      const scalar_t* dy_p = dy.data_ptr<scalar_t>();
      const scalar_t* dhy = grad_hy.data_ptr<scalar_t>() + l * B * H;
      const scalar_t* out_p = out.data_ptr<scalar_t>();
      scalar_t* dG_p = dG.data_ptr<scalar_t>();
      for (int64_t t = T - 1; t >= 0; --t) {
        const int64_t rows = seq.rows(t), off = seq.offset(t);
        const int64_t nrec = seq.ended_begin(t);
        const scalar_t* dG_next = nrec > 0 ? dG_p + seq.offset(t + 1) * H : nullptr;
        with_tile(choose_config(rows, H, sms), [&](auto tile) {
          using TL = decltype(tile);
          rnn_bwd_step_kernel<scalar_t, TL::BM, TL::BN, TL::TM><<<step_grid<TL>(rows, H), TL::NT, 0, stream>>>(
              dG_next, w_hh, dy_p + off * H, dhy, out_p + off * H, dG_p + off * H, relu, nrec,
              rows, H);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      }
    });

    Tensor grad_hx_l = grad_hx[l];
    at::mm_out(grad_hx_l, dG.narrow(0, 0, B), wl[1]);
    dy = layer_param_grads(dG, dG, x.reshape({N, x.size(-1)}), hx[l], out.reshape({N, H}), wl[0],
                           prev_idx, has_biases, grad_w, l * s.per_layer);
    if (l == 0) grad_input = dy.view(input_.sizes());
  }
  return {grad_input, grad_hx, grad_w};
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedrnn, CUDA, m) {
  m.impl("gru_forward", &gru_forward_cuda);
  m.impl("gru_backward", &gru_backward_cuda);
  m.impl("rnn_forward", &rnn_forward_cuda);
  m.impl("rnn_backward", &rnn_backward_cuda);
}

}  // namespace fusedrnn
