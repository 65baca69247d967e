// Internal helpers shared by the fused CPU step kernels (fast_step.cpp,
// fast_step_gru.cpp): the threading hook, row/tile splitting, and the AVX-512
// building blocks (vector sigmoid / tanh, masked tails, the register-tiled
// K loop, prefetch helpers).  Not a public header.
//
// The AVX-512 functions carry __attribute__((target(...))) and are compiled
// without -march flags; callers must only reach them after
// detail::use_fast_path() returned true.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "fast_step.h"

#if (defined(__x86_64__) || defined(_M_X64)) && !defined(FUSEDRNN_NO_X86_KERNELS)
#define FUSEDRNN_X86 1
#include <immintrin.h>
#else
#define FUSEDRNN_X86 0
#endif

namespace fusedrnn {
namespace cpu {
namespace detail {

// Runs task over [0, n_tasks) through the hook installed with
// set_parallel_for (serial when none is installed or n_tasks == 1).
// Defined in fast_step.cpp.
void run_parallel(int64_t n_tasks, void* ctx,
                  void (*task)(void*, int64_t, int64_t));

// The same, but serial when the call's work (about `fmas` multiply-adds) is
// too small to pay for waking the other threads.  Results do not depend on
// it: every task computes its outputs the same way on any thread.
constexpr int64_t kSerialFmas = int64_t(1) << 17;
inline void run_parallel(int64_t n_tasks, int64_t fmas, void* ctx,
                         void (*task)(void*, int64_t, int64_t)) {
  if (fmas < kSerialFmas) {
    if (n_tasks > 0) task(ctx, 0, n_tasks);
  } else {
    run_parallel(n_tasks, ctx, task);
  }
}

// fast_step_supported() && !set_force_scalar(true).  Defined in fast_step.cpp.
bool use_fast_path();

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Split B rows into row blocks (one per task along rows) and tiles of at most
// max_rows rows (the micro-tile height).
struct RowSplit {
  int64_t n_tiles;   // total row tiles
  int64_t n_blocks;  // row blocks (tasks along rows)
  int64_t tiles_per_block;
  // rows of tile t: [tile_begin(t), tile_begin(t+1)) with balanced sizes
  int64_t B;
  int64_t tile_begin(int64_t t) const { return (t * B) / n_tiles; }
};

inline RowSplit split_rows(int64_t B, int max_rows, int tiles_per_block) {
  RowSplit s;
  s.B = B;
  s.n_tiles = ceil_div(B, max_rows);
  s.n_blocks = ceil_div(s.n_tiles, tiles_per_block);
  s.tiles_per_block = ceil_div(s.n_tiles, s.n_blocks);
  return s;
}

// Iterates over the tiles of tasks [begin, end) in order:
// (panel, rows [r0, r1)).
struct TileIter {
  const RowSplit& rows;
  int64_t t, end, tt, t1;
  TileIter(const RowSplit& r, int64_t begin, int64_t end_)
      : rows(r), t(begin), end(end_), tt(0), t1(0) {
    if (t < end) start_task();
  }
  void start_task() {
    const int64_t rb = t % rows.n_blocks;
    tt = rb * rows.tiles_per_block;
    t1 = std::min(rows.n_tiles, tt + rows.tiles_per_block);
  }
  bool valid() const { return t < end; }
  int64_t panel() const { return t / rows.n_blocks; }
  int64_t r0() const { return rows.tile_begin(tt); }
  int64_t r1() const { return rows.tile_begin(tt + 1); }
  void next() {
    if (++tt < t1) return;
    if (++t < end) start_task();
  }
};

// ---------------------------------------------------------------------------
// AVX-512 building blocks.
// ---------------------------------------------------------------------------
#if FUSEDRNN_X86

#define FS_TARGET __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,fma")))
#define FS_INLINE FS_TARGET inline __attribute__((always_inline))

// Tunables (compile-time; the defaults are what measured best on the
// 2-core Zen 5 development machine, see fast_step_bench.cc).
// 1/d in the activations: exact division (default; measured as fast as
// rcp14 + Newton here) or rcp14 + one Newton step.
#ifndef FS_USE_DIV
#define FS_USE_DIV 1
#endif
// Broadcast-row software prefetch distance in floats (0 = off; measured: no
// gain, the hardware prefetcher keeps up).
#ifndef FS_ROW_PF
#define FS_ROW_PF 0
#endif
// Unroll of the K loop (inside blocks of 16) and of the epilogue row loop.
#ifndef FS_KUNROLL
#define FS_KUNROLL 4
#endif
constexpr int kKUnroll = FS_KUNROLL;
#ifndef FS_PF_HINT
#define FS_PF_HINT _MM_HINT_T0
#endif

// Full-mask forms of a few intrinsics.  The plain GCC 12 versions pass
// _mm512_undefined_ps() as the merge source, which trips -Wuninitialized.
constexpr __mmask16 kAll = static_cast<__mmask16>(0xFFFF);
FS_INLINE __m512 v_max(__m512 a, __m512 b) { return _mm512_mask_max_ps(a, kAll, a, b); }
FS_INLINE __m512 v_scalef(__m512 a, __m512 b) {
  return _mm512_mask_scalef_ps(a, kAll, a, b);
}
FS_INLINE __m512 v_round(__m512 a) {
  return _mm512_mask_roundscale_ps(a, kAll, a,
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

// x = n*ln2 + r with |r| <= ln2/2, for x <= 0 (x clamped to >= -100; NaN
// kept), and pm1 = expm1(r) by its Taylor polynomial to degree 7
// (truncation |r|^7/8! < 1.6e-8 relative to |expm1(r)|).
FS_INLINE void exp_reduce_nonpos(__m512 x, __m512& n, __m512& pm1) {
  // max returns its second operand when either is NaN: NaN passes.
  x = v_max(_mm512_set1_ps(-100.0f), x);
  n = v_round(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)));
  // ln2 split: hi has 9 significant bits so n*hi is exact for |n| <= 256.
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440054690583e-4f), r);
  __m512 q = _mm512_fmadd_ps(_mm512_set1_ps(1.0f / 5040.0f), r,
                             _mm512_set1_ps(1.0f / 720.0f));
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(1.0f / 120.0f));
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(1.0f / 24.0f));
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(1.0f / 6.0f));
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(0.5f));
  pm1 = _mm512_fmadd_ps(_mm512_mul_ps(r, r), q, r);
}

// 1/d for d in [1, 2] (or NaN): division, or rcp14 (rel. error < 2^-14)
// plus one Newton step, which leaves about 1 ulp.
FS_INLINE __m512 v_recip_1_2(__m512 d) {
#if FS_USE_DIV
  return _mm512_div_ps(_mm512_set1_ps(1.0f), d);
#else
  const __m512 r = _mm512_mask_rcp14_ps(d, kAll, d);
  return _mm512_fmadd_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(1.0f)), r);
#endif
}

// sigmoid(x) with e = exp(-|x|) in [0, 1]:  x >= 0: 1/(1+e),  x < 0: e/(1+e).
// No overflow anywhere; sigmoid(+-large) -> 1 / 0; NaN -> NaN.
FS_INLINE __m512 v_sigmoid(__m512 x) {
  // -|x|: set the sign bit
  const __m512 nax = _mm512_castsi512_ps(
      _mm512_or_si512(_mm512_castps_si512(x), _mm512_set1_epi32(0x80000000)));
  __m512 n, pm1;
  exp_reduce_nonpos(nax, n, pm1);
  const __m512 e = v_scalef(_mm512_add_ps(pm1, _mm512_set1_ps(1.0f)), n);
  const __m512 r = v_recip_1_2(_mm512_add_ps(_mm512_set1_ps(1.0f), e));
  const __mmask16 neg = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
  return _mm512_mask_mul_ps(r, neg, r, e);
}

// tanh(x) = sign(x) * (-t / (2 + t)),  t = expm1(-2|x|) in [-1, 0].
// expm1 is accurate for small arguments, so tanh keeps its relative accuracy
// near 0.  Large |x|: t = -1 -> +-1.  NaN -> NaN.
FS_INLINE __m512 v_tanh(__m512 x) {
  const __m512i sign_mask = _mm512_set1_epi32(0x80000000);
  const __m512 ax = _mm512_abs_ps(x);
  __m512 n, pm1;
  exp_reduce_nonpos(_mm512_mul_ps(ax, _mm512_set1_ps(-2.0f)), n, pm1);
  // expm1(x) = 2^n * pm1 + (2^n - 1)   (exact for n = 0)
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 t = _mm512_add_ps(v_scalef(pm1, n),
                                 _mm512_sub_ps(v_scalef(one, n), one));
  const __m512 r = v_recip_1_2(_mm512_add_ps(_mm512_set1_ps(2.0f), t));
  const __m512 th = _mm512_fnmadd_ps(t, r, _mm512_setzero_ps());  // -t/(2+t) >= 0
  // put the sign of x on it.
  return _mm512_castsi512_ps(_mm512_or_si512(
      _mm512_castps_si512(th),
      _mm512_and_si512(_mm512_castps_si512(x), sign_mask)));
}

FS_INLINE __mmask16 tail_mask(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xFFFF)
                 : static_cast<__mmask16>((1u << n) - 1u);
}

// acc[r][v] += sum_k rowp[r][k] * w[k*ws + 16v .. 16v+15]  for k < K.
// The broadcast rows may be software-prefetched FS_ROW_PF floats ahead
// (tunable, see the top of the AVX-512 section).
template <int R, int NV>
FS_INLINE void kloop(__m512 (&acc)[R][NV], const float* const (&rowp)[R],
                     const float* w, int64_t K, int64_t ws) {
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    if (FS_ROW_PF > 0) {
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r)
        _mm_prefetch(reinterpret_cast<const char*>(rowp[r] + k + FS_ROW_PF), _MM_HINT_T0);
    }
    const float* wb = w + k * ws;
#pragma GCC unroll kKUnroll
    for (int kk = 0; kk < 16; ++kk) {
      const float* wk = wb + kk * ws;
      __m512 wv[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) wv[v] = _mm512_loadu_ps(wk + 16 * v);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const __m512 hb = _mm512_set1_ps(rowp[r][k + kk]);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(hb, wv[v], acc[r][v]);
      }
    }
  }
  for (; k < K; ++k) {
    const float* wk = w + k * ws;
    __m512 wv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) wv[v] = _mm512_loadu_ps(wk + 16 * v);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 hb = _mm512_set1_ps(rowp[r][k]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(hb, wv[v], acc[r][v]);
    }
  }
}

// Software prefetch of the epilogue operands of a tile (they are touched
// once per step and usually come from L3/DRAM; the weights stay in L2).
FS_INLINE void prefetch_vec(const float* p) {
  _mm_prefetch(reinterpret_cast<const char*>(p), FS_PF_HINT);
  _mm_prefetch(reinterpret_cast<const char*>(p + 15), FS_PF_HINT);
}
FS_INLINE void prefetchw_vec(float* p) {
  // prefetchw needs PRFCHW; a T0 read prefetch is the portable fallback.
  _mm_prefetch(reinterpret_cast<const char*>(p), FS_PF_HINT);
  _mm_prefetch(reinterpret_cast<const char*>(p + 15), FS_PF_HINT);
}

#endif  // FUSEDRNN_X86

}  // namespace detail
}  // namespace cpu
}  // namespace fusedrnn
