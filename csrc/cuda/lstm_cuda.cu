// CUDA implementation of fusedrnn::lstm_forward / lstm_backward (the general
// tier of docs/DESIGN.md): the whole stack in one op call, layers one after
// another, one fused kernel per layer-timestep.
//
// Rows: every per-row tensor is seen as (N, ·): padded input (T, B, I) has
// N = T·B and step t is rows [t·B, t·B + B); a packed sequence (batch_sizes,
// see SeqLayout in rnn_checks.h) has step t at rows [off[t], off[t] + bs[t]).
// The step kernels take the step's row count and first row, so padding is
// just the layout with bs[t] = B (no extra work).
//
// Forward, per layer l (input X_l (N, I_l): the op's input for l = 0, the
// layer below's h_t otherwise):
//   1. Gx = X_l · W_ihᵀ + (b_ih + b_hh) for all N rows as ONE GEMM (at::addmm,
//      cuBLAS), into an (N, 4H) buffer.
//   2. For t = 0..T-1 ONE kernel, lstm_fwd_step_kernel: a shared-memory tiled
//      product h_{t-1} · W_hhᵀ in which every CTA owns all four gates of a tile
//      of hidden units, so the epilogue (Gx_t + product -> lstm_cell_forward)
//      is local to the thread that holds the four accumulators.  It writes h_t,
//      the cell state and (train) the activated gates and c_t.  h_{t-1} is the
//      first bs[t] rows of step t-1's output; the (B, H) cell state is updated
//      in place for the bs[t] active rows only, so a finished sequence keeps
//      its last c (cy), and hy gathers each sequence's row of its last step.
//   With proj_size (P < H) the kernel's product has depth P and it writes
//   h_raw = o ⊙ tanh(c_t) into a (B, H) buffer; one cuBLAS GEMM per step then
//   writes h_t = h_raw · W_hrᵀ into the step's output rows.
// Backward, per layer from the top down, t = T-1..0, ONE kernel per step,
// lstm_bwd_step_kernel: dh_t = dy_t (+ grad_hy at each sequence's last step)
// + dG_{t+1} · W_hh for the rows that have a step t+1 (tiled product over the
// 4H gate columns) followed by lstm_cell_backward, writing dG_t
// (pre-activation gate gradients) and dc_{t-1}.  With proj_size, dh_t (P
// wide) and dh_raw = dh_t · W_hr are cuBLAS GEMMs before the kernel, which
// then only runs the cell backward.  After the loop the weight, bias and
// input gradients are single large GEMMs / reductions over all rows.
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
// Launch overhead: the step loop issues T·L small kernels.  With the option
// cuda_step_launch = graph (fusedrnn.set_option), the loop of each layer is
// recorded once into a CUDA graph and replayed (step_graph.h: cached by
// topology, patched with cudaGraphExecUpdate when only pointers changed;
// per-step launches when the caller's stream is capturing or recording
// fails).  Loops with a projection always launch per step (they contain
// cuBLAS calls).  auto (the default) is per_step until the crossover has
// been measured on a GPU.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <functional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "cell_math.h"
#include "cuda/lstm_persistent.h"
#include "cuda/capture_check.h"
#include "cuda/step_graph.h"
#include "cuda/tile_product.cuh"
#include "bidirectional.h"
#include "lstm_checks.h"
#include "options.h"

namespace fusedrnn {
namespace {

using at::Tensor;

// kBK, kMinBlocks, the tiles and the tiled products (fwd_product,
// bwd_product): tile_product.cuh.

// --------------------------------------------------------------- forward --
//
// One timestep of one layer.
//   B       rows of this step (bs[t] of a packed sequence); every per-row
//           pointer below points at the step's first row
//   K       size of h (the product's depth): H, or P with a projection
//   h_prev  (B, K)   h_{t-1}
//   w_hh    (4H, K)  row q*H + j holds gate q of hidden unit j
//   gx      (B, 4H)  input projection of step t, biases included
//   c_state (B, H)   acc_t; c_{t-1} on entry, c_t on exit (in place: every
//                    element is read and written by the same thread only)
//   h_out   (B, H)   o ⊙ tanh(c_t): h_t, or with a projection the unprojected
//                    h_raw (the caller multiplies by W_hrᵀ); must not alias
//                    h_prev
//   gates_out (B, 4H) activated i, f, g, o, or nullptr (inference)
//   cell_out  (B, H)  c_t rounded to scalar_t, or nullptr (inference)
//
// CTA tile: BM batch rows x BN hidden units x all 4 gates; the thread
// (tx, ty), tx in [0, BN), ty in [0, BM/TM), owns unit j0 + tx for batch rows
// b0 + ty*TM + m, m < TM, and keeps 4*TM accumulators, computed by
// fwd_product (tile_product.cuh) with depth K.
//
// The body is a device function so that the one-launch bidirectional kernel
// (step_pair_kernel of tile_product.cuh, via FwdStep::run) runs exactly the
// same code per direction.
template <typename scalar_t, int BM, int BN, int TM>
__device__ __forceinline__ void lstm_fwd_step_body(
    const scalar_t* __restrict__ h_prev, const scalar_t* __restrict__ w_hh,
    const scalar_t* __restrict__ gx, typename acc_type<scalar_t>::type* __restrict__ c_state,
    scalar_t* __restrict__ h_out, scalar_t* __restrict__ gates_out,
    scalar_t* __restrict__ cell_out, int64_t B, int64_t H, int64_t K) {
  using acc_t = typename acc_type<scalar_t>::type;
  const int tx = threadIdx.x % BN, ty = threadIdx.x / BN;
  const int64_t b0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int64_t j0 = static_cast<int64_t>(blockIdx.y) * BN;
  acc_t acc[4][TM];
  fwd_product<scalar_t, 4, BM, BN, TM>(h_prev, w_hh, B, H, K, b0, j0, acc);

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

template <typename scalar_t, int BM, int BN, int TM>
__global__ void __launch_bounds__(BN * (BM / TM), kMinBlocks<scalar_t>)
lstm_fwd_step_kernel(const scalar_t* __restrict__ h_prev, const scalar_t* __restrict__ w_hh,
                     const scalar_t* __restrict__ gx,
                     typename acc_type<scalar_t>::type* __restrict__ c_state,
                     scalar_t* __restrict__ h_out, scalar_t* __restrict__ gates_out,
                     scalar_t* __restrict__ cell_out, int64_t B, int64_t H, int64_t K) {
  lstm_fwd_step_body<scalar_t, BM, BN, TM>(h_prev, w_hh, gx, c_state, h_out, gates_out,
                                           cell_out, B, H, K);
}

// -------------------------------------------------------------- backward --
//
// One timestep of one layer, in reverse.
//   B       rows of this step (bs[t] of a packed sequence); every per-row
//           pointer below points at the step's first row
//   dG_next (B_next, 4H) dG_{t+1} (pre-activation gate grads of step t+1), or
//                    nullptr (no recurrent term: t = T-1, or with a projection,
//                    where the caller puts the recurrent term into dy)
//   B_next  rows of step t+1 (<= B): only rows b < B_next receive the
//           recurrent term dG_{t+1}[b] · W_hh; the other rows' sequences end
//           at step t (packed sequences)
//   w_hh    (4H, H)  (only read when dG_next is given, so only without a
//                    projection)
//   dy      (B, H)   gradient reaching h_t from above (output / layer above)
//   dy_extra (B, H)  added to dh (grad_hy at t = T-1), or nullptr
//   gates   (B, 4H)  activated i, f, g, o of step t
//   c_prev  (B, H)   c_{t-1} (cx at t = 0);  c (B, H)  c_t
//   dc_state (B, H)  acc_t; dc_t on entry, dc_{t-1} on exit (in place, one
//                    thread per element)
//   dG_out  (B, 4H)  dG_t; must not alias dG_next
//
// dh[b, j] = Σ_k dG_next[b, k] · W_hh[k, j] over k < 4H (bwd_product of
// tile_product.cuh).  CTA tile: BM batch rows x BN hidden units; thread
// (tx, ty) owns unit j0 + tx for rows b0 + ty*TM + m and after the product
// holds the complete dh of those elements, so it can run the cell backward
// for all four gates of the unit.
// (A device function body, shared with the one-launch bidirectional kernel,
// as in the forward.)
template <typename scalar_t, int BM, int BN, int TM>
__device__ __forceinline__ void lstm_bwd_step_body(
    const scalar_t* __restrict__ dG_next, const scalar_t* __restrict__ w_hh,
    const scalar_t* __restrict__ dy, const scalar_t* __restrict__ dy_extra,
    const scalar_t* __restrict__ gates, const scalar_t* __restrict__ c_prev,
    const scalar_t* __restrict__ c, typename acc_type<scalar_t>::type* __restrict__ dc_state,
    scalar_t* __restrict__ dG_out, int64_t B, int64_t B_next, int64_t H) {
  using acc_t = typename acc_type<scalar_t>::type;
  const int tx = threadIdx.x % BN, ty = threadIdx.x / BN;
  const int64_t b0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int64_t j0 = static_cast<int64_t>(blockIdx.y) * BN;
  const int64_t G4 = 4 * H;
  // No recurrent term for any row of this CTA (last step, a projection, or
  // rows whose sequences all end here): bwd_product skips the product
  // (uniform branch) and leaves acc = 0.
  acc_t acc[TM];
  bwd_product<scalar_t, BM, BN, TM>(dG_next, B_next, G4, w_hh, H, b0, j0, acc);

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

template <typename scalar_t, int BM, int BN, int TM>
__global__ void __launch_bounds__(BN * (BM / TM))
lstm_bwd_step_kernel(const scalar_t* __restrict__ dG_next, const scalar_t* __restrict__ w_hh,
                     const scalar_t* __restrict__ dy, const scalar_t* __restrict__ dy_extra,
                     const scalar_t* __restrict__ gates, const scalar_t* __restrict__ c_prev,
                     const scalar_t* __restrict__ c,
                     typename acc_type<scalar_t>::type* __restrict__ dc_state,
                     scalar_t* __restrict__ dG_out, int64_t B, int64_t B_next, int64_t H) {
  lstm_bwd_step_body<scalar_t, BM, BN, TM>(dG_next, w_hh, dy, dy_extra, gates, c_prev, c,
                                           dc_state, dG_out, B, B_next, H);
}

// ------------------------------------------------------------ launching --
//
// Tile choice (choose_config), dispatch (with_tile) and grids (step_grid):
// tile_product.cuh.  One config per call (the LSTM's steps keep B rows'
// tiles even when packed steps shrink).

// Arguments of one step kernel (see the kernels for the shapes).
template <typename scalar_t>
struct FwdStep {
  using acc_t = typename acc_type<scalar_t>::type;
  const scalar_t* h_prev;
  const scalar_t* w_hh;
  const scalar_t* gx;
  acc_t* c_state;
  scalar_t* h_out;
  scalar_t* gates_out;
  scalar_t* cell_out;
  int64_t B, H, K;
  // As one direction of the one-launch pair (tile_product.cuh, ArgPair).
  static constexpr int kMinCtas = kMinBlocks<scalar_t>;
  template <int BM, int BN, int TM>
  __device__ __forceinline__ void run() const {
    lstm_fwd_step_body<scalar_t, BM, BN, TM>(h_prev, w_hh, gx, c_state, h_out, gates_out,
                                             cell_out, B, H, K);
  }
};

template <typename scalar_t>
struct BwdStep {
  using acc_t = typename acc_type<scalar_t>::type;
  const scalar_t* dG_next;
  const scalar_t* w_hh;
  const scalar_t* dy;
  const scalar_t* dy_extra;
  const scalar_t* gates;
  const scalar_t* c_prev;
  const scalar_t* c;
  acc_t* dc_state;
  scalar_t* dG_out;
  int64_t B, B_next, H;
  static constexpr int kMinCtas = 1;
  template <int BM, int BN, int TM>
  __device__ __forceinline__ void run() const {
    lstm_bwd_step_body<scalar_t, BM, BN, TM>(dG_next, w_hh, dy, dy_extra, gates, c_prev, c,
                                             dc_state, dG_out, B, B_next, H);
  }
};

template <typename scalar_t>
void fwd_step(const StepConfig& cfg, cudaStream_t stream, const FwdStep<scalar_t>& a) {
  with_tile(cfg, [&](auto tile) {
    using TL = decltype(tile);
    lstm_fwd_step_kernel<scalar_t, TL::BM, TL::BN, TL::TM><<<step_grid<TL>(a.B, a.H), TL::NT, 0, stream>>>(
        a.h_prev, a.w_hh, a.gx, a.c_state, a.h_out, a.gates_out, a.cell_out, a.B, a.H, a.K);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

template <typename scalar_t>
void bwd_step(const StepConfig& cfg, cudaStream_t stream, const BwdStep<scalar_t>& a) {
  with_tile(cfg, [&](auto tile) {
    using TL = decltype(tile);
    lstm_bwd_step_kernel<scalar_t, TL::BM, TL::BN, TL::TM><<<step_grid<TL>(a.B, a.H), TL::NT, 0, stream>>>(
        a.dG_next, a.w_hh, a.dy, a.dy_extra, a.gates, a.c_prev, a.c, a.dc_state, a.dG_out, a.B,
        a.B_next, a.H);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// ------------------------------------------------------------- op: checks --
//
// check_cuda_args, acc_scalar_type, contiguous_all: tile_product.cuh.

// Limits of the CUDA kernels beyond the shared checks: the step kernels'
// grids (hidden units along y, at most 65535 tiles of 16 units).  Packed
// sequences and proj_size are supported.
void check_cuda_supported(const LstmSizes& s, const char* op) {
  check_grid(s.B, s.H, "fusedrnn.", op);
}

// ------------------------------------------------------- op: row layout --
//
// Every step t works on rows [off[t], off[t] + bs[t]) of the (N, ·) row space
// (N = T·B and off[t] = t·B when padded; see SeqLayout).  A packed layout
// also needs two gathers, built on the host once per call and copied to the
// device asynchronously (from pinned memory):
//   last_rows (B):  the row of sequence b's last step, off[t_b] + b
//                   (hy = out[last_rows]; grad_hy is added to dy there)
//   prev_rows (N):  for each row, the row of its h_{t-1} in cat(h0, out)
//                   (B + N rows): b at t = 0, else B + off[t-1] + b
//                   (dW_hh = dGᵀ · cat(h0, out)[prev_rows] as one GEMM)
Tensor to_device_async(const std::vector<int64_t>& v, const at::Device& dev) {
  Tensor h = at::empty({static_cast<int64_t>(v.size())},
                       at::TensorOptions().dtype(at::kLong).pinned_memory(true));
  std::copy(v.begin(), v.end(), h.data_ptr<int64_t>());
  return h.to(at::TensorOptions().device(dev).dtype(at::kLong), /*non_blocking=*/true);
}

Tensor last_rows(const SeqLayout& q, const at::Device& dev) {
  std::vector<int64_t> v(q.B);
  for (int64_t t = 0; t < q.T; ++t)
    for (int64_t b = q.ended_begin(t); b < q.rows(t); ++b) v[b] = q.offset(t) + b;
  return to_device_async(v, dev);
}

Tensor prev_rows(const SeqLayout& q, const at::Device& dev) {
  std::vector<int64_t> v(q.N);
  for (int64_t t = 0; t < q.T; ++t)
    for (int64_t b = 0; b < q.rows(t); ++b)
      v[q.offset(t) + b] = t == 0 ? b : q.B + q.offset(t - 1) + b;
  return to_device_async(v, dev);
}

// ---------------------------------------------------- op: step launches --
//
// "cuda_step_launch" (csrc/options.h): 1 per_step issues the T kernels of a
// layer from the host loop; 2 graph replays them from a cached CUDA graph
// (step_graph.h).  0 auto is graph: on an H100 (2026-11-23, bench_layers.py,
// float32) the graph was as fast or faster than per-step launches at every
// benchmarked LSTM size, forward and forward+backward (D2L forward 1.11 vs
// 1.19 ms, forward+backward 3.99 vs 4.06 ms; B256 H1024 L4 187.0 vs 188.5 ms).
// Graph mode covers the loops without a projection; with proj_size each step
// also runs cuBLAS GEMMs (the projection), which are not recorded into the
// cached graphs (cuBLAS workspaces that PyTorch may free or reallocate would
// be baked into them), so those loops always launch per step.
bool graph_mode() { return get_option(Option::kCudaStepLaunch) != 1; }

// The topology part of a step-graph key (see step_graph.h): everything that
// determines which kernels the loop launches and with which grids, plus the
// layer, so that each layer of a stack keeps its own graph (its pointers stay
// the same from call to call far more often than those of different layers).
std::vector<int64_t> graph_topology(int64_t kind, int64_t layer, const LstmSizes& s,
                                    at::ScalarType dtype, const StepConfig& cfg,
                                    int64_t flags) {
  return step_graph::loop_key({kind, layer, static_cast<int64_t>(dtype), s.T, s.B, s.H, s.P,
                               cfg.bm, cfg.bn, flags},
                              s.seq.packed, s.seq.bs);
}

using step_graph::run_steps;

// --------------------------------------------------------- op: forward --

// Bidirectional (directions = 2, see ops.cpp) with cuda_bidirectional =
// one_launch: per layer, each direction's input projection is one GEMM (the
// reverse direction's on the time-reversed input, RowReverser), then ONE
// step loop whose kernels (step_pair_kernel over FwdStep) advance both
// directions, each over its own processing order; the layer's output is
// [forward | reverse reversed back].  The saved gates/cells are those of two
// one-direction calls (the reverse direction's in its processing order), so
// the backward of either path consumes them.  Not with a projection (its
// per-step cuBLAS products) or cuda_tier='persistent': those run the
// directions as separate calls (csrc/bidirectional.cpp).
// cuda_bidirectional = auto takes one launch too, except where the persistent
// tier would run each direction's one-layer call (`backward`: its backward):
// on an H200 (2026-12-04, d2l-bidir, B32 T35 I28 H256 L2, float32) one launch
// beat the separate general-tier calls (forward 1.29 vs 2.31 ms), and the
// separate persistent calls beat one launch (1.09 vs 1.29 ms; forward+backward
// 3.50 vs 3.83).
bool one_launch_applies(const LstmSizes& s, const Tensor& input, bool backward) {
  const int64_t option = get_option(Option::kCudaBidirectional);
  if (option == 1 || get_option(Option::kCudaTier) == 2 || s.has_proj || s.T == 0 ||
      s.B == 0 || s.H == 0)
    return false;
  return option == 2 || !persistent_lstm_runs_direction(s, input, backward);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward_one_launch(
    const LstmSizes& s, const Tensor& input_, const Tensor& hx_, const Tensor& cx_,
    at::TensorList weights_, bool has_biases, bool train) {
  check_cuda_supported(s, "lstm_forward");
  const c10::cuda::CUDAGuard guard(input_.device());
  check_packed_not_capturing(s.seq, "lstm_forward");
  const int64_t B = s.B, H = s.H, L = s.L, N = s.seq.N, G4 = 4 * H;  // P = H here
  const SeqLayout& q = s.seq;
  const auto opts = input_.options();
  Tensor output = at::empty(s.rows_shape(2 * H), opts);
  Tensor hy = at::empty({2 * L, B, H}, opts);
  Tensor cy = at::empty({2 * L, B, H}, opts);
  Tensor gates, cells, hiddens;
  if (train) {
    gates = at::empty(s.rows_shape(G4, 2 * L), opts);
    cells = at::empty(s.rows_shape(H, 2 * L), opts);
    hiddens = at::empty(s.rows_shape(2 * H, L - 1), opts);
  } else {
    gates = at::empty({0}, opts);
    cells = at::empty({0}, opts);
    hiddens = at::empty({0}, opts);
  }
  const Tensor input = input_.contiguous(), hx = hx_.contiguous(), cx = cx_.contiguous();
  const std::vector<Tensor> w = contiguous_all(weights_);
  const StepConfig cfg = choose_config(B, H, sm_count());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const PairLayer pl(s, input);

  Tensor gx = at::empty({2, N, G4}, opts);  // each direction's input projection
  Tensor outs = at::empty({2, N, H}, opts);  // each direction's h_t, processing order
  Tensor c_state = at::empty({2, B, H}, opts.dtype(acc_scalar_type(input.scalar_type())));
  Tensor last_idx;
  if (q.packed) last_idx = last_rows(q, input.device());

  Tensor x = input.reshape({N, s.I});
  for (int64_t l = 0; l < L; ++l) {
    pl.input_projections(x, w, l, has_biases, /*fold_b_hh=*/true, gx);
    for (int64_t d = 0; d < 2; ++d) c_state[d].copy_(cx[2 * l + d]);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                    "fusedrnn_lstm_forward_one_launch", [&] {
      using acc_t = typename acc_type<scalar_t>::type;
      const scalar_t* w_hh[2];
      const scalar_t* h0[2];
      const scalar_t* gx_p[2];
      scalar_t* out_p[2];
      scalar_t* gates_p[2];
      scalar_t* cells_p[2];
      acc_t* c_p[2];
      for (int64_t d = 0; d < 2; ++d) {
        const int64_t k = 2 * l + d;
        w_hh[d] = w[k * s.per_layer + 1].data_ptr<scalar_t>();
        h0[d] = hx.data_ptr<scalar_t>() + k * B * H;
        gx_p[d] = gx.data_ptr<scalar_t>() + d * N * G4;
        out_p[d] = outs.data_ptr<scalar_t>() + d * N * H;
        gates_p[d] = train ? gates.data_ptr<scalar_t>() + k * N * G4 : nullptr;
        cells_p[d] = train ? cells.data_ptr<scalar_t>() + k * N * H : nullptr;
        c_p[d] = c_state.data_ptr<acc_t>() + d * B * H;
      }
      auto steps = [&](cudaStream_t st) {
        for (int64_t t = 0; t < s.T; ++t) {
          const int64_t rows = q.rows(t), o = q.offset(t);
          ArgPair<FwdStep<scalar_t>> p;
          for (int d = 0; d < 2; ++d) {
            FwdStep<scalar_t>& a = p.d[d];
            a.h_prev = t == 0 ? h0[d] : out_p[d] + q.offset(t - 1) * H;
            a.w_hh = w_hh[d];
            a.gx = gx_p[d] + o * G4;
            a.c_state = c_p[d];
            a.h_out = out_p[d] + o * H;
            a.gates_out = train ? gates_p[d] + o * G4 : nullptr;
            a.cell_out = train ? cells_p[d] + o * H : nullptr;
            a.B = rows;
            a.H = H;
            a.K = H;
          }
          launch_pair(cfg, st, p);
        }
      };
      run_steps(graph_mode(), graph_topology(2, l, s, input.scalar_type(), cfg, train ? 1 : 0),
                {w_hh[0], w_hh[1], h0[0], h0[1], gx_p[0], out_p[0], gates_p[0], gates_p[1],
                 cells_p[0], cells_p[1], c_p[0]},
                stream, steps);
    });
    for (int64_t d = 0; d < 2; ++d) {
      const Tensor out_d = outs[d];
      hy[2 * l + d].copy_(q.packed ? out_d.index_select(0, last_idx) : out_d.narrow(0, N - B, B));
      cy[2 * l + d].copy_(c_state[d]);
    }
    // The layer's output, [forward | reverse in time order]: the next
    // layer's input (gx and outs are rewritten only after it is read).
    Tensor y = pl.layer_output(l, train, output, hiddens);
    pl.write_output(outs, y);
    x = y.view({N, 2 * H});
  }
  return {output, hy, cy, gates, cells, hiddens};
}


std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward_cuda(
    const Tensor& input_, const Tensor& hx_, const Tensor& cx_, at::TensorList weights_,
    bool has_biases, bool train, const std::optional<Tensor>& batch_sizes,
    int64_t directions) {
  // The shared checks compare every tensor's device and dtype with input's,
  // so together with this one all tensors are on input's CUDA device.
  check_cuda_args(input_, "lstm_forward");
  const LstmSizes s =
      check_lstm_args(input_, hx_, cx_, weights_, has_biases, batch_sizes, directions);
  if (s.D == 2) {
    if (one_launch_applies(s, input_, /*backward=*/false))
      return lstm_forward_one_launch(s, input_, hx_, cx_, weights_, has_biases, train);
    return lstm_forward_bidirectional(s, input_, hx_, cx_, weights_, has_biases, train,
                                      batch_sizes);
  }
  if (auto r = persistent_lstm_forward_if_selected(s, input_, hx_, cx_, weights_, has_biases, train))
    return *r;
  check_cuda_supported(s, "lstm_forward");
  const c10::cuda::CUDAGuard guard(input_.device());
  check_packed_not_capturing(s.seq, "lstm_forward");

  const int64_t T = s.T, B = s.B, H = s.H, P = s.P, L = s.L, N = s.seq.N, G4 = 4 * H;
  const SeqLayout& q = s.seq;
  const bool proj = s.has_proj;
  const auto opts = input_.options();
  Tensor output = at::empty(s.rows_shape(P), opts);
  Tensor hy = at::empty({L, B, P}, opts);
  Tensor cy = at::empty({L, B, H}, opts);
  Tensor gates, cells, hiddens;
  if (train) {
    gates = at::empty(s.rows_shape(G4, L), opts);
    cells = at::empty(s.rows_shape(H, L), opts);
    hiddens = at::empty(s.rows_shape(P, L - 1), opts);
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
  const std::vector<Tensor> w = contiguous_all(weights_);

  // check_cuda_supported has bounded the grid of every tile config.
  const StepConfig cfg = choose_config(B, H, sm_count());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const bool use_graph = graph_mode() && !proj;

  Tensor gx = at::empty({N, G4}, opts);  // input projection of one layer
  Tensor c_state = at::empty({B, H}, opts.dtype(acc_scalar_type(input.scalar_type())));
  Tensor scratch;  // inference: the output of the layers below the top
  if (!train && L > 1) scratch = at::empty(s.rows_shape(P), opts);
  Tensor hraw;     // projection: o ⊙ tanh(c_t) of the current step, before W_hrᵀ
  if (proj) hraw = at::empty({B, H}, opts);
  Tensor last_idx;  // packed: the row of each sequence's last step
  if (q.packed) last_idx = last_rows(q, input.device());

  Tensor x = input;
  for (int64_t l = 0; l < L; ++l) {
    const Tensor* wl = &w[l * s.per_layer];
    const int64_t I_l = x.size(-1);
    // The input projection of all N rows: one GEMM (follows allow_tf32).
    // It reads x completely before the step loop below overwrites `scratch`
    // (stream order), so input and output of a layer may share `scratch`.
    if (has_biases) {
      at::addmm_out(gx, wl[2] + wl[3], x.reshape({N, I_l}), wl[0].t());
    } else {
      at::mm_out(gx, x.reshape({N, I_l}), wl[0].t());
    }
    Tensor out = l == L - 1 ? output : (train ? hiddens[l] : scratch);
    Tensor out2 = out.view({N, P});
    c_state.copy_(cx[l]);

    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                    "fusedrnn_lstm_forward_cuda", [&] {
      using acc_t = typename acc_type<scalar_t>::type;
      const scalar_t* w_hh = wl[1].data_ptr<scalar_t>();
      const scalar_t* gx_p = gx.data_ptr<scalar_t>();
      const scalar_t* h0 = hx.data_ptr<scalar_t>() + l * B * P;
      scalar_t* out_p = out.data_ptr<scalar_t>();
      scalar_t* gates_p = train ? gates.data_ptr<scalar_t>() + l * N * G4 : nullptr;
      scalar_t* cells_p = train ? cells.data_ptr<scalar_t>() + l * N * H : nullptr;
      scalar_t* hraw_p = proj ? hraw.data_ptr<scalar_t>() : nullptr;
      acc_t* c_p = c_state.data_ptr<acc_t>();
      const Tensor w_hr_t = proj ? wl[s.per_layer - 1].t() : Tensor();
      // Step t: rows [off[t], off[t] + bs[t]); h_{t-1} is the first bs[t]
      // rows of step t-1's output (h0 at t = 0); rows of c_state beyond
      // bs[t] are left alone, so a finished sequence keeps its last c.
      auto steps = [&](cudaStream_t st) {
        for (int64_t t = 0; t < T; ++t) {
          const int64_t rows = q.rows(t), o = q.offset(t);
          FwdStep<scalar_t> a;
          a.h_prev = t == 0 ? h0 : out_p + q.offset(t - 1) * P;
          a.w_hh = w_hh;
          a.gx = gx_p + o * G4;
          a.c_state = c_p;
          a.h_out = proj ? hraw_p : out_p + o * H;
          a.gates_out = train ? gates_p + o * G4 : nullptr;
          a.cell_out = train ? cells_p + o * H : nullptr;
          a.B = rows;
          a.H = H;
          a.K = P;
          fwd_step<scalar_t>(cfg, st, a);
          if (proj) {
            // h_t = h_raw · W_hrᵀ into the step's output rows (cuBLAS on the
            // current stream, which is `st`: projection loops never run in a
            // graph).
            Tensor dst = out2.narrow(0, o, rows);
            at::mm_out(dst, hraw.narrow(0, 0, rows), w_hr_t);
          }
        }
      };
      run_steps(use_graph, graph_topology(0, l, s, input.scalar_type(), cfg, train ? 1 : 0),
                {w_hh, gx_p, h0, out_p, gates_p, cells_p, c_p}, stream, steps);
    });
    if (q.packed) {
      hy[l].copy_(out2.index_select(0, last_idx));
    } else {
      hy[l].copy_(out[T - 1]);
    }
    cy[l].copy_(c_state);
    x = out;
  }
  return {output, hy, cy, gates, cells, hiddens};
}

// -------------------------------------------------------- op: backward --

// Weight and bias gradients of one layer (and direction) as single GEMMs /
// reductions over all N rows (they follow allow_tf32): dW_ih = dGᵀ x and
// dW_hh = Σ_t dG_tᵀ h_{t-1} with h_{-1} = h0, one GEMM over the matrix of
// every row's previous hidden state (`out`: the layer's h_t rows in the same
// order as dG).  Writes grad_w[first .. first + 3] (+2, +3 with biases).
void layer_weight_grads(const SeqLayout& q, const Tensor& dG, const Tensor& x, const Tensor& out,
                        const Tensor& h0, const Tensor& prev_idx, bool has_biases,
                        std::vector<Tensor>& grad_w, int64_t first) {
  const int64_t N = q.N, B = q.B;
  Tensor h_prev;
  if (q.packed) {
    h_prev = at::cat({h0, out}, 0).index_select(0, prev_idx);
  } else {
    h_prev = q.T > 1 ? at::cat({h0, out.narrow(0, 0, N - B)}, 0) : h0;
  }
  grad_w[first] = at::mm(dG.t(), x);
  grad_w[first + 1] = at::mm(dG.t(), h_prev);
  if (has_biases) {
    Tensor db = dG.sum(0);
    grad_w[first + 2] = db;
    grad_w[first + 3] = db.clone();
  }
}


// Bidirectional backward with cuda_bidirectional = one_launch (see the
// forward): per layer from the top, each direction's output gradient in its
// processing order (the reverse half reversed) with grad_hy added at each
// sequence's last step, ONE reverse step loop of step_pair_kernel (BwdStep)
// for both directions, then per direction the weight GEMMs and its share of
// the input gradient (the reverse direction's reversed back).
std::tuple<Tensor, Tensor, Tensor, std::vector<Tensor>> lstm_backward_one_launch(
    const LstmSizes& s, const Tensor& grad_output_, const Tensor& grad_hy_,
    const Tensor& grad_cy_, const Tensor& input_, const Tensor& hx_, const Tensor& cx_,
    at::TensorList weights_, bool has_biases, const Tensor& output_, const Tensor& gates_,
    const Tensor& cells_, const Tensor& hiddens_, const GradMask& mask) {
  check_cuda_supported(s, "lstm_backward");
  const c10::cuda::CUDAGuard guard(input_.device());
  check_packed_not_capturing(s.seq, "lstm_backward");
  const int64_t T = s.T, B = s.B, H = s.H, L = s.L, N = s.seq.N, G4 = 4 * H;  // P = H here
  const SeqLayout& q = s.seq;
  const auto opts = input_.options();
  const Tensor input = input_.contiguous(), hx = hx_.contiguous(), cx = cx_.contiguous();
  const Tensor output = output_.contiguous(), gates = gates_.contiguous();
  const Tensor cells = cells_.contiguous(), hiddens = hiddens_.contiguous();
  const Tensor grad_hy = grad_hy_.contiguous(), grad_cy = grad_cy_.contiguous();
  const std::vector<Tensor> w = contiguous_all(weights_);
  const StepConfig cfg = choose_config(B, H, sm_count());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const PairLayer pl(s, input);

  Tensor grad_hx = at::empty({2 * L, B, H}, opts);
  Tensor grad_cx = at::empty({2 * L, B, H}, opts);
  std::vector<Tensor> grad_w(weights_.size());
  Tensor grad_input;
  Tensor dG = at::empty({2, N, G4}, opts);
  Tensor dys = at::empty({2, N, H}, opts);  // each direction's dh from above, processing order
  Tensor dc_state = at::empty({2, B, H}, opts.dtype(acc_scalar_type(input.scalar_type())));
  Tensor last_idx, prev_idx;
  if (q.packed) {
    last_idx = last_rows(q, input.device());
    prev_idx = prev_rows(q, input.device());
  }
  Tensor dy = grad_output_.reshape({N, 2 * H});  // gradient of the layer's output, time order

  for (int64_t l = L - 1; l >= 0; --l) {
    const Tensor x = (l == 0 ? input : hiddens[l - 1]).reshape({N, l == 0 ? s.I : 2 * H});
    const Tensor y = (l == L - 1 ? output : hiddens[l]).reshape({N, 2 * H});
    for (int64_t d = 0; d < 2; ++d) {
      const int64_t k = 2 * l + d;
      Tensor dy_d = dys[d];
      dy_d.copy_(d == 0 ? dy.narrow(1, 0, H) : pl.reversed(dy.narrow(1, H, H)));
      if (q.packed) {
        dy_d.index_copy_(0, last_idx, dy_d.index_select(0, last_idx).add_(grad_hy[k]));
      } else {
        dy_d.narrow(0, N - B, B).add_(grad_hy[k]);
      }
      dc_state[d].copy_(grad_cy[k]);
    }
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                    "fusedrnn_lstm_backward_one_launch", [&] {
      using acc_t = typename acc_type<scalar_t>::type;
      const scalar_t* w_hh[2];
      const scalar_t* dy_p[2];
      const scalar_t* gates_p[2];
      const scalar_t* cells_p[2];
      const scalar_t* c0[2];
      scalar_t* dG_p[2];
      acc_t* dc_p[2];
      for (int64_t d = 0; d < 2; ++d) {
        const int64_t k = 2 * l + d;
        w_hh[d] = w[k * s.per_layer + 1].data_ptr<scalar_t>();
        dy_p[d] = dys.data_ptr<scalar_t>() + d * N * H;
        gates_p[d] = gates.data_ptr<scalar_t>() + k * N * G4;
        cells_p[d] = cells.data_ptr<scalar_t>() + k * N * H;
        c0[d] = cx.data_ptr<scalar_t>() + k * B * H;
        dG_p[d] = dG.data_ptr<scalar_t>() + d * N * G4;
        dc_p[d] = dc_state.data_ptr<acc_t>() + d * B * H;
      }
      auto steps = [&](cudaStream_t st) {
        for (int64_t t = T - 1; t >= 0; --t) {
          const int64_t rows = q.rows(t), o = q.offset(t);
          const int64_t n_next = t + 1 < T ? q.rows(t + 1) : 0;
          ArgPair<BwdStep<scalar_t>> p;
          for (int d = 0; d < 2; ++d) {
            BwdStep<scalar_t>& a = p.d[d];
            a.dG_next = n_next > 0 ? dG_p[d] + q.offset(t + 1) * G4 : nullptr;
            a.B_next = n_next;
            a.w_hh = w_hh[d];
            a.dy = dy_p[d] + o * H;
            a.dy_extra = nullptr;
            a.gates = gates_p[d] + o * G4;
            a.c_prev = t == 0 ? c0[d] : cells_p[d] + q.offset(t - 1) * H;
            a.c = cells_p[d] + o * H;
            a.dc_state = dc_p[d];
            a.dG_out = dG_p[d] + o * G4;
            a.B = rows;
            a.H = H;
          }
          launch_pair(cfg, st, p);
        }
      };
      run_steps(graph_mode(), graph_topology(3, l, s, input.scalar_type(), cfg, 0),
                {w_hh[0], w_hh[1], dy_p[0], gates_p[0], gates_p[1], cells_p[0], cells_p[1], c0[0],
                 c0[1], dG_p[0], dc_p[0]},
                stream, steps);
    });

    Tensor dx;
    for (int64_t d = 0; d < 2; ++d) {
      const int64_t k = 2 * l + d;
      const Tensor* wl = &w[k * s.per_layer];
      const Tensor dG_d = dG[d];
      if (mask.states) {
        Tensor ghx = grad_hx[k];
        at::mm_out(ghx, dG_d.narrow(0, 0, B), wl[1]);
        grad_cx[k].copy_(dc_state[d]);
      }
      if (mask.weights) {
        // This direction's input and output rows in its processing order.
        const Tensor x_d = d == 0 ? x : pl.reversed(x);
        const Tensor out_d = d == 0 ? y.narrow(1, 0, H) : pl.reversed(y.narrow(1, H, H));
        layer_weight_grads(q, dG_d, x_d, out_d, hx[k], prev_idx, has_biases, grad_w,
                           k * s.per_layer);
      }
      if (l > 0 || mask.input) {
        const Tensor dx_d = at::mm(dG_d, wl[0]);
        dx = d == 0 ? dx_d : pl.input_grad(dx, dx_d);
      }
    }
    dy = dx;
    if (l == 0 && mask.input) grad_input = dx.view(input_.sizes());
  }
  finish_masked(mask, opts, grad_input, {&grad_hx, &grad_cx}, grad_w);
  return {grad_input, grad_hx, grad_cx, grad_w};
}

//
// Without a projection and padded, grad_hy enters the last step's kernel as
// dy_extra and the top layer reads grad_output in place.  Packed or with a
// projection, dy is a private copy to which grad_hy is added at each
// sequence's last row.  With a projection each step is
//   dh_t    = dy_t + dG_{t+1}[:bs[t+1]] · W_hh   (in place in dy; cuBLAS)
//   dh_raw  = dh_t · W_hr                         (cuBLAS, into a (B, H) buffer)
//   the step kernel's cell backward with dy = dh_raw and no product,
// and dy then holds dh_t for every row, so dW_hr = dhᵀ · h_raw with
// h_raw = o ⊙ tanh(c) recomputed from the saved gates and cells.

std::tuple<Tensor, Tensor, Tensor, std::vector<Tensor>> lstm_backward_cuda(
    const Tensor& grad_output_, const Tensor& grad_hy_, const Tensor& grad_cy_,
    const Tensor& input_, const Tensor& hx_, const Tensor& cx_, at::TensorList weights_,
    bool has_biases, const Tensor& output_, const Tensor& gates_, const Tensor& cells_,
    const Tensor& hiddens_, const std::optional<Tensor>& batch_sizes, int64_t directions,
    std::array<bool, 3> output_mask) {
  const GradMask mask(output_mask);
  check_cuda_args(input_, "lstm_backward");
  const LstmSizes s =
      check_lstm_args(input_, hx_, cx_, weights_, has_biases, batch_sizes, directions);
  check_cuda_supported(s, "lstm_backward");
  check_backward_args(s, input_, grad_output_, grad_hy_, grad_cy_, output_, gates_, cells_,
                      hiddens_);
  if (s.D == 2 && one_launch_applies(s, input_, /*backward=*/true))
    return lstm_backward_one_launch(s, grad_output_, grad_hy_, grad_cy_, input_, hx_, cx_,
                                    weights_, has_biases, output_, gates_, cells_, hiddens_,
                                    mask);
  if (s.D == 2)
    return lstm_backward_bidirectional(s, grad_output_, grad_hy_, grad_cy_, input_, hx_, cx_,
                                       weights_, has_biases, output_, gates_, cells_, hiddens_,
                                       batch_sizes, mask);
  if (auto r = persistent_lstm_backward_if_selected(s, grad_output_, grad_hy_, grad_cy_, input_,
                                                    hx_, cx_, weights_, has_biases, output_,
                                                    gates_, cells_, hiddens_, mask))
    return *r;
  const c10::cuda::CUDAGuard guard(input_.device());
  check_packed_not_capturing(s.seq, "lstm_backward");

  const int64_t T = s.T, B = s.B, H = s.H, P = s.P, L = s.L, N = s.seq.N, G4 = 4 * H;
  const SeqLayout& q = s.seq;
  const bool proj = s.has_proj;
  const auto opts = input_.options();
  std::vector<Tensor> grad_w(weights_.size());

  if (T == 0 || B == 0 || H == 0) {
    // Empty recurrence: hy = hx and cy = cx, so their gradients pass straight
    // through; nothing else receives a gradient.
    Tensor grad_input = at::zeros(input_.sizes(), opts);
    Tensor grad_hx = grad_hy_.clone(at::MemoryFormat::Contiguous);
    Tensor grad_cx = grad_cy_.clone(at::MemoryFormat::Contiguous);
    for (size_t k = 0; k < weights_.size(); ++k) grad_w[k] = at::zeros(weights_[k].sizes(), opts);
    finish_masked(mask, opts, grad_input, {&grad_hx, &grad_cx}, grad_w);
    return {grad_input, grad_hx, grad_cx, grad_w};
  }

  const Tensor input = input_.contiguous(), hx = hx_.contiguous(), cx = cx_.contiguous();
  const Tensor output = output_.contiguous(), gates = gates_.contiguous();
  const Tensor cells = cells_.contiguous(), hiddens = hiddens_.contiguous();
  const Tensor grad_hy = grad_hy_.contiguous(), grad_cy = grad_cy_.contiguous();
  const std::vector<Tensor> w = contiguous_all(weights_);

  // check_cuda_supported has bounded the grid of every tile config.
  const StepConfig cfg = choose_config(B, H, sm_count());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const bool use_graph = graph_mode() && !proj;
  // grad_hy through the kernel's dy_extra (padded, no projection), or added
  // into a private copy of dy.
  const bool dy_extra_path = !q.packed && !proj;

  Tensor grad_hx = at::empty({L, B, P}, opts);
  Tensor grad_cx = at::empty({L, B, H}, opts);
  Tensor grad_input;
  Tensor dG = at::empty({N, G4}, opts);  // one layer's dG_t, reused per layer
  Tensor dc_state = at::empty({B, H}, opts.dtype(acc_scalar_type(input.scalar_type())));
  Tensor draw;  // projection: dh_raw of the current step
  if (proj) draw = at::empty({B, H}, opts);
  Tensor last_idx, prev_idx;
  if (q.packed) {
    last_idx = last_rows(q, input.device());
    prev_idx = prev_rows(q, input.device());
  }
  // Gradient reaching the layer's outputs, as (N, P) rows.  Never modify the
  // caller's grad_output: copy it when it is written to.
  Tensor dy = grad_output_.reshape({N, P});
  if (!dy_extra_path) {
    dy = dy.clone(at::MemoryFormat::Contiguous);
  } else {
    dy = dy.contiguous();
  }

  for (int64_t l = L - 1; l >= 0; --l) {
    const Tensor* wl = &w[l * s.per_layer];
    const Tensor x = l == 0 ? input : hiddens[l - 1];       // layer input (rows, I_l)
    const Tensor out = l == L - 1 ? output : hiddens[l];    // layer output h_t (rows, P)
    const int64_t I_l = x.size(-1);
    const Tensor x2 = x.reshape({N, I_l});
    const Tensor out2 = out.reshape({N, P});
    if (!dy_extra_path) {
      // grad_hy of sequence b joins dy at b's last step (dy is our own copy;
      // a gather, an add and a scatter of distinct rows: no atomics).
      if (q.packed) {
        dy.index_copy_(0, last_idx, dy.index_select(0, last_idx).add_(grad_hy[l]));
      } else {
        dy.narrow(0, N - B, B).add_(grad_hy[l]);
      }
    }
    dc_state.copy_(grad_cy[l]);

    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                    "fusedrnn_lstm_backward_cuda", [&] {
      using acc_t = typename acc_type<scalar_t>::type;
      const scalar_t* w_hh = wl[1].data_ptr<scalar_t>();
      const scalar_t* dy_p = dy.data_ptr<scalar_t>();
      const scalar_t* dhy = dy_extra_path ? grad_hy.data_ptr<scalar_t>() + l * B * P : nullptr;
      const scalar_t* gates_p = gates.data_ptr<scalar_t>() + l * N * G4;
      const scalar_t* cells_p = cells.data_ptr<scalar_t>() + l * N * H;
      const scalar_t* c0 = cx.data_ptr<scalar_t>() + l * B * H;
      const scalar_t* draw_p = proj ? draw.data_ptr<scalar_t>() : nullptr;
      scalar_t* dG_p = dG.data_ptr<scalar_t>();
      acc_t* dc_p = dc_state.data_ptr<acc_t>();
      // Step t (in reverse): rows b < bs[t+1] also get dG_{t+1}[b] · W_hh;
      // rows of dc_state beyond bs[t] keep grad_cy until their last step.
      auto steps = [&](cudaStream_t st) {
        for (int64_t t = T - 1; t >= 0; --t) {
          const int64_t rows = q.rows(t), o = q.offset(t);
          const int64_t n_next = t + 1 < T ? q.rows(t + 1) : 0;
          BwdStep<scalar_t> a;
          a.w_hh = w_hh;
          a.gates = gates_p + o * G4;
          a.c_prev = t == 0 ? c0 : cells_p + q.offset(t - 1) * H;
          a.c = cells_p + o * H;
          a.dc_state = dc_p;
          a.dG_out = dG_p + o * G4;
          a.B = rows;
          a.H = H;
          if (proj) {
            // cuBLAS on the current stream, which is `st` (projection loops
            // never run in a graph).
            Tensor dh = dy.narrow(0, o, rows);
            if (n_next > 0) dh.narrow(0, 0, n_next).addmm_(dG.narrow(0, q.offset(t + 1), n_next), wl[1]);
            Tensor draw_rows = draw.narrow(0, 0, rows);
            at::mm_out(draw_rows, dh, wl[s.per_layer - 1]);
            a.dG_next = nullptr;
            a.B_next = 0;
            a.dy = draw_p;
            a.dy_extra = nullptr;
          } else {
            a.dG_next = n_next > 0 ? dG_p + q.offset(t + 1) * G4 : nullptr;
            a.B_next = n_next;
            a.dy = dy_p + o * H;
            a.dy_extra = t == T - 1 ? dhy : nullptr;
          }
          bwd_step<scalar_t>(cfg, st, a);
        }
      };
      run_steps(use_graph,
                graph_topology(1, l, s, input.scalar_type(), cfg, dy_extra_path ? 1 : 0),
                {w_hh, dy_p, dhy, gates_p, cells_p, c0, dG_p, dc_p}, stream, steps);
    });

    // The gradient flowing to t = -1 (every sequence is active at step 0,
    // whose dG rows are the first B).
    if (mask.states) {
      Tensor ghx = grad_hx[l];
      at::mm_out(ghx, dG.narrow(0, 0, B), wl[1]);
      grad_cx[l].copy_(dc_state);
    }

    if (mask.weights)
      layer_weight_grads(q, dG, x2, out2, hx[l], prev_idx, has_biases, grad_w, l * s.per_layer);
    if (proj && mask.weights) {
      // dW_hr = Σ dh_tᵀ h_raw_t; dy now holds dh_t of every row.
      const at::ScalarType acc = acc_scalar_type(input.scalar_type());
      const Tensor o_gate = gates[l].reshape({N, G4}).narrow(1, 3 * H, H).to(acc);
      const Tensor h_raw = (o_gate * cells[l].reshape({N, H}).to(acc).tanh()).to(opts.dtype());
      grad_w[l * s.per_layer + s.per_layer - 1] = at::mm(dy.t(), h_raw);
    }
    // Gradient for the layer below (or the op's input).  A new tensor, so it
    // does not alias dG, which the next layer overwrites, and it may be
    // written to (grad_hy of the layer below).
    if (l == 0 && !mask.input) break;
    dy = at::mm(dG, wl[0]);
    if (l == 0) grad_input = dy.view(input.sizes());
  }
  finish_masked(mask, opts, grad_input, {&grad_hx, &grad_cx}, grad_w);
  return {grad_input, grad_hx, grad_cx, grad_w};
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedrnn, CUDA, m) {
  m.impl("lstm_forward", &lstm_forward_cuda);
  m.impl("lstm_backward", &lstm_backward_cuda);
}

}  // namespace fusedrnn
