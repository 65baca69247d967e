// Fused CPU kernels for one LSTM layer-timestep (fp32).  See fast_step.h.
//
// Layouts
// -------
// Forward packing: column panels of 16 hidden units.  Panel p holds, for every
// k in [0, H), the 64 floats  W_hh[gate*H + 16p + u][k]  ordered (gate, u),
// i.e. the i, f, g, o weights of units 16p..16p+15 side by side (units past H
// are zero).  A micro-tile is R batch rows x 64 columns = 4R zmm accumulators,
// initialised from gx; per k it loads the 4 weight vectors once and does one
// broadcast FMA per (row, gate).  The epilogue then holds i, f, g, o of 16
// units in four registers per row and runs the cell math in vector form.
//
// Backward packing: column panels of up to 64 hidden units (NV = 1..4 vectors
// of 16).  Panel q holds, for every k in [0, 4H), the 16*NV floats
// W_hh[k][64q + u].  A micro-tile is R rows x 16*NV units, accumulators
// initialised from dy, K loop over the 4H gate gradients of step t+1; the
// epilogue is the vector form of lstm_cell_backward.
//
// Threading: one parallel region per step.  Task id = panel * n_row_blocks +
// row_block; every task writes a disjoint block of the outputs.

#include "fast_step.h"

#include <algorithm>
#include <atomic>
#include <cstring>

#include "../cell_math.h"
#include "pack.h"
#include "simd_math.h"

namespace fusedrnn {
namespace cpu {

namespace {
std::atomic<ParallelFor> g_parallel_for{nullptr};
std::atomic<bool> g_force_scalar{false};
}  // namespace

namespace detail {
void run_parallel(int64_t n_tasks, void* ctx,
                  void (*task)(void*, int64_t, int64_t)) {
  if (n_tasks <= 0) return;
  ParallelFor pf = g_parallel_for.load(std::memory_order_acquire);
  if (pf == nullptr || n_tasks == 1) {
    task(ctx, 0, n_tasks);
  } else {
    pf(n_tasks, ctx, task);
  }
}
}  // namespace detail

namespace {

using namespace detail;  // simd_math.h helpers

// Largest micro-tile height (rows).  4*kMaxRows accumulators + 4 weight
// registers must fit in the 32 zmm registers.
constexpr int kMaxRows = 6;
// Row tiles per row block (a row block is the row extent of one task).
constexpr int kTilesPerBlock = 4;

RowSplit split_rows(int64_t B) {
  return detail::split_rows(B, kMaxRows, kTilesPerBlock);
}

// ---------------------------------------------------------------------------
// Scalar reference path (any CPU).
// ---------------------------------------------------------------------------

struct FwdArgs {
  int64_t B, H;
  const float* packed;
  const float* gx;
  int64_t ld_gx;
  const float* h_prev;
  int64_t ld_h;
  const float* c_prev;
  float* c_out;
  float* h_out;
  int64_t ld_h_out;
  float* gates_out;
  RowSplit rows;
  int64_t n_panels;
};

struct BwdArgs {
  int64_t B, H;
  const float* packed;
  const float* dy;
  int64_t ld_dy;
  const float* dG_next;
  const float* gates;
  const float* c_prev;
  const float* c;
  float* dc;
  float* dG;
  RowSplit rows;
  int64_t n_panels;
};

// Scalar forward for rows [b0,b1) and units [j0,j1), using the forward packing.
void fwd_block_scalar(const FwdArgs& a, int64_t b0, int64_t b1, int64_t j0,
                      int64_t j1) {
  const int64_t H = a.H;
  float pre[4][16];
  for (int64_t b = b0; b < b1; ++b) {
    for (int64_t jb = j0; jb < j1; jb += 16) {
      const int64_t p = jb / 16;
      const int64_t nu = std::min<int64_t>(16, j1 - jb);
      for (int g = 0; g < 4; ++g)
        for (int64_t u = 0; u < nu; ++u)
          pre[g][u] = a.gx[b * a.ld_gx + g * H + jb + u];
      if (a.h_prev != nullptr) {
        const float* wp = a.packed + p * H * 64;
        const float* hp = a.h_prev + b * a.ld_h;
        for (int64_t k = 0; k < H; ++k) {
          const float hk = hp[k];
          for (int g = 0; g < 4; ++g)
            for (int64_t u = 0; u < nu; ++u)
              pre[g][u] += hk * wp[k * 64 + g * 16 + u];
        }
      }
      for (int64_t u = 0; u < nu; ++u) {
        const int64_t j = jb + u;
        const LstmFwdOut<float> r = lstm_cell_forward<float>(
            pre[0][u], pre[1][u], pre[2][u], pre[3][u], a.c_prev[b * H + j]);
        if (a.gates_out != nullptr) {
          float* go = a.gates_out + b * 4 * H + j;
          go[0] = r.i;
          go[H] = r.f;
          go[2 * H] = r.g;
          go[3 * H] = r.o;
        }
        a.c_out[b * H + j] = r.c;
        a.h_out[b * a.ld_h_out + j] = r.h;
      }
    }
  }
}

// Scalar backward for rows [b0,b1) and units [j0,j1), using the backward packing.
void bwd_block_scalar(const BwdArgs& a, int64_t b0, int64_t b1, int64_t j0,
                      int64_t j1) {
  const int64_t H = a.H;
  const int64_t Hp = ceil_div(H, 16) * 16;
  float dh[64];
  for (int64_t b = b0; b < b1; ++b) {
    for (int64_t jb = j0; jb < j1; jb += 64) {
      const int64_t q = jb / 64;
      const int64_t nu = std::min<int64_t>(64, j1 - jb);
      const int64_t width = std::min<int64_t>(64, Hp - 64 * q);
      for (int64_t u = 0; u < nu; ++u) dh[u] = a.dy[b * a.ld_dy + jb + u];
      if (a.dG_next != nullptr) {
        const float* wp = a.packed + q * 4 * H * 64;
        const float* gp = a.dG_next + b * 4 * H;
        for (int64_t k = 0; k < 4 * H; ++k) {
          const float gk = gp[k];
          for (int64_t u = 0; u < nu; ++u) dh[u] += gk * wp[k * width + u];
        }
      }
      for (int64_t u = 0; u < nu; ++u) {
        const int64_t j = jb + u;
        const float* gt = a.gates + b * 4 * H + j;
        const LstmBwdOut<float> r = lstm_cell_backward<float>(
            dh[u], a.dc[b * H + j], gt[0], gt[H], gt[2 * H], gt[3 * H],
            a.c_prev[b * H + j], a.c[b * H + j]);
        float* d = a.dG + b * 4 * H + j;
        d[0] = r.di;
        d[H] = r.df;
        d[2 * H] = r.dg;
        d[3 * H] = r.do_;
        a.dc[b * H + j] = r.dc_prev;
      }
    }
  }
}

void fwd_task_scalar(void* ctx, int64_t begin, int64_t end) {
  const FwdArgs& a = *static_cast<const FwdArgs*>(ctx);
  for (int64_t t = begin; t < end; ++t) {
    const int64_t p = t / a.rows.n_blocks, rb = t % a.rows.n_blocks;
    const int64_t t0 = rb * a.rows.tiles_per_block;
    const int64_t t1 = std::min(a.rows.n_tiles, t0 + a.rows.tiles_per_block);
    fwd_block_scalar(a, a.rows.tile_begin(t0), a.rows.tile_begin(t1), p * 16,
                     std::min(a.H, p * 16 + 16));
  }
}

void bwd_task_scalar(void* ctx, int64_t begin, int64_t end) {
  const BwdArgs& a = *static_cast<const BwdArgs*>(ctx);
  for (int64_t t = begin; t < end; ++t) {
    const int64_t q = t / a.rows.n_blocks, rb = t % a.rows.n_blocks;
    const int64_t t0 = rb * a.rows.tiles_per_block;
    const int64_t t1 = std::min(a.rows.n_tiles, t0 + a.rows.tiles_per_block);
    bwd_block_scalar(a, a.rows.tile_begin(t0), a.rows.tile_begin(t1), q * 64,
                     std::min(a.H, q * 64 + 64));
  }
}

// ---------------------------------------------------------------------------
// AVX-512 path.
// ---------------------------------------------------------------------------
#if FUSEDRNN_X86

#ifndef FS_EPI_UNROLL
#define FS_EPI_UNROLL 1
#endif
constexpr int kEpiUnroll = FS_EPI_UNROLL;
// Software prefetch of the epilogue operands one tile ahead.  Measured: it
// helps the forward step (gx and gates_out are cold every step) and does not
// help the backward step.
#ifndef FS_FWD_EPI_PF
#define FS_FWD_EPI_PF 1
#endif
#ifndef FS_BWD_EPI_PF
#define FS_BWD_EPI_PF 0
#endif

// One forward micro-tile: rows [b0, b0+R), units [16p, 16p+16) ∩ [0, H).
template <int R>
FS_TARGET void fwd_tile(const FwdArgs& a, int64_t b0, int64_t p) {
  const int64_t H = a.H;
  const int64_t j0 = p * 16;
  const __mmask16 m = tail_mask(H - j0);
  __m512 acc[R][4];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    const float* g = a.gx + (b0 + r) * a.ld_gx + j0;
#pragma GCC unroll 4
    for (int q = 0; q < 4; ++q) acc[r][q] = _mm512_maskz_loadu_ps(m, g + q * H);
  }
  if (a.h_prev != nullptr) {
    const float* hp[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) hp[r] = a.h_prev + (b0 + r) * a.ld_h;
    kloop<R, 4>(acc, hp, a.packed + p * H * 64, H, 64);
  }
  // Epilogue: vector lstm_cell_forward.
#pragma GCC unroll kEpiUnroll
  for (int r = 0; r < R; ++r) {
    const int64_t b = b0 + r;
    const __m512 gi = v_sigmoid(acc[r][0]);
    const __m512 gf = v_sigmoid(acc[r][1]);
    const __m512 gg = v_tanh(acc[r][2]);
    const __m512 go = v_sigmoid(acc[r][3]);
    const __m512 cp = _mm512_maskz_loadu_ps(m, a.c_prev + b * H + j0);
    const __m512 cn = _mm512_fmadd_ps(gf, cp, _mm512_mul_ps(gi, gg));
    const __m512 hn = _mm512_mul_ps(go, v_tanh(cn));
    if (a.gates_out != nullptr) {
      float* gout = a.gates_out + b * 4 * H + j0;
      _mm512_mask_storeu_ps(gout, m, gi);
      _mm512_mask_storeu_ps(gout + H, m, gf);
      _mm512_mask_storeu_ps(gout + 2 * H, m, gg);
      _mm512_mask_storeu_ps(gout + 3 * H, m, go);
    }
    _mm512_mask_storeu_ps(a.c_out + b * H + j0, m, cn);
    _mm512_mask_storeu_ps(a.h_out + b * a.ld_h_out + j0, m, hn);
  }
}

FS_TARGET void fwd_tile_dispatch(const FwdArgs& a, int64_t b0, int rows,
                                 int64_t p) {
  switch (rows) {
    case 1: fwd_tile<1>(a, b0, p); break;
    case 2: fwd_tile<2>(a, b0, p); break;
    case 3: fwd_tile<3>(a, b0, p); break;
    case 4: fwd_tile<4>(a, b0, p); break;
    case 5: fwd_tile<5>(a, b0, p); break;
    case 6: fwd_tile<6>(a, b0, p); break;
    case 7: fwd_tile<7>(a, b0, p); break;
    default: break;
  }
}

FS_INLINE void prefetch_fwd_tile(const FwdArgs& a, int64_t b0, int64_t b1,
                                 int64_t p) {
  if (!FS_FWD_EPI_PF) return;
  const int64_t H = a.H, j0 = p * 16;
  for (int64_t b = b0; b < b1; ++b) {
    const float* g = a.gx + b * a.ld_gx + j0;
    for (int q = 0; q < 4; ++q) prefetch_vec(g + q * H);
    prefetch_vec(a.c_prev + b * H + j0);
    if (a.gates_out != nullptr)
      for (int q = 0; q < 4; ++q) prefetchw_vec(a.gates_out + b * 4 * H + j0 + q * H);
    if (a.c_out != a.c_prev) prefetchw_vec(a.c_out + b * H + j0);
    prefetchw_vec(a.h_out + b * a.ld_h_out + j0);
  }
}

FS_TARGET void fwd_task_avx512(void* ctx, int64_t begin, int64_t end) {
  const FwdArgs& a = *static_cast<const FwdArgs*>(ctx);
  // Each tile runs after the prefetches for the tile that follows it.
  TileIter it(a.rows, begin, end);
  if (!it.valid()) return;
  prefetch_fwd_tile(a, it.r0(), it.r1(), it.panel());
  while (it.valid()) {
    const int64_t p = it.panel(), r0 = it.r0(), r1 = it.r1();
    it.next();
    if (it.valid()) prefetch_fwd_tile(a, it.r0(), it.r1(), it.panel());
    fwd_tile_dispatch(a, r0, static_cast<int>(r1 - r0), p);
  }
}

// One backward micro-tile: rows [b0, b0+R), units [64q, 64q + 16NV) ∩ [0, H).
template <int R, int NV>
FS_TARGET void bwd_tile(const BwdArgs& a, int64_t b0, int64_t q) {
  const int64_t H = a.H;
  const int64_t j0 = q * 64;
  __mmask16 m[NV];
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) m[v] = tail_mask(H - j0 - 16 * v);
  __m512 acc[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    const float* d = a.dy + (b0 + r) * a.ld_dy + j0;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      acc[r][v] = _mm512_maskz_loadu_ps(m[v], d + 16 * v);
  }
  if (a.dG_next != nullptr) {
    const int64_t K = 4 * H;
    const float* gp[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) gp[r] = a.dG_next + (b0 + r) * K;
    kloop<R, NV>(acc, gp, a.packed + q * K * 64, K, 16 * NV);
  }
  // Epilogue: vector lstm_cell_backward.
  const __m512 one = _mm512_set1_ps(1.0f);
#pragma GCC unroll 1
  for (int r = 0; r < R; ++r) {
    const int64_t b = b0 + r;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const int64_t j = j0 + 16 * v;
      const __mmask16 mv = m[v];
      const float* gt = a.gates + b * 4 * H + j;
      const __m512 dh = acc[r][v];
      const __m512 dcn = _mm512_maskz_loadu_ps(mv, a.dc + b * H + j);
      const __m512 gi = _mm512_maskz_loadu_ps(mv, gt);
      const __m512 gf = _mm512_maskz_loadu_ps(mv, gt + H);
      const __m512 gg = _mm512_maskz_loadu_ps(mv, gt + 2 * H);
      const __m512 go = _mm512_maskz_loadu_ps(mv, gt + 3 * H);
      const __m512 cp = _mm512_maskz_loadu_ps(mv, a.c_prev + b * H + j);
      const __m512 cc = _mm512_maskz_loadu_ps(mv, a.c + b * H + j);
      const __m512 tc = v_tanh(cc);
      // dct = dc + dh * o * (1 - tc^2)
      const __m512 dct = _mm512_fmadd_ps(
          _mm512_mul_ps(dh, go), _mm512_fnmadd_ps(tc, tc, one), dcn);
      // di = dct * g * i * (1 - i)
      const __m512 di = _mm512_mul_ps(
          _mm512_mul_ps(_mm512_mul_ps(dct, gg), gi), _mm512_sub_ps(one, gi));
      // df = dct * c_prev * f * (1 - f)
      const __m512 df = _mm512_mul_ps(
          _mm512_mul_ps(_mm512_mul_ps(dct, cp), gf), _mm512_sub_ps(one, gf));
      // dg = dct * i * (1 - g^2)
      const __m512 dg = _mm512_mul_ps(_mm512_mul_ps(dct, gi),
                                      _mm512_fnmadd_ps(gg, gg, one));
      // do = dh * tc * o * (1 - o)
      const __m512 dov = _mm512_mul_ps(
          _mm512_mul_ps(_mm512_mul_ps(dh, tc), go), _mm512_sub_ps(one, go));
      float* d = a.dG + b * 4 * H + j;
      _mm512_mask_storeu_ps(d, mv, di);
      _mm512_mask_storeu_ps(d + H, mv, df);
      _mm512_mask_storeu_ps(d + 2 * H, mv, dg);
      _mm512_mask_storeu_ps(d + 3 * H, mv, dov);
      _mm512_mask_storeu_ps(a.dc + b * H + j, mv, _mm512_mul_ps(dct, gf));
    }
  }
}

template <int NV>
FS_TARGET void bwd_tile_rows(const BwdArgs& a, int64_t b0, int rows, int64_t q) {
  switch (rows) {
    case 1: bwd_tile<1, NV>(a, b0, q); break;
    case 2: bwd_tile<2, NV>(a, b0, q); break;
    case 3: bwd_tile<3, NV>(a, b0, q); break;
    case 4: bwd_tile<4, NV>(a, b0, q); break;
    case 5: bwd_tile<5, NV>(a, b0, q); break;
    case 6: bwd_tile<6, NV>(a, b0, q); break;
    case 7: bwd_tile<7, NV>(a, b0, q); break;
    default: break;
  }
}

FS_INLINE void prefetch_bwd_tile(const BwdArgs& a, int64_t b0, int64_t b1,
                                 int64_t q, int nv) {
  if (!FS_BWD_EPI_PF) return;
  const int64_t H = a.H;
  for (int64_t b = b0; b < b1; ++b) {
    for (int v = 0; v < nv; ++v) {
      const int64_t j = q * 64 + 16 * v;
      prefetch_vec(a.dy + b * a.ld_dy + j);
      for (int g = 0; g < 4; ++g) {
        prefetch_vec(a.gates + b * 4 * H + g * H + j);
        prefetchw_vec(a.dG + b * 4 * H + g * H + j);
      }
      prefetch_vec(a.c_prev + b * H + j);
      prefetch_vec(a.c + b * H + j);
      prefetchw_vec(a.dc + b * H + j);
    }
  }
}

FS_TARGET void bwd_tile_dispatch(const BwdArgs& a, int64_t b0, int rows, int64_t q,
                                 int nv) {
  switch (nv) {
    case 1: bwd_tile_rows<1>(a, b0, rows, q); break;
    case 2: bwd_tile_rows<2>(a, b0, rows, q); break;
    case 3: bwd_tile_rows<3>(a, b0, rows, q); break;
    case 4: bwd_tile_rows<4>(a, b0, rows, q); break;
    default: break;
  }
}

FS_TARGET void bwd_task_avx512(void* ctx, int64_t begin, int64_t end) {
  const BwdArgs& a = *static_cast<const BwdArgs*>(ctx);
  const int64_t Hp = ceil_div(a.H, 16) * 16;
  TileIter it(a.rows, begin, end);
  if (!it.valid()) return;
  int nv = static_cast<int>(std::min<int64_t>(64, Hp - 64 * it.panel()) / 16);
  prefetch_bwd_tile(a, it.r0(), it.r1(), it.panel(), nv);
  while (it.valid()) {
    const int64_t q = it.panel(), r0 = it.r0(), r1 = it.r1();
    const int cur_nv = nv;
    it.next();
    if (it.valid()) {
      nv = static_cast<int>(std::min<int64_t>(64, Hp - 64 * it.panel()) / 16);
      prefetch_bwd_tile(a, it.r0(), it.r1(), it.panel(), nv);
    }
    bwd_tile_dispatch(a, r0, static_cast<int>(r1 - r0), q, cur_nv);
  }
}

#endif  // FUSEDRNN_X86

bool detect_supported() {
#if FUSEDRNN_X86 && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

}  // namespace

bool fast_step_supported() {
  static const bool supported = detect_supported();
  return supported;
}

bool detail::use_fast_path() {
  return fast_step_supported() && !g_force_scalar.load(std::memory_order_relaxed);
}

void set_force_scalar(bool force) {
  g_force_scalar.store(force, std::memory_order_relaxed);
}

void set_parallel_for(ParallelFor pf) {
  g_parallel_for.store(pf, std::memory_order_release);
}

size_t packed_forward_size(int64_t H) {
  return static_cast<size_t>(ceil_div(H, 16) * H * 64);
}

size_t packed_backward_size(int64_t H) {
  return static_cast<size_t>(4 * H * ceil_div(H, 16) * 16);
}

void pack_forward(const float* w_hh, int64_t H, float* packed) {
  // Panel p: gate g's 16 units (rows g·H + 16p ... of W_hh) side by side.
  pack_panels(ceil_div(H, 16), 4 * H * H, [&](int64_t p) {
    for (int g = 0; g < 4; ++g)
      pack_panel(w_hh + (g * H + 16 * p) * H, H, true, H, std::min<int64_t>(16, H - 16 * p),
                 packed + p * H * 64 + g * 16, 64);
  });
}

void pack_backward(const float* w_hh, int64_t H, float* packed) {
  // Panel q: columns 64q ... of W_hh, all 4H rows.
  const int64_t Hp = ceil_div(H, 16) * 16;
  pack_panels(ceil_div(H, 64), 4 * H * H, [&](int64_t q) {
    pack_panel(w_hh + 64 * q, H, false, 4 * H, std::min<int64_t>(64, H - 64 * q),
               packed + q * 4 * H * 64, std::min<int64_t>(64, Hp - 64 * q));
  });
}

void lstm_step_forward(int64_t B, int64_t H, const float* packed_fwd,
                       const float* gx, int64_t ld_gx, const float* h_prev,
                       int64_t ld_h, const float* c_prev, float* c_out,
                       float* h_out, int64_t ld_h_out, float* gates_out) {
  if (B <= 0 || H <= 0) return;
  FwdArgs a;
  a.B = B;
  a.H = H;
  a.packed = packed_fwd;
  a.gx = gx;
  a.ld_gx = ld_gx;
  a.h_prev = h_prev;
  a.ld_h = ld_h;
  a.c_prev = c_prev;
  a.c_out = c_out;
  a.h_out = h_out;
  a.ld_h_out = ld_h_out;
  a.gates_out = gates_out;
  a.rows = split_rows(B);
  a.n_panels = ceil_div(H, 16);
  const int64_t n_tasks = a.n_panels * a.rows.n_blocks;
  const int64_t fmas = B * H * ((h_prev ? 4 * H : 0) + 32);  // about; for run_parallel
#if FUSEDRNN_X86
  if (fast_step_supported() && !g_force_scalar.load(std::memory_order_relaxed)) {
    run_parallel(n_tasks, fmas, &a, fwd_task_avx512);
    return;
  }
#endif
  run_parallel(n_tasks, fmas, &a, fwd_task_scalar);
}

void lstm_step_backward(int64_t B, int64_t H, const float* packed_bwd,
                        const float* dy, int64_t ld_dy, const float* dG_next,
                        const float* gates, const float* c_prev, const float* c,
                        float* dc, float* dG) {
  if (B <= 0 || H <= 0) return;
  BwdArgs a;
  a.B = B;
  a.H = H;
  a.packed = packed_bwd;
  a.dy = dy;
  a.ld_dy = ld_dy;
  a.dG_next = dG_next;
  a.gates = gates;
  a.c_prev = c_prev;
  a.c = c;
  a.dc = dc;
  a.dG = dG;
  a.rows = split_rows(B);
  a.n_panels = ceil_div(H, 64);
  const int64_t n_tasks = a.n_panels * a.rows.n_blocks;
  const int64_t fmas = B * H * ((dG_next ? 4 * H : 0) + 32);  // about; for run_parallel
#if FUSEDRNN_X86
  if (fast_step_supported() && !g_force_scalar.load(std::memory_order_relaxed)) {
    run_parallel(n_tasks, fmas, &a, bwd_task_avx512);
    return;
  }
#endif
  run_parallel(n_tasks, fmas, &a, bwd_task_scalar);
}

}  // namespace cpu
}  // namespace fusedrnn
