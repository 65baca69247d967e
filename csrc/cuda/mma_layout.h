// Index math of the persistent kernels' tensor-core products (EXPERIMENTAL;
// persistent_plan.h, "tensor-core products"), shared by the CUDA kernels
// (lstm_persistent.cu) and the CPU emulation below, which the CPU tests run
// (tests/test_persistent_plan.py, through fusedrnn._C.persistent_mma_check):
// the warp items, the partial-sum offsets the tiles store to, and the offsets
// the epilogues read.  The emulation replays one CTA's product of one staged
// chunk exactly as the kernel partitions it -- items, K slices, padded tiles,
// row-major A and column-major B operands with the kernel's leading dimension
// -- with every padding row NaN and every access bounds-checked against its
// shared-memory area, and compares the epilogue's sums with the direct
// product.  What it cannot check is the hardware's fragment semantics (the
// WMMA calls themselves), which only a GPU run can.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "cuda/persistent_plan.h"

#if defined(__CUDACC__)
#define FUSEDRNN_MMA_HD __host__ __device__
#else
#define FUSEDRNN_MMA_HD
#endif

namespace fusedrnn {
namespace persistent {

// Item `item` (one warp's unit of work) of a product of m_tiles x n_tiles
// output tiles, each `ksteps` deep steps split into `ksplit` slices: its
// slice ks, tile (tm, tn) and steps [k0, k1).
struct MmaItem {
  int ks, tm, tn, k0, k1;
};

FUSEDRNN_MMA_HD inline MmaItem mma_item(int item, int n_tiles, int ksteps, int ksplit) {
  MmaItem r;
  r.ks = item % ksplit;
  const int tile = item / ksplit;
  r.tm = tile / n_tiles;
  r.tn = tile % n_tiles;
  r.k0 = r.ks * ksteps / ksplit;
  r.k1 = (r.ks + 1) * ksteps / ksplit;
  return r;
}

// Offset (in floats) of partial sum (ks, m, n) in the product area of
// `mrows` rows per slice, `ldp` floats per row.
FUSEDRNN_MMA_HD inline int64_t mma_ps_index(int ks, int mrows, int ldp, int m, int n) {
  return (static_cast<int64_t>(ks) * mrows + m) * ldp + n;
}

// The output tiles of one staged chunk of bc rows: forward M = the 4U gate
// rows, N = the staged rows (rounded up to tiles); backward M = the staged
// rows (rounded up), N = the npad padded unit rows.
struct MmaGrid {
  int m_tiles, n_tiles;
};

FUSEDRNN_MMA_HD inline MmaGrid mma_grid(bool backward, int U, int bc, int tm, int tn, int npad) {
  MmaGrid g;
  if (backward) {
    g.m_tiles = (bc + tm - 1) / tm;
    g.n_tiles = npad / tn;
  } else {
    g.m_tiles = 4 * U / tm;
    g.n_tiles = (bc + tn - 1) / tn;
  }
  return g;
}

// ------------------------------------------------------- CPU emulation --

namespace emulation {

// A shared-memory area of n scalars whose every access is bounds-checked.
struct Area {
  std::string name;
  std::vector<double> v;
  std::string* error;
  double& at(int64_t i) {
    if (i < 0 || i >= static_cast<int64_t>(v.size())) {
      if (error->empty())
        *error = name + ": index " + std::to_string(i) + " outside its " +
                 std::to_string(v.size()) + " elements";
      static double dummy;
      return dummy;
    }
    return v[static_cast<size_t>(i)];
  }
};

// One chunk: A (rows with used_a[m], row stride ld) times Bop (rows with
// used_b[n]) over Kt columns, partitioned as the kernel does: m_tiles x
// n_tiles tiles (the kernel's launch arithmetic, passed in), K slices.
// Unused rows are NaN.  Returns the largest |epilogue sum - direct product|
// over the outputs the epilogue reads (used row x used column; NaN if a
// padding value leaked in), or sets *error.
inline double chunk_error(const Plan& p, const std::vector<bool>& used_a,
                          const std::vector<bool>& used_b, int m_tiles, int n_tiles, int Kt,
                          int ld, Area& A, Area& Bop, Area& Ps, std::mt19937& rng,
                          std::string* error) {
  const MmaTiles& t = p.mma;
  const int TM = static_cast<int>(t.tm), TN = static_cast<int>(t.tn), KK = static_cast<int>(t.tk);
  const int mrows = static_cast<int>(p.mma_mpad), ldp = static_cast<int>(p.mma_npad);
  const int ksplit = static_cast<int>(p.mma_ksplit);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  const double nan = std::nan("");
  for (auto* a : {&A, &Bop, &Ps})
    for (double& x : a->v) x = nan;
  for (size_t m = 0; m < used_a.size(); ++m)
    if (used_a[m])
      for (int k = 0; k < Kt; ++k) A.at(static_cast<int64_t>(m) * ld + k) = u(rng);
  for (size_t n = 0; n < used_b.size(); ++n)
    if (used_b[n])
      for (int k = 0; k < Kt; ++k) Bop.at(static_cast<int64_t>(n) * ld + k) = u(rng);
  if (!error->empty()) return 0.0;

  const int ksteps = Kt / KK;
  const int items = m_tiles * n_tiles * ksplit;
  for (int item = 0; item < items; ++item) {
    const MmaItem it = mma_item(item, n_tiles, ksteps, ksplit);
    for (int i = 0; i < TM; ++i) {
      for (int j = 0; j < TN; ++j) {
        double acc = 0.0;
        for (int kk = it.k0; kk < it.k1; ++kk) {
          for (int k = kk * KK; k < (kk + 1) * KK; ++k) {
            // A row-major: (m, k) at A[m * ld + k]; the B operand column-major:
            // (k, n) at Bop[n * ld + k] -- as the kernel's load_matrix_sync calls.
            acc += A.at(static_cast<int64_t>(it.tm * TM + i) * ld + k) *
                   Bop.at(static_cast<int64_t>(it.tn * TN + j) * ld + k);
          }
        }
        Ps.at(mma_ps_index(it.ks, mrows, ldp, it.tm * TM + i, it.tn * TN + j)) = acc;
      }
    }
    if (!error->empty()) return 0.0;
  }
  double worst = 0.0;
  for (size_t m = 0; m < used_a.size(); ++m) {
    if (!used_a[m]) continue;
    for (size_t n = 0; n < used_b.size(); ++n) {
      if (!used_b[n]) continue;
      double sum = 0.0, want = 0.0;
      for (int ks = 0; ks < ksplit; ++ks)
        sum += Ps.at(mma_ps_index(ks, mrows, ldp, static_cast<int>(m), static_cast<int>(n)));
      for (int k = 0; k < Kt; ++k)
        want += A.at(static_cast<int64_t>(m) * ld + k) * Bop.at(static_cast<int64_t>(n) * ld + k);
      const double e = std::fabs(sum - want);
      if (!(e <= worst)) worst = e;  // NaN sticks
    }
  }
  return worst;
}

}  // namespace emulation

// Replays the plan's tensor-core products for every kind of chunk the kernel
// meets: both CTA kinds (all units, and the last CTA's remainder), a full
// and the last (shorter) batch chunk, and each product depth (forward:
// layer 0's K = H and the upper layers' 2H; backward: the full row, the
// layer above's part alone at the last step, and nothing at the top
// layer's last step).  Returns the largest error (0 up to rounding when the
// partition is right), or sets *error.
inline double mma_emulation_error(const Plan& p, std::string* error, unsigned seed = 1) {
  error->clear();
  if (!p.fits || !p.mma.on()) {
    *error = "the plan has no tensor-core tiles";
    return 0.0;
  }
  std::mt19937 rng(seed);
  const bool backward = p.backward;
  const int64_t H = p.H, U = p.units_per_cta, BC = p.batch_chunk;
  const int TM = static_cast<int>(p.mma.tm), TN = static_cast<int>(p.mma.tn);
  // The areas, in elements, as the plan sizes them.
  const int64_t stage_rows = p.mma.stage_rows(BC);
  const int64_t weight_rows = p.mma.weight_rows(U);
  emulation::Area W{"weights", std::vector<double>(static_cast<size_t>(weight_rows * p.K)), error};
  emulation::Area X{"stage", std::vector<double>(static_cast<size_t>(stage_rows * p.K)), error};
  emulation::Area P{"product",
                    std::vector<double>(static_cast<size_t>(p.mma.product_bytes(U, BC, H) / 4)),
                    error};
  const int64_t last_units = H - (p.ctas_per_layer - 1) * U;
  const int64_t rows = p.batch_split > 1 ? p.rows_per_cta : p.B;
  const int64_t last_chunk = rows - (ceil_div(rows, BC) - 1) * BC;
  // Row lengths: forward layer 0 (H) and above (2H); backward the top layer
  // (4H) and below it (8H).  Product depths: the whole row, and backward at
  // the last step the layer above's 4H alone (below the top) or nothing (top).
  struct Depth {
    int64_t K, Kt;
  };
  std::vector<Depth> depths;
  if (!backward) {
    depths.push_back({H, H});
    if (p.L > 1) depths.push_back({2 * H, 2 * H});
  } else {
    depths.push_back({4 * H, 4 * H});
    depths.push_back({4 * H, 0});
    if (p.L > 1) {
      depths.push_back({8 * H, 8 * H});
      depths.push_back({8 * H, 4 * H});
    }
  }
  double worst = 0.0;
  for (int64_t nu : {U, last_units}) {
    for (int64_t bc : {BC, last_chunk}) {
      for (const Depth& d : depths) {
        const MmaGrid g = mma_grid(backward, static_cast<int>(U), static_cast<int>(bc), TM, TN,
                                   static_cast<int>(p.mma_npad));
        // Forward: A = the 4U gate rows q * U + jl (jl >= nu are not loaded),
        // Bop = the bc staged rows.  Backward: A = the bc staged dG rows,
        // Bop = the nu resident weight columns.
        std::vector<bool> gate_rows(static_cast<size_t>(4 * U), false);
        for (int64_t q = 0; q < 4; ++q)
          for (int64_t jl = 0; jl < nu; ++jl) gate_rows[static_cast<size_t>(q * U + jl)] = true;
        const std::vector<bool> staged(static_cast<size_t>(bc), true);
        const std::vector<bool> units(static_cast<size_t>(nu), true);
        const double e = emulation::chunk_error(
            p, backward ? staged : gate_rows, backward ? units : staged, g.m_tiles, g.n_tiles,
            static_cast<int>(d.Kt), static_cast<int>(d.K), backward ? X : W, backward ? W : X, P,
            rng, error);
        if (!(e <= worst)) worst = e;
        if (!error->empty()) return 0.0;
      }
    }
  }
  return worst;
}

}  // namespace persistent
}  // namespace fusedrnn
