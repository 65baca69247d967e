// Shared pieces of the general-tier step kernels (lstm_cuda.cu,
// gru_rnn_cuda.cu): the CTA tiles, the two staged shared-memory tile products
// of the recurrence (forward h_{t-1} · W_hhᵀ over all gates of a CTA's units,
// backward dG_{t+1} · W_hh), and the host helpers both ops use (tile choice
// and dispatch, grid checks, argument checks).  The epilogues (the cell math
// and what each step writes) stay in the .cu files.
//
// Everything here is in an anonymous namespace, as it was in the .cu files:
// each translation unit gets its own copy (internal linkage).
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <type_traits>
#include <vector>

#include "cell_math.h"

namespace fusedrnn {
namespace {

// Depth of one K slice of the tiled products.
constexpr int kBK = 32;

// Resident CTAs per SM the forward kernels are compiled for: two for float
// accumulation (caps registers so that two 256-thread CTAs fit), one for
// double (whose NG·TM double accumulators and staging registers need more).
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
//   acc[q][m] = Σ_{k<K} h_prev[b0 + ty·TM + m, k] · w_hh[q·H + j0 + tx, k]
// for every gate block q < NG and m < TM; rows >= B and units >= H read as
// zero.  h_prev (B, K) and w_hh (NG·H, K) are row-major; K is the depth (H,
// or the LSTM's proj_size P).  Per K slice the CTA stages
// h_prev[b0:b0+BM, k0:k0+kBK] as As[k][b] and the NG·BN weight rows as
// Ws[q][k][j] (both padded by one column so the transposing stores are free
// of bank conflicts; the inner-loop reads are broadcasts or consecutive
// words); the next slice is prefetched into registers meanwhile.  Staging
// map: NT is a multiple of kBK, so thread `tid` loads column kk = tid % kBK
// of a slice for rows rr + r·RS (rr = tid / kBK, RS = NT / kBK); weight row
// rr + r·RS of the NG·BN staged rows is gate (r·RS) / BN, unit
// rr + (r·RS) % BN (RS | BN), so every per-r offset is a compile-time
// multiple of K and the thread needs one base pointer per operand.
template <typename scalar_t, int NG, int BM, int BN, int TM>
__device__ __forceinline__ void fwd_product(const scalar_t* __restrict__ h_prev,
                                            const scalar_t* __restrict__ w_hh, int64_t B,
                                            int64_t H, int64_t K, int64_t b0, int64_t j0,
                                            typename acc_type<scalar_t>::type (&acc)[NG][TM]) {
  using acc_t = typename acc_type<scalar_t>::type;
  constexpr int NT = BN * (BM / TM);
  constexpr int A_LOADS = BM * kBK / NT;
  constexpr int W_LOADS = NG * BN * kBK / NT;
  constexpr int RS = NT / kBK;
  static_assert(BM % TM == 0, "BM must be a multiple of TM");
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
  const scalar_t* a_base = h_prev + (b0 + rr) * K + kk;
  const scalar_t* w_base = w_hh + (j0 + rr) * K + kk;

  // Global -> registers for the K slice starting at k0 (zero outside bounds).
  auto load = [&](int64_t k0) {
    const bool k_ok = k0 + kk < K;
#pragma unroll
    for (int r = 0; r < A_LOADS; ++r) {
      const bool ok = k_ok && b0 + rr + r * RS < B;
      a_reg[r] = ok ? static_cast<acc_t>(a_base[static_cast<int64_t>(r * RS) * K + k0]) : acc_t(0);
    }
#pragma unroll
    for (int r = 0; r < W_LOADS; ++r) {
      const int q = (r * RS) / BN, c = (r * RS) % BN;
      const bool ok = k_ok && j0 + rr + c < H;
      w_reg[r] = ok ? static_cast<acc_t>(w_base[(q * H + c) * K + k0]) : acc_t(0);
    }
  };
  // Registers -> shared memory (same map as `load`).
  auto store = [&]() {
#pragma unroll
    for (int r = 0; r < A_LOADS; ++r) As[kk][rr + r * RS] = a_reg[r];
#pragma unroll
    for (int r = 0; r < W_LOADS; ++r) Ws[(r * RS) / BN][kk][rr + (r * RS) % BN] = w_reg[r];
  };

  const int64_t num_k = (K + kBK - 1) / kBK;
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
// A (a_rows, K) and W (K, H) row-major (A = dG_{t+1} with K = NG·H gate
// columns, W = W_hh); rows >= a_rows and units >= H read as zero.
// A == nullptr or a_rows <= b0 (no row of this CTA has a recurrent term;
// uniform over the CTA) skips the product: acc = 0.
template <typename scalar_t, int BM, int BN, int TM>
__device__ __forceinline__ void bwd_product(const scalar_t* __restrict__ A, int64_t a_rows,
                                            int64_t K, const scalar_t* __restrict__ W,
                                            int64_t H, int64_t b0, int64_t j0,
                                            typename acc_type<scalar_t>::type (&acc)[TM]) {
  using acc_t = typename acc_type<scalar_t>::type;
  constexpr int NT = BN * (BM / TM);
  constexpr int A_LOADS = BM * kBK / NT;
  constexpr int W_LOADS = kBK * BN / NT;
  static_assert(BM % TM == 0, "BM must be a multiple of TM");
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

// ------------------------------------------------------------ launching --
//
// Tile shapes: BM = 8 rows (TM = 1) for <= 16 rows, else BM = 32 (TM = 4);
// BN = 32 units when that already gives every SM a CTA, else 16 (the small
// problems are latency bound: more, smaller CTAs win).
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

int64_t sm_count() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

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

// The grid of one step over `rows` rows; the ops check H and the row count
// against the grid limits once per call (check_grid).
template <typename TL>
dim3 step_grid(int64_t rows, int64_t H) {
  return dim3(static_cast<unsigned>((rows + TL::BM - 1) / TL::BM),
              static_cast<unsigned>((H + TL::BN - 1) / TL::BN));
}

// The smallest tiles (BM = 8, BN = 16) give the largest grid, so this bounds
// every step's grid.  `what` is the op's name as the message starts with it
// (one or more pieces, e.g. "fusedrnn.", "lstm_forward").
template <typename... What>
void check_grid(int64_t B, int64_t H, const What&... what) {
  TORCH_CHECK((H + 15) / 16 <= 65535 && (B + 7) / 8 <= 2147483647LL, what...,
              " (CUDA): hidden size ", H, " and batch size ", B,
              " exceed the grid limits of the step kernels");
}

// ------------------------------------------------------------- op helpers --

void check_cuda_args(const at::Tensor& input, const char* op) {
  TORCH_CHECK(input.is_cuda(), "fusedrnn.", op,
              " (CUDA): expected input on a CUDA device, but it is on ", input.device(),
              "; move every tensor of the call to the same CUDA device");
}

at::ScalarType acc_scalar_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

std::vector<at::Tensor> contiguous_all(at::TensorList ts) {
  std::vector<at::Tensor> v;
  v.reserve(ts.size());
  for (const auto& t : ts) v.push_back(t.contiguous());
  return v;
}

// ------------------------------------- both directions in one launch --
//
// The one-launch bidirectional step kernels (option cuda_bidirectional =
// one_launch): Args holds one direction's arguments of a step kernel and
// runs its body (template <BM, BN, TM> run() const, __forceinline__, the same
// code the one-direction kernel runs); kMinCtas is the kernel's
// minimum-blocks launch bound.  Both directions have the same rows and H.
template <typename Args>
struct ArgPair {
  Args d[2];
};

template <typename Args, int BM, int BN, int TM>
__global__ void __launch_bounds__(BN * (BM / TM), Args::kMinCtas)
step_pair_kernel(const ArgPair<Args> p) {
  // A select, not p.d[blockIdx.z]: a dynamic index into the parameter space
  // would copy the structs to local memory.
  const Args& a = blockIdx.z == 0 ? p.d[0] : p.d[1];
  a.template run<BM, BN, TM>();
}

// Both directions' step in one launch (grid z = 2), with the tile of cfg.
template <typename Args>
void launch_pair(const StepConfig& cfg, cudaStream_t st, const ArgPair<Args>& p) {
  with_tile(cfg, [&](auto tile) {
    using TL = decltype(tile);
    dim3 grid = step_grid<TL>(p.d[0].B, p.d[0].H);
    grid.z = 2;
    step_pair_kernel<Args, TL::BM, TL::BN, TL::TM><<<grid, TL::NT, 0, st>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace
}  // namespace fusedrnn
