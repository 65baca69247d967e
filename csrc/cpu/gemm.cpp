// Packed AVX-512 sgemm.  See gemm.h.
//
// Blocking (per thread, over its share of C):
//   for each block of kNc columns:             B block (kKc × kNc) packed, in L2
//     for each block of kKc of the K dimension:
//       pack B block into panels of 64 columns (k-major, 16·nv floats a k)
//       for each block of kMc rows:            A block packed into 6-row panels
//         for each 64-column panel, for each 6-row panel: one register tile
// The register tile holds 6 rows × 64 columns in 24 zmm accumulators; per k
// it loads 4 vectors of B and broadcasts 6 values of A (24 FMAs to 10 loads).
// A tile's accumulators start from 0 / the bias / C on the first K block and
// from C afterwards, so every element is summed in k order, block by block.
//
// Threads: C is cut into one contiguous range per thread, of 64-column
// panels (when there are at least 8, or as many as 6-row panels) or else of
// 6-row panels; each thread packs what its range needs.
#include "gemm.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>

#include "pack.h"
#include "simd_math.h"

namespace fusedrnn {
namespace cpu {

namespace {

using namespace detail;

constexpr int kMr = 6;     // rows of a register tile
constexpr int kNr = 64;    // columns of a register tile (4 vectors)
#ifndef FR_GEMM_KC
#define FR_GEMM_KC 256
#endif
#ifndef FR_GEMM_MC
#define FR_GEMM_MC 192
#endif
#ifndef FR_GEMM_NC
#define FR_GEMM_NC 512
#endif
constexpr int64_t kKc = FR_GEMM_KC;
constexpr int64_t kMc = FR_GEMM_MC;  // multiple of kMr
constexpr int64_t kNc = FR_GEMM_NC;  // multiple of kNr
static_assert(kMc % kMr == 0 && kNc % kNr == 0, "block sizes");

struct Problem {
  int64_t M, N, K;
  ConstMat A, B;
  MutMat C;
  bool accumulate;
  const float* bias;
  bool split_n;  // tasks are 64-column panels (else 6-row panels)
};

// 64-byte aligned scratch, one per thread, grown on demand.
struct Scratch {
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  std::unique_ptr<float[], Free> buf;
  size_t n = 0;
  float* get(size_t want) {
    if (want > n) {
      const size_t bytes = ((want * sizeof(float) + 63) / 64) * 64;
      buf.reset(static_cast<float*>(std::aligned_alloc(64, bytes)));
      if (!buf) throw std::bad_alloc();  // (ends the process inside a parallel task)
      n = want;
    }
    return buf.get();
  }
};

#if FUSEDRNN_X86
// Sum of the 16 lanes, in a fixed order.
FS_INLINE float hsum(__m512 v) {
  const __m512d d = _mm512_castps_pd(v);
  const __m256 lo = _mm256_castpd_ps(_mm512_mask_extractf64x4_pd(_mm256_setzero_pd(), 0xF, d, 0));
  const __m256 hi = _mm256_castpd_ps(_mm512_mask_extractf64x4_pd(_mm256_setzero_pd(), 0xF, d, 1));
  const __m256 s = _mm256_add_ps(lo, hi);
  __m128 t = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  t = _mm_add_ps(t, _mm_movehl_ps(t, t));
  t = _mm_add_ss(t, _mm_movehdup_ps(t));
  return _mm_cvtss_f32(t);
}

// Packs B rows [k0, k0+kc), columns [j0, j1) into panels of up to 64 columns:
// panel q (columns j0 + 64q ...) at dst + q·kc·64, k-major with a row stride
// of 16·nv floats (nv = the panel's vector count); columns past j1 are zero.
FS_TARGET void pack_b(const ConstMat& B, int64_t k0, int64_t kc, int64_t j0, int64_t j1,
                      float* dst) {
  for (int64_t jp = j0; jp < j1; jp += kNr) {
    const int64_t w = std::min<int64_t>(kNr, j1 - jp);
    const int64_t ws = ceil_div(w, 16) * 16;
    float* d = dst + ((jp - j0) / kNr) * kc * kNr;
    if (B.cs == 1) {
      pack_panel_avx512(B.p + k0 * B.rs + jp, B.rs, false, kc, w, d, ws);
    } else if (B.rs == 1) {
      pack_panel_avx512(B.p + jp * B.cs + k0, B.cs, true, kc, w, d, ws);
    } else {
      for (int64_t j = 0; j < ws; ++j) {
        const float* s = B.p + (jp + j) * B.cs + k0 * B.rs;
        for (int64_t k = 0; k < kc; ++k) d[k * ws + j] = j < w ? s[k * B.rs] : 0.0f;
      }
    }
  }
}

// Packs A rows [i0, i1), columns [k0, k0+kc) into 6-row panels: panel r at
// dst + r·kc·6, element (i, k) at [k·6 + i]; rows past i1 are zero.
FS_TARGET void pack_a(const ConstMat& A, int64_t i0, int64_t i1, int64_t k0, int64_t kc,
                      float* dst) {
  constexpr __mmask16 kRows = (1u << kMr) - 1u;
  for (int64_t ip = i0; ip < i1; ip += kMr) {
    const int64_t h = std::min<int64_t>(kMr, i1 - ip);
    float* d = dst + ((ip - i0) / kMr) * kc * kMr;
    if (A.rs == 1) {
      // A column k holds the panel's rows side by side: one masked copy each.
      const __mmask16 m = tail_mask(h);
      for (int64_t k = 0; k < kc; ++k)
        _mm512_mask_storeu_ps(d + k * kMr, kRows,
                              _mm512_maskz_loadu_ps(m, A.p + (k0 + k) * A.cs + ip));
    } else if (A.cs == 1) {
      // Rows contiguous along k: 16 columns of the 6 rows at a time, transposed
      // in registers.
      for (int64_t k = 0; k < kc; k += 16) {
        const int64_t nk = std::min<int64_t>(16, kc - k);
        const __mmask16 m = tail_mask(nk);
        __m512 r[16];
        for (int i = 0; i < 16; ++i)
          r[i] = i < h ? _mm512_maskz_loadu_ps(m, A.p + (ip + i) * A.rs + k0 + k)
                       : _mm512_setzero_ps();
        transpose16(r);
        for (int64_t u = 0; u < nk; ++u) _mm512_mask_storeu_ps(d + (k + u) * kMr, kRows, r[u]);
      }
    } else {
      for (int64_t k = 0; k < kc; ++k)
        for (int64_t i = 0; i < kMr; ++i)
          d[k * kMr + i] = i < h ? A.p[(ip + i) * A.rs + (k0 + k) * A.cs] : 0.0f;
    }
  }
}

enum class Init { kZero, kBias, kLoad };

// One register tile: rows [0, R) of an A panel, columns [0, 16·NV) of a B
// panel (the last vector masked to `last` valid lanes when the panel is the
// tail).  c points at C(i0, j0).
template <int R, int NV>
FS_TARGET void tile(int64_t kc, const float* ap, const float* bp, float* c, int64_t rsc,
                    int64_t csc, int last, Init init, const float* bias) {
  __mmask16 m[NV];
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) m[v] = v + 1 < NV ? kAll : tail_mask(last);
  __m512 acc[R][NV];
  if (init == Init::kZero) {
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  } else if (init == Init::kBias) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const __m512 b = _mm512_maskz_loadu_ps(m[v], bias + 16 * v);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) acc[r][v] = b;
    }
  } else if (csc == 1) {
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v)
        acc[r][v] = _mm512_maskz_loadu_ps(m[v], c + r * rsc + 16 * v);
  } else {
    alignas(64) float buf[16];
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < NV; ++v) {
        const int n = v + 1 < NV ? 16 : last;
        for (int u = 0; u < 16; ++u) buf[u] = u < n ? c[r * rsc + (16 * v + u) * csc] : 0.0f;
        acc[r][v] = _mm512_load_ps(buf);
      }
  }

  const int64_t ws = 16 * NV;
#pragma GCC unroll 4
  for (int64_t k = 0; k < kc; ++k) {
    const float* bk = bp + k * ws;
    __m512 b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) b[v] = _mm512_load_ps(bk + 16 * v);
    const float* ak = ap + k * kMr;
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 a = _mm512_set1_ps(ak[r]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(a, b[v], acc[r][v]);
    }
  }

  if (csc == 1) {
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) _mm512_mask_storeu_ps(c + r * rsc + 16 * v, m[v], acc[r][v]);
  } else {
    alignas(64) float buf[16];
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < NV; ++v) {
        const int n = v + 1 < NV ? 16 : last;
        _mm512_store_ps(buf, acc[r][v]);
        for (int u = 0; u < n; ++u) c[r * rsc + (16 * v + u) * csc] = buf[u];
      }
  }
}

using TileFn = void (*)(int64_t, const float*, const float*, float*, int64_t, int64_t, int,
                        Init, const float*);

template <int NV>
constexpr TileFn kTilesNv[kMr] = {tile<1, NV>, tile<2, NV>, tile<3, NV>,
                                  tile<4, NV>, tile<5, NV>, tile<6, NV>};
constexpr const TileFn* kTiles[4] = {kTilesNv<1>, kTilesNv<2>, kTilesNv<3>, kTilesNv<4>};

// The product over rows [m0, m1), columns [n0, n1) of C.
FS_TARGET void gemm_range(const Problem& pb, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  static thread_local Scratch sa, sb;
  float* ap = sa.get(static_cast<size_t>(kMc * kKc));
  float* bp = sb.get(static_cast<size_t>(kNc * kKc));
  const MutMat& C = pb.C;
  for (int64_t jc = n0; jc < n1; jc += kNc) {
    const int64_t jc1 = std::min(n1, jc + kNc);
    for (int64_t pc = 0; pc < pb.K; pc += kKc) {
      const int64_t kc = std::min(kKc, pb.K - pc);
      const Init init = pc > 0 || pb.accumulate ? Init::kLoad
                        : pb.bias             ? Init::kBias
                                              : Init::kZero;
      pack_b(pb.B, pc, kc, jc, jc1, bp);
      for (int64_t ic = m0; ic < m1; ic += kMc) {
        const int64_t ic1 = std::min(m1, ic + kMc);
        pack_a(pb.A, ic, ic1, pc, kc, ap);
        for (int64_t jr = jc; jr < jc1; jr += kNr) {
          const int64_t w = std::min<int64_t>(kNr, jc1 - jr);
          const int nv = static_cast<int>(ceil_div(w, 16));
          const int last = static_cast<int>(w - 16 * (nv - 1));
          const float* bpan = bp + ((jr - jc) / kNr) * kc * kNr;
          const float* bias = pb.bias ? pb.bias + jr : nullptr;
          for (int64_t ir = ic; ir < ic1; ir += kMr) {
            const int h = static_cast<int>(std::min<int64_t>(kMr, ic1 - ir));
            kTiles[nv - 1][h - 1](kc, ap + ((ir - ic) / kMr) * kc * kMr, bpan,
                                  C.p + ir * C.rs + jr * C.cs, C.rs, C.cs, last, init, bias);
          }
        }
      }
    }
  }
}

// Few rows of A (a single decoding step, a small batch), with A's rows and
// B's columns contiguous (A.cs == 1, B.rs == 1: B is a weight matrix used
// transposed): each element is a dot product along k, computed straight from
// the operands without packing (packing would cost more than the product).
// Columns [j0, j1), every row; the sum of each dot product runs in a fixed
// order (16 lanes along k, then the lanes' reduction).
constexpr int64_t kDotCols = 16;  // columns per task
constexpr int kDotRows = 4;       // rows of A per pass
constexpr int64_t kDotMaxRows = 8;  // the dot-product form up to this many rows

template <int MB>
FS_TARGET void dot_block(const Problem& pb, int64_t i0, int64_t j0, int64_t j1) {
  const int64_t K = pb.K;
  const __mmask16 mk = tail_mask(K % 16 == 0 ? 16 : K % 16);
  const float* arow[MB];
#pragma GCC unroll 4
  for (int r = 0; r < MB; ++r) arow[r] = pb.A.p + (i0 + r) * pb.A.rs;
  for (int64_t j = j0; j < j1; j += 4) {
    const int nj = static_cast<int>(std::min<int64_t>(4, j1 - j));
    const float* bcol[4];
    const float* bnext[4];  // the next 4 columns, prefetched a line per k step
#pragma GCC unroll 4
    for (int q = 0; q < 4; ++q) {
      bcol[q] = pb.B.p + (j + std::min(q, nj - 1)) * pb.B.cs;
      bnext[q] = pb.B.p + std::min(j + 4 + q, j1 - 1) * pb.B.cs;
    }
    __m512 acc[MB][4];
#pragma GCC unroll 4
    for (int r = 0; r < MB; ++r)
#pragma GCC unroll 4
      for (int q = 0; q < 4; ++q) acc[r][q] = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k += 16) {
      const __mmask16 m = k + 16 <= K ? kAll : mk;
      __m512 b[4];
#pragma GCC unroll 4
      for (int q = 0; q < 4; ++q) b[q] = _mm512_maskz_loadu_ps(m, bcol[q] + k);
#pragma GCC unroll 4
      for (int q = 0; q < 4; ++q)
        _mm_prefetch(reinterpret_cast<const char*>(bnext[q] + k), _MM_HINT_T0);
#pragma GCC unroll 4
      for (int r = 0; r < MB; ++r) {
        const __m512 a = _mm512_maskz_loadu_ps(m, arow[r] + k);
#pragma GCC unroll 4
        for (int q = 0; q < 4; ++q) acc[r][q] = _mm512_fmadd_ps(a, b[q], acc[r][q]);
      }
    }
    for (int r = 0; r < MB; ++r)
      for (int q = 0; q < nj; ++q) {
        float& c = pb.C.p[(i0 + r) * pb.C.rs + (j + q) * pb.C.cs];
        const float init = pb.accumulate ? c : pb.bias ? pb.bias[j + q] : 0.0f;
        c = init + hsum(acc[r][q]);
      }
  }
}

FS_TARGET void dot_task(void* ctx, int64_t begin, int64_t end) {
  const Problem& pb = *static_cast<const Problem*>(ctx);
  const int64_t j0 = begin * kDotCols, j1 = std::min(pb.N, end * kDotCols);
  for (int64_t i = 0; i < pb.M; i += kDotRows) {
    switch (std::min<int64_t>(kDotRows, pb.M - i)) {
      case 1: dot_block<1>(pb, i, j0, j1); break;
      case 2: dot_block<2>(pb, i, j0, j1); break;
      case 3: dot_block<3>(pb, i, j0, j1); break;
      default: dot_block<4>(pb, i, j0, j1); break;
    }
  }
}

void gemm_task(void* ctx, int64_t begin, int64_t end) {
  const Problem& pb = *static_cast<const Problem*>(ctx);
  if (pb.split_n) {
    gemm_range(pb, 0, pb.M, begin * kNr, std::min(pb.N, end * kNr));
  } else {
    gemm_range(pb, begin * kMr, std::min(pb.M, end * kMr), 0, pb.N);
  }
}

#endif  // FUSEDRNN_X86

}  // namespace

void sgemm(int64_t M, int64_t N, int64_t K, ConstMat A, ConstMat B, MutMat C, bool accumulate,
           const float* bias) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) {
        float& c = C.p[i * C.rs + j * C.cs];
        c = (accumulate ? c : 0.0f) + (bias ? bias[j] : 0.0f);
      }
    return;
  }
#if FUSEDRNN_X86
  if (use_fast_path()) {
    // The vector dimension (N) should be the wide one: a narrow C (fewer than
    // 64 columns) is computed as Cᵀ = Bᵀ · Aᵀ instead.  (The bias runs along N.)
    if (N < kNr && M > N && bias == nullptr) {
      std::swap(M, N);
      std::swap(A, B);
      std::swap(A.rs, A.cs);
      std::swap(B.rs, B.cs);
      std::swap(C.rs, C.cs);
    }
    Problem pb{M, N, K, A, B, C, accumulate, bias, false};
    if (M <= kDotMaxRows && A.cs == 1 && B.rs == 1) {
      run_parallel(ceil_div(N, kDotCols), M * N * K, &pb, dot_task);
      return;
    }
    const int64_t n_panels = ceil_div(N, kNr), m_panels = ceil_div(M, kMr);
    // 64-column panels when there are enough of them to share out evenly.
    pb.split_n = n_panels >= 8 || n_panels >= m_panels;
    run_parallel(pb.split_n ? n_panels : m_panels, M * N * K, &pb, gemm_task);
    return;
  }
#endif
  // Portable path (CPUs without AVX-512, set_force_scalar; the torch-facing
  // wrapper uses ATen there instead).
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      float s = accumulate ? C.p[i * C.rs + j * C.cs] : (bias ? bias[j] : 0.0f);
      for (int64_t k = 0; k < K; ++k) s += A.p[i * A.rs + k * A.cs] * B.p[k * B.rs + j * B.cs];
      C.p[i * C.rs + j * C.cs] = s;
    }
}

}  // namespace cpu
}  // namespace fusedrnn
