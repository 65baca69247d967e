// Fused CPU kernels for one GRU / Elman-RNN layer-timestep (fp32).
// See fast_step_gru.h; the machinery (threading hook, row split, vector
// activations, register-tiled K loop) is shared with the LSTM kernels through
// simd_math.h.
//
// Layouts
// -------
// GRU forward packing: panels of 16 hidden units.  Panel p is (H+1) x 48
// floats: first b_hh[gate*H + 16p + u] ordered (gate, u), then for every k in
// [0, H) the 48 floats W_hh[gate*H + 16p + u][k] (units past H are zero).  A
// micro-tile is R batch rows x 48 columns = 3R zmm accumulators; r and z are
// initialised with gx + b_hh, n with b_hh alone (gh_n is needed on its own).
// The epilogue holds r, z, gh_n of 16 units in three registers per row.
//
// "Wide" packing (GRU backward, RNN forward and backward): panels of up to 64
// hidden units (NV = 1..4 vectors of 16).  Panel q holds, for every k in
// [0, K), the 16*NV floats M[k][64q + u] where M is the K x H matrix of the
// product (GRU backward: W_hh, K = 3H; RNN backward: W_hh, K = H; RNN
// forward: W_hhᵀ, K = H).  A micro-tile is R rows x 16*NV units.
//
// Threading: one parallel region per step, task id = panel * n_row_blocks +
// row_block, every task writes a disjoint block of the outputs.

#include "fast_step_gru.h"

#include <algorithm>
#include <cmath>

#include "../cell_math.h"
#include "pack.h"
#include "simd_math.h"

namespace fusedrnn {
namespace cpu {

namespace {

using namespace detail;

// Row tiles per row block (the row extent of one task).
constexpr int kTilesPerBlock = 4;
// Micro-tile heights.  GRU forward: 3R accumulators + 3 weights + 1
// broadcast <= 32 zmm -> R <= 9.  Wide kernels (NV up to 4): R <= 6.
#ifndef FSG_GRU_FWD_ROWS
#define FSG_GRU_FWD_ROWS 8
#endif
#ifndef FSG_WIDE_ROWS
#define FSG_WIDE_ROWS 6
#endif
constexpr int kGruFwdRows = FSG_GRU_FWD_ROWS;
constexpr int kWideRows = FSG_WIDE_ROWS;
static_assert(kGruFwdRows >= 1 && kGruFwdRows <= 9, "GRU forward tile rows");
static_assert(kWideRows >= 1 && kWideRows <= 9, "wide tile rows");

constexpr int cap(int r, int m) { return r < m ? r : m; }

inline int64_t round16(int64_t H) { return ceil_div(H, 16) * 16; }

struct GruFwdArgs {
  int64_t B, H;
  const float* packed;
  const float* gx;
  int64_t ld_gx;
  const float* h_prev;
  int64_t ld_h;
  float* h_out;
  int64_t ld_h_out;
  float* saved;
  RowSplit rows;
};

struct GruBwdArgs {
  int64_t B, H;
  const float* packed;
  const float* dy;
  int64_t ld_dy;
  const float* dgh_next;
  const float* saved;
  const float* h_prev;
  int64_t ld_h;
  float* dh_carry;
  float* dgx;
  float* dgh;
  RowSplit rows;
};

struct RnnFwdArgs {
  int64_t B, H;
  bool relu;
  const float* packed;
  const float* gx;
  int64_t ld_gx;
  const float* h_prev;
  int64_t ld_h;
  float* h_out;
  int64_t ld_h_out;
  RowSplit rows;
};

struct RnnBwdArgs {
  int64_t B, H;
  bool relu;
  const float* packed;
  const float* dy;
  int64_t ld_dy;
  const float* dpre_next;
  const float* h;
  int64_t ld_h;
  float* dpre;
  RowSplit rows;
};

// Wide packing: panel q at q*K*64, row stride width = min(64, Hp - 64q),
// holding columns 64q ... of S (K × H): S = src (straight) or srcᵀ
// (transposed: src is H × K).
void pack_wide(const float* src, bool transposed, int64_t K, int64_t H, float* packed) {
  const int64_t Hp = round16(H);
  pack_panels(ceil_div(H, 64), K * H, [&](int64_t q) {
    pack_panel(src + 64 * q * (transposed ? K : 1), transposed ? K : H, transposed, K,
               std::min<int64_t>(64, H - 64 * q), packed + q * K * 64,
               std::min<int64_t>(64, Hp - 64 * q));
  });
}

// Number of 16-wide vectors in wide panel q.
inline int wide_nv(int64_t H, int64_t q) {
  return static_cast<int>(std::min<int64_t>(64, round16(H) - 64 * q) / 16);
}

// ---------------------------------------------------------------------------
// Scalar path (any CPU).  Same packed layouts, same task split.
// ---------------------------------------------------------------------------

inline float relu_f(float x) { return x < 0.0f ? 0.0f : x; }  // keeps NaN

void gru_fwd_scalar(const GruFwdArgs& a, int64_t b0, int64_t b1, int64_t p) {
  const int64_t H = a.H, j0 = p * 16;
  const int64_t nu = std::min<int64_t>(16, H - j0);
  const float* pk = a.packed + p * (H + 1) * 48;
  const float* w = pk + 48;
  float acc[48];
  for (int64_t b = b0; b < b1; ++b) {
    for (int c = 0; c < 48; ++c) acc[c] = pk[c];
    if (a.h_prev != nullptr) {
      const float* hp = a.h_prev + b * a.ld_h;
      for (int64_t k = 0; k < H; ++k) {
        const float hk = hp[k];
        for (int c = 0; c < 48; ++c) acc[c] += hk * w[k * 48 + c];
      }
    }
    const float* g = a.gx + b * a.ld_gx;
    for (int64_t u = 0; u < nu; ++u) {
      const int64_t j = j0 + u;
      const float r = sigmoid(g[j] + acc[u]);
      const float z = sigmoid(g[H + j] + acc[16 + u]);
      const float n = tanh_(g[2 * H + j] + r * acc[32 + u]);
      const float hp = a.h_prev != nullptr ? a.h_prev[b * a.ld_h + j] : 0.0f;
      a.h_out[b * a.ld_h_out + j] = (1.0f - z) * n + z * hp;
      if (a.saved != nullptr) {
        float* s = a.saved + b * 4 * H + j;
        s[0] = r;
        s[H] = z;
        s[2 * H] = n;
        s[3 * H] = acc[32 + u];
      }
    }
  }
}

void gru_bwd_scalar(const GruBwdArgs& a, int64_t b0, int64_t b1, int64_t q) {
  const int64_t H = a.H, K = 3 * H, j0 = q * 64;
  const int64_t nu = std::min<int64_t>(64, H - j0);
  const int64_t width = 16 * wide_nv(H, q);
  const float* w = a.packed + q * K * 64;
  float dh[64];
  for (int64_t b = b0; b < b1; ++b) {
    for (int64_t u = 0; u < nu; ++u)
      dh[u] = a.dy[b * a.ld_dy + j0 + u] + a.dh_carry[b * H + j0 + u];
    if (a.dgh_next != nullptr) {
      const float* gp = a.dgh_next + b * K;
      for (int64_t k = 0; k < K; ++k) {
        const float gk = gp[k];
        for (int64_t u = 0; u < nu; ++u) dh[u] += gk * w[k * width + u];
      }
    }
    for (int64_t u = 0; u < nu; ++u) {
      const int64_t j = j0 + u;
      const float* s = a.saved + b * 4 * H + j;
      const float r = s[0], z = s[H], n = s[2 * H], ghn = s[3 * H];
      const float hp = a.h_prev != nullptr ? a.h_prev[b * a.ld_h + j] : 0.0f;
      const float d = dh[u];
      const float dn = d * (1.0f - z) * (1.0f - n * n);
      const float dz = d * (hp - n) * z * (1.0f - z);
      const float dr = dn * ghn * r * (1.0f - r);
      float* gx = a.dgx + b * K + j;
      float* gh = a.dgh + b * K + j;
      gx[0] = dr;
      gx[H] = dz;
      gx[2 * H] = dn;
      gh[0] = dr;
      gh[H] = dz;
      gh[2 * H] = dn * r;
      a.dh_carry[b * H + j] = d * z;
    }
  }
}

void rnn_fwd_scalar(const RnnFwdArgs& a, int64_t b0, int64_t b1, int64_t q) {
  const int64_t H = a.H, j0 = q * 64;
  const int64_t nu = std::min<int64_t>(64, H - j0);
  const int64_t width = 16 * wide_nv(H, q);
  const float* w = a.packed + q * H * 64;
  float acc[64];
  for (int64_t b = b0; b < b1; ++b) {
    for (int64_t u = 0; u < nu; ++u) acc[u] = a.gx[b * a.ld_gx + j0 + u];
    if (a.h_prev != nullptr) {
      const float* hp = a.h_prev + b * a.ld_h;
      for (int64_t k = 0; k < H; ++k) {
        const float hk = hp[k];
        for (int64_t u = 0; u < nu; ++u) acc[u] += hk * w[k * width + u];
      }
    }
    for (int64_t u = 0; u < nu; ++u)
      a.h_out[b * a.ld_h_out + j0 + u] = a.relu ? relu_f(acc[u]) : tanh_(acc[u]);
  }
}

void rnn_bwd_scalar(const RnnBwdArgs& a, int64_t b0, int64_t b1, int64_t q) {
  const int64_t H = a.H, j0 = q * 64;
  const int64_t nu = std::min<int64_t>(64, H - j0);
  const int64_t width = 16 * wide_nv(H, q);
  const float* w = a.packed + q * H * 64;
  float dh[64];
  for (int64_t b = b0; b < b1; ++b) {
    for (int64_t u = 0; u < nu; ++u) dh[u] = a.dy[b * a.ld_dy + j0 + u];
    if (a.dpre_next != nullptr) {
      const float* gp = a.dpre_next + b * H;
      for (int64_t k = 0; k < H; ++k) {
        const float gk = gp[k];
        for (int64_t u = 0; u < nu; ++u) dh[u] += gk * w[k * width + u];
      }
    }
    for (int64_t u = 0; u < nu; ++u) {
      const float h = a.h[b * a.ld_h + j0 + u];
      a.dpre[b * H + j0 + u] =
          a.relu ? (h <= 0.0f ? 0.0f : dh[u]) : dh[u] * (1.0f - h * h);
    }
  }
}

template <class A, void (*Fn)(const A&, int64_t, int64_t, int64_t)>
void task_scalar(void* ctx, int64_t begin, int64_t end) {
  const A& a = *static_cast<const A*>(ctx);
  const RowSplit& s = a.rows;
  for (int64_t t = begin; t < end; ++t) {
    const int64_t p = t / s.n_blocks, rb = t % s.n_blocks;
    const int64_t t0 = rb * s.tiles_per_block;
    const int64_t t1 = std::min(s.n_tiles, t0 + s.tiles_per_block);
    Fn(a, s.tile_begin(t0), s.tile_begin(t1), p);
  }
}

// ---------------------------------------------------------------------------
// AVX-512 path.
// ---------------------------------------------------------------------------
#if FUSEDRNN_X86

// Software prefetch of the forward epilogue operands one tile ahead (gx and
// the outputs are cold every step; the weights stay in L2).
#ifndef FSG_FWD_EPI_PF
#define FSG_FWD_EPI_PF 1
#endif

// The same for the GRU backward epilogue operands (saved state, dy, carry,
// h_prev, outputs).
#ifndef FSG_BWD_EPI_PF
#define FSG_BWD_EPI_PF 0
#endif

// relu keeping NaN: x < 0 ? 0 : x.
FS_INLINE __m512 v_relu(__m512 x) {
  const __mmask16 neg = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
  return _mm512_mask_mov_ps(x, neg, _mm512_setzero_ps());
}

// Switch on a runtime row count 1..9 calling BODY with a constexpr R capped
// at MAXR (larger counts never occur; the cap only avoids instantiating
// tiles that would not fit in registers).
#define FSG_ROWS_CASE(n, MAXR, BODY) \
  case n: {                          \
    constexpr int R = cap(n, MAXR);  \
    BODY;                            \
  } break;
#define FSG_SWITCH_ROWS(rows, MAXR, BODY) \
  switch (rows) {                         \
    FSG_ROWS_CASE(1, MAXR, BODY)          \
    FSG_ROWS_CASE(2, MAXR, BODY)          \
    FSG_ROWS_CASE(3, MAXR, BODY)          \
    FSG_ROWS_CASE(4, MAXR, BODY)          \
    FSG_ROWS_CASE(5, MAXR, BODY)          \
    FSG_ROWS_CASE(6, MAXR, BODY)          \
    FSG_ROWS_CASE(7, MAXR, BODY)          \
    FSG_ROWS_CASE(8, MAXR, BODY)          \
    FSG_ROWS_CASE(9, MAXR, BODY)          \
    default: break;                       \
  }

// ---- GRU forward ----------------------------------------------------------

template <int R>
FS_TARGET void gru_fwd_tile(const GruFwdArgs& a, int64_t b0, int64_t p) {
  const int64_t H = a.H, j0 = p * 16;
  const __mmask16 m = tail_mask(H - j0);
  const float* pk = a.packed + p * (H + 1) * 48;
  __m512 acc[R][3];
  {
    const __m512 br = _mm512_loadu_ps(pk);
    const __m512 bz = _mm512_loadu_ps(pk + 16);
    const __m512 bn = _mm512_loadu_ps(pk + 32);
#pragma GCC unroll 9
    for (int r = 0; r < R; ++r) {
      const float* g = a.gx + (b0 + r) * a.ld_gx + j0;
      acc[r][0] = _mm512_add_ps(_mm512_maskz_loadu_ps(m, g), br);
      acc[r][1] = _mm512_add_ps(_mm512_maskz_loadu_ps(m, g + H), bz);
      acc[r][2] = bn;
    }
  }
  if (a.h_prev != nullptr) {
    const float* hp[R];
#pragma GCC unroll 9
    for (int r = 0; r < R; ++r) hp[r] = a.h_prev + (b0 + r) * a.ld_h;
    kloop<R, 3>(acc, hp, pk + 48, H, 48);
  }
  const __m512 one = _mm512_set1_ps(1.0f);
#pragma GCC unroll 1
  for (int r = 0; r < R; ++r) {
    const int64_t b = b0 + r;
    const __m512 rg = v_sigmoid(acc[r][0]);
    const __m512 zg = v_sigmoid(acc[r][1]);
    const __m512 xn = _mm512_maskz_loadu_ps(m, a.gx + b * a.ld_gx + 2 * H + j0);
    const __m512 ng = v_tanh(_mm512_fmadd_ps(rg, acc[r][2], xn));
    const __m512 hp = a.h_prev != nullptr
                          ? _mm512_maskz_loadu_ps(m, a.h_prev + b * a.ld_h + j0)
                          : _mm512_setzero_ps();
    // (1 - z) * n + z * h_prev
    const __m512 hn = _mm512_fmadd_ps(zg, hp, _mm512_mul_ps(_mm512_sub_ps(one, zg), ng));
    _mm512_mask_storeu_ps(a.h_out + b * a.ld_h_out + j0, m, hn);
    if (a.saved != nullptr) {
      float* s = a.saved + b * 4 * H + j0;
      _mm512_mask_storeu_ps(s, m, rg);
      _mm512_mask_storeu_ps(s + H, m, zg);
      _mm512_mask_storeu_ps(s + 2 * H, m, ng);
      _mm512_mask_storeu_ps(s + 3 * H, m, acc[r][2]);
    }
  }
}

FS_TARGET void gru_fwd_tile_any(const GruFwdArgs& a, int64_t b0, int rows, int64_t p) {
  FSG_SWITCH_ROWS(rows, kGruFwdRows, gru_fwd_tile<R>(a, b0, p))
}

FS_INLINE void gru_fwd_prefetch(const GruFwdArgs& a, int64_t b0, int64_t b1, int64_t p) {
  if (!FSG_FWD_EPI_PF) return;
  const int64_t H = a.H, j0 = p * 16;
  for (int64_t b = b0; b < b1; ++b) {
    const float* g = a.gx + b * a.ld_gx + j0;
    for (int q = 0; q < 3; ++q) prefetch_vec(g + q * H);
    if (a.h_prev != nullptr) prefetch_vec(a.h_prev + b * a.ld_h + j0);
    if (a.saved != nullptr)
      for (int q = 0; q < 4; ++q) prefetchw_vec(a.saved + b * 4 * H + q * H + j0);
    prefetchw_vec(a.h_out + b * a.ld_h_out + j0);
  }
}

FS_TARGET void gru_fwd_task_avx512(void* ctx, int64_t begin, int64_t end) {
  const GruFwdArgs& a = *static_cast<const GruFwdArgs*>(ctx);
  TileIter it(a.rows, begin, end);
  if (!it.valid()) return;
  gru_fwd_prefetch(a, it.r0(), it.r1(), it.panel());
  while (it.valid()) {
    const int64_t p = it.panel(), r0 = it.r0(), r1 = it.r1();
    it.next();
    if (it.valid()) gru_fwd_prefetch(a, it.r0(), it.r1(), it.panel());
    gru_fwd_tile_any(a, r0, static_cast<int>(r1 - r0), p);
  }
}

// ---- GRU backward ---------------------------------------------------------

template <int R, int NV>
FS_TARGET void gru_bwd_tile(const GruBwdArgs& a, int64_t b0, int64_t q) {
  const int64_t H = a.H, K = 3 * H, j0 = q * 64;
  __mmask16 m[NV];
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) m[v] = tail_mask(H - j0 - 16 * v);
  __m512 acc[R][NV];
#pragma GCC unroll 9
  for (int r = 0; r < R; ++r) {
    const float* d = a.dy + (b0 + r) * a.ld_dy + j0;
    const float* c = a.dh_carry + (b0 + r) * H + j0;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      acc[r][v] = _mm512_add_ps(_mm512_maskz_loadu_ps(m[v], d + 16 * v),
                                _mm512_maskz_loadu_ps(m[v], c + 16 * v));
  }
  if (a.dgh_next != nullptr) {
    const float* gp[R];
#pragma GCC unroll 9
    for (int r = 0; r < R; ++r) gp[r] = a.dgh_next + (b0 + r) * K;
    kloop<R, NV>(acc, gp, a.packed + q * K * 64, K, 16 * NV);
  }
  const __m512 one = _mm512_set1_ps(1.0f);
#pragma GCC unroll 1
  for (int r = 0; r < R; ++r) {
    const int64_t b = b0 + r;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const int64_t j = j0 + 16 * v;
      const __mmask16 mv = m[v];
      const float* s = a.saved + b * 4 * H + j;
      const __m512 dh = acc[r][v];
      const __m512 rg = _mm512_maskz_loadu_ps(mv, s);
      const __m512 zg = _mm512_maskz_loadu_ps(mv, s + H);
      const __m512 ng = _mm512_maskz_loadu_ps(mv, s + 2 * H);
      const __m512 ghn = _mm512_maskz_loadu_ps(mv, s + 3 * H);
      const __m512 hp = a.h_prev != nullptr
                            ? _mm512_maskz_loadu_ps(mv, a.h_prev + b * a.ld_h + j)
                            : _mm512_setzero_ps();
      // dn_pre = dh (1 - z) (1 - n^2)
      const __m512 dn = _mm512_mul_ps(_mm512_mul_ps(dh, _mm512_sub_ps(one, zg)),
                                      _mm512_fnmadd_ps(ng, ng, one));
      // dz_pre = dh (h_prev - n) z (1 - z)
      const __m512 dz = _mm512_mul_ps(_mm512_mul_ps(dh, _mm512_sub_ps(hp, ng)),
                                      _mm512_mul_ps(zg, _mm512_sub_ps(one, zg)));
      // dr_pre = dn_pre gh_n r (1 - r)
      const __m512 dr = _mm512_mul_ps(_mm512_mul_ps(dn, ghn),
                                      _mm512_mul_ps(rg, _mm512_sub_ps(one, rg)));
      float* gx = a.dgx + b * K + j;
      float* gh = a.dgh + b * K + j;
      _mm512_mask_storeu_ps(gx, mv, dr);
      _mm512_mask_storeu_ps(gx + H, mv, dz);
      _mm512_mask_storeu_ps(gx + 2 * H, mv, dn);
      _mm512_mask_storeu_ps(gh, mv, dr);
      _mm512_mask_storeu_ps(gh + H, mv, dz);
      _mm512_mask_storeu_ps(gh + 2 * H, mv, _mm512_mul_ps(dn, rg));
      _mm512_mask_storeu_ps(a.dh_carry + b * H + j, mv, _mm512_mul_ps(dh, zg));
    }
  }
}

FS_INLINE void gru_bwd_prefetch(const GruBwdArgs& a, int64_t b0, int64_t b1, int64_t q) {
  if (!FSG_BWD_EPI_PF) return;
  const int64_t H = a.H, K = 3 * H;
  const int nv = wide_nv(H, q);
  for (int64_t b = b0; b < b1; ++b)
    for (int v = 0; v < nv; ++v) {
      const int64_t j = q * 64 + 16 * v;
      prefetch_vec(a.dy + b * a.ld_dy + j);
      prefetchw_vec(a.dh_carry + b * H + j);
      for (int g = 0; g < 4; ++g) prefetch_vec(a.saved + b * 4 * H + g * H + j);
      if (a.h_prev != nullptr) prefetch_vec(a.h_prev + b * a.ld_h + j);
      for (int g = 0; g < 3; ++g) {
        prefetchw_vec(a.dgx + b * K + g * H + j);
        prefetchw_vec(a.dgh + b * K + g * H + j);
      }
    }
}

// ---- RNN forward / backward -----------------------------------------------

template <int R, int NV>
FS_TARGET void rnn_fwd_tile(const RnnFwdArgs& a, int64_t b0, int64_t q) {
  const int64_t H = a.H, j0 = q * 64;
  __mmask16 m[NV];
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) m[v] = tail_mask(H - j0 - 16 * v);
  __m512 acc[R][NV];
#pragma GCC unroll 9
  for (int r = 0; r < R; ++r) {
    const float* g = a.gx + (b0 + r) * a.ld_gx + j0;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_maskz_loadu_ps(m[v], g + 16 * v);
  }
  if (a.h_prev != nullptr) {
    const float* hp[R];
#pragma GCC unroll 9
    for (int r = 0; r < R; ++r) hp[r] = a.h_prev + (b0 + r) * a.ld_h;
    kloop<R, NV>(acc, hp, a.packed + q * H * 64, H, 16 * NV);
  }
#pragma GCC unroll 1
  for (int r = 0; r < R; ++r) {
    float* o = a.h_out + (b0 + r) * a.ld_h_out + j0;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      _mm512_mask_storeu_ps(o + 16 * v, m[v],
                            a.relu ? v_relu(acc[r][v]) : v_tanh(acc[r][v]));
  }
}

template <int R, int NV>
FS_TARGET void rnn_bwd_tile(const RnnBwdArgs& a, int64_t b0, int64_t q) {
  const int64_t H = a.H, j0 = q * 64;
  __mmask16 m[NV];
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) m[v] = tail_mask(H - j0 - 16 * v);
  __m512 acc[R][NV];
#pragma GCC unroll 9
  for (int r = 0; r < R; ++r) {
    const float* d = a.dy + (b0 + r) * a.ld_dy + j0;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_maskz_loadu_ps(m[v], d + 16 * v);
  }
  if (a.dpre_next != nullptr) {
    const float* gp[R];
#pragma GCC unroll 9
    for (int r = 0; r < R; ++r) gp[r] = a.dpre_next + (b0 + r) * H;
    kloop<R, NV>(acc, gp, a.packed + q * H * 64, H, 16 * NV);
  }
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 zero = _mm512_setzero_ps();
#pragma GCC unroll 1
  for (int r = 0; r < R; ++r) {
    const int64_t b = b0 + r;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const int64_t j = j0 + 16 * v;
      const __m512 h = _mm512_maskz_loadu_ps(m[v], a.h + b * a.ld_h + j);
      __m512 d;
      if (a.relu) {
        // h <= 0 ? 0 : dh   (NaN h passes dh)
        const __mmask16 le = _mm512_cmp_ps_mask(h, zero, _CMP_LE_OQ);
        d = _mm512_mask_mov_ps(acc[r][v], le, zero);
      } else {
        d = _mm512_mul_ps(acc[r][v], _mm512_fnmadd_ps(h, h, one));
      }
      _mm512_mask_storeu_ps(a.dpre + b * H + j, m[v], d);
    }
  }
}

// Wide-panel dispatch: NV from the panel, R from the tile.
#define FSG_WIDE_TILE_ANY(NAME, ARGS)                                          \
  template <int NV>                                                            \
  FS_TARGET void NAME##_rows(const ARGS& a, int64_t b0, int rows, int64_t q) { \
    FSG_SWITCH_ROWS(rows, kWideRows, (NAME<R, NV>(a, b0, q)))                  \
  }                                                                            \
  FS_TARGET void NAME##_any(const ARGS& a, int64_t b0, int rows, int64_t q) {  \
    switch (wide_nv(a.H, q)) {                                                 \
      case 1: NAME##_rows<1>(a, b0, rows, q); break;                           \
      case 2: NAME##_rows<2>(a, b0, rows, q); break;                           \
      case 3: NAME##_rows<3>(a, b0, rows, q); break;                           \
      case 4: NAME##_rows<4>(a, b0, rows, q); break;                           \
      default: break;                                                          \
    }                                                                          \
  }
FSG_WIDE_TILE_ANY(gru_bwd_tile, GruBwdArgs)

FS_TARGET void gru_bwd_task_avx512(void* ctx, int64_t begin, int64_t end) {
  const GruBwdArgs& a = *static_cast<const GruBwdArgs*>(ctx);
  TileIter it(a.rows, begin, end);
  if (!it.valid()) return;
  gru_bwd_prefetch(a, it.r0(), it.r1(), it.panel());
  while (it.valid()) {
    const int64_t q = it.panel(), r0 = it.r0(), r1 = it.r1();
    it.next();
    if (it.valid()) gru_bwd_prefetch(a, it.r0(), it.r1(), it.panel());
    gru_bwd_tile_any(a, r0, static_cast<int>(r1 - r0), q);
  }
}
FSG_WIDE_TILE_ANY(rnn_fwd_tile, RnnFwdArgs)
FSG_WIDE_TILE_ANY(rnn_bwd_tile, RnnBwdArgs)

template <class A, void (*Tile)(const A&, int64_t, int, int64_t)>
FS_TARGET void task_avx512(void* ctx, int64_t begin, int64_t end) {
  const A& a = *static_cast<const A*>(ctx);
  for (TileIter it(a.rows, begin, end); it.valid(); it.next())
    Tile(a, it.r0(), static_cast<int>(it.r1() - it.r0()), it.panel());
}

#endif  // FUSEDRNN_X86

}  // namespace

// ---------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------

size_t gru_packed_forward_size(int64_t H) {
  return static_cast<size_t>(ceil_div(H, 16) * (H + 1) * 48);
}
size_t gru_packed_backward_size(int64_t H) {
  return static_cast<size_t>(3 * H * round16(H));
}
size_t rnn_packed_forward_size(int64_t H) { return static_cast<size_t>(H * round16(H)); }
size_t rnn_packed_backward_size(int64_t H) { return static_cast<size_t>(H * round16(H)); }

void gru_pack_forward(const float* w_hh, const float* b_hh, int64_t H, float* packed) {
  // Panel p: b_hh, then gate g's 16 units (rows g·H + 16p ... of W_hh) side
  // by side.
  pack_panels(ceil_div(H, 16), 3 * H * H, [&](int64_t p) {
    float* dst = packed + p * (H + 1) * 48;
    for (int g = 0; g < 3; ++g)
      for (int u = 0; u < 16; ++u) {
        const int64_t j = p * 16 + u;
        dst[g * 16 + u] = (j < H && b_hh != nullptr) ? b_hh[g * H + j] : 0.0f;
      }
    for (int g = 0; g < 3; ++g)
      pack_panel(w_hh + (g * H + 16 * p) * H, H, true, H, std::min<int64_t>(16, H - 16 * p),
                 dst + 48 + g * 16, 48);
  });
}

void gru_pack_backward(const float* w_hh, int64_t H, float* packed) {
  pack_wide(w_hh, false, 3 * H, H, packed);
}

void rnn_pack_forward(const float* w_hh, int64_t H, float* packed) {
  pack_wide(w_hh, true, H, H, packed);
}

void rnn_pack_backward(const float* w_hh, int64_t H, float* packed) {
  pack_wide(w_hh, false, H, H, packed);
}

void gru_step_forward(int64_t B, int64_t H, const float* packed_fwd,
                      const float* gx, int64_t ld_gx, const float* h_prev,
                      int64_t ld_h, float* h_out, int64_t ld_h_out, float* saved) {
  if (B <= 0 || H <= 0) return;
  GruFwdArgs a{B, H, packed_fwd, gx, ld_gx, h_prev, ld_h, h_out, ld_h_out, saved,
               split_rows(B, kGruFwdRows, kTilesPerBlock)};
  const int64_t n_tasks = ceil_div(H, 16) * a.rows.n_blocks;
  const int64_t fmas = B * H * ((h_prev ? 3 * H : 0) + 32);  // about; for run_parallel
#if FUSEDRNN_X86
  if (use_fast_path()) {
    run_parallel(n_tasks, fmas, &a, gru_fwd_task_avx512);
    return;
  }
#endif
  run_parallel(n_tasks, fmas, &a, task_scalar<GruFwdArgs, gru_fwd_scalar>);
}

void gru_step_backward(int64_t B, int64_t H, const float* packed_bwd,
                       const float* dy, int64_t ld_dy, const float* dgh_next,
                       const float* saved, const float* h_prev, int64_t ld_h,
                       float* dh_carry, float* dgx, float* dgh) {
  if (B <= 0 || H <= 0) return;
  GruBwdArgs a{B, H, packed_bwd, dy, ld_dy, dgh_next, saved, h_prev, ld_h,
               dh_carry, dgx, dgh, split_rows(B, kWideRows, kTilesPerBlock)};
  const int64_t n_tasks = ceil_div(H, 64) * a.rows.n_blocks;
  const int64_t fmas = B * H * ((dgh_next ? 3 * H : 0) + 32);  // about; for run_parallel
#if FUSEDRNN_X86
  if (use_fast_path()) {
    run_parallel(n_tasks, fmas, &a, gru_bwd_task_avx512);
    return;
  }
#endif
  run_parallel(n_tasks, fmas, &a, task_scalar<GruBwdArgs, gru_bwd_scalar>);
}

void rnn_step_forward(int64_t B, int64_t H, bool relu, const float* packed_fwd,
                      const float* gx, int64_t ld_gx, const float* h_prev,
                      int64_t ld_h, float* h_out, int64_t ld_h_out) {
  if (B <= 0 || H <= 0) return;
  RnnFwdArgs a{B, H, relu, packed_fwd, gx, ld_gx, h_prev, ld_h, h_out, ld_h_out,
               split_rows(B, kWideRows, kTilesPerBlock)};
  const int64_t n_tasks = ceil_div(H, 64) * a.rows.n_blocks;
  const int64_t fmas = B * H * ((h_prev ? H : 0) + 16);  // about; for run_parallel
#if FUSEDRNN_X86
  if (use_fast_path()) {
    run_parallel(n_tasks, fmas, &a, task_avx512<RnnFwdArgs, rnn_fwd_tile_any>);
    return;
  }
#endif
  run_parallel(n_tasks, fmas, &a, task_scalar<RnnFwdArgs, rnn_fwd_scalar>);
}

void rnn_step_backward(int64_t B, int64_t H, bool relu, const float* packed_bwd,
                       const float* dy, int64_t ld_dy, const float* dpre_next,
                       const float* h, int64_t ld_h, float* dpre) {
  if (B <= 0 || H <= 0) return;
  RnnBwdArgs a{B, H, relu, packed_bwd, dy, ld_dy, dpre_next, h, ld_h, dpre,
               split_rows(B, kWideRows, kTilesPerBlock)};
  const int64_t n_tasks = ceil_div(H, 64) * a.rows.n_blocks;
  const int64_t fmas = B * H * ((dpre_next ? H : 0) + 16);  // about; for run_parallel
#if FUSEDRNN_X86
  if (use_fast_path()) {
    run_parallel(n_tasks, fmas, &a, task_avx512<RnnBwdArgs, rnn_bwd_tile_any>);
    return;
  }
#endif
  run_parallel(n_tasks, fmas, &a, task_scalar<RnnBwdArgs, rnn_bwd_scalar>);
}

}  // namespace cpu
}  // namespace fusedrnn
