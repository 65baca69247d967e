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
//   over all N rows (the CPU path accumulates the same products a chunk of
//   steps at a time: csrc/cpu/stack_common.h's stack_backward), with
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

#include "bidirectional.h"
#include "cell_math.h"
#include "rnn_checks.h"
#include "cuda/capture_check.h"
#include "cuda/step_graph.h"
#include "cuda/tile_product.cuh"
#include "options.h"

namespace fusedrnn {
namespace {

using at::Tensor;

// The tiles, the tiled products (fwd_product, bwd_product) and the host
// helpers (with_tile, step_grid, check_grid, ...): tile_product.cuh.

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
__device__ __forceinline__ void gru_fwd_step_body(
    const scalar_t* __restrict__ h_prev, const scalar_t* __restrict__ w_hh,
    const scalar_t* __restrict__ b_hh, const scalar_t* __restrict__ gx,
    scalar_t* __restrict__ h_out, scalar_t* __restrict__ saved_out, scalar_t* __restrict__ hy_out,
    int64_t hy_from, int64_t B, int64_t H) {
  using acc_t = typename acc_type<scalar_t>::type;
  const int tx = threadIdx.x % BN, ty = threadIdx.x / BN;
  const int64_t b0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int64_t j0 = static_cast<int64_t>(blockIdx.y) * BN;
  acc_t acc[3][TM];
  fwd_product<scalar_t, 3, BM, BN, TM>(h_prev, w_hh, B, H, H, b0, j0, acc);

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
__device__ __forceinline__ void gru_bwd_step_body(
    const scalar_t* __restrict__ dG_next, const scalar_t* __restrict__ w_hh,
    const scalar_t* __restrict__ dy, const scalar_t* __restrict__ dhy,
    const scalar_t* __restrict__ saved, const scalar_t* __restrict__ h_prev,
    typename acc_type<scalar_t>::type* __restrict__ carry, scalar_t* __restrict__ dgx_out,
    scalar_t* __restrict__ dgh_out, int64_t nrec, int64_t B, int64_t H) {
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
__device__ __forceinline__ void rnn_fwd_step_body(
    const scalar_t* __restrict__ h_prev, const scalar_t* __restrict__ w_hh,
    const scalar_t* __restrict__ gx, scalar_t* __restrict__ h_out, scalar_t* __restrict__ hy_out,
    int64_t hy_from, bool relu, int64_t B, int64_t H) {
  using acc_t = typename acc_type<scalar_t>::type;
  const int tx = threadIdx.x % BN, ty = threadIdx.x / BN;
  const int64_t b0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int64_t j0 = static_cast<int64_t>(blockIdx.y) * BN;
  acc_t acc[1][TM];
  fwd_product<scalar_t, 1, BM, BN, TM>(h_prev, w_hh, B, H, H, b0, j0, acc);

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
__device__ __forceinline__ void rnn_bwd_step_body(
    const scalar_t* __restrict__ dG_next, const scalar_t* __restrict__ w_hh,
    const scalar_t* __restrict__ dy, const scalar_t* __restrict__ dhy,
    const scalar_t* __restrict__ h, scalar_t* __restrict__ dG_out, bool relu, int64_t nrec,
    int64_t B, int64_t H) {
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

// The step kernels: each __global__ runs its body above, the one-direction
// kernels with their arguments, the one-launch bidirectional kernel
// (step_pair_kernel, cuda_bidirectional = one_launch) with the direction's
// argument struct picked by blockIdx.z.  The bodies are __forceinline__, so
// both kernels run the same code per direction.
template <typename scalar_t, int BM, int BN, int TM>
__global__ void __launch_bounds__(BN * (BM / TM), kMinBlocks<scalar_t>)
gru_fwd_step_kernel(const scalar_t* __restrict__ h_prev, const scalar_t* __restrict__ w_hh,
                    const scalar_t* __restrict__ b_hh, const scalar_t* __restrict__ gx,
                    scalar_t* __restrict__ h_out, scalar_t* __restrict__ saved_out,
                    scalar_t* __restrict__ hy_out, int64_t hy_from, int64_t B, int64_t H) {
  gru_fwd_step_body<scalar_t, BM, BN, TM>(h_prev, w_hh, b_hh, gx, h_out, saved_out, hy_out,
                                          hy_from, B, H);
}

template <typename scalar_t, int BM, int BN, int TM>
__global__ void __launch_bounds__(BN * (BM / TM))
gru_bwd_step_kernel(const scalar_t* __restrict__ dG_next, const scalar_t* __restrict__ w_hh,
                    const scalar_t* __restrict__ dy, const scalar_t* __restrict__ dhy,
                    const scalar_t* __restrict__ saved, const scalar_t* __restrict__ h_prev,
                    typename acc_type<scalar_t>::type* __restrict__ carry,
                    scalar_t* __restrict__ dgx_out, scalar_t* __restrict__ dgh_out,
                    int64_t nrec, int64_t B, int64_t H) {
  gru_bwd_step_body<scalar_t, BM, BN, TM>(dG_next, w_hh, dy, dhy, saved, h_prev, carry, dgx_out,
                                          dgh_out, nrec, B, H);
}

template <typename scalar_t, int BM, int BN, int TM>
__global__ void __launch_bounds__(BN * (BM / TM), kMinBlocks<scalar_t>)
rnn_fwd_step_kernel(const scalar_t* __restrict__ h_prev, const scalar_t* __restrict__ w_hh,
                    const scalar_t* __restrict__ gx, scalar_t* __restrict__ h_out,
                    scalar_t* __restrict__ hy_out, int64_t hy_from, bool relu, int64_t B,
                    int64_t H) {
  rnn_fwd_step_body<scalar_t, BM, BN, TM>(h_prev, w_hh, gx, h_out, hy_out, hy_from, relu, B, H);
}

template <typename scalar_t, int BM, int BN, int TM>
__global__ void __launch_bounds__(BN * (BM / TM))
rnn_bwd_step_kernel(const scalar_t* __restrict__ dG_next, const scalar_t* __restrict__ w_hh,
                    const scalar_t* __restrict__ dy, const scalar_t* __restrict__ dhy,
                    const scalar_t* __restrict__ h, scalar_t* __restrict__ dG_out, bool relu,
                    int64_t nrec, int64_t B, int64_t H) {
  rnn_bwd_step_body<scalar_t, BM, BN, TM>(dG_next, w_hh, dy, dhy, h, dG_out, relu, nrec, B, H);
}

// One direction's arguments of each step kernel, for the one-launch pair.
template <typename scalar_t>
struct GruFwdArgs {
  static constexpr int kMinCtas = kMinBlocks<scalar_t>;
  const scalar_t *h_prev, *w_hh, *b_hh, *gx;
  scalar_t *h_out, *saved_out, *hy_out;
  int64_t hy_from, B, H;
  template <int BM, int BN, int TM>
  __device__ __forceinline__ void run() const {
    gru_fwd_step_body<scalar_t, BM, BN, TM>(h_prev, w_hh, b_hh, gx, h_out, saved_out, hy_out,
                                            hy_from, B, H);
  }
};

template <typename scalar_t>
struct GruBwdArgs {
  static constexpr int kMinCtas = 1;
  const scalar_t *dG_next, *w_hh, *dy, *dhy, *saved, *h_prev;
  typename acc_type<scalar_t>::type* carry;
  scalar_t *dgx_out, *dgh_out;
  int64_t nrec, B, H;
  template <int BM, int BN, int TM>
  __device__ __forceinline__ void run() const {
    gru_bwd_step_body<scalar_t, BM, BN, TM>(dG_next, w_hh, dy, dhy, saved, h_prev, carry,
                                            dgx_out, dgh_out, nrec, B, H);
  }
};

template <typename scalar_t>
struct RnnFwdArgs {
  static constexpr int kMinCtas = kMinBlocks<scalar_t>;
  const scalar_t *h_prev, *w_hh, *gx;
  scalar_t *h_out, *hy_out;
  int64_t hy_from;
  bool relu;
  int64_t B, H;
  template <int BM, int BN, int TM>
  __device__ __forceinline__ void run() const {
    rnn_fwd_step_body<scalar_t, BM, BN, TM>(h_prev, w_hh, gx, h_out, hy_out, hy_from, relu, B, H);
  }
};

template <typename scalar_t>
struct RnnBwdArgs {
  static constexpr int kMinCtas = 1;
  const scalar_t *dG_next, *w_hh, *dy, *dhy, *h;
  scalar_t* dG_out;
  bool relu;
  int64_t nrec, B, H;
  template <int BM, int BN, int TM>
  __device__ __forceinline__ void run() const {
    rnn_bwd_step_body<scalar_t, BM, BN, TM>(dG_next, w_hh, dy, dhy, h, dG_out, relu, nrec, B, H);
  }
};

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
// produced every row's pre-activation gradients (the products that
// csrc/cpu/stack_common.h's stack_backward accumulates chunk by chunk, here
// over all rows at once):
//   dgx (N, G)  gradients of x W_ihᵀ + b_ih;  dgh (N, G) of h W_hhᵀ + b_hh
//               (the same tensor for the RNN);  x2 (N, I_l) the layer input;
//   h0 (B, H);  out2 (N, H) the layer's h_t rows;  prev_idx: see prev_row_index
//   (undefined for padded input).
// Writes grad_w[base .. base+3] (unless weights is false); returns dX (N, I_l)
// (undefined when want_dx is false).
Tensor layer_param_grads(const Tensor& dgx, const Tensor& dgh, const Tensor& x2,
                         const Tensor& h0, const Tensor& out2, const Tensor& w_ih,
                         const Tensor& prev_idx, bool has_biases, std::vector<Tensor>& grad_w,
                         int64_t base, bool weights, bool want_dx) {
  if (!weights) return want_dx ? at::mm(dgx, w_ih) : Tensor();
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
  return want_dx ? at::mm(dgx, w_ih) : Tensor();
}

// The backward of an empty recurrence (no rows or H = 0): hy = hx, so grad_hy
// passes straight to grad_hx; nothing else receives a gradient.
std::tuple<Tensor, Tensor, std::vector<Tensor>> empty_backward(const Tensor& input,
                                                               const Tensor& grad_hy,
                                                               at::TensorList weights,
                                                               const GradMask& mask) {
  const auto opts = input.options();
  std::vector<Tensor> grad_w(weights.size());
  for (size_t k = 0; k < weights.size(); ++k) grad_w[k] = at::zeros(weights[k].sizes(), opts);
  Tensor grad_input = at::zeros(input.sizes(), opts);
  Tensor grad_hx = grad_hy.clone(at::MemoryFormat::Contiguous);
  finish_masked(mask, opts, grad_input, {&grad_hx}, grad_w);
  return {grad_input, grad_hx, grad_w};
}

// ------------------------------------------------------- step launches --
//
// cuda_step_launch = graph (fusedrnn.set_option) replays each layer's loop of
// step kernels from a cached CUDA graph (step_graph.h), as the LSTM does.
// "auto" is the graph here too: on an H100 (2026-11-23 06:49 UTC,
// bench_layers.py defaults, float32, results/..._full-0649.md) the graph was
// faster than per-step launches in every GRU/RNN row, e.g. RNN D2L forward
// 0.655 vs 0.731 ms and forward+backward 1.580 vs 2.131 ms, GRU D2L forward
// 1.016 vs 1.100 ms.
bool gru_rnn_graph_mode() { return get_option(Option::kCudaStepLaunch) != 1; }

// The topology part of a step-graph key (step_graph.h, loop_key): what
// decides the kernels and grids of one layer's loop.  Kinds 100.. keep these
// loops apart from the LSTM's (0, 1) in the shared cache.
enum LoopKind : int64_t {
  kGruFwd = 100, kGruBwd = 101, kRnnFwd = 102, kRnnBwd = 103,
  // the one-launch bidirectional loops (both directions per kernel)
  kGruFwdPair = 104, kGruBwdPair = 105, kRnnFwdPair = 106, kRnnBwdPair = 107
};

std::vector<int64_t> loop_topology(LoopKind kind, int64_t layer, const RnnSizes& s,
                                   at::ScalarType dtype, int64_t flags) {
  return step_graph::loop_key({kind, layer, static_cast<int64_t>(dtype), s.T, s.B, s.H, flags},
                              s.seq.packed, s.seq.bs);
}

// ==================================================================== GRU ==

constexpr const char* kGru = "fusedrnn.gru";
constexpr const char* kRnn = "fusedrnn.rnn";

// ======================================= bidirectional, one launch per step ==
//
// directions = 2 with cuda_bidirectional = one_launch (as the LSTM's, see
// lstm_cuda.cu): per layer each direction's input projection is one GEMM (the
// reverse direction's on the time-reversed input, RowReverser), then ONE step
// loop whose kernels (step_pair_kernel) advance both directions, each in its
// own processing order, so both have the same rows per step; the layer's
// output is [forward | reverse reversed back].  The saved activations are
// those of the separate one-direction calls (csrc/bidirectional.cpp), so the
// backward of either path consumes the forward of either.
// cuda_bidirectional = auto means one launch here: on an H200 (2026-12-04,
// d2l-bidir, B32 T35 I28 H256 L2, float32) it beat the separate calls, GRU
// forward 1.17 vs 2.14 ms and forward+backward 3.26 vs 6.39, RNN 0.80 vs 1.31
// and 2.34 vs 3.20 (benchmarks/results/cuda-nvidia-h200_2026-12-04.md).
bool one_launch_applies(const RnnSizes& s) {
  return get_option(Option::kCudaBidirectional) != 1 && s.seq.N > 0 && s.H > 0;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> gru_forward_one_launch(
    const RnnSizes& s, const Tensor& input_, const Tensor& hx_, at::TensorList weights_,
    bool has_biases, bool train) {
  const c10::cuda::CUDAGuard guard(input_.device());
  check_packed_not_capturing(s.seq, "gru_forward");
  check_grid(s.B, s.H, kGru);
  const SeqLayout& seq = s.seq;
  const int64_t T = s.T, B = s.B, H = s.H, L = s.L, N = seq.N, G3 = 3 * H, G4 = 4 * H;
  const auto opts = input_.options();
  Tensor output = at::empty(s.rows_shape(2 * H), opts);
  Tensor hy = at::empty({2 * L, B, H}, opts);
  Tensor saved = train ? at::empty(s.rows_shape(G4, 2 * L), opts) : at::empty({0}, opts);
  Tensor hiddens = train ? at::empty(s.rows_shape(2 * H, L - 1), opts) : at::empty({0}, opts);
  const Tensor input = input_.contiguous(), hx = hx_.contiguous();
  const std::vector<Tensor> w = contiguous_all(weights_);
  const int64_t sms = sm_count();
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const PairLayer pl(s, input);
  Tensor gx = at::empty({2, N, G3}, opts);
  Tensor outs = at::empty({2, N, H}, opts);
  Tensor x = input.reshape({N, s.I});
  for (int64_t l = 0; l < L; ++l) {
    pl.input_projections(x, w, l, has_biases, /*fold_b_hh=*/false, gx);  // b_hn stays apart
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                    "fusedrnn_gru_forward_one_launch", [&] {
      ArgPair<GruFwdArgs<scalar_t>> base;
      for (int64_t d = 0; d < 2; ++d) {
        const int64_t k = 2 * l + d;
        GruFwdArgs<scalar_t>& a = base.d[d];
        a.w_hh = w[k * s.per_layer + 1].data_ptr<scalar_t>();
        a.b_hh = has_biases ? w[k * s.per_layer + 3].data_ptr<scalar_t>() : nullptr;
        a.h_prev = hx.data_ptr<scalar_t>() + k * B * H;  // h0: step 0's h_{t-1}
        a.gx = gx.data_ptr<scalar_t>() + d * N * G3;
        a.h_out = outs.data_ptr<scalar_t>() + d * N * H;
        a.saved_out = train ? saved.data_ptr<scalar_t>() + k * N * G4 : nullptr;
        a.hy_out = hy.data_ptr<scalar_t>() + k * B * H;
        a.H = H;
      }
      auto steps = [&](cudaStream_t st) {
        for (int64_t t = 0; t < T; ++t) {
          const int64_t rows = seq.rows(t), off = seq.offset(t);
          ArgPair<GruFwdArgs<scalar_t>> p = base;
          for (int d = 0; d < 2; ++d) {
            GruFwdArgs<scalar_t>& a = p.d[d];
            const GruFwdArgs<scalar_t>& b0 = base.d[d];
            if (t > 0) a.h_prev = b0.h_out + seq.offset(t - 1) * H;
            a.gx = b0.gx + off * G3;
            a.h_out = b0.h_out + off * H;
            if (b0.saved_out != nullptr) a.saved_out = b0.saved_out + off * G4;
            a.hy_from = seq.ended_begin(t);
            a.B = rows;
          }
          launch_pair(choose_config(rows, H, sms), st, p);
        }
      };
      step_graph::run_steps(gru_rnn_graph_mode(),
                            loop_topology(kGruFwdPair, l, s, input.scalar_type(),
                                          (train ? 1 : 0) | (has_biases ? 2 : 0)),
                            {base.d[0].h_prev, base.d[1].h_prev, base.d[0].w_hh, base.d[1].w_hh,
                             base.d[0].b_hh, base.d[1].b_hh, base.d[0].gx, base.d[0].h_out,
                             base.d[0].saved_out, base.d[0].hy_out},
                            stream, steps);
    });
    Tensor y = pl.layer_output(l, train, output, hiddens);
    pl.write_output(outs, y);
    x = y.view({N, 2 * H});
  }
  return {output, hy, saved, hiddens};
}

std::tuple<Tensor, Tensor, std::vector<Tensor>> gru_backward_one_launch(
    const RnnSizes& s, const Tensor& grad_output_, const Tensor& grad_hy_, const Tensor& input_,
    const Tensor& hx_, at::TensorList weights_, bool has_biases, const Tensor& output_,
    const Tensor& saved_, const Tensor& hiddens_, const GradMask& mask) {
  const c10::cuda::CUDAGuard guard(input_.device());
  check_packed_not_capturing(s.seq, "gru_backward");
  check_grid(s.B, s.H, kGru);
  const SeqLayout& seq = s.seq;
  const int64_t T = s.T, B = s.B, H = s.H, L = s.L, N = seq.N, G3 = 3 * H, G4 = 4 * H;
  const Tensor input = input_.contiguous(), hx = hx_.contiguous();
  const Tensor output = output_.contiguous(), saved = saved_.contiguous();
  const Tensor hiddens = hiddens_.contiguous(), grad_hy = grad_hy_.contiguous();
  const std::vector<Tensor> w = contiguous_all(weights_);
  const int64_t sms = sm_count();
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const auto opts = input.options();
  const PairLayer pl(s, input);
  const Tensor prev_idx = seq.packed ? prev_row_index(seq, input.device()) : Tensor();
  Tensor grad_hx = at::empty({2 * L, B, H}, opts);
  std::vector<Tensor> grad_w(w.size());
  Tensor dgx = at::empty({2, N, G3}, opts), dgh = at::empty({2, N, G3}, opts);
  Tensor carry = at::empty({2, B, H}, opts.dtype(acc_scalar_type(input.scalar_type())));
  Tensor dys = at::empty({2, N, H}, opts);   // dh from above, processing order
  Tensor outs = at::empty({2, N, H}, opts);  // the layer's h_t, processing order
  Tensor dy = grad_output_.reshape({N, 2 * H});
  Tensor grad_input;
  for (int64_t l = L - 1; l >= 0; --l) {
    const Tensor x = (l == 0 ? input : hiddens[l - 1]).reshape({N, l == 0 ? s.I : 2 * H});
    pl.split_output((l == L - 1 ? output : hiddens[l]).reshape({N, 2 * H}), outs);
    pl.split_output(dy, dys);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                    "fusedrnn_gru_backward_one_launch", [&] {
      using acc_t = typename acc_type<scalar_t>::type;
      ArgPair<GruBwdArgs<scalar_t>> base;
      for (int64_t d = 0; d < 2; ++d) {
        const int64_t k = 2 * l + d;
        GruBwdArgs<scalar_t>& a = base.d[d];
        a.w_hh = w[k * s.per_layer + 1].data_ptr<scalar_t>();
        a.dy = dys.data_ptr<scalar_t>() + d * N * H;
        a.dhy = grad_hy.data_ptr<scalar_t>() + k * B * H;
        a.saved = saved.data_ptr<scalar_t>() + k * N * G4;
        a.h_prev = hx.data_ptr<scalar_t>() + k * B * H;  // h0: step 0's h_{t-1}
        a.carry = carry.data_ptr<acc_t>() + d * B * H;
        a.dgx_out = dgx.data_ptr<scalar_t>() + d * N * G3;
        a.dgh_out = dgh.data_ptr<scalar_t>() + d * N * G3;
        a.H = H;
      }
      const scalar_t* outs_p = outs.data_ptr<scalar_t>();
      auto steps = [&](cudaStream_t st) {
        for (int64_t t = T - 1; t >= 0; --t) {
          const int64_t rows = seq.rows(t), off = seq.offset(t);
          const int64_t nrec = seq.ended_begin(t);  // rows with a step t+1
          ArgPair<GruBwdArgs<scalar_t>> p = base;
          for (int d = 0; d < 2; ++d) {
            GruBwdArgs<scalar_t>& a = p.d[d];
            const GruBwdArgs<scalar_t>& b0 = base.d[d];
            a.dG_next = nrec > 0 ? b0.dgh_out + seq.offset(t + 1) * G3 : nullptr;
            a.dy = b0.dy + off * H;
            a.saved = b0.saved + off * G4;
            if (t > 0) a.h_prev = outs_p + d * N * H + seq.offset(t - 1) * H;
            a.dgx_out = b0.dgx_out + off * G3;
            a.dgh_out = b0.dgh_out + off * G3;
            a.nrec = nrec;
            a.B = rows;
          }
          launch_pair(choose_config(rows, H, sms), st, p);
        }
      };
      step_graph::run_steps(gru_rnn_graph_mode(),
                            loop_topology(kGruBwdPair, l, s, input.scalar_type(), 0),
                            {base.d[0].w_hh, base.d[1].w_hh, base.d[0].dy, base.d[0].dhy,
                             base.d[1].dhy, base.d[0].saved, base.d[1].saved, base.d[0].h_prev,
                             base.d[1].h_prev, outs_p, base.d[0].carry, base.d[0].dgx_out,
                             base.d[0].dgh_out},
                            stream, steps);
    });
    Tensor dx;
    for (int64_t d = 0; d < 2; ++d) {
      const int64_t k = 2 * l + d;
      const Tensor* wl = &w[k * s.per_layer];
      if (mask.states) grad_hx[k].copy_(carry[d] + at::mm(dgh[d].narrow(0, 0, B), wl[1]));
      Tensor dx_d = layer_param_grads(dgx[d], dgh[d], d == 0 ? x : pl.reversed(x), hx[k], outs[d],
                                      wl[0], prev_idx, has_biases, grad_w, k * s.per_layer,
                                      mask.weights, l > 0 || mask.input);
      if (dx_d.defined()) dx = d == 0 ? dx_d : pl.input_grad(dx, dx_d);
    }
    dy = dx;
    if (l == 0 && mask.input) grad_input = dx.view(input_.sizes());
  }
  finish_masked(mask, opts, grad_input, {&grad_hx}, grad_w);
  return {grad_input, grad_hx, grad_w};
}

std::tuple<Tensor, Tensor, Tensor> rnn_forward_one_launch(
    const RnnSizes& s, const Tensor& input_, const Tensor& hx_, at::TensorList weights_,
    bool has_biases, bool relu, bool train) {
  const c10::cuda::CUDAGuard guard(input_.device());
  check_packed_not_capturing(s.seq, "rnn_forward");
  check_grid(s.B, s.H, kRnn);
  const SeqLayout& seq = s.seq;
  const int64_t T = s.T, B = s.B, H = s.H, L = s.L, N = seq.N;
  const auto opts = input_.options();
  Tensor output = at::empty(s.rows_shape(2 * H), opts);
  Tensor hy = at::empty({2 * L, B, H}, opts);
  Tensor hiddens = train ? at::empty(s.rows_shape(2 * H, L - 1), opts) : at::empty({0}, opts);
  const Tensor input = input_.contiguous(), hx = hx_.contiguous();
  const std::vector<Tensor> w = contiguous_all(weights_);
  const int64_t sms = sm_count();
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const PairLayer pl(s, input);
  Tensor gx = at::empty({2, N, H}, opts);
  Tensor outs = at::empty({2, N, H}, opts);
  Tensor x = input.reshape({N, s.I});
  for (int64_t l = 0; l < L; ++l) {
    pl.input_projections(x, w, l, has_biases, /*fold_b_hh=*/true, gx);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                    "fusedrnn_rnn_forward_one_launch", [&] {
      ArgPair<RnnFwdArgs<scalar_t>> base;
      for (int64_t d = 0; d < 2; ++d) {
        const int64_t k = 2 * l + d;
        RnnFwdArgs<scalar_t>& a = base.d[d];
        a.w_hh = w[k * s.per_layer + 1].data_ptr<scalar_t>();
        a.h_prev = hx.data_ptr<scalar_t>() + k * B * H;  // h0: step 0's h_{t-1}
        a.gx = gx.data_ptr<scalar_t>() + d * N * H;
        a.h_out = outs.data_ptr<scalar_t>() + d * N * H;
        a.hy_out = hy.data_ptr<scalar_t>() + k * B * H;
        a.relu = relu;
        a.H = H;
      }
      auto steps = [&](cudaStream_t st) {
        for (int64_t t = 0; t < T; ++t) {
          const int64_t rows = seq.rows(t), off = seq.offset(t);
          ArgPair<RnnFwdArgs<scalar_t>> p = base;
          for (int d = 0; d < 2; ++d) {
            RnnFwdArgs<scalar_t>& a = p.d[d];
            const RnnFwdArgs<scalar_t>& b0 = base.d[d];
            if (t > 0) a.h_prev = b0.h_out + seq.offset(t - 1) * H;
            a.gx = b0.gx + off * H;
            a.h_out = b0.h_out + off * H;
            a.hy_from = seq.ended_begin(t);
            a.B = rows;
          }
          launch_pair(choose_config(rows, H, sms), st, p);
        }
      };
      step_graph::run_steps(gru_rnn_graph_mode(),
                            loop_topology(kRnnFwdPair, l, s, input.scalar_type(), relu ? 1 : 0),
                            {base.d[0].h_prev, base.d[1].h_prev, base.d[0].w_hh, base.d[1].w_hh,
                             base.d[0].gx, base.d[0].h_out, base.d[0].hy_out},
                            stream, steps);
    });
    Tensor y = pl.layer_output(l, train, output, hiddens);
    pl.write_output(outs, y);
    x = y.view({N, 2 * H});
  }
  return {output, hy, hiddens};
}

std::tuple<Tensor, Tensor, std::vector<Tensor>> rnn_backward_one_launch(
    const RnnSizes& s, const Tensor& grad_output_, const Tensor& grad_hy_, const Tensor& input_,
    const Tensor& hx_, at::TensorList weights_, bool has_biases, bool relu,
    const Tensor& output_, const Tensor& hiddens_, const GradMask& mask) {
  const c10::cuda::CUDAGuard guard(input_.device());
  check_packed_not_capturing(s.seq, "rnn_backward");
  check_grid(s.B, s.H, kRnn);
  const SeqLayout& seq = s.seq;
  const int64_t T = s.T, B = s.B, H = s.H, L = s.L, N = seq.N;
  const Tensor input = input_.contiguous(), hx = hx_.contiguous();
  const Tensor output = output_.contiguous(), hiddens = hiddens_.contiguous();
  const Tensor grad_hy = grad_hy_.contiguous();
  const std::vector<Tensor> w = contiguous_all(weights_);
  const int64_t sms = sm_count();
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const auto opts = input.options();
  const PairLayer pl(s, input);
  const Tensor prev_idx = seq.packed ? prev_row_index(seq, input.device()) : Tensor();
  Tensor grad_hx = at::empty({2 * L, B, H}, opts);
  std::vector<Tensor> grad_w(w.size());
  Tensor dG = at::empty({2, N, H}, opts);
  Tensor dys = at::empty({2, N, H}, opts);   // dh from above, processing order
  Tensor outs = at::empty({2, N, H}, opts);  // the layer's h_t, processing order
  Tensor dy = grad_output_.reshape({N, 2 * H});
  Tensor grad_input;
  for (int64_t l = L - 1; l >= 0; --l) {
    const Tensor x = (l == 0 ? input : hiddens[l - 1]).reshape({N, l == 0 ? s.I : 2 * H});
    pl.split_output((l == L - 1 ? output : hiddens[l]).reshape({N, 2 * H}), outs);
    pl.split_output(dy, dys);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                    "fusedrnn_rnn_backward_one_launch", [&] {
      ArgPair<RnnBwdArgs<scalar_t>> base;
      for (int64_t d = 0; d < 2; ++d) {
        const int64_t k = 2 * l + d;
        RnnBwdArgs<scalar_t>& a = base.d[d];
        a.w_hh = w[k * s.per_layer + 1].data_ptr<scalar_t>();
        a.dy = dys.data_ptr<scalar_t>() + d * N * H;
        a.dhy = grad_hy.data_ptr<scalar_t>() + k * B * H;
        a.h = outs.data_ptr<scalar_t>() + d * N * H;
        a.dG_out = dG.data_ptr<scalar_t>() + d * N * H;
        a.relu = relu;
        a.H = H;
      }
      auto steps = [&](cudaStream_t st) {
        for (int64_t t = T - 1; t >= 0; --t) {
          const int64_t rows = seq.rows(t), off = seq.offset(t);
          const int64_t nrec = seq.ended_begin(t);
          ArgPair<RnnBwdArgs<scalar_t>> p = base;
          for (int d = 0; d < 2; ++d) {
            RnnBwdArgs<scalar_t>& a = p.d[d];
            const RnnBwdArgs<scalar_t>& b0 = base.d[d];
            a.dG_next = nrec > 0 ? b0.dG_out + seq.offset(t + 1) * H : nullptr;
            a.dy = b0.dy + off * H;
            a.h = b0.h + off * H;
            a.dG_out = b0.dG_out + off * H;
            a.nrec = nrec;
            a.B = rows;
          }
          launch_pair(choose_config(rows, H, sms), st, p);
        }
      };
      step_graph::run_steps(gru_rnn_graph_mode(),
                            loop_topology(kRnnBwdPair, l, s, input.scalar_type(), relu ? 1 : 0),
                            {base.d[0].w_hh, base.d[1].w_hh, base.d[0].dy, base.d[0].dhy,
                             base.d[1].dhy, base.d[0].h, base.d[0].dG_out},
                            stream, steps);
    });
    Tensor dx;
    for (int64_t d = 0; d < 2; ++d) {
      const int64_t k = 2 * l + d;
      const Tensor* wl = &w[k * s.per_layer];
      if (mask.states) {
        Tensor grad_hx_k = grad_hx[k];
        at::mm_out(grad_hx_k, dG[d].narrow(0, 0, B), wl[1]);
      }
      Tensor dx_d = layer_param_grads(dG[d], dG[d], d == 0 ? x : pl.reversed(x), hx[k], outs[d],
                                      wl[0], prev_idx, has_biases, grad_w, k * s.per_layer,
                                      mask.weights, l > 0 || mask.input);
      if (dx_d.defined()) dx = d == 0 ? dx_d : pl.input_grad(dx, dx_d);
    }
    dy = dx;
    if (l == 0 && mask.input) grad_input = dx.view(input_.sizes());
  }
  finish_masked(mask, input_.options(), grad_input, {&grad_hx}, grad_w);
  return {grad_input, grad_hx, grad_w};
}


std::tuple<Tensor, Tensor, Tensor, Tensor> gru_forward_cuda(
    const Tensor& input_, const Tensor& hx_, at::TensorList weights_, bool has_biases,
    bool train, const std::optional<Tensor>& batch_sizes,
    int64_t directions) {
  // The shared checks compare every tensor's device and dtype with input's,
  // so together with this one all tensors are on input's CUDA device.
  check_cuda_args(input_, "gru_forward");
  const RnnSizes s = check_stack_args(kGru, 3, input_, hx_, {}, weights_, has_biases,
                                      batch_sizes, false, directions);
  if (s.D == 2 && one_launch_applies(s))
    return gru_forward_one_launch(s, input_, hx_, weights_, has_biases, train);
  if (s.D == 2)
    return gru_forward_bidirectional(s, input_, hx_, weights_, has_biases, train, batch_sizes);
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
  check_grid(B, H, kGru);

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
      auto steps = [&](cudaStream_t st) {
        for (int64_t t = 0; t < T; ++t) {
          const int64_t rows = seq.rows(t), off = seq.offset(t);
          const scalar_t* h_prev = t == 0 ? h0 : out_p + seq.offset(t - 1) * H;
          scalar_t* sv = saved_p != nullptr ? saved_p + off * G4 : nullptr;
          const int64_t hy_from = seq.ended_begin(t);
          with_tile(choose_config(rows, H, sms), [&](auto tile) {
            using TL = decltype(tile);
            gru_fwd_step_kernel<scalar_t, TL::BM, TL::BN, TL::TM><<<step_grid<TL>(rows, H), TL::NT, 0, st>>>(
                h_prev, w_hh, b_hh, gx_p + off * G3, out_p + off * H, sv, hy_p, hy_from, rows, H);
            C10_CUDA_KERNEL_LAUNCH_CHECK();
          });
        }
      };
      step_graph::run_steps(gru_rnn_graph_mode(),
                            loop_topology(kGruFwd, l, s, input.scalar_type(),
                                          (train ? 1 : 0) | (has_biases ? 2 : 0)),
                            {h0, w_hh, b_hh, gx_p, out_p, saved_p, hy_p}, stream, steps);
    });
    x = out;
  }
  return {output, hy, saved, hiddens};
}

std::tuple<Tensor, Tensor, std::vector<Tensor>> gru_backward_cuda(
    const Tensor& grad_output_, const Tensor& grad_hy_, const Tensor& input_, const Tensor& hx_,
    at::TensorList weights_, bool has_biases, const Tensor& output_, const Tensor& saved_,
    const Tensor& hiddens_, const std::optional<Tensor>& batch_sizes, int64_t directions,
    std::array<bool, 3> output_mask) {
  const GradMask mask(output_mask);
  check_cuda_args(input_, "gru_backward");
  const RnnSizes s = check_stack_args(kGru, 3, input_, hx_, {}, weights_, has_biases,
                                      batch_sizes, false, directions);
  check_gru_backward_args(s, input_, grad_output_, grad_hy_, output_, saved_, hiddens_);
  if (s.D == 2 && one_launch_applies(s))
    return gru_backward_one_launch(s, grad_output_, grad_hy_, input_, hx_, weights_, has_biases,
                                   output_, saved_, hiddens_, mask);
  if (s.D == 2)
    return gru_backward_bidirectional(s, grad_output_, grad_hy_, input_, hx_, weights_,
                                      has_biases, output_, saved_, hiddens_, batch_sizes, mask);
  const c10::cuda::CUDAGuard guard(input_.device());
  check_packed_not_capturing(s.seq, "gru_backward");
  const SeqLayout& seq = s.seq;
  const int64_t T = s.T, B = s.B, H = s.H, L = s.L, N = seq.N, G3 = 3 * H, G4 = 4 * H;
  if (N == 0 || H == 0) return empty_backward(input_, grad_hy_, weights_, mask);
  check_grid(B, H, kGru);

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
      auto steps = [&](cudaStream_t st) {
        for (int64_t t = T - 1; t >= 0; --t) {
          const int64_t rows = seq.rows(t), off = seq.offset(t);
          const int64_t nrec = seq.ended_begin(t);  // rows with a step t+1
          const scalar_t* dG_next = nrec > 0 ? dgh_p + seq.offset(t + 1) * G3 : nullptr;
          const scalar_t* h_prev = t == 0 ? h0 : out_p + seq.offset(t - 1) * H;
          with_tile(choose_config(rows, H, sms), [&](auto tile) {
            using TL = decltype(tile);
            gru_bwd_step_kernel<scalar_t, TL::BM, TL::BN, TL::TM><<<step_grid<TL>(rows, H), TL::NT, 0, st>>>(
                dG_next, w_hh, dy_p + off * H, dhy, saved_p + off * G4, h_prev, carry_p,
                dgx_p + off * G3, dgh_p + off * G3, nrec, rows, H);
            C10_CUDA_KERNEL_LAUNCH_CHECK();
          });
        }
      };
      step_graph::run_steps(gru_rnn_graph_mode(),
                            loop_topology(kGruBwd, l, s, input.scalar_type(), 0),
                            {w_hh, dy_p, dhy, saved_p, out_p, h0, dgx_p, dgh_p, carry_p}, stream,
                            steps);
    });

    // The gradient reaching h_{-1} = hx[l]: the carry z_0·dh_0 plus the
    // recurrent part dGh_0 · W_hh (step 0 holds all B sequences).
    if (mask.states) grad_hx[l].copy_(carry + at::mm(dgh.narrow(0, 0, B), wl[1]));
    // Weight, bias and input gradients: large GEMMs over all rows.  A new dy
    // (mm's result) for the layer below: it does not alias dgx/dgh.
    dy = layer_param_grads(dgx, dgh, x.reshape({N, x.size(-1)}), hx[l], out.reshape({N, H}),
                           wl[0], prev_idx, has_biases, grad_w, l * s.per_layer, mask.weights,
                           l > 0 || mask.input);
    if (l == 0 && mask.input) grad_input = dy.view(input_.sizes());
  }
  finish_masked(mask, input_.options(), grad_input, {&grad_hx}, grad_w);
  return {grad_input, grad_hx, grad_w};
}

// ==================================================================== RNN ==

std::tuple<Tensor, Tensor, Tensor> rnn_forward_cuda(const Tensor& input_, const Tensor& hx_,
                                                    at::TensorList weights_, bool has_biases,
                                                    bool relu, bool train,
                                                    const std::optional<Tensor>& batch_sizes,
    int64_t directions) {
  check_cuda_args(input_, "rnn_forward");
  const RnnSizes s = check_stack_args(kRnn, 1, input_, hx_, {}, weights_, has_biases,
                                      batch_sizes, false, directions);
  if (s.D == 2 && one_launch_applies(s))
    return rnn_forward_one_launch(s, input_, hx_, weights_, has_biases, relu, train);
  if (s.D == 2)
    return rnn_forward_bidirectional(s, input_, hx_, weights_, has_biases, relu, train,
                                     batch_sizes);
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
  check_grid(B, H, kRnn);

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
      auto steps = [&](cudaStream_t st) {
        for (int64_t t = 0; t < T; ++t) {
          const int64_t rows = seq.rows(t), off = seq.offset(t);
          const scalar_t* h_prev = t == 0 ? h0 : out_p + seq.offset(t - 1) * H;
          const int64_t hy_from = seq.ended_begin(t);
          with_tile(choose_config(rows, H, sms), [&](auto tile) {
            using TL = decltype(tile);
            rnn_fwd_step_kernel<scalar_t, TL::BM, TL::BN, TL::TM><<<step_grid<TL>(rows, H), TL::NT, 0, st>>>(
                h_prev, w_hh, gx_p + off * H, out_p + off * H, hy_p, hy_from, relu, rows, H);
            C10_CUDA_KERNEL_LAUNCH_CHECK();
          });
        }
      };
      step_graph::run_steps(gru_rnn_graph_mode(),
                            loop_topology(kRnnFwd, l, s, input.scalar_type(), relu ? 1 : 0),
                            {h0, w_hh, gx_p, out_p, hy_p}, stream, steps);
    });
    x = out;
  }
  return {output, hy, hiddens};
}

std::tuple<Tensor, Tensor, std::vector<Tensor>> rnn_backward_cuda(
    const Tensor& grad_output_, const Tensor& grad_hy_, const Tensor& input_, const Tensor& hx_,
    at::TensorList weights_, bool has_biases, bool relu, const Tensor& output_,
    const Tensor& hiddens_, const std::optional<Tensor>& batch_sizes, int64_t directions,
    std::array<bool, 3> output_mask) {
  const GradMask mask(output_mask);
  check_cuda_args(input_, "rnn_backward");
  const RnnSizes s = check_stack_args(kRnn, 1, input_, hx_, {}, weights_, has_biases,
                                      batch_sizes, false, directions);
  check_rnn_backward_args(s, input_, grad_output_, grad_hy_, output_, hiddens_);
  if (s.D == 2 && one_launch_applies(s))
    return rnn_backward_one_launch(s, grad_output_, grad_hy_, input_, hx_, weights_, has_biases,
                                   relu, output_, hiddens_, mask);
  if (s.D == 2)
    return rnn_backward_bidirectional(s, grad_output_, grad_hy_, input_, hx_, weights_,
                                      has_biases, relu, output_, hiddens_, batch_sizes, mask);
  const c10::cuda::CUDAGuard guard(input_.device());
  check_packed_not_capturing(s.seq, "rnn_backward");
  const SeqLayout& seq = s.seq;
  const int64_t T = s.T, B = s.B, H = s.H, L = s.L, N = seq.N;
  if (N == 0 || H == 0) return empty_backward(input_, grad_hy_, weights_, mask);
  check_grid(B, H, kRnn);

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
      auto steps = [&](cudaStream_t st) {
        for (int64_t t = T - 1; t >= 0; --t) {
          const int64_t rows = seq.rows(t), off = seq.offset(t);
          const int64_t nrec = seq.ended_begin(t);
          const scalar_t* dG_next = nrec > 0 ? dG_p + seq.offset(t + 1) * H : nullptr;
          with_tile(choose_config(rows, H, sms), [&](auto tile) {
            using TL = decltype(tile);
            rnn_bwd_step_kernel<scalar_t, TL::BM, TL::BN, TL::TM><<<step_grid<TL>(rows, H), TL::NT, 0, st>>>(
                dG_next, w_hh, dy_p + off * H, dhy, out_p + off * H, dG_p + off * H, relu, nrec,
                rows, H);
            C10_CUDA_KERNEL_LAUNCH_CHECK();
          });
        }
      };
      step_graph::run_steps(gru_rnn_graph_mode(),
                            loop_topology(kRnnBwd, l, s, input.scalar_type(), relu ? 1 : 0),
                            {w_hh, dy_p, dhy, out_p, dG_p}, stream, steps);
    });

    if (mask.states) {
      Tensor grad_hx_l = grad_hx[l];
      at::mm_out(grad_hx_l, dG.narrow(0, 0, B), wl[1]);
    }
    dy = layer_param_grads(dG, dG, x.reshape({N, x.size(-1)}), hx[l], out.reshape({N, H}), wl[0],
                           prev_idx, has_biases, grad_w, l * s.per_layer, mask.weights,
                           l > 0 || mask.input);
    if (l == 0 && mask.input) grad_input = dy.view(input_.sizes());
  }
  finish_masked(mask, input_.options(), grad_input, {&grad_hx}, grad_w);
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
