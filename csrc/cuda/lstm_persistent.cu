// The persistent wavefront tier of the CUDA LSTM (DESIGN.md, "two kernel
// tiers", 2): ONE cooperative kernel runs the forward of the whole stack.
//
// Layout (sized by the planner, persistent_plan.h):
//   * the grid has L * ctas_per_layer CTAs, one per SM, all co-resident
//     (cudaLaunchCooperativeKernel refuses a grid that cannot be);
//   * CTA c owns the hidden units [j0, j1) of layer l = c / ctas_per_layer,
//     all four gates of each, so the cell update is local to the CTA and the
//     cell state c stays in its shared memory for all T steps;
//   * its rows of [W_ih | W_hh] (layer 0: W_hh only) are loaded into shared
//     memory once and stay there, with the sums b_ih + b_hh of its units
//     (in acc_type); layer 0's input projection x W_ihᵀ is one GEMM (at::mm,
//     follows allow_tf32) before the kernel;
//   * the stack advances as a wavefront: at step s = 0 .. T+L-2, layer l
//     computes its timestep t = s - l (when 0 <= t < T), reading h^{l-1}_t
//     (the layer below, written at step s-1) and h^l_{t-1} (its own, written
//     at step s-1) from global memory (L2), and writing h^l_t; one grid-wide
//     barrier separates consecutive steps, T+L-1 steps in all.
//
// Per step a CTA stages the step's input rows [x_t | h_{t-1}] (batch_chunk
// rows at a time) into shared memory, then each warp computes tasks of one
// unit x kFwdTaskRows (8) batch rows: its lanes split the K = H or 2H
// products (16-byte shared-memory loads where the rows allow), each lane
// keeps the 4 x 8 partial sums, and a reduce-scatter of warp shuffles
// completes them, one per lane (warp_reduce_scatter, the same fixed order in
// every run).  Lane r then gathers the four gates of batch row r and applies
// lstm_cell_forward (cell_math.h) -- or, with the option
// persistent_cta_epilogue (auto: on except for float64), the lanes store the products in shared memory and
// after the chunk's tasks every thread applies the cell to (unit, row) pairs
// (fwd_chunk_epilogue).  Both kernels are templates over their threads per
// CTA: kThreads (256), or kThreadsWide (512; option persistent_threads, whose
// auto picks per dtype, direction and size: persistent_plan.h auto_threads).
//
// Saved for backward (train = true), in the general tier's layout, so the
// general tier's backward consumes them unchanged: gates (L,T,B,4H)
// activated i,f,g,o; cells (L,T,B,H); hiddens (L-1,T,B,H).  Inference keeps
// only two h buffers per layer below the top (ping-pong by t parity: at step
// s, layer l writes slot t%2 while it and layer l+1 read slot (t-1)%2).
//
// Precision: scalar_t weights/activations, accumulation in acc_type (float,
// or double for double), the cell state in acc_type across steps; h_t is
// rounded to scalar_t when stored, as in the general tier.  Unlike the
// general tier, the input projection of layers > 0 is accumulated together
// with the recurrent product in acc_type (not rounded to scalar_t first), so
// for half/bfloat16 the two tiers differ by rounding, not by formula.
//
// Determinism: the grid barrier's counter is the only atomic; every output
// element is computed by one lane from sums in a fixed order, so two calls
// give bitwise-identical results.
//
// Backward: the reverse wavefront (lstm_persistent_bwd_kernel, below), with
// the weight columns resident; weight/bias/input/h0 gradients are GEMMs after.
// It consumes the saved tensors of either tier's forward.
//
// Also here: fusedrnn::wavefront_floor, a bench-only op timing the same grid
// doing nothing but the T+L-1 grid barriers (the floor of this design).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cuda/atomic>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <optional>
#include <string>
#include <vector>

#include "cell_math.h"
#include "cuda/lstm_persistent.h"
#include "cuda/mma_layout.h"
#include "cuda/persistent_plan.h"
#include "cuda/stage_layout.h"
#include "options.h"

namespace fusedrnn {
namespace {

using at::Tensor;
using persistent::kMaxLayers;
using persistent::kBwdTaskRows;
using persistent::kBwdTaskUnits;
using persistent::kFwdTaskRows;
using persistent::kThreads;
using persistent::Plan;

// The kernels are templates over their threads per CTA, kT (kThreads, or
// kThreadsWide with the option persistent_threads), with kT / 32 warps.
static_assert(kThreads % 32 == 0 && persistent::kThreadsWide % 32 == 0, "whole warps");

// ------------------------------------------------------------ the barrier --
//
// A grid-wide barrier over a monotonically increasing 64-bit counter (zeroed
// before the launch).  Barrier number n (1, 2, ...) is passed when the counter
// reaches n * gridDim.x.  __syncthreads orders the CTA's earlier writes before
// thread 0's device-scope release (release is cumulative); thread 0's acquire
// load that sees every CTA's arrival, then __syncthreads, orders the other
// CTAs' writes before every later read of this CTA.  Data written by other
// CTAs is read with ld.global.cg (L2, never a stale L1 line).
__device__ __forceinline__ void grid_barrier(unsigned long long* counter,
                                             unsigned long long& target) {
  __syncthreads();
  if (threadIdx.x == 0) {
    target += gridDim.x;
    cuda::atomic_ref<unsigned long long, cuda::thread_scope_device> a(*counter);
    a.fetch_add(1ull, cuda::memory_order_release);
    while (a.load(cuda::memory_order_acquire) < target) {
    }
  }
  __syncthreads();
}

// A load through L2 only (no L1), for data other CTAs wrote before a barrier.
template <typename T>
__device__ __forceinline__ T load_cg(const T* p) {
  static_assert(sizeof(T) == 2 || sizeof(T) == 4 || sizeof(T) == 8 || sizeof(T) == 16,
                "2, 4, 8 or 16-byte values");
  T r;
  if constexpr (sizeof(T) == 16) {
    const uint4 v = __ldcg(reinterpret_cast<const uint4*>(p));
    memcpy(&r, &v, 16);
  } else if constexpr (sizeof(T) == 2) {
    const unsigned short v = __ldcg(reinterpret_cast<const unsigned short*>(p));
    memcpy(&r, &v, 2);
  } else if constexpr (sizeof(T) == 4) {
    const unsigned int v = __ldcg(reinterpret_cast<const unsigned int*>(p));
    memcpy(&r, &v, 4);
  } else {
    const unsigned long long v = __ldcg(reinterpret_cast<const unsigned long long*>(p));
    memcpy(&r, &v, 8);
  }
  return r;
}

// Stages `rows` rows of Kt elements into dst (row stride dst_ld): element
// (b, k) comes from src_a[(row0 + b) * ld + k] for k < Ka, else from
// src_b[(row0 + b) * ld + k - Ka], read through L2 (other CTAs wrote them).
// Each thread issues kStageBatch independent loads before it stores any, so
// that many L2 round trips overlap instead of running one after another; its
// elements are walked by additions, not a division each (stage_layout.h,
// which the CPU tests replay).  When every row start on both sides is 16-byte
// aligned (Kt, Ka, ld and dst_ld multiples of 16 / sizeof(scalar_t), aligned
// base pointers), the loads and stores are 16 bytes wide: a quarter
// (float32) of the load instructions and of the rounds of L2 round trips.
// The choice depends only on kernel arguments, so it is the same for the
// whole CTA.
using persistent::kStageBatch;

template <int kT, typename V, typename scalar_t>
__device__ __forceinline__ void stage_rows_as(scalar_t* dst, int dst_ld, int rows, int Kt, int Ka,
                                              const scalar_t* src_a, const scalar_t* src_b,
                                              int64_t row0, int64_t ld) {
  constexpr int W = static_cast<int>(sizeof(V) / sizeof(scalar_t));  // scalars per V
  const int ldv = static_cast<int>(ld / W);
  // The first staged row of each side (a side with no columns may be null).
  const V* a = Ka > 0 ? reinterpret_cast<const V*>(src_a) + row0 * ldv : nullptr;
  const V* c = Kt > Ka ? reinterpret_cast<const V*>(src_b) + row0 * ldv : nullptr;
  V* d = reinterpret_cast<V*>(dst);
  persistent::stage_copy<kStageBatch, V>(
      static_cast<int>(threadIdx.x), kT, rows, Kt / W, Ka / W, ldv,
      dst_ld / W, [&](int side, int off) { return load_cg((side == 0 ? a : c) + off); },
      [&](int off, const V& v) { d[off] = v; });
}

template <int kT, typename scalar_t>
__device__ __forceinline__ void stage_rows(scalar_t* dst, int dst_ld, int rows, int Kt, int Ka,
                                           const scalar_t* src_a, const scalar_t* src_b,
                                           int64_t row0, int64_t ld) {
  constexpr int W = static_cast<int>(16 / sizeof(scalar_t));
  const auto aligned = [](const void* q) {
    return (reinterpret_cast<uintptr_t>(q) & 15u) == 0;
  };
  if (Kt % W == 0 && Ka % W == 0 && ld % W == 0 && dst_ld % W == 0 && aligned(dst) &&
      aligned(src_a) && aligned(src_b)) {
    stage_rows_as<kT, uint4>(dst, dst_ld, rows, Kt, Ka, src_a, src_b, row0, ld);
  } else {
    stage_rows_as<kT, scalar_t>(dst, dst_ld, rows, Kt, Ka, src_a, src_b, row0, ld);
  }
}

// ------------------------------------------------------------ warp tasks --
//
// A warp task computes Q x R dot products of length K: weight rows w[q]
// against staged rows x[r], both in shared memory.  Lane l takes the chunks
// of E consecutive elements at k = E * (l + 32 i) (E = 16 / sizeof(scalar_t)
// when every row start is 16-byte aligned, so each load is one 16-byte
// shared-memory access; else E = 1) and keeps the Q*R partial sums in
// registers; warp_reduce_scatter then completes them across the lanes.

// The E scalars at p (16-byte aligned when E > 1), converted to acc_t.
template <int E, typename scalar_t, typename acc_t>
__device__ __forceinline__ void load_chunk(acc_t (&out)[E], const scalar_t* p) {
  if constexpr (E == 1) {
    out[0] = static_cast<acc_t>(*p);
  } else {
    static_assert(E * sizeof(scalar_t) == 16, "a chunk is 16 bytes");
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    scalar_t v[E];
    memcpy(v, &raw, 16);
#pragma unroll
    for (int e = 0; e < E; ++e) out[e] = static_cast<acc_t>(v[e]);
  }
}

// acc[q * R + r] = this lane's share of sum_k w[q][k] * x[r][k], k < K.
template <int Q, int R, int E, typename scalar_t, typename acc_t>
__device__ __forceinline__ void lane_products(acc_t (&acc)[Q * R], const scalar_t* const (&w)[Q],
                                              const scalar_t* const (&x)[R], int K, int lane) {
#pragma unroll
  for (int i = 0; i < Q * R; ++i) acc[i] = acc_t(0);
  for (int k = lane * E; k < K; k += 32 * E) {
    acc_t wv[Q][E], xv[R][E];
#pragma unroll
    for (int q = 0; q < Q; ++q) load_chunk<E>(wv[q], w[q] + k);
#pragma unroll
    for (int r = 0; r < R; ++r) load_chunk<E>(xv[r], x[r] + k);
#pragma unroll
    for (int e = 0; e < E; ++e)
#pragma unroll
      for (int q = 0; q < Q; ++q)
#pragma unroll
        for (int r = 0; r < R; ++r) acc[q * R + r] += wv[q][e] * xv[r][e];
  }
}

// lane_products for the two-unit forward tasks, lean on registers: the 8
// weight rows are w0 + q * qstride and w1 + q * qstride (q = 0..3: the gates
// of the two units), the R staged rows x0 + min(r, rows - 1) * K; per chunk
// position a lane holds the 8 weight chunks and one staged chunk at a time,
// so that 64 accumulators fit beside them in 128 registers (512 threads).
// acc[(u * 4 + q) * R + r], u = 0 for w0, 1 for w1.
template <int R, int E, typename scalar_t, typename acc_t>
__device__ __forceinline__ void lane_products_pair(acc_t (&acc)[8 * R], const scalar_t* w0,
                                                   const scalar_t* w1, int qstride,
                                                   const scalar_t* x0, int rows, int K,
                                                   int lane) {
#pragma unroll
  for (int i = 0; i < 8 * R; ++i) acc[i] = acc_t(0);
  for (int k = lane * E; k < K; k += 32 * E) {
    acc_t wv[8][E];
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      load_chunk<E>(wv[q], w0 + q * qstride + k);
      load_chunk<E>(wv[4 + q], w1 + q * qstride + k);
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
      acc_t xv[E];
      load_chunk<E>(xv, x0 + (r < rows ? r : rows - 1) * K + k);
#pragma unroll
      for (int e = 0; e < E; ++e)
#pragma unroll
        for (int g = 0; g < 8; ++g) acc[g * R + r] += wv[g][e] * xv[e];
    }
  }
}

// Completes N (a power of two, <= 32) per-lane partial sums v[0..N-1] across
// the warp: returns, in lane l, the warp-wide sum of v[l / (32 / N)].  Each
// halving step sends the half of its values a lane does not keep to its
// partner and adds the half it receives, so the warp moves N-1 + 5-log2(N)
// values instead of 5 per value for a butterfly of each; every sum is formed
// in one fixed order (lane pairs that end with the same value compute a + b
// and b + a, which are equal), so results are bitwise reproducible.
// One halving step of warp_reduce_scatter on v[0..2h): the lanes with bit o
// set keep v[h..2h) and send v[0..h), the others the reverse; the kept
// sums land in v[0..h).  Then the next step, on v[0..h) with o / 2.
template <int h, int o, int N, typename acc_t>
__device__ __forceinline__ void reduce_halves(acc_t (&v)[N], int lane) {
  if constexpr (h >= 1) {
    const bool upper = (lane & o) != 0;
#pragma unroll
    for (int i = 0; i < h; ++i) {
      const acc_t keep = upper ? v[i + h] : v[i];
      const acc_t send = upper ? v[i] : v[i + h];
      v[i] = keep + __shfl_xor_sync(0xffffffffu, send, o);
    }
    reduce_halves<h / 2, o / 2>(v, lane);
  }
}

template <int N, typename acc_t>
__device__ __forceinline__ acc_t warp_reduce_scatter(acc_t (&v)[N], int lane) {
  static_assert(N >= 1 && N <= 32 && (N & (N - 1)) == 0, "N is a power of two <= 32");
  reduce_halves<N / 2, 16>(v, lane);
  // log2(N) halvings used the offsets 16 .. 32 / N; a butterfly on the one
  // remaining value covers the smaller offsets.
  acc_t r = v[0];
#pragma unroll
  for (int o = 16 / N; o > 0; o >>= 1) r += __shfl_xor_sync(0xffffffffu, r, o);
  return r;
}

// Whether every row start of the weights (row length K) and of the stage
// (row length K, and the split point Kx) is 16-byte aligned, so that the
// warp tasks may load 16-byte chunks.
template <typename scalar_t>
__device__ __forceinline__ bool chunks_aligned(int K, int Kx, const void* Ws, const void* xs) {
  constexpr int W = static_cast<int>(16 / sizeof(scalar_t));
  return K % W == 0 && Kx % W == 0 && (reinterpret_cast<uintptr_t>(Ws) & 15u) == 0 &&
         (reinterpret_cast<uintptr_t>(xs) & 15u) == 0;
}

// --------------------------------------------------------------- forward --

template <typename scalar_t>
struct FwdParams {
  using acc_t = typename acc_type<scalar_t>::type;
  const scalar_t* w_ih[kMaxLayers];  // (4H, H) of layers > 0 (entry 0 unused)
  const scalar_t* w_hh[kMaxLayers];  // (4H, H)
  const scalar_t* b_ih[kMaxLayers];  // (4H) per layer, or nullptr (no biases)
  const scalar_t* b_hh[kMaxLayers];  // (4H) per layer, or nullptr
  const scalar_t* gx0;     // (T, B, 4H) layer 0's x W_ihᵀ
  const scalar_t* hx;      // (L, B, H)
  const scalar_t* cx;      // (L, B, H)
  scalar_t* output;        // (T, B, H) h_t of the last layer
  scalar_t* hid;           // layers < L-1: (L-1, hid_slots, B, H); nullptr for L = 1
  int64_t hid_slots;       // T (train: `hiddens`) or 2 (inference ping-pong)
  scalar_t* hy;            // (L, B, H)
  scalar_t* cy;            // (L, B, H)
  scalar_t* gates;         // (L, T, B, 4H) or nullptr (inference)
  scalar_t* cells;         // (L, T, B, H) or nullptr (inference)
  unsigned long long* barrier;  // zeroed
  int64_t T, B, H, L;
  int64_t units, ctas_per_layer, batch_chunk;
  int64_t off_bias, off_cstate, off_stage;  // byte offsets in dynamic smem
  // The tensor-core product (EXPERIMENTAL; persistent_plan.h): tile shape
  // mma_tm x mma_tn (mma_tm = 0: the FMA warp tasks), K slices per tile, the
  // product area's rows per slice (4U) and row length (staged rows rounded up
  // to mma_tn), and its offset.
  int mma_tm, mma_tn, mma_ksplit, mma_mpad, mma_npad;
  int64_t off_product;
  // The FMA path's CTA-wide epilogue (persistent_plan.h,
  // cta_epilogue_bytes): the tasks store their products to [4][batch_chunk][U]
  // at off_product and fwd_chunk_epilogue applies the cell.  0: lane r of
  // each task applies it to its row.
  int cta_epilogue;
};

template <typename scalar_t>
__device__ __forceinline__ scalar_t* h_at(const FwdParams<scalar_t>& p, int64_t l, int64_t t) {
  if (l == p.L - 1) return p.output + t * p.B * p.H;
  return p.hid + (l * p.hid_slots + t % p.hid_slots) * p.B * p.H;
}

// The forward's per-(unit, batch row) epilogue, shared by the FMA and the
// tensor-core products: the cell math from the four gate pre-activations,
// the new cell state into `c` (shared memory), h into h_out, the saved
// activations (training) and, at the last step, h_n and c_n.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void fwd_cell_epilogue(const FwdParams<scalar_t>& p, int64_t layer,
                                                  int64_t t, int64_t b, int64_t j,
                                                  const acc_t (&pre)[4], acc_t& c,
                                                  scalar_t* h_out, bool last_t) {
  const int64_t T = p.T, B = p.B, H = p.H, G4 = 4 * H;
  const LstmFwdOut<acc_t> o = lstm_cell_forward<acc_t>(pre[0], pre[1], pre[2], pre[3], c);
  c = o.c;
  const scalar_t h = static_cast<scalar_t>(o.h);
  h_out[b * H + j] = h;
  if (p.gates != nullptr) {
    scalar_t* go = p.gates + ((layer * T + t) * B + b) * G4 + j;
    go[0] = static_cast<scalar_t>(o.i);
    go[H] = static_cast<scalar_t>(o.f);
    go[2 * H] = static_cast<scalar_t>(o.g);
    go[3 * H] = static_cast<scalar_t>(o.o);
  }
  if (p.cells != nullptr) {
    p.cells[((layer * T + t) * B + b) * H + j] = static_cast<scalar_t>(o.c);
  }
  if (last_t) {
    p.hy[(layer * B + b) * H + j] = h;
    p.cy[(layer * B + b) * H + j] = static_cast<scalar_t>(o.c);
  }
}

// The cell of every (unit, batch row) pair of one staged chunk, one pair per
// thread at a time, units fastest (neighbouring threads write neighbouring h,
// gate and cell elements; cs is [B][U], so they touch neighbouring banks):
// pre = bias (+ layer 0's input projection), then add(q, jl, bl, pre) adds
// the product of gate q, unit jl, chunk row bl -- the epilogue of the
// tensor-core path and of the FMA path's CTA-wide variant.
template <int kT, typename scalar_t, typename acc_t, typename AddProduct>
__device__ __forceinline__ void fwd_chunk_epilogue(const FwdParams<scalar_t>& p, int64_t layer,
                                                   int64_t t, int64_t b0, int bc, int nu,
                                                   int64_t j0, const acc_t* bs, acc_t* cs,
                                                   scalar_t* h_out, bool last_t,
                                                   const AddProduct& add) {
  const int64_t B = p.B, H = p.H, G4 = 4 * H;
  const int U = static_cast<int>(p.units);
  for (int idx = threadIdx.x; idx < nu * bc; idx += kT) {
    const int jl = idx % nu, bl = idx / nu;
    const int64_t b = b0 + bl, j = j0 + jl;
    acc_t pre[4];
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      pre[q] = bs[q * U + jl];
      if (layer == 0) pre[q] += static_cast<acc_t>(p.gx0[(t * B + b) * G4 + q * H + j]);
      add(q, jl, bl, pre[q]);
    }
    fwd_cell_epilogue<scalar_t, acc_t>(p, layer, t, b, j, pre, cs[b * U + jl], h_out, last_t);
  }
}

// The WMMA element type of scalar_t (void: no tensor-core path) and the
// tile depth: bfloat16 / float16 16-deep, float32 as TF32 8-deep (where the
// device code has TF32 WMMA, compute capability 8.0+).
template <typename T>
struct WmmaElem {
  using type = void;
};
template <>
struct WmmaElem<c10::BFloat16> {
  using type = __nv_bfloat16;
  static constexpr int depth = 16;
};
template <>
struct WmmaElem<c10::Half> {
  using type = __half;
  static constexpr int depth = 16;
};
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800  // as mma.h declares precision::tf32
template <>
struct WmmaElem<float> {
  using type = nvcuda::wmma::precision::tf32;
  static constexpr int depth = 8;
};
#endif

template <typename scalar_t>
constexpr bool kHasWmma = !std::is_void<typename WmmaElem<scalar_t>::type>::value;

// The tensor-core product of one staged chunk (EXPERIMENTAL, off by default;
// persistent_plan.h, "tensor-core products"):
//   Ps[ks][m][n] = sum over k in slice ks of A[m][k] * Bop[n][k]
// over m_tiles x n_tiles output tiles of TM x TN, K / KK steps of KK (16; 8
// for float32 as TF32, whose operands are rounded to TF32 after each load)
// split into `ksplit` slices; A and Bop are row-major with row stride `ld` (Bop is
// read as the column-major K x N operand), Ps has `mrows` rows per slice of
// `ldp` floats.  Each warp takes whole (tile, slice) items, so no two warps
// write the same partial sums.  Forward: A = the resident gate rows, Bop =
// the staged rows; backward: A = the staged dG rows, Bop = the resident
// weight columns.
template <int kT, typename scalar_t, int TM, int TN>
__device__ __forceinline__ void mma_partial_products(const scalar_t* A, const scalar_t* Bop,
                                                     int K, int ld, int m_tiles, int n_tiles,
                                                     int mrows, int ldp, int ksplit, float* Ps,
                                                     int warp) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using E = typename WmmaElem<scalar_t>::type;
  constexpr int KK = WmmaElem<scalar_t>::depth;
  constexpr bool kTf32 = std::is_same<scalar_t, float>::value;
  // What load_matrix_sync reads: float for TF32 (rounded after the load).
  using P = typename std::conditional<kTf32, float, E>::type;
  namespace w = nvcuda::wmma;
  const int ksteps = K / KK;
  const int items = m_tiles * n_tiles * ksplit;
  for (int item = warp; item < items; item += kT / 32) {  // warp-uniform
    const persistent::MmaItem it = persistent::mma_item(item, n_tiles, ksteps, ksplit);
    const P* a = reinterpret_cast<const P*>(A) + static_cast<int64_t>(it.tm) * TM * ld;
    const P* bm = reinterpret_cast<const P*>(Bop) + static_cast<int64_t>(it.tn) * TN * ld;
    w::fragment<w::accumulator, TM, TN, KK, float> acc;
    w::fill_fragment(acc, 0.0f);
    for (int kk = it.k0; kk < it.k1; ++kk) {
      w::fragment<w::matrix_a, TM, TN, KK, E, w::row_major> fa;
      w::fragment<w::matrix_b, TM, TN, KK, E, w::col_major> fb;
      w::load_matrix_sync(fa, a + kk * KK, ld);
      w::load_matrix_sync(fb, bm + kk * KK, ld);
      if constexpr (kTf32) {
#pragma unroll
        for (int i = 0; i < fa.num_elements; ++i) fa.x[i] = w::__float_to_tf32(fa.x[i]);
#pragma unroll
        for (int i = 0; i < fb.num_elements; ++i) fb.x[i] = w::__float_to_tf32(fb.x[i]);
      }
      w::mma_sync(acc, fa, fb, acc);
    }
    w::store_matrix_sync(Ps + persistent::mma_ps_index(it.ks, mrows, ldp, it.tm * TM, it.tn * TN),
                         acc, ldp, w::mem_row_major);
  }
#else
  // The host takes this path only on devices of compute capability >= 8.0.
  __trap();
#endif
}

// The tile shapes the planner picks, as one call: (16, 16), (8, 32), (32, 8)
// (TF32: 16 x 16 only, its one WMMA shape).
template <int kT, typename scalar_t>
__device__ __forceinline__ void mma_products(int tm, const scalar_t* A, const scalar_t* Bop,
                                             int K, int ld, int m_tiles, int n_tiles, int mrows,
                                             int ldp, int ksplit, float* Ps, int warp) {
  if constexpr (std::is_same<scalar_t, float>::value) {
    mma_partial_products<kT, scalar_t, 16, 16>(A, Bop, K, ld, m_tiles, n_tiles, mrows, ldp, ksplit,
                                           Ps, warp);
  } else if (tm == 16) {
    mma_partial_products<kT, scalar_t, 16, 16>(A, Bop, K, ld, m_tiles, n_tiles, mrows, ldp, ksplit,
                                           Ps, warp);
  } else if (tm == 8) {
    mma_partial_products<kT, scalar_t, 8, 32>(A, Bop, K, ld, m_tiles, n_tiles, mrows, ldp, ksplit,
                                          Ps, warp);
  } else {
    mma_partial_products<kT, scalar_t, 32, 8>(A, Bop, K, ld, m_tiles, n_tiles, mrows, ldp, ksplit,
                                          Ps, warp);
  }
}

// Offset of the product of gate q, chunk row bl, unit jl in the CTA-wide
// epilogue's area, [4][bc_max][U]: units fastest, as fwd_chunk_epilogue reads.
__device__ __forceinline__ int cta_product_index(int q, int bl, int jl, int bc_max, int U) {
  return (q * bc_max + bl) * U + jl;
}

// The two-unit forward tasks of one staged chunk (option
// persistent_fwd_task_units "2"; EXPERIMENTAL, persistent_plan.h "two-unit
// forward tasks"): task = (units jl, jl + 1; batch group of kFwdTaskRows
// rows), one warp each, 8 weight rows x 8 staged rows; every product goes to
// the CTA-wide epilogue's area Pe.  A missing second unit (odd nu) and rows
// past the chunk's end repeat the last one (results not stored).
template <int kT, typename scalar_t, typename acc_t>
__device__ __forceinline__ void fwd_pair_tasks(const scalar_t* Ws, const scalar_t* xs, acc_t* Pe,
                                               int U, int K, int nu, int bc, int bc_max,
                                               bool vec, int warp, int lane) {
  constexpr int R = static_cast<int>(kFwdTaskRows);
  static_assert(4 * R == 32, "one product per lane after each unit's reduction");
  const int groups = (bc + R - 1) / R;
  const int tasks = ((nu + 1) / 2) * groups;
  for (int task = warp; task < tasks; task += kT / 32) {  // warp-uniform
    const int jl = (task / groups) * 2;
    const int bb = (task % groups) * R;
    // Weight row (q, unit): Ws + (q * U + unit) * K; the second unit
    // repeats the first where nu is odd.
    const scalar_t* w0 = Ws + static_cast<int64_t>(jl) * K;
    const scalar_t* w1 = Ws + static_cast<int64_t>(jl + 1 < nu ? jl + 1 : jl) * K;
    const scalar_t* x0 = xs + static_cast<int64_t>(bb) * K;
    acc_t acc[8 * R];  // acc[(u * 4 + q) * R + r]
    if (vec) {
      lane_products_pair<R, 16 / sizeof(scalar_t)>(acc, w0, w1, U * K, x0, bc - bb, K, lane);
    } else {
      lane_products_pair<R, 1>(acc, w0, w1, U * K, x0, bc - bb, K, lane);
    }
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      acc_t v[4 * R];
#pragma unroll
      for (int i = 0; i < 4 * R; ++i) v[i] = acc[u * 4 * R + i];
      // Lane l: the product of gate l / R, row l % R of unit jl + u.
      const acc_t mine = warp_reduce_scatter<4 * R>(v, lane);
      const int r = lane % R;
      if (jl + u < nu && bb + r < bc) Pe[cta_product_index(lane / R, bb + r, jl + u, bc_max, U)] = mine;
    }
  }
}

// The forward weights resident in registers (option persistent_fwd_task_units
// "regs"; EXPERIMENTAL, persistent_plan.h kFwdRegs; float32, kThreads).
// Warp w owns the CTA's gate rows rho = w * RW + i (i < RW, rho < 4 nu; row
// rho is gate rho / nu of unit rho % nu), lane l the 16-byte chunks
// k = 4 (l + 32 c) (c < RC) of each; chunks past K hold zeros.
constexpr int kRegRows = static_cast<int>(persistent::kRegRows);
constexpr int kRegChunks = static_cast<int>(persistent::kRegChunks);
static_assert((kRegRows & (kRegRows - 1)) == 0 && kRegRows <= 32, "a power of two <= 32");

// Loads this lane's weights: [W_ih | W_hh] row q * H + j0 + jl of `layer`
// (K = Kx + H; Kx = 0 for layer 0) for each owned row.
template <int RW, int RC>
__device__ __forceinline__ void load_reg_weights(float (&w)[RW][RC][4], const float* w_ih,
                                                 const float* w_hh, int64_t H, int64_t j0,
                                                 int nu, int Kx, int K, int warp, int lane) {
#pragma unroll
  for (int i = 0; i < RW; ++i) {
    const int rho = warp * RW + i;
    const bool owned = rho < 4 * nu;
    const int64_t g = owned ? (rho / nu) * H + j0 + rho % nu : 0;
#pragma unroll
    for (int c = 0; c < RC; ++c) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int k = 4 * (lane + 32 * c) + e;
        w[i][c][e] = !owned || k >= K ? 0.f
                     : k < Kx         ? w_ih[g * H + k]
                                      : w_hh[g * H + (k - Kx)];
      }
    }
  }
}

// One staged batch row's RW partial sums of this lane: up to RC chunk loads
// and RW x 4 RC FMAs.  NC > 0: the row has exactly NC chunks a lane (K = 128
// NC), loaded up front without a test; NC = 0: chunk c is skipped where no
// lane's k is inside the row (warp-uniform) and a lane past K reads zeros.
template <int RW, int RC>
__device__ __forceinline__ void reg_chunk_fmas(float (&acc)[RW], const float (&w)[RW][RC][4],
                                               int c, const float4& v) {
#pragma unroll
  for (int i = 0; i < RW; ++i) {
    acc[i] += w[i][c][0] * v.x;
    acc[i] += w[i][c][1] * v.y;
    acc[i] += w[i][c][2] * v.z;
    acc[i] += w[i][c][3] * v.w;
  }
}

template <int NC, int RW, int RC>
__device__ __forceinline__ void reg_row_sums(float (&acc)[RW], const float (&w)[RW][RC][4],
                                             const float* x, int K, int lane) {
  static_assert(NC >= 0 && NC <= RC, "at most RC chunks");
#pragma unroll
  for (int i = 0; i < RW; ++i) acc[i] = 0.f;
  if constexpr (NC > 0) {
    float4 xv[NC];
#pragma unroll
    for (int c = 0; c < NC; ++c) xv[c] = *reinterpret_cast<const float4*>(x + 4 * (lane + 32 * c));
#pragma unroll
    for (int c = 0; c < NC; ++c) reg_chunk_fmas(acc, w, c, xv[c]);
  } else {
#pragma unroll
    for (int c = 0; c < RC; ++c) {
      if (128 * c < K) {
        const int k = 4 * (lane + 32 * c);
        reg_chunk_fmas(acc, w, c, k < K ? *reinterpret_cast<const float4*>(x + k)
                                        : make_float4(0.f, 0.f, 0.f, 0.f));
      }
    }
  }
}

// The products of one staged chunk (bc rows of length K, 16-byte aligned
// with K % 4 == 0) with the warp's resident rows, stored for the CTA-wide
// epilogue: per batch row, reg_row_sums, then one warp_reduce_scatter of the
// RW partial sums (lane l: row w * RW + l / (32 / RW)).  The same fixed
// order in every run.  NC: as reg_row_sums takes it.
template <int NC, int RW, int RC>
__device__ __forceinline__ void reg_products_rows(const float (&w)[RW][RC][4], const float* xs,
                                                  float* Pe, int K, int nu, int bc, int bc_max,
                                                  int U, int warp, int lane) {
  constexpr int kLanesPerRow = 32 / RW;
  const int rows = 4 * nu;
  if (warp * RW >= rows) return;  // warp-uniform: this warp owns no row
  const int rho = warp * RW + lane / kLanesPerRow;  // the row this lane's sum belongs to
  const bool writer = lane % kLanesPerRow == 0 && rho < rows;
  // Pe's element of (row rho, batch row b) is pe + b * U.
  float* pe = Pe + (writer ? cta_product_index(rho / nu, 0, rho % nu, bc_max, U) : 0);
  for (int b = 0; b < bc; ++b) {
    float acc[RW];
    reg_row_sums<NC>(acc, w, xs + static_cast<int64_t>(b) * K, K, lane);
    const float mine = warp_reduce_scatter<RW>(acc, lane);
    if (writer) pe[b * U] = mine;
  }
}

template <int RW, int RC>
__device__ __forceinline__ void fwd_reg_products(const float (&w)[RW][RC][4], const float* xs,
                                                 float* Pe, int K, int nu, int bc, int bc_max,
                                                 int U, int warp, int lane) {
  static_assert(RC == 4, "the dispatch below covers K = 128, 256, 384, 512");
  // Uniform: the row lengths of whole chunks (D2L: 256 for layer 0, else 512)
  // get their chunk loads up front.
  switch (K) {
    case 512: reg_products_rows<4>(w, xs, Pe, K, nu, bc, bc_max, U, warp, lane); break;
    case 384: reg_products_rows<3>(w, xs, Pe, K, nu, bc, bc_max, U, warp, lane); break;
    case 256: reg_products_rows<2>(w, xs, Pe, K, nu, bc, bc_max, U, warp, lane); break;
    case 128: reg_products_rows<1>(w, xs, Pe, K, nu, bc, bc_max, U, warp, lane); break;
    default: reg_products_rows<0>(w, xs, Pe, K, nu, bc, bc_max, U, warp, lane);
  }
}

template <typename scalar_t, bool kMma = false, int kT = kThreads, bool kPairs = false,
          bool kRegs = false>
__global__ void __launch_bounds__(kT, 1)
lstm_persistent_fwd_kernel(const __grid_constant__ FwdParams<scalar_t> p) {
  static_assert(!kRegs || (std::is_same<scalar_t, float>::value && kT == kThreads && !kMma &&
                           !kPairs),
                "the register-resident weights: float32, kThreads, FMA path");
  using acc_t = typename acc_type<scalar_t>::type;
  extern __shared__ __align__(128) unsigned char smem[];
  scalar_t* Ws = reinterpret_cast<scalar_t*>(smem);                 // [4][U][K]
  acc_t* bs = reinterpret_cast<acc_t*>(smem + p.off_bias);           // [4][U]
  acc_t* cs = reinterpret_cast<acc_t*>(smem + p.off_cstate);         // [B][U]
  scalar_t* xs = reinterpret_cast<scalar_t*>(smem + p.off_stage);    // [batch_chunk][K]
  // The product area: the tensor-core path's [ksplit][4U][npad] partial sums,
  // or the CTA-wide epilogue's [4][batch_chunk][U] products (p.cta_epilogue).
  float* Ps = reinterpret_cast<float*>(smem + p.off_product);
  acc_t* Pe = reinterpret_cast<acc_t*>(smem + p.off_product);

  const int tid = threadIdx.x;
  const int warp = tid / 32, lane = tid % 32;
  const int64_t T = p.T, B = p.B, H = p.H, G4 = 4 * H;
  const int64_t layer = blockIdx.x / p.ctas_per_layer;
  const int64_t j0 = (blockIdx.x % p.ctas_per_layer) * p.units;
  const int U = static_cast<int>(p.units);
  const int nu = static_cast<int>(H - j0 < p.units ? H - j0 : p.units);  // this CTA's units
  const int Kx = layer == 0 ? 0 : static_cast<int>(H);  // x part of a staged row
  const int K = Kx + static_cast<int>(H);               // staged row length
  const bool vec = chunks_aligned<scalar_t>(K, Kx, Ws, xs);  // 16-byte task loads

  // Resident weights: row (q, jl) = [W_ih | W_hh] row q*H + j0 + jl (in
  // shared memory, or with kRegs in registers: wreg).
  float wreg[kRegs ? kRegRows : 1][kRegs ? kRegChunks : 1][4];
  if constexpr (kRegs) {
    load_reg_weights(wreg, p.w_ih[layer], p.w_hh[layer], H, j0, nu, Kx, K, warp, lane);
  }
  {
    const scalar_t* w_ih = p.w_ih[layer];
    const scalar_t* w_hh = p.w_hh[layer];
    const int64_t n = kRegs ? 0 : static_cast<int64_t>(4) * nu * K;
    for (int64_t idx = tid; idx < n; idx += kT) {
      const int row = static_cast<int>(idx / K), k = static_cast<int>(idx % K);
      const int q = row / nu, jl = row % nu;
      const int64_t g = q * H + j0 + jl;
      Ws[(static_cast<int64_t>(q) * U + jl) * K + k] =
          k < Kx ? w_ih[g * H + k] : w_hh[g * H + (k - Kx)];
    }
    for (int idx = tid; idx < 4 * nu; idx += kT) {
      const int q = idx / nu, jl = idx % nu;
      const int64_t g = q * H + j0 + jl;
      bs[q * U + jl] = p.b_ih[layer] != nullptr ? static_cast<acc_t>(p.b_ih[layer][g]) +
                                                      static_cast<acc_t>(p.b_hh[layer][g])
                                                : acc_t(0);
    }
    for (int64_t idx = tid; idx < static_cast<int64_t>(nu) * B; idx += kT) {
      const int64_t jl = idx / B, b = idx % B;
      cs[b * U + jl] = static_cast<acc_t>(p.cx[(layer * B + b) * H + j0 + jl]);
    }
  }
  __syncthreads();

  unsigned long long target = 0;
  const int64_t steps = T + p.L - 1;
  const int64_t BC = p.batch_chunk;
  const int BCi = static_cast<int>(BC);
  // (The kPairs and kRegs kernels run only with it: persistent_kernel checks
  // the plan.)
  const bool cta_epi = p.cta_epilogue != 0;
  for (int64_t s = 0; s < steps; ++s) {
    const int64_t t = s - layer;
    if (t >= 0 && t < T) {
      const scalar_t* x_in = layer == 0 ? nullptr : h_at(p, layer - 1, t);
      const scalar_t* h_prev = t == 0 ? p.hx + layer * B * H : h_at(p, layer, t - 1);
      scalar_t* h_out = h_at(p, layer, t);
      const bool last_t = t == T - 1;
      for (int64_t b0 = 0; b0 < B; b0 += BC) {
        const int bc = static_cast<int>(B - b0 < BC ? B - b0 : BC);
        // Stage rows b0 .. b0+bc-1 of [x_t | h_{t-1}] (written by other CTAs
        // at step s-1, or the inputs hx at t = 0).
        stage_rows<kT, scalar_t>(xs, K, bc, K, Kx, x_in, h_prev, b0, H);
        __syncthreads();

        if constexpr (kMma && kHasWmma<scalar_t>) {
          if (p.mma_tm != 0) {  // the tensor-core product (uniform over the grid)
            const persistent::MmaGrid g =
                persistent::mma_grid(false, U, bc, p.mma_tm, p.mma_tn, p.mma_npad);
            mma_products<kT, scalar_t>(p.mma_tm, Ws, xs, K, K, g.m_tiles, g.n_tiles, p.mma_mpad,
                                   p.mma_npad, p.mma_ksplit, Ps, warp);
            __syncthreads();
            fwd_chunk_epilogue<kT, scalar_t, acc_t>(
                p, layer, t, b0, bc, nu, j0, bs, cs, h_out, last_t,
                [&](int q, int jl, int bl, acc_t& pre) {
                  for (int ks = 0; ks < p.mma_ksplit; ++ks) {
                    pre += Ps[persistent::mma_ps_index(ks, p.mma_mpad, p.mma_npad, q * U + jl,
                                                       bl)];
                  }
                });
            __syncthreads();  // the stage and the product area are rewritten next
            continue;         // next batch chunk
          }
        }

        // Tasks: (unit jl, batch group of kFwdTaskRows rows), one warp each;
        // or, in the kPairs kernel, two units a task (fwd_pair_tasks).
        constexpr int R = static_cast<int>(kFwdTaskRows);
        static_assert(4 * R == 32, "one product per lane after the reduction");
        const int groups = (bc + R - 1) / R;
        const int tasks = kPairs || kRegs ? 0 : nu * groups;
        if constexpr (kPairs) {
          fwd_pair_tasks<kT, scalar_t, acc_t>(Ws, xs, Pe, U, K, nu, bc, BCi, vec, warp, lane);
        }
        if constexpr (kRegs) {
          fwd_reg_products(wreg, xs, Pe, K, nu, bc, BCi, U, warp, lane);
        }
        for (int task = warp; task < tasks; task += kT / 32) {  // warp-uniform
          const int jl = task / groups;
          const int bb = (task % groups) * R;
          const scalar_t* wr[4];
#pragma unroll
          for (int q = 0; q < 4; ++q) wr[q] = Ws + (static_cast<int64_t>(q) * U + jl) * K;
          // Rows past the chunk's end repeat its last row (results unused),
          // so the inner loop needs no bounds test.
          const scalar_t* xr[R];
#pragma unroll
          for (int r = 0; r < R; ++r) {
            const int row = bb + r < bc ? bb + r : bc - 1;
            xr[r] = xs + static_cast<int64_t>(row) * K;
          }
          // Lane r (< R) owns batch row b0 + bb + r of unit j0 + jl; layer
          // 0 fetches that row's input projection now, so that the loads
          // overlap the products (not with the CTA-wide epilogue).
          const bool owner = lane < R && bb + lane < bc;
          const int64_t b = b0 + bb + (lane < R ? lane : 0);
          const int64_t j = j0 + jl;
          acc_t pre[4];
          if (!cta_epi) {  // (fwd_chunk_epilogue reads bias and projection itself)
#pragma unroll
            for (int q = 0; q < 4; ++q) pre[q] = bs[q * U + jl];
            if (layer == 0 && owner) {
              const scalar_t* g = p.gx0 + (t * B + b) * G4 + j;
#pragma unroll
              for (int q = 0; q < 4; ++q) pre[q] += static_cast<acc_t>(g[q * H]);
            }
          }
          acc_t acc[4 * R];
          if (vec) {
            lane_products<4, R, 16 / sizeof(scalar_t)>(acc, wr, xr, K, lane);
          } else {
            lane_products<4, R, 1>(acc, wr, xr, K, lane);
          }
          // Lane l holds the product of gate l / R, row l % R; lane r
          // gathers its row's four gates.
          const acc_t mine = warp_reduce_scatter<4 * R>(acc, lane);
          if (cta_epi) {  // uniform: store it for fwd_chunk_epilogue
            const int r = lane % R;
            if (bb + r < bc) Pe[cta_product_index(lane / R, bb + r, jl, BCi, U)] = mine;
            continue;  // next task
          }
#pragma unroll
          for (int q = 0; q < 4; ++q)
            pre[q] += __shfl_sync(0xffffffffu, mine, (lane + q * R) & 31);
          if (!owner) continue;  // next task (warp-uniform loop)
          fwd_cell_epilogue<scalar_t, acc_t>(p, layer, t, b, j, pre, cs[b * U + jl], h_out,
                                             last_t);
        }
        if (cta_epi) {
          __syncthreads();  // every task's products are stored
          fwd_chunk_epilogue<kT, scalar_t, acc_t>(
              p, layer, t, b0, bc, nu, j0, bs, cs, h_out, last_t,
              [&](int q, int jl, int bl, acc_t& pre) {
                pre += Pe[cta_product_index(q, bl, jl, BCi, U)];
              });
        }
        __syncthreads();  // the stage (and the products) are rewritten next
      }
    }
    if (s + 1 < steps) grid_barrier(p.barrier, target);
  }
}

// -------------------------------------------------------------- backward --
//
// The reverse wavefront.  At step s = 0 .. T+L-2 layer l computes its step
// t = (T-1) - s + (L-1-l): the top layer starts at t = T-1, each layer below
// one step later.  For unit j of layer l and batch row b,
//   dh = dy^l_t[b, j] + Σ_k dG^l_{t+1}[b, k] W_hh^l[k, j]  (+ grad_hy at t = T-1)
//   dy^l_t = grad_output_t for the top layer, else Σ_k dG^{l+1}_t[b, k] W_ih^{l+1}[k, j]
// (both sums over the 4H gate rows k), then lstm_cell_backward gives dG^l_t
// (pre-activation gate gradients, written to global memory in (L, T, B, 4H))
// and dc_{t-1} (kept in shared memory).  dG^{l+1}_t and dG^l_{t+1} were both
// written at step s-1, so one grid barrier per step suffices again.  The CTA
// keeps, per unit j, the column j of [W_ih^{l+1} | W_hh^l] resident (K = 8H;
// the top layer only the W_hh column, K = 4H); the weight, bias, input and
// initial-state gradients are GEMMs after the kernel.
template <typename scalar_t>
struct BwdParams {
  const scalar_t* w_ih[kMaxLayers];  // (4H, H) of layers > 0 (entry 0 unused)
  const scalar_t* w_hh[kMaxLayers];  // (4H, H)
  const scalar_t* grad_output;       // (T, B, H)
  const scalar_t* grad_hy;           // (L, B, H)
  const scalar_t* grad_cy;           // (L, B, H)
  const scalar_t* gates;             // (L, T, B, 4H) activated i, f, g, o
  const scalar_t* cells;             // (L, T, B, H)
  const scalar_t* cx;                // (L, B, H)
  scalar_t* dG;                      // (L, T, B, 4H) out: pre-activation gate gradients
  scalar_t* grad_cx;                 // (L, B, H) out: dc_{-1}
  unsigned long long* barrier;       // zeroed
  int64_t T, B, H, L;
  int64_t units, ctas_per_layer, batch_chunk;
  int64_t off_cstate, off_stage;     // byte offsets in dynamic smem
  int64_t batch_split;               // S (Plan::batch_split): CTAs per unit block
  int64_t rows_per_cta;              // ceil(B / S)
  // The tensor-core product (EXPERIMENTAL), as FwdParams': rows per slice =
  // staged rows rounded up to mma_tm, row length = units rounded up to mma_tn.
  int mma_tm, mma_tn, mma_ksplit, mma_mpad, mma_npad;
  int64_t off_product;
};

// The backward's per-(unit, batch row) epilogue, shared by the FMA and the
// tensor-core products: dh from the product `prod` plus the incoming
// gradients, the cell backward, dG into dG_out, the new dc into `dc`
// (shared memory) and, at t = 0, grad_cx.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void bwd_cell_epilogue(const BwdParams<scalar_t>& p, int64_t layer,
                                                  int64_t t, int64_t b, int64_t j, acc_t prod,
                                                  acc_t& dc, const scalar_t* gates_t,
                                                  const scalar_t* c_t, const scalar_t* c_prev,
                                                  scalar_t* dG_out) {
  const int64_t B = p.B, H = p.H, G4 = 4 * H;
  const int64_t bj = b * H + j;
  acc_t dh = prod;
  if (layer == p.L - 1) dh += static_cast<acc_t>(p.grad_output[t * B * H + bj]);
  if (t == p.T - 1) dh += static_cast<acc_t>(p.grad_hy[layer * B * H + bj]);
  const scalar_t* g = gates_t + b * G4 + j;
  const LstmBwdOut<acc_t> o = lstm_cell_backward<acc_t>(
      dh, dc, static_cast<acc_t>(g[0]), static_cast<acc_t>(g[H]), static_cast<acc_t>(g[2 * H]),
      static_cast<acc_t>(g[3 * H]), static_cast<acc_t>(c_prev[bj]), static_cast<acc_t>(c_t[bj]));
  scalar_t* d = dG_out + b * G4 + j;
  d[0] = static_cast<scalar_t>(o.di);
  d[H] = static_cast<scalar_t>(o.df);
  d[2 * H] = static_cast<scalar_t>(o.dg);
  d[3 * H] = static_cast<scalar_t>(o.do_);
  dc = o.dc_prev;
  if (t == 0) p.grad_cx[layer * B * H + bj] = static_cast<scalar_t>(o.dc_prev);
}

template <typename scalar_t, bool kMma = false, int kT = kThreads>  // as the forward's
__global__ void __launch_bounds__(kT, 1)
lstm_persistent_bwd_kernel(const __grid_constant__ BwdParams<scalar_t> p) {
  using acc_t = typename acc_type<scalar_t>::type;
  extern __shared__ __align__(128) unsigned char smem[];
  scalar_t* Wc = reinterpret_cast<scalar_t*>(smem);                 // [U][K]
  acc_t* dcs = reinterpret_cast<acc_t*>(smem + p.off_cstate);        // [U][B]
  scalar_t* xs = reinterpret_cast<scalar_t*>(smem + p.off_stage);    // [batch_chunk][K]
  float* Ps = reinterpret_cast<float*>(smem + p.off_product);        // [ksplit][mpad][npad]

  const int tid = threadIdx.x;
  const int warp = tid / 32, lane = tid % 32;
  const int64_t T = p.T, B = p.B, H = p.H, L = p.L, G4 = 4 * H;
  // CTA -> (layer, unit block, batch block), as Plan::cta_layer/_j0/_b0.
  const int64_t per_layer = p.ctas_per_layer * p.batch_split;
  const int64_t layer = blockIdx.x / per_layer;
  const int64_t j0 = ((blockIdx.x % per_layer) / p.batch_split) * p.units;
  const int64_t rb0 = (blockIdx.x % p.batch_split) * p.rows_per_cta;
  const int64_t rb1 = rb0 + p.rows_per_cta < B ? rb0 + p.rows_per_cta : B;  // rows [rb0, rb1)
  const int nu = static_cast<int>(H - j0 < p.units ? H - j0 : p.units);
  const bool top = layer == L - 1;
  const int Kx = top ? 0 : static_cast<int>(G4);  // the layer above's dG part
  const int K = Kx + static_cast<int>(G4);
  const bool vec = chunks_aligned<scalar_t>(K, Kx, Wc, xs);  // 16-byte task loads

  // Resident weight columns: row jl = [W_ih^{l+1}[:, j] | W_hh^l[:, j]].
  {
    const scalar_t* w_up = top ? nullptr : p.w_ih[layer + 1];
    const scalar_t* w_hh = p.w_hh[layer];
    const int64_t n = static_cast<int64_t>(nu) * K;
    for (int64_t idx = tid; idx < n; idx += kT) {
      const int jl = static_cast<int>(idx / K), k = static_cast<int>(idx % K);
      const int64_t j = j0 + jl;
      Wc[static_cast<int64_t>(jl) * K + k] = k < Kx ? w_up[k * H + j] : w_hh[(k - Kx) * H + j];
    }
    for (int64_t idx = tid; idx < static_cast<int64_t>(nu) * B; idx += kT) {
      const int64_t jl = idx / B, b = idx % B;
      dcs[jl * B + b] = static_cast<acc_t>(p.grad_cy[(layer * B + b) * H + j0 + jl]);
    }
  }
  __syncthreads();

  unsigned long long target = 0;
  const int64_t steps = T + L - 1;
  const int64_t BC = p.batch_chunk;
  for (int64_t s = 0; s < steps; ++s) {
    const int64_t t = (T - 1) - s + (L - 1 - layer);
    if (t >= 0 && t < T) {
      const bool last_t = t == T - 1;
      // The staged row: [dG^{l+1}_t | dG^l_{t+1}]; at t = T-1 there is no
      // recurrent part, so only the first Kx columns are used.
      const int Kt = last_t ? Kx : K;
      const scalar_t* dG_up = top ? nullptr : p.dG + ((layer + 1) * T + t) * B * G4;
      const scalar_t* dG_next = last_t ? nullptr : p.dG + (layer * T + t + 1) * B * G4;
      scalar_t* dG_out = p.dG + (layer * T + t) * B * G4;
      const scalar_t* gates_t = p.gates + (layer * T + t) * B * G4;
      const scalar_t* c_t = p.cells + (layer * T + t) * B * H;
      const scalar_t* c_prev = t == 0 ? p.cx + layer * B * H : c_t - B * H;
      for (int64_t b0 = rb0; b0 < rb1; b0 += BC) {  // this CTA's batch rows
        const int bc = static_cast<int>(rb1 - b0 < BC ? rb1 - b0 : BC);
        stage_rows<kT, scalar_t>(xs, K, bc, Kt, Kx, dG_up, dG_next, b0, G4);
        __syncthreads();

        if constexpr (kMma && kHasWmma<scalar_t>) {
          if (p.mma_tm != 0) {  // the tensor-core product (uniform over the grid)
            // Kt = 0 (the top layer's last step) has no product: the slices
            // then store zeros.
            const persistent::MmaGrid g = persistent::mma_grid(
                true, static_cast<int>(p.units), bc, p.mma_tm, p.mma_tn, p.mma_npad);
            mma_products<kT, scalar_t>(p.mma_tm, xs, Wc, Kt, K, g.m_tiles, g.n_tiles, p.mma_mpad,
                                   p.mma_npad, p.mma_ksplit, Ps, warp);
            __syncthreads();
            // One (unit, batch row) per thread, units fastest (coalesced writes).
            for (int idx = tid; idx < nu * bc; idx += kT) {
              const int jl = idx % nu, bl = idx / nu;
              acc_t prod = acc_t(0);
              for (int ks = 0; ks < p.mma_ksplit; ++ks)
                prod += Ps[persistent::mma_ps_index(ks, p.mma_mpad, p.mma_npad, bl, jl)];
              bwd_cell_epilogue<scalar_t, acc_t>(p, layer, t, b0 + bl, j0 + jl, prod,
                                                 dcs[static_cast<int64_t>(jl) * B + b0 + bl],
                                                 gates_t, c_t, c_prev, dG_out);
            }
            __syncthreads();  // the stage and the product area are rewritten next
            continue;         // next batch chunk
          }
        }

        // Tasks: (kBwdTaskUnits units from jq, kBwdTaskRows rows from bb),
        // one warp each; units and rows past the end repeat the last one
        // (results unused).
        constexpr int QU = static_cast<int>(kBwdTaskUnits), R = static_cast<int>(kBwdTaskRows);
        constexpr int N = QU * R;  // products per task
        const int groups = (bc + R - 1) / R;
        const int tasks = ((nu + QU - 1) / QU) * groups;
        for (int task = warp; task < tasks; task += kT / 32) {  // warp-uniform
          const int jq = (task / groups) * QU;
          const int bb = (task % groups) * R;
          const scalar_t* wr[QU];
#pragma unroll
          for (int q = 0; q < QU; ++q) {
            const int jl = jq + q < nu ? jq + q : nu - 1;
            wr[q] = Wc + static_cast<int64_t>(jl) * K;
          }
          const scalar_t* xr[R];
#pragma unroll
          for (int r = 0; r < R; ++r) {
            const int row = bb + r < bc ? bb + r : bc - 1;
            xr[r] = xs + static_cast<int64_t>(row) * K;
          }
          acc_t acc[N];
          if (vec) {
            lane_products<QU, R, 16 / sizeof(scalar_t)>(acc, wr, xr, Kt, lane);
          } else {
            lane_products<QU, R, 1>(acc, wr, xr, Kt, lane);
          }
          // Lanes 2i and 2i+1 hold product i = q * R + r: the even one
          // applies the cell backward to unit jq + q, row bb + r.
          const acc_t mine = warp_reduce_scatter<N>(acc, lane);
          {
            const int i = lane / (32 / N);
            const int jl = jq + i / R, r = i % R;
            if (lane % (32 / N) != 0 || jl >= nu || bb + r >= bc) continue;  // next task
            const int64_t b = b0 + bb + r;
            bwd_cell_epilogue<scalar_t, acc_t>(p, layer, t, b, j0 + jl, mine,
                                               dcs[static_cast<int64_t>(jl) * B + b], gates_t,
                                               c_t, c_prev, dG_out);
          }
        }
        __syncthreads();  // the stage is rewritten next
      }
    }
    if (s + 1 < steps) grid_barrier(p.barrier, target);
  }
}

// The floor: the same kind of grid doing only the T+L-1 wavefront barriers.
__global__ void __launch_bounds__(kThreads, 1)
wavefront_floor_kernel(unsigned long long* barrier, int64_t steps) {
  unsigned long long target = 0;
  for (int64_t s = 0; s + 1 < steps; ++s) grid_barrier(barrier, target);
}

// ------------------------------------------------------------- planning --

persistent::DeviceLimits device_limits() {
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  persistent::DeviceLimits d;
  d.smem_per_sm = static_cast<int64_t>(prop->sharedMemPerMultiprocessor);
  d.smem_per_block = static_cast<int64_t>(prop->sharedMemPerBlockOptin);
  d.regs_per_sm = prop->regsPerMultiprocessor;
  d.num_sms = prop->multiProcessorCount;
  return d;
}

int64_t elem_size(at::ScalarType t) { return static_cast<int64_t>(c10::elementSize(t)); }
int64_t acc_size(at::ScalarType t) { return t == at::kDouble ? 8 : 4; }

// Whether the planned grid is co-resident here (the cooperative launch's
// condition), with the kernel's real register and shared-memory use.  Sets
// the kernel's dynamic shared memory limit as a side effect.
template <typename Kernel>
bool cooperative_fits(Kernel kernel, int64_t threads, int64_t smem, int64_t ctas,
                      std::string* why) {
  int dev = 0, coop = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  // The answer for (device, kernel, shared memory) does not change: the driver
  // is asked once per combination (each query costs host time on every call
  // otherwise).  Only CTA counts are compared afterwards.
  static std::mutex mu;
  static std::map<std::tuple<int, const void*, int64_t>, int> per_sm_cache;
  const auto key = std::make_tuple(dev, reinterpret_cast<const void*>(kernel), smem);
  {
    const std::lock_guard<std::mutex> lock(mu);
    const auto it = per_sm_cache.find(key);
    if (it != per_sm_cache.end()) {
      const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
      if (static_cast<int64_t>(it->second) * sms >= ctas) return true;
    }
  }
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev));
  if (!coop) {
    *why = "this device does not support cooperative launches";
    return false;
  }
  // The largest opt-in size, not `smem`: a cached answer for a larger plan
  // must stay launchable after a smaller plan was checked.
  C10_CUDA_CHECK(cudaFuncSetAttribute(
      kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
      static_cast<int>(at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin)));
  int per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      &per_sm, kernel, static_cast<int>(threads), static_cast<size_t>(smem)));
  {
    const std::lock_guard<std::mutex> lock(mu);
    per_sm_cache[key] = per_sm;
  }
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  if (static_cast<int64_t>(per_sm) * sms < ctas) {
    *why = "the occupancy calculator allows " + std::to_string(per_sm) + " CTA(s) per SM with " +
           std::to_string(smem) + " bytes of shared memory, fewer than the " +
           std::to_string(ctas) + " co-resident CTAs the plan needs";
    return false;
  }
  return true;
}

// The most CTAs the backward may split the batch across (persistent_plan.h,
// plan_lstm): 4, unless the option persistent_bwd_split is "off" (then 1).
// auto = on since its first GPU run (H200, 2026-12-04: the gradients match the
// unsplit backward's, tests/test_cuda_persistent.py; D2L L=2 forward+backward
// 1.587 -> 1.280 ms, benchmarks/results/cuda-nvidia-h200_2026-12-04_bwd-split.md).
int64_t backward_batch_split() {
  return get_option(Option::kPersistentBwdSplit) == 1 ? 1 : 4;
}

// The options persistent_cta_epilogue and persistent_threads as
// persistent::plan_lstm_auto takes them (kAutoOption where auto: the planner
// resolves it, persistent_plan.h auto_cta_epilogue / auto_threads, measured
// on an H200, 2026-12-04).
int64_t cta_epilogue_option() {
  const int64_t v = get_option(Option::kPersistentCtaEpilogue);
  return v == 0 ? persistent::kAutoOption : v == 2 ? 1 : 0;
}
int64_t threads_option() {
  const int64_t v = get_option(Option::kPersistentThreads);
  return v == 0 ? persistent::kAutoOption : v == 2 ? persistent::kThreadsWide : kThreads;
}
// persistent_fwd_task_units: 2 only when set to "2", the register-resident
// weights only when set to "regs" (auto means 1 while neither has run on a
// GPU).
int64_t fwd_task_units_option() {
  const int64_t v = get_option(Option::kPersistentFwdTaskUnits);
  return v == 2 ? 2 : v == 3 ? persistent::kFwdRegs : 1;
}

// Whether the kernels should take the tensor-core path where its tiles fit:
// the option persistent_mma is "on" (auto means off while the path has not
// run on a GPU) and the device has bfloat16/TF32 WMMA (compute capability
// 8.0+).  float32 takes it only as TF32, when torch's matmul TF32 policy
// (torch.backends.cuda.matmul.allow_tf32, which layer 0's projection GEMM
// follows as well) allows it.
bool mma_wanted() {
  if (get_option(Option::kPersistentMma) != 2) return false;
  return at::cuda::getCurrentDeviceProperties()->major >= 8;
}

// The kernel a plan runs: forward or backward, with the tensor-core path
// (plan.mma.on(), kThreads only) or the FMA kernel, for the plan's threads
// per CTA.
template <bool kBackward, typename scalar_t>
auto persistent_kernel(const Plan& plan) {
  using Params = std::conditional_t<kBackward, BwdParams<scalar_t>, FwdParams<scalar_t>>;
  using Kernel = void (*)(const Params);
  if constexpr (kHasWmma<scalar_t>) {
    if (plan.mma.on()) {
      TORCH_CHECK(plan.threads == kThreads, "fusedrnn: tensor-core kernels run with ", kThreads,
                  " threads per CTA only");
      if constexpr (kBackward) return static_cast<Kernel>(lstm_persistent_bwd_kernel<scalar_t, true>);
      else return static_cast<Kernel>(lstm_persistent_fwd_kernel<scalar_t, true>);
    }
  }
  TORCH_CHECK(!plan.mma.on(), "fusedrnn: no tensor-core kernel for this dtype");
  if constexpr (!kBackward) {
    if (plan.fwd_task_units == persistent::kFwdRegs) {
      TORCH_CHECK(plan.cta_epilogue && plan.threads == kThreads,
                  "fusedrnn: the register-resident forward weights need the CTA-wide epilogue "
                  "and ", kThreads, " threads per CTA");
      if constexpr (std::is_same_v<scalar_t, float>) {
        // What the kernel assumes and only the planner ensures (H % 4 == 0 for
        // its 16-byte stage loads, K <= 512, 4U <= 64 rows): a plan that
        // breaks it is an error here, not wrong or missing products.
        TORCH_CHECK(persistent::fwd_regs_fit(plan, 4, 4), "fusedrnn: the register-resident "
                    "forward weights do not fit this plan (H=", plan.H, ", K=", plan.K,
                    ", units per CTA ", plan.units_per_cta, ")");
        return static_cast<Kernel>(lstm_persistent_fwd_kernel<float, false, kThreads, false,
                                                              true>);
      }
      TORCH_CHECK(false, "fusedrnn: the register-resident forward weights are float32 only");
    }
    if (plan.fwd_task_units == 2) {
      TORCH_CHECK(plan.cta_epilogue, "fusedrnn: two-unit forward tasks need the CTA-wide "
                  "epilogue");
      if constexpr (std::is_same_v<scalar_t, float>) {
        if (plan.threads == persistent::kThreadsWide) {
          return static_cast<Kernel>(lstm_persistent_fwd_kernel<float, false,
                                     static_cast<int>(persistent::kThreadsWide), true>);
        }
      }
      TORCH_CHECK(plan.threads == kThreads, "fusedrnn: two-unit forward tasks run with ",
                  kThreads, " threads per CTA (", persistent::kThreadsWide, " in float32)");
      return static_cast<Kernel>(lstm_persistent_fwd_kernel<scalar_t, false, kThreads, true>);
    }
  }
  constexpr int kWide = static_cast<int>(persistent::kThreadsWide);
  TORCH_CHECK(plan.threads == kThreads || plan.threads == kWide,
              "fusedrnn: no persistent kernel for ", plan.threads, " threads per CTA");
  if (plan.threads == kWide) {
    if constexpr (kBackward) return static_cast<Kernel>(lstm_persistent_bwd_kernel<scalar_t, false, kWide>);
    else return static_cast<Kernel>(lstm_persistent_fwd_kernel<scalar_t, false, kWide>);
  }
  if constexpr (kBackward) return static_cast<Kernel>(lstm_persistent_bwd_kernel<scalar_t, false>);
  else return static_cast<Kernel>(lstm_persistent_fwd_kernel<scalar_t, false>);
}

// The parts of the forward and backward Params that the plan and the
// weights fill alike (FwdParams / BwdParams).
template <template <typename> class Params, typename scalar_t>
void fill_common_params(Params<scalar_t>& p, const Plan& plan, const std::vector<Tensor>& w,
                        int64_t pl, int64_t T, int64_t B, int64_t H, int64_t L,
                        const Tensor& barrier) {
  for (int64_t l = 0; l < L; ++l) {
    p.w_ih[l] = l == 0 ? nullptr : w[l * pl].data_ptr<scalar_t>();
    p.w_hh[l] = w[l * pl + 1].data_ptr<scalar_t>();
  }
  p.barrier = reinterpret_cast<unsigned long long*>(barrier.data_ptr<int64_t>());
  p.T = T;
  p.B = B;
  p.H = H;
  p.L = L;
  p.units = plan.units_per_cta;
  p.ctas_per_layer = plan.ctas_per_layer;
  p.batch_chunk = plan.batch_chunk;
  p.off_cstate = plan.smem.cstate;
  p.off_stage = plan.smem.stage;
  p.mma_tm = static_cast<int>(plan.mma.tm);  // 0 unless asked for and the tiles fit
  p.mma_tn = static_cast<int>(plan.mma.tn);
  p.mma_ksplit = static_cast<int>(plan.mma_ksplit);
  p.mma_mpad = static_cast<int>(plan.mma_mpad);
  p.mma_npad = static_cast<int>(plan.mma_npad);
  p.off_product = plan.smem.product;
}

// One cooperative launch of `kernel` on the planned grid, Params by value.
template <typename Kernel, typename Params>
void launch_cooperative(Kernel kernel, const Plan& plan, const Params& p, cudaStream_t stream) {
  void* args[] = {const_cast<Params*>(&p)};
  C10_CUDA_CHECK(cudaLaunchCooperativeKernel(
      reinterpret_cast<void*>(kernel), dim3(static_cast<unsigned>(plan.num_ctas)),
      dim3(static_cast<unsigned>(plan.threads)), args, static_cast<size_t>(plan.smem.total),
      stream));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The grid barrier's counter of one launch, zeroed on `stream`: a fresh
// allocation (two kernels queued on different streams must not share one) and
// a memset node rather than at::zeros' fill kernel (less host work before the
// launch; captured like any other work when the stream is being recorded).
Tensor barrier_counter(const at::TensorOptions& opts, cudaStream_t stream) {
  Tensor barrier = at::empty({1}, opts.dtype(at::kLong));
  C10_CUDA_CHECK(cudaMemsetAsync(barrier.data_ptr(), 0, sizeof(int64_t), stream));
  return barrier;
}

std::vector<Tensor> contiguous_weights(at::TensorList weights) {
  std::vector<Tensor> w;
  w.reserve(weights.size());
  for (const auto& t : weights) w.push_back(t.contiguous());
  return w;
}

// The tier selection shared by the forward and the backward op (kBackward
// picks the kernel, the plan and the op name of the messages): the plan when
// the persistent kernel runs these sizes, std::nullopt when the general tier
// does, an error where cuda_tier='persistent' is forced on sizes it cannot
// run.  Unless it returns early (cuda_tier='general', or nothing to run),
// it sets `guard` (the caller's, so it lasts for the op) to input's device.
template <bool kBackward>
std::optional<Plan> select_persistent_plan(const LstmSizes& s, const Tensor& input,
                                           c10::cuda::OptionalCUDAGuard& guard) {
  constexpr const char* op = kBackward ? "fusedrnn.lstm_backward" : "fusedrnn.lstm_forward";
  const int64_t option = get_option(Option::kCudaTier);
  if (option == 1) return std::nullopt;
  // Nothing to run: the general tier's empty-size path returns the states.
  if (s.T == 0 || s.B == 0 || s.H == 0) return std::nullopt;
  guard.set_device(input.device());

  const at::ScalarType dt = input.scalar_type();
  std::string unsupported;
  if (s.seq.packed) {
    unsupported = "packed sequences (batch_sizes) are not supported by the persistent tier";
  } else if (s.has_proj) {
    unsupported = "proj_size (a w_hr per layer) is not supported by the persistent tier";
  }
  const Plan plan = persistent::plan_lstm_auto(
      s.H, s.I, s.L, s.B, elem_size(dt), acc_size(dt), device_limits(), /*backward=*/kBackward,
      kBackward ? backward_batch_split() : 1, /*mma=*/mma_wanted(),
      /*tf32=*/at::globalContext().allowTF32CuBLAS(), cta_epilogue_option(), threads_option(),
      fwd_task_units_option());
  const persistent::TierChoice choice =
      persistent::choose_tier(option, unsupported.empty(), unsupported, plan, s.T + s.L - 1, s.L,
                              get_option(Option::kCudaStepLaunch) != 0);
  TORCH_CHECK(choice.error.empty(), op, " (CUDA, cuda_tier='persistent'): ",
              choice.error, " (H=", s.H, ", L=", s.L, ", B=", s.B, ", dtype ", dt,
              "); use cuda_tier='auto' or 'general' for these arguments");
  if (!choice.persistent) return std::nullopt;

  std::string why;
  bool fits = false;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, dt,
      kBackward ? "fusedrnn_lstm_persistent_bwd_fits" : "fusedrnn_lstm_persistent_fits", [&] {
        fits = cooperative_fits(persistent_kernel<kBackward, scalar_t>(plan), plan.threads,
                                plan.smem.total,
                                plan.num_ctas, &why);
      });
  if (!fits) {
    TORCH_CHECK(option != 2, op, " (CUDA, cuda_tier='persistent'): the "
                "planned grid of ", plan.num_ctas, " CTAs cannot run co-resident on this "
                "device: ", why, "; use cuda_tier='auto' or 'general'");
    return std::nullopt;
  }
  return plan;
}

}  // namespace

bool persistent_lstm_runs_direction(const LstmSizes& s, const Tensor& input, bool backward) {
  LstmSizes one = s;
  one.L = 1;
  one.D = 1;
  c10::cuda::OptionalCUDAGuard guard;
  return backward ? select_persistent_plan</*kBackward=*/true>(one, input, guard).has_value()
                  : select_persistent_plan</*kBackward=*/false>(one, input, guard).has_value();
}

// ----------------------------------------------------------- op: forward --

std::optional<LstmForwardResult> persistent_lstm_forward_if_selected(
    const LstmSizes& s, const Tensor& input_, const Tensor& hx_, const Tensor& cx_,
    at::TensorList weights_, bool has_biases, bool train) {
  c10::cuda::OptionalCUDAGuard guard;
  const std::optional<Plan> selected =
      select_persistent_plan</*kBackward=*/false>(s, input_, guard);
  if (!selected) return std::nullopt;
  const Plan& plan = *selected;
  const at::ScalarType dt = input_.scalar_type();

  const int64_t T = s.T, B = s.B, H = s.H, L = s.L, G4 = 4 * H;
  const auto opts = input_.options();
  Tensor output = at::empty({T, B, H}, opts);
  Tensor hy = at::empty({L, B, H}, opts);
  Tensor cy = at::empty({L, B, H}, opts);
  Tensor gates, cells, hiddens, hid;
  if (train) {
    gates = at::empty({L, T, B, G4}, opts);
    cells = at::empty({L, T, B, H}, opts);
    hiddens = at::empty({L - 1, T, B, H}, opts);
    hid = hiddens;
  } else {
    gates = at::empty({0}, opts);
    cells = at::empty({0}, opts);
    hiddens = at::empty({0}, opts);
    if (L > 1) hid = at::empty({L - 1, 2, B, H}, opts);
  }

  const Tensor input = input_.contiguous();
  const Tensor hx = hx_.contiguous();
  const Tensor cx = cx_.contiguous();
  const std::vector<Tensor> w = contiguous_weights(weights_);
  const int64_t pl = s.per_layer;

  // Layer 0's input projection for all T steps: one GEMM (follows allow_tf32);
  // the kernel adds the biases of every layer itself, so that a call costs
  // few launches (at the D2L size the host, not the GPU, set the pace).
  const Tensor gx0 = at::mm(input.reshape({T * B, s.I}), w[0].t());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  Tensor barrier = barrier_counter(opts, stream);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dt, "fusedrnn_lstm_persistent_forward", [&] {
    using acc_t = typename acc_type<scalar_t>::type;
    FwdParams<scalar_t> p{};
    fill_common_params(p, plan, w, pl, T, B, H, L, barrier);
    for (int64_t l = 0; l < L; ++l) {
      p.b_ih[l] = has_biases ? w[l * pl + 2].data_ptr<scalar_t>() : nullptr;
      p.b_hh[l] = has_biases ? w[l * pl + 3].data_ptr<scalar_t>() : nullptr;
    }
    p.gx0 = gx0.data_ptr<scalar_t>();
    p.cta_epilogue = plan.cta_epilogue ? 1 : 0;
    p.hx = hx.data_ptr<scalar_t>();
    p.cx = cx.data_ptr<scalar_t>();
    p.output = output.data_ptr<scalar_t>();
    p.hid = hid.defined() ? hid.data_ptr<scalar_t>() : nullptr;
    p.hid_slots = train ? T : 2;
    p.hy = hy.data_ptr<scalar_t>();
    p.cy = cy.data_ptr<scalar_t>();
    p.gates = train ? gates.data_ptr<scalar_t>() : nullptr;
    p.cells = train ? cells.data_ptr<scalar_t>() : nullptr;
    p.off_bias = plan.smem.bias;
    launch_cooperative(persistent_kernel</*kBackward=*/false, scalar_t>(plan), plan, p, stream);
  });
  return LstmForwardResult{output, hy, cy, gates, cells, hiddens};
}

std::optional<LstmBackwardResult> persistent_lstm_backward_if_selected(
    const LstmSizes& s, const Tensor& grad_output_, const Tensor& grad_hy_,
    const Tensor& grad_cy_, const Tensor& input_, const Tensor& hx_, const Tensor& cx_,
    at::TensorList weights_, bool has_biases, const Tensor& output_, const Tensor& gates_,
    const Tensor& cells_, const Tensor& hiddens_, const GradMask& mask) {
  c10::cuda::OptionalCUDAGuard guard;
  const std::optional<Plan> selected =
      select_persistent_plan</*kBackward=*/true>(s, input_, guard);
  if (!selected) return std::nullopt;
  const Plan& plan = *selected;
  const at::ScalarType dt = input_.scalar_type();

  const int64_t T = s.T, B = s.B, H = s.H, L = s.L, G4 = 4 * H, pl = s.per_layer;
  const auto opts = input_.options();
  const Tensor input = input_.contiguous(), hx = hx_.contiguous(), cx = cx_.contiguous();
  const Tensor output = output_.contiguous(), gates = gates_.contiguous();
  const Tensor cells = cells_.contiguous(), hiddens = hiddens_.contiguous();
  const Tensor grad_output = grad_output_.contiguous();
  const Tensor grad_hy = grad_hy_.contiguous(), grad_cy = grad_cy_.contiguous();
  const std::vector<Tensor> w = contiguous_weights(weights_);

  Tensor dG = at::empty({L, T, B, G4}, opts);
  Tensor grad_cx = at::empty({L, B, H}, opts);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  Tensor barrier = barrier_counter(opts, stream);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dt, "fusedrnn_lstm_persistent_backward", [&] {
    BwdParams<scalar_t> p{};
    fill_common_params(p, plan, w, pl, T, B, H, L, barrier);
    p.grad_output = grad_output.data_ptr<scalar_t>();
    p.grad_hy = grad_hy.data_ptr<scalar_t>();
    p.grad_cy = grad_cy.data_ptr<scalar_t>();
    p.gates = gates.data_ptr<scalar_t>();
    p.cells = cells.data_ptr<scalar_t>();
    p.cx = cx.data_ptr<scalar_t>();
    p.dG = dG.data_ptr<scalar_t>();
    p.grad_cx = grad_cx.data_ptr<scalar_t>();
    p.batch_split = plan.batch_split;
    p.rows_per_cta = plan.rows_per_cta;
    launch_cooperative(persistent_kernel</*kBackward=*/true, scalar_t>(plan), plan, p, stream);
  });

  // After the recurrence: gradients of the weights, biases, input and h0 as
  // large GEMMs / reductions over all timesteps (they follow allow_tf32), in
  // the general tier's formulas; only those output_mask asks for.
  std::vector<Tensor> grad_w(weights_.size());
  Tensor grad_hx = mask.states ? at::empty({L, B, H}, opts) : Tensor();
  for (int64_t l = 0; l < L; ++l) {
    if (mask.states) {
      Tensor ghx = grad_hx[l];
      at::mm_out(ghx, dG[l][0], w[l * pl + 1]);
    }
    if (!mask.weights) continue;
    const Tensor x = l == 0 ? input : hiddens[l - 1];     // layer input (T, B, I_l)
    const Tensor out = l == L - 1 ? output : hiddens[l];  // layer output (T, B, H)
    const int64_t I_l = x.size(2);
    const Tensor dG2 = dG[l].view({T * B, G4});
    const Tensor h_prev = T > 1 ? at::cat({hx[l].unsqueeze(0), out.slice(0, 0, T - 1)}, 0)
                                : hx[l].unsqueeze(0);
    grad_w[l * pl] = at::mm(dG2.t(), x.reshape({T * B, I_l}));
    grad_w[l * pl + 1] = at::mm(dG2.t(), h_prev.reshape({T * B, H}));
    if (has_biases) {
      Tensor db = dG2.sum(0);
      grad_w[l * pl + 2] = db;
      grad_w[l * pl + 3] = db.clone();
    }
  }
  Tensor grad_input =
      mask.input ? at::mm(dG[0].view({T * B, G4}), w[0]).view({T, B, s.I}) : Tensor();
  finish_masked(mask, opts, grad_input, {&grad_hx, &grad_cx}, grad_w);
  return LstmBackwardResult{grad_input, grad_hx, grad_cx, grad_w};
}

// ------------------------------------------------- op: wavefront floor --

namespace {

// Milliseconds one launch of the empty wavefront takes on the current device:
// the grid the planner gives a float32 LSTM of these sizes (or one CTA per SM
// when it does not fit), kThreads threads a CTA, T+L-1 steps separated by
// grid barriers and nothing else.  One warm-up launch, then one timed launch
// between CUDA events on the current stream (call it repeatedly for a median).
double wavefront_floor(int64_t T, int64_t L, int64_t B, int64_t H) {
  TORCH_CHECK(T >= 1 && L >= 1 && B >= 1 && H >= 1, "fusedrnn.wavefront_floor: expected "
              "positive T, L, B and H, got T=", T, ", L=", L, ", B=", B, ", H=", H);
  const c10::DeviceIndex dev = c10::cuda::current_device();
  const c10::cuda::CUDAGuard guard(dev);
  const persistent::DeviceLimits d = device_limits();
  const Plan plan = persistent::plan_lstm(H, H, L, B, 4, 4, d);
  const int64_t ctas = plan.fits ? plan.num_ctas : d.num_sms;
  std::string why;
  TORCH_CHECK(cooperative_fits(wavefront_floor_kernel, kThreads, 0, ctas, &why),
              "fusedrnn.wavefront_floor: cannot launch ", ctas, " co-resident CTAs: ", why);
  Tensor barrier = at::zeros({2}, at::TensorOptions().device(at::kCUDA, dev).dtype(at::kLong));
  unsigned long long* ctr = reinterpret_cast<unsigned long long*>(barrier.data_ptr<int64_t>());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t steps = T + L - 1;
  auto launch = [&](unsigned long long* c) {
    void* args[] = {&c, const_cast<int64_t*>(&steps)};
    C10_CUDA_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<void*>(wavefront_floor_kernel),
                                               dim3(static_cast<unsigned>(ctas)),
                                               dim3(static_cast<unsigned>(kThreads)), args, 0,
                                               stream));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  launch(ctr);  // warm-up (its own counter)
  cudaEvent_t start, stop;
  C10_CUDA_CHECK(cudaEventCreate(&start));
  C10_CUDA_CHECK(cudaEventCreate(&stop));
  C10_CUDA_CHECK(cudaEventRecord(start, stream));
  launch(ctr + 1);
  C10_CUDA_CHECK(cudaEventRecord(stop, stream));
  C10_CUDA_CHECK(cudaEventSynchronize(stop));
  float ms = 0.f;
  C10_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  C10_CUDA_CHECK(cudaEventDestroy(start));
  C10_CUDA_CHECK(cudaEventDestroy(stop));
  return static_cast<double>(ms);
}

}  // namespace

// A benchmark/test-only op (no tensor arguments, so one catch-all kernel);
// declared here rather than in ops.cpp because it exists only in CUDA builds.
TORCH_LIBRARY_FRAGMENT(fusedrnn, m) {
  m.def("wavefront_floor(int T, int L, int B, int H) -> float", &wavefront_floor);
}

}  // namespace fusedrnn
