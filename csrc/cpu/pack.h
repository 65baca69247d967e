// Panel packing shared by the matrix product (gemm.cpp) and the step
// kernels' weight layouts (fast_step.cpp, fast_step_gru.cpp): copies a block
// of a row-major matrix into a panel, k-major, `ld` floats a k:
//
//   dst[k·ld + c] = S(k, c)   for k < K, c < 16·ceil(w/16) (0 for c ≥ w)
//   S(k, c) = src[c·lds + k]  transposed: w rows of src, each k-contiguous
//   S(k, c) = src[k·lds + c]  straight:   K rows of src, w columns each
//
// The transposed form moves 16 × 16 blocks through registers.  Without
// AVX-512 (or under set_force_scalar) a plain loop writes the same floats.
// Not a public header.
#pragma once

#include <cstdint>
#include <type_traits>

#include "simd_math.h"

namespace fusedrnn {
namespace cpu {
namespace detail {

#if FUSEDRNN_X86
// Full-mask forms (GCC 12's plain ones merge into _mm512_undefined_ps(),
// which trips -Wmaybe-uninitialized).
FS_INLINE __m512 v_unpacklo(__m512 a, __m512 b) { return _mm512_mask_unpacklo_ps(a, kAll, a, b); }
FS_INLINE __m512 v_unpackhi(__m512 a, __m512 b) { return _mm512_mask_unpackhi_ps(a, kAll, a, b); }
template <int imm>
FS_INLINE __m512 v_shuf(__m512 a, __m512 b) { return _mm512_mask_shuffle_ps(a, kAll, a, b, imm); }
template <int imm>
FS_INLINE __m512 v_shuf128(__m512 a, __m512 b) {
  return _mm512_mask_shuffle_f32x4(a, kAll, a, b, imm);
}

// r[i] = row i of a 16 × 16 block  ->  r[k] = column k.
FS_INLINE void transpose16(__m512 (&r)[16]) {
  __m512 a[16], b[16];
  for (int i = 0; i < 8; ++i) {
    a[2 * i] = v_unpacklo(r[2 * i], r[2 * i + 1]);
    a[2 * i + 1] = v_unpackhi(r[2 * i], r[2 * i + 1]);
  }
  // b[4q + c], 128-bit lane l: rows 4q..4q+3 at column 4l + c.
  for (int q = 0; q < 4; ++q) {
    b[4 * q + 0] = v_shuf<0x44>(a[4 * q], a[4 * q + 2]);
    b[4 * q + 1] = v_shuf<0xEE>(a[4 * q], a[4 * q + 2]);
    b[4 * q + 2] = v_shuf<0x44>(a[4 * q + 1], a[4 * q + 3]);
    b[4 * q + 3] = v_shuf<0xEE>(a[4 * q + 1], a[4 * q + 3]);
  }
  for (int c = 0; c < 4; ++c) {
    const __m512 e_lo = v_shuf128<0x44>(b[c], b[4 + c]);
    const __m512 e_hi = v_shuf128<0xEE>(b[c], b[4 + c]);
    const __m512 f_lo = v_shuf128<0x44>(b[8 + c], b[12 + c]);
    const __m512 f_hi = v_shuf128<0xEE>(b[8 + c], b[12 + c]);
    r[c] = v_shuf128<0x88>(e_lo, f_lo);
    r[4 + c] = v_shuf128<0xDD>(e_lo, f_lo);
    r[8 + c] = v_shuf128<0x88>(e_hi, f_hi);
    r[12 + c] = v_shuf128<0xDD>(e_hi, f_hi);
  }
}

FS_TARGET inline void pack_panel_avx512(const float* src, int64_t lds, bool transposed, int64_t K,
                                        int64_t w, float* dst, int64_t ld) {
  const int64_t ws = ceil_div(w, 16) * 16;
  if (!transposed) {
    for (int64_t k = 0; k < K; ++k)
      for (int64_t c = 0; c < ws; c += 16)
        _mm512_storeu_ps(dst + k * ld + c, _mm512_maskz_loadu_ps(tail_mask(w - c), src + k * lds + c));
    return;
  }
  for (int64_t cb = 0; cb < ws; cb += 16) {
    const int64_t nc = std::min<int64_t>(16, w - cb);
    for (int64_t k = 0; k < K; k += 16) {
      const int64_t nk = std::min<int64_t>(16, K - k);
      const __mmask16 m = tail_mask(nk);
      __m512 r[16];
      for (int c = 0; c < 16; ++c)
        r[c] = c < nc ? _mm512_maskz_loadu_ps(m, src + (cb + c) * lds + k) : _mm512_setzero_ps();
      transpose16(r);
      for (int64_t u = 0; u < nk; ++u) _mm512_storeu_ps(dst + (k + u) * ld + cb, r[u]);
    }
  }
}
#endif  // FUSEDRNN_X86

inline void pack_panel(const float* src, int64_t lds, bool transposed, int64_t K, int64_t w,
                       float* dst, int64_t ld) {
#if FUSEDRNN_X86
  if (use_fast_path()) {
    pack_panel_avx512(src, lds, transposed, K, w, dst, ld);
    return;
  }
#endif
  const int64_t ws = ceil_div(w, 16) * 16;
  for (int64_t k = 0; k < K; ++k)
    for (int64_t c = 0; c < ws; ++c)
      dst[k * ld + c] = c >= w ? 0.0f : transposed ? src[c * lds + k] : src[k * lds + c];
}

// Runs pack(i) for the n panels i of a weight pack, in parallel when the pack
// (`floats` in all) is large enough to pay for it.
template <typename F>
void pack_panels(int64_t n, int64_t floats, F&& pack) {
  run_parallel(n, floats, &pack, [](void* ctx, int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) (*static_cast<std::remove_reference_t<F>*>(ctx))(i);
  });
}

}  // namespace detail
}  // namespace cpu
}  // namespace fusedrnn
