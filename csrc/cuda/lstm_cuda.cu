// CUDA implementation of fusedrnn::lstm_forward / lstm_backward (the general
// tier of docs/DESIGN.md): the whole stack in one op call, layers one after
// another, one fused kernel per layer-timestep.
//
// Forward, per layer l (input X_l (T, B, I_l): the op's input for l = 0, the
// layer below's h_t otherwise):
//   1. Gx = X_l · W_ihᵀ + (b_ih + b_hh) for all T·B rows as ONE GEMM (at::addmm,
//      cuBLAS), into a (T, B, 4H) buffer.
//   2. For t = 0..T-1 ONE kernel, lstm_fwd_step_kernel: a shared-memory tiled
//      product h_{t-1} · W_hhᵀ in which every CTA owns all four gates of a tile
//      of hidden units, so the epilogue (Gx_t + product -> lstm_cell_forward)
//      is local to the thread that holds the four accumulators.  It writes h_t,
//      the cell state and (train) the activated gates and c_t.
// Backward, per layer from the top down, t = T-1..0, ONE kernel per step,
// lstm_bwd_step_kernel: dh_t = dy_t (+ grad_hy at t = T-1) + dG_{t+1} · W_hh
// (tiled product over the 4H gate columns) followed by lstm_cell_backward,
// writing dG_t (pre-activation gate gradients) and dc_{t-1}.  After the loop
// the weight, bias and input gradients are single large GEMMs / reductions
// over all timesteps.
//
// Precision: every kernel accumulates in acc_type (float, or double for
// double).  For float32 the custom recurrent kernels compute in full fp32
// FMA (never TF32), whereas the large GEMMs (input projection, dW, dX) go
// through at::addmm / at::mm and therefore follow
// torch.backends.cuda.matmul.allow_tf32.  For half/bfloat16 the cell state of
// the forward recurrence and the dc of the backward recurrence are carried in
// float between steps (the saved `cells` are rounded to the tensor dtype).
//
// Determinism: no atomics anywhere; each output element of the step kernels
// is produced by one thread with a fixed summation order, and the library
// GEMMs/reductions used afterwards are deterministic on one stream, so two
// identical calls give bitwise-identical results.
//
// Launch overhead: the step loop issues T·L small kernels from the host.
// TODO(fusedrnn): capture the step loop of a layer in a CUDA graph (cached by
// shape, with the per-step pointers made graph-stable by using persistent
// workspaces), or use the persistent wavefront tier of DESIGN.md; either
// removes most of the per-step launch cost at small sizes.  Not done here:
// a graph captured and instantiated on every call costs more than the launches
// it replaces, and a correct cache needs pointer-stable buffers.
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
#include "cuda/lstm_persistent.h"
#include "lstm_checks.h"

namespace fusedrnn {
namespace {

using at::Tensor;

// Depth of one K slice of the tiled products (both kernels).
constexpr int kBK = 32;

// Resident CTAs per SM the forward kernel is compiled for: two for float
// accumulation (caps registers so that two 256-thread CTAs fit), one for
// double (whose 4·TM double accumulators and staging registers need more).
template <typename scalar_t>
constexpr int kMinBlocks = std::is_same<scalar_t, double>::value ? 1 : 2;

// --------------------------------------------------------------- forward --
//
// One timestep of one layer.
//   h_prev  (B, H)   h_{t-1}
//   w_hh    (4H, H)  row q*H + j holds gate q of hidden unit j
//   gx      (B, 4H)  input projection of step t, biases included
//   c_state (B, H)   acc_t; c_{t-1} on entry, c_t on exit (in place: every
//                    element is read and written by the same thread only)
//   h_out   (B, H)   h_t; must not alias h_prev
//   gates_out (B, 4H) activated i, f, g, o, or nullptr (inference)
//   cell_out  (B, H)  c_t rounded to scalar_t, or nullptr (inference)
//
// CTA tile: BM batch rows x BN hidden units x all 4 gates; the thread
// (tx, ty), tx in [0, BN), ty in [0, BM/TM), owns unit j0 + tx for batch rows
// b0 + ty*TM + m, m < TM, and keeps 4*TM accumulators.  Per K slice the CTA
// stages h_prev[b0:b0+BM, k0:k0+BK] as As[k][b] and the 4·BN weight rows as
// Ws[q][k][j]; both are padded by one column so the transposing stores are
// free of bank conflicts, and the reads in the inner loop are broadcasts (As)
// or consecutive words (Ws).  The next slice is prefetched into registers
// while the current one is consumed.
template <typename scalar_t, int BM, int BN, int TM>
__global__ void __launch_bounds__(BN * (BM / TM), kMinBlocks<scalar_t>)
lstm_fwd_step_kernel(const scalar_t* __restrict__ h_prev, const scalar_t* __restrict__ w_hh,
                     const scalar_t* __restrict__ gx,
                     typename acc_type<scalar_t>::type* __restrict__ c_state,
                     scalar_t* __restrict__ h_out, scalar_t* __restrict__ gates_out,
                     scalar_t* __restrict__ cell_out, int64_t B, int64_t H) {
  using acc_t = typename acc_type<scalar_t>::type;
  constexpr int NT = BN * (BM / TM);
  constexpr int A_LOADS = BM * kBK / NT;
  constexpr int W_LOADS = 4 * BN * kBK / NT;
  static_assert(BM % TM == 0, "BM must be a multiple of TM");
  static_assert((BM * kBK) % NT == 0 && (4 * BN * kBK) % NT == 0,
                "tile loads must divide evenly among the threads");

  __shared__ acc_t As[kBK][BM + 1];
  __shared__ acc_t Ws[4][kBK][BN + 1];

  const int tid = threadIdx.x;
  const int tx = tid % BN;
  const int ty = tid / BN;
  const int64_t b0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int64_t j0 = static_cast<int64_t>(blockIdx.y) * BN;

  acc_t acc[4][TM];
#pragma unroll
  for (int q = 0; q < 4; ++q)
#pragma unroll
    for (int m = 0; m < TM; ++m) acc[q][m] = acc_t(0);

  acc_t a_reg[A_LOADS];
  acc_t w_reg[W_LOADS];

  // Staging map.  NT is a multiple of kBK, so thread `tid` always loads
  // column kk = tid % kBK of a K slice, for rows rr + r·RS (r < A_LOADS or
  // W_LOADS).  For the weights, row index rr + r·RS of the 4·BN staged rows
  // is gate q = r·RS / BN, unit rr + (r·RS) % BN (RS divides BN), so all
  // per-r offsets below are compile-time multiples of H: the thread needs one
  // base pointer per operand instead of one address per load.
  constexpr int RS = NT / kBK;
  static_assert(NT % kBK == 0 && BN % RS == 0, "staging map needs kBK | NT and NT/kBK | BN");
  const int kk = tid % kBK;
  const int rr = tid / kBK;
  const scalar_t* a_base = h_prev + (b0 + rr) * H + kk;
  const scalar_t* w_base = w_hh + (j0 + rr) * H + kk;

  // Global -> registers for the K slice starting at k0 (zero outside bounds).
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
  // Registers -> shared memory (same map as `load`).
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
      for (int q = 0; q < 4; ++q) {
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

  // Epilogue: add the input projection and apply the cell.
  const int64_t j = j0 + tx;
  if (j >= H) return;
  const int64_t G4 = 4 * H;
#pragma unroll
  for (int m = 0; m < TM; ++m) {
    const int64_t b = b0 + ty * TM + m;
    if (b >= B) continue;
    const scalar_t* g = gx + b * G4 + j;
    const int64_t bj = b * H + j;
    const LstmFwdOut<acc_t> r = lstm_cell_forward<acc_t>(
        acc[0][m] + static_cast<acc_t>(g[0]), acc[1][m] + static_cast<acc_t>(g[H]),
        acc[2][m] + static_cast<acc_t>(g[2 * H]), acc[3][m] + static_cast<acc_t>(g[3 * H]),
        c_state[bj]);
    c_state[bj] = r.c;
    h_out[bj] = static_cast<scalar_t>(r.h);
    if (gates_out != nullptr) {
      scalar_t* go = gates_out + b * G4 + j;
      go[0] = static_cast<scalar_t>(r.i);
      go[H] = static_cast<scalar_t>(r.f);
      go[2 * H] = static_cast<scalar_t>(r.g);
      go[3 * H] = static_cast<scalar_t>(r.o);
    }
    if (cell_out != nullptr) cell_out[bj] = static_cast<scalar_t>(r.c);
  }
}

// -------------------------------------------------------------- backward --
//
// One timestep of one layer, in reverse.
//   dG_next (B, 4H)  dG_{t+1} (pre-activation gate grads of step t+1), or
//                    nullptr at t = T-1 (no recurrent term)
//   w_hh    (4H, H)
//   dy      (B, H)   gradient reaching h_t from above (output / layer above)
//   dy_extra (B, H)  added to dh (grad_hy at t = T-1), or nullptr
//   gates   (B, 4H)  activated i, f, g, o of step t
//   c_prev  (B, H)   c_{t-1} (cx at t = 0);  c (B, H)  c_t
//   dc_state (B, H)  acc_t; dc_t on entry, dc_{t-1} on exit (in place, one
//                    thread per element)
//   dG_out  (B, 4H)  dG_t; must not alias dG_next
//
// dh[b, j] = Σ_k dG_next[b, k] · W_hh[k, j] over k < 4H.  CTA tile: BM batch
// rows x BN hidden units; thread (tx, ty) owns unit j0 + tx for rows
// b0 + ty*TM + m and after the product holds the complete dh of those
// elements, so it can run the cell backward for all four gates of the unit.
template <typename scalar_t, int BM, int BN, int TM>
__global__ void __launch_bounds__(BN * (BM / TM))
lstm_bwd_step_kernel(const scalar_t* __restrict__ dG_next, const scalar_t* __restrict__ w_hh,
                     const scalar_t* __restrict__ dy, const scalar_t* __restrict__ dy_extra,
                     const scalar_t* __restrict__ gates, const scalar_t* __restrict__ c_prev,
                     const scalar_t* __restrict__ c,
                     typename acc_type<scalar_t>::type* __restrict__ dc_state,
                     scalar_t* __restrict__ dG_out, int64_t B, int64_t H) {
  using acc_t = typename acc_type<scalar_t>::type;
  constexpr int NT = BN * (BM / TM);
  constexpr int A_LOADS = BM * kBK / NT;
  constexpr int W_LOADS = kBK * BN / NT;
  static_assert(BM % TM == 0, "BM must be a multiple of TM");
  static_assert((BM * kBK) % NT == 0 && (kBK * BN) % NT == 0,
                "tile loads must divide evenly among the threads");

  __shared__ acc_t As[kBK][BM + 1];
  __shared__ acc_t Ws[kBK][BN];

  const int tid = threadIdx.x;
  const int tx = tid % BN;
  const int ty = tid / BN;
  const int64_t b0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int64_t j0 = static_cast<int64_t>(blockIdx.y) * BN;
  const int64_t G4 = 4 * H;

  acc_t acc[TM];
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
      a_reg[r] = (gb < B && gk < G4) ? static_cast<acc_t>(dG_next[gb * G4 + gk]) : acc_t(0);
    }
#pragma unroll
    for (int r = 0; r < W_LOADS; ++r) {
      const int idx = tid + r * NT;
      const int j = idx % BN, k = idx / BN;
      const int64_t gj = j0 + j, gk = k0 + k;
      w_reg[r] = (gj < H && gk < G4) ? static_cast<acc_t>(w_hh[gk * H + gj]) : acc_t(0);
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

  // No recurrent term at the last step: skip the product (uniform branch).
  const int64_t num_k = dG_next == nullptr ? 0 : (G4 + kBK - 1) / kBK;
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

  const int64_t j = j0 + tx;
  if (j >= H) return;
#pragma unroll
  for (int m = 0; m < TM; ++m) {
    const int64_t b = b0 + ty * TM + m;
    if (b >= B) continue;
    const int64_t bj = b * H + j;
    acc_t dh = acc[m] + static_cast<acc_t>(dy[bj]);
    if (dy_extra != nullptr) dh += static_cast<acc_t>(dy_extra[bj]);
    const scalar_t* g = gates + b * G4 + j;
    const LstmBwdOut<acc_t> r = lstm_cell_backward<acc_t>(
        dh, dc_state[bj], static_cast<acc_t>(g[0]), static_cast<acc_t>(g[H]),
        static_cast<acc_t>(g[2 * H]), static_cast<acc_t>(g[3 * H]),
        static_cast<acc_t>(c_prev[bj]), static_cast<acc_t>(c[bj]));
    scalar_t* d = dG_out + b * G4 + j;
    d[0] = static_cast<scalar_t>(r.di);
    d[H] = static_cast<scalar_t>(r.df);
    d[2 * H] = static_cast<scalar_t>(r.dg);
    d[3 * H] = static_cast<scalar_t>(r.do_);
    dc_state[bj] = r.dc_prev;
  }
}

// ------------------------------------------------------------ launching --
//
// Tile shapes: BM = 8 batch rows (TM = 1) for B <= 16, else BM = 32 (TM = 4);
// BN = 32 hidden units when that already gives every SM a CTA, else 16 for
// more CTAs (the small problems are latency bound, so more, smaller CTAs win).
struct StepConfig {
  int bm;  // 8 or 32
  int bn;  // 16 or 32
};

StepConfig choose_config(int64_t B, int64_t H) {
  StepConfig cfg;
  cfg.bm = B <= 16 ? 8 : 32;
  const int64_t ctas32 = ((B + cfg.bm - 1) / cfg.bm) * ((H + 31) / 32);
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  cfg.bn = ctas32 >= sms ? 32 : 16;
  return cfg;
}

void check_grid(int64_t B, int64_t H, const StepConfig& cfg) {
  const int64_t gy = (H + cfg.bn - 1) / cfg.bn;
  const int64_t gx = (B + cfg.bm - 1) / cfg.bm;
  TORCH_CHECK(gy <= 65535 && gx <= 2147483647LL,
              "fusedrnn.lstm (CUDA): hidden size ", H, " and batch size ", B,
              " exceed the grid limits of the step kernels");
}

template <typename scalar_t, int BM, int BN, int TM>
void launch_fwd(cudaStream_t stream, int64_t B, int64_t H, const scalar_t* h_prev,
                const scalar_t* w_hh, const scalar_t* gx,
                typename acc_type<scalar_t>::type* c_state, scalar_t* h_out,
                scalar_t* gates_out, scalar_t* cell_out) {
  const dim3 grid(static_cast<unsigned>((B + BM - 1) / BM), static_cast<unsigned>((H + BN - 1) / BN));
  const dim3 block(BN * (BM / TM));
  lstm_fwd_step_kernel<scalar_t, BM, BN, TM><<<grid, block, 0, stream>>>(
      h_prev, w_hh, gx, c_state, h_out, gates_out, cell_out, B, H);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t>
void fwd_step(const StepConfig& cfg, cudaStream_t stream, int64_t B, int64_t H,
              const scalar_t* h_prev, const scalar_t* w_hh, const scalar_t* gx,
              typename acc_type<scalar_t>::type* c_state, scalar_t* h_out, scalar_t* gates_out,
              scalar_t* cell_out) {
  if (cfg.bm == 8) {
    if (cfg.bn == 16)
      launch_fwd<scalar_t, 8, 16, 1>(stream, B, H, h_prev, w_hh, gx, c_state, h_out, gates_out, cell_out);
    else
      launch_fwd<scalar_t, 8, 32, 1>(stream, B, H, h_prev, w_hh, gx, c_state, h_out, gates_out, cell_out);
  } else {
    if (cfg.bn == 16)
      launch_fwd<scalar_t, 32, 16, 4>(stream, B, H, h_prev, w_hh, gx, c_state, h_out, gates_out, cell_out);
    else
      launch_fwd<scalar_t, 32, 32, 4>(stream, B, H, h_prev, w_hh, gx, c_state, h_out, gates_out, cell_out);
  }
}

template <typename scalar_t, int BM, int BN, int TM>
void launch_bwd(cudaStream_t stream, int64_t B, int64_t H, const scalar_t* dG_next,
                const scalar_t* w_hh, const scalar_t* dy, const scalar_t* dy_extra,
                const scalar_t* gates, const scalar_t* c_prev, const scalar_t* c,
                typename acc_type<scalar_t>::type* dc_state, scalar_t* dG_out) {
  const dim3 grid(static_cast<unsigned>((B + BM - 1) / BM), static_cast<unsigned>((H + BN - 1) / BN));
  const dim3 block(BN * (BM / TM));
  lstm_bwd_step_kernel<scalar_t, BM, BN, TM><<<grid, block, 0, stream>>>(
      dG_next, w_hh, dy, dy_extra, gates, c_prev, c, dc_state, dG_out, B, H);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t>
void bwd_step(const StepConfig& cfg, cudaStream_t stream, int64_t B, int64_t H,
              const scalar_t* dG_next, const scalar_t* w_hh, const scalar_t* dy,
              const scalar_t* dy_extra, const scalar_t* gates, const scalar_t* c_prev,
              const scalar_t* c, typename acc_type<scalar_t>::type* dc_state, scalar_t* dG_out) {
  if (cfg.bm == 8) {
    if (cfg.bn == 16)
      launch_bwd<scalar_t, 8, 16, 1>(stream, B, H, dG_next, w_hh, dy, dy_extra, gates, c_prev, c, dc_state, dG_out);
    else
      launch_bwd<scalar_t, 8, 32, 1>(stream, B, H, dG_next, w_hh, dy, dy_extra, gates, c_prev, c, dc_state, dG_out);
  } else {
    if (cfg.bn == 16)
      launch_bwd<scalar_t, 32, 16, 4>(stream, B, H, dG_next, w_hh, dy, dy_extra, gates, c_prev, c, dc_state, dG_out);
    else
      launch_bwd<scalar_t, 32, 32, 4>(stream, B, H, dG_next, w_hh, dy, dy_extra, gates, c_prev, c, dc_state, dG_out);
  }
}

// ------------------------------------------------------------- op: checks --

void check_cuda_args(const Tensor& input, const char* op) {
  TORCH_CHECK(input.is_cuda(), "fusedrnn.", op,
              " (CUDA): expected input on a CUDA device, but it is on ", input.device(),
              "; move every tensor of the call to the same CUDA device");
}

// What the CUDA kernels do not implement yet: a clear error, not a wrong answer.
void check_cuda_supported(const LstmSizes& s, const char* op) {
  TORCH_CHECK_NOT_IMPLEMENTED(!s.seq.packed, "fusedrnn.", op,
                              " (CUDA): packed sequences (batch_sizes) are not implemented "
                              "on CUDA yet; pad the batch, or run it on the CPU");
  TORCH_CHECK_NOT_IMPLEMENTED(!s.has_proj, "fusedrnn.", op,
                              " (CUDA): proj_size (a w_hr per layer) is not implemented on "
                              "CUDA yet; run it on the CPU");
}

at::ScalarType acc_scalar_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// --------------------------------------------------------- op: forward --

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward_cuda(
    const Tensor& input_, const Tensor& hx_, const Tensor& cx_, at::TensorList weights_,
    bool has_biases, bool train, const std::optional<Tensor>& batch_sizes) {
  // The shared checks compare every tensor's device and dtype with input's,
  // so together with this one all tensors are on input's CUDA device.
  check_cuda_args(input_, "lstm_forward");
  const LstmSizes s = check_lstm_args(input_, hx_, cx_, weights_, has_biases, batch_sizes);
  if (auto r = persistent_lstm_forward_if_selected(s, input_, hx_, cx_, weights_, has_biases, train))
    return *r;
  check_cuda_supported(s, "lstm_forward");
  const c10::cuda::CUDAGuard guard(input_.device());

  const int64_t T = s.T, B = s.B, H = s.H, L = s.L, G4 = 4 * H;
  const auto opts = input_.options();
  Tensor output = at::empty({T, B, H}, opts);
  Tensor hy = at::empty({L, B, H}, opts);
  Tensor cy = at::empty({L, B, H}, opts);
  Tensor gates, cells, hiddens;
  if (train) {
    gates = at::empty({L, T, B, G4}, opts);
    cells = at::empty({L, T, B, H}, opts);
    hiddens = at::empty({L - 1, T, B, H}, opts);
  } else {
    gates = at::empty({0}, opts);
    cells = at::empty({0}, opts);
    hiddens = at::empty({0}, opts);
  }
  if (T == 0 || B == 0 || H == 0) {
    // Nothing to run (and no zero-size grids to launch): the final states are
    // the initial ones; every other output is empty.
    hy.copy_(hx_);
    cy.copy_(cx_);
    return {output, hy, cy, gates, cells, hiddens};
  }

  const Tensor input = input_.contiguous();
  const Tensor hx = hx_.contiguous();
  const Tensor cx = cx_.contiguous();
  std::vector<Tensor> w;
  w.reserve(weights_.size());
  for (const auto& t : weights_) w.push_back(t.contiguous());

  const StepConfig cfg = choose_config(B, H);
  check_grid(B, H, cfg);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  Tensor gx = at::empty({T, B, G4}, opts);  // input projection of one layer
  Tensor gx2 = gx.view({T * B, G4});
  Tensor c_state = at::empty({B, H}, opts.dtype(acc_scalar_type(input.scalar_type())));
  Tensor scratch;  // inference: the output of the layers below the top
  if (!train && L > 1) scratch = at::empty({T, B, H}, opts);

  Tensor x = input;
  for (int64_t l = 0; l < L; ++l) {
    const Tensor* wl = &w[l * s.per_layer];
    const int64_t I_l = x.size(2);
    // The input projection of all T steps: one GEMM (follows allow_tf32).
    // It reads x completely before the step loop below overwrites `scratch`
    // (stream order), so input and output of a layer may share `scratch`.
    if (has_biases) {
      at::addmm_out(gx2, wl[2] + wl[3], x.reshape({T * B, I_l}), wl[0].t());
    } else {
      at::mm_out(gx2, x.reshape({T * B, I_l}), wl[0].t());
    }
    Tensor out = l == L - 1 ? output : (train ? hiddens[l] : scratch);
    c_state.copy_(cx[l]);

    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                    "fusedrnn_lstm_forward_cuda", [&] {
      using acc_t = typename acc_type<scalar_t>::type;
      const scalar_t* w_hh = wl[1].data_ptr<scalar_t>();
      const scalar_t* gx_p = gx.data_ptr<scalar_t>();
      const scalar_t* h0 = hx.data_ptr<scalar_t>() + l * B * H;
      scalar_t* out_p = out.data_ptr<scalar_t>();
      scalar_t* gates_p = train ? gates.data_ptr<scalar_t>() + l * T * B * G4 : nullptr;
      scalar_t* cells_p = train ? cells.data_ptr<scalar_t>() + l * T * B * H : nullptr;
      acc_t* c_p = c_state.data_ptr<acc_t>();
      for (int64_t t = 0; t < T; ++t) {
        const scalar_t* h_prev = t == 0 ? h0 : out_p + (t - 1) * B * H;
        fwd_step<scalar_t>(cfg, stream, B, H, h_prev, w_hh, gx_p + t * B * G4, c_p,
                           out_p + t * B * H, train ? gates_p + t * B * G4 : nullptr,
                           train ? cells_p + t * B * H : nullptr);
      }
    });
    hy[l].copy_(out[T - 1]);
    cy[l].copy_(c_state);
    x = out;
  }
  return {output, hy, cy, gates, cells, hiddens};
}

// -------------------------------------------------------- op: backward --

std::tuple<Tensor, Tensor, Tensor, std::vector<Tensor>> lstm_backward_cuda(
    const Tensor& grad_output_, const Tensor& grad_hy_, const Tensor& grad_cy_,
    const Tensor& input_, const Tensor& hx_, const Tensor& cx_, at::TensorList weights_,
    bool has_biases, const Tensor& output_, const Tensor& gates_, const Tensor& cells_,
    const Tensor& hiddens_, const std::optional<Tensor>& batch_sizes) {
  check_cuda_args(input_, "lstm_backward");
  const LstmSizes s = check_lstm_args(input_, hx_, cx_, weights_, has_biases, batch_sizes);
  check_cuda_supported(s, "lstm_backward");
  check_backward_args(s, input_, grad_output_, grad_hy_, grad_cy_, output_, gates_, cells_,
                      hiddens_);
  if (auto r = persistent_lstm_backward_if_selected(s, grad_output_, grad_hy_, grad_cy_, input_,
                                                    hx_, cx_, weights_, has_biases, output_,
                                                    gates_, cells_, hiddens_))
    return *r;
  const c10::cuda::CUDAGuard guard(input_.device());

  const int64_t T = s.T, B = s.B, H = s.H, L = s.L, G4 = 4 * H;
  const auto opts = input_.options();
  std::vector<Tensor> grad_w(weights_.size());

  if (T == 0 || B == 0 || H == 0) {
    // Empty recurrence: hy = hx and cy = cx, so their gradients pass straight
    // through; nothing else receives a gradient.
    Tensor grad_input = at::zeros(input_.sizes(), opts);
    Tensor grad_hx = grad_hy_.clone(at::MemoryFormat::Contiguous);
    Tensor grad_cx = grad_cy_.clone(at::MemoryFormat::Contiguous);
    for (size_t k = 0; k < weights_.size(); ++k) grad_w[k] = at::zeros(weights_[k].sizes(), opts);
    return {grad_input, grad_hx, grad_cx, grad_w};
  }

  const Tensor input = input_.contiguous(), hx = hx_.contiguous(), cx = cx_.contiguous();
  const Tensor output = output_.contiguous(), gates = gates_.contiguous();
  const Tensor cells = cells_.contiguous(), hiddens = hiddens_.contiguous();
  const Tensor grad_hy = grad_hy_.contiguous(), grad_cy = grad_cy_.contiguous();
  std::vector<Tensor> w;
  w.reserve(weights_.size());
  for (const auto& t : weights_) w.push_back(t.contiguous());

  const StepConfig cfg = choose_config(B, H);
  check_grid(B, H, cfg);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  Tensor grad_hx = at::empty({L, B, H}, opts);
  Tensor grad_cx = at::empty({L, B, H}, opts);
  Tensor grad_input;
  Tensor dG = at::empty({T, B, G4}, opts);  // one layer's dG_t, reused per layer
  Tensor dG2 = dG.view({T * B, G4});
  Tensor dc_state = at::empty({B, H}, opts.dtype(acc_scalar_type(input.scalar_type())));
  Tensor dy = grad_output_.contiguous();  // gradient reaching the layer's outputs

  for (int64_t l = L - 1; l >= 0; --l) {
    const Tensor* wl = &w[l * s.per_layer];
    const Tensor x = l == 0 ? input : hiddens[l - 1];       // layer input (T, B, I_l)
    const Tensor out = l == L - 1 ? output : hiddens[l];    // layer output h_t (T, B, H)
    const int64_t I_l = x.size(2);
    dc_state.copy_(grad_cy[l]);

    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                    "fusedrnn_lstm_backward_cuda", [&] {
      using acc_t = typename acc_type<scalar_t>::type;
      const scalar_t* w_hh = wl[1].data_ptr<scalar_t>();
      const scalar_t* dy_p = dy.data_ptr<scalar_t>();
      const scalar_t* dhy = grad_hy.data_ptr<scalar_t>() + l * B * H;
      const scalar_t* gates_p = gates.data_ptr<scalar_t>() + l * T * B * G4;
      const scalar_t* cells_p = cells.data_ptr<scalar_t>() + l * T * B * H;
      const scalar_t* c0 = cx.data_ptr<scalar_t>() + l * B * H;
      scalar_t* dG_p = dG.data_ptr<scalar_t>();
      acc_t* dc_p = dc_state.data_ptr<acc_t>();
      for (int64_t t = T - 1; t >= 0; --t) {
        const bool last = t == T - 1;
        bwd_step<scalar_t>(cfg, stream, B, H, last ? nullptr : dG_p + (t + 1) * B * G4, w_hh,
                           dy_p + t * B * H, last ? dhy : nullptr, gates_p + t * B * G4,
                           t == 0 ? c0 : cells_p + (t - 1) * B * H, cells_p + t * B * H, dc_p,
                           dG_p + t * B * G4);
      }
    });

    // The gradient flowing to t = -1.
    grad_hx[l].copy_(at::mm(dG[0], wl[1]));
    grad_cx[l].copy_(dc_state);

    // Weight gradients: one GEMM each over all timesteps (follow allow_tf32).
    // dW_hh = Σ_t dG_tᵀ h_{t-1} with h_{-1} = hx[l], as one GEMM over the
    // shifted sequence of hidden states.
    Tensor h_prev = T > 1 ? at::cat({hx[l].unsqueeze(0), out.slice(0, 0, T - 1)}, 0)
                          : hx[l].unsqueeze(0);
    grad_w[l * s.per_layer] = at::mm(dG2.t(), x.reshape({T * B, I_l}));
    grad_w[l * s.per_layer + 1] = at::mm(dG2.t(), h_prev.reshape({T * B, H}));
    if (has_biases) {
      Tensor db = dG2.sum(0);
      grad_w[l * s.per_layer + 2] = db;
      grad_w[l * s.per_layer + 3] = db.clone();
    }
    // Gradient for the layer below (or the op's input).  A new tensor, so it
    // does not alias dG, which the next layer overwrites.
    dy = at::mm(dG2, wl[0]).view({T, B, I_l});
    if (l == 0) grad_input = dy;
  }
  return {grad_input, grad_hx, grad_cx, grad_w};
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedrnn, CUDA, m) {
  m.impl("lstm_forward", &lstm_forward_cuda);
  m.impl("lstm_backward", &lstm_backward_cuda);
}

}  // namespace fusedrnn
