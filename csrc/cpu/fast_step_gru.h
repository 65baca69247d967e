// Fused CPU kernels for one GRU / Elman-RNN layer-timestep (fp32).
//
// Same scheme as the LSTM kernels in fast_step.h: each call computes the
// recurrent product tile by tile in registers and runs the cell math as the
// tile's epilogue, with W_hh packed once per sequence.  The AVX-512 path is
// chosen at runtime (fast_step_supported(), set_force_scalar()); otherwise a
// portable scalar path computes the same formulas.  Threading goes through
// the one hook installed with fast_step.h's set_parallel_for.
//
// Conventions are PyTorch's.  GRU gate order r, z, n (3H columns, column =
// gate*H + unit):
//   gh = h_prev W_hhᵀ + b_hh
//   r = σ(gx_r + gh_r),  z = σ(gx_z + gh_z),  n = tanh(gx_n + r ⊙ gh_n)
//   h' = (1 − z) ⊙ n + z ⊙ h_prev
// RNN: h' = act(gx + h_prev W_hhᵀ), act = tanh or relu (relu keeps NaN).
//
// Aliasing: outputs must not alias any input, except dh_carry (in place).
// Packed buffers are read-only during the steps and may be shared by
// concurrent calls; any float alignment is correct.
#pragma once

#include <cstddef>
#include <cstdint>

#include "fast_step.h"

namespace fusedrnn {
namespace cpu {

// ---------------------------------------------------------------- GRU ----

// Floats needed by the packed buffers.
size_t gru_packed_forward_size(int64_t H);   // ceil(H/16) * (H+1) * 48
size_t gru_packed_backward_size(int64_t H);  // 3H * 16*ceil(H/16)

// w_hh: (3H, H) row-major (rows r, z, n); b_hh: (3H) or nullptr (= zeros).
// The forward packing carries b_hh, so a new b_hh needs a re-pack.
void gru_pack_forward(const float* w_hh, const float* b_hh, int64_t H, float* packed);
void gru_pack_backward(const float* w_hh, int64_t H, float* packed);

// Forward step, for all b < B, j < H:
//   gh_q = b_hh[q*H+j] + Σ_k h_prev[b*ld_h+k] · W_hh[q*H+j][k]
//   r, z, n, h' as above with gx[b*ld_gx + q*H + j]
//   h_out[b*ld_h_out + j] = h'
//   if saved: saved[b*4H + {0,1,2,3}*H + j] = r, z, n, gh_n     (B, 4H)
// h_prev == nullptr means h_prev = 0 (product skipped, gh = b_hh).
void gru_step_forward(int64_t B, int64_t H, const float* packed_fwd,
                      const float* gx, int64_t ld_gx,
                      const float* h_prev, int64_t ld_h,
                      float* h_out, int64_t ld_h_out, float* saved);

// Backward step at time t, for all b < B, j < H:
//   dh = dy[b*ld_dy+j] + dh_carry[b*H+j]
//        + (dgh_next ? Σ_n dgh_next[b*3H+n] · W_hh[n][j] : 0)
//   (dh_carry = dh_{t+1} ⊙ z_{t+1} from the later step; zeros at t = T−1)
//   with r, z, n, gh_n from saved (step t) and hp = h_prev[b*ld_h+j]
//   (nullptr = zeros):
//     dn_pre = dh(1−z)(1−n²),  dz_pre = dh(hp−n) z(1−z),
//     dr_pre = dn_pre · gh_n · r(1−r)
//   dgx[b*3H + {0,1,2}*H + j] = dr_pre, dz_pre, dn_pre
//   dgh[b*3H + {0,1,2}*H + j] = dr_pre, dz_pre, dn_pre·r
//   dh_carry[b*H+j] = dh ⊙ z        (in place, for step t−1)
// dgh must not alias dgh_next.  The rest of dh_{t−1} is dgh · W_hh, which
// the next call adds through its dgh_next.
void gru_step_backward(int64_t B, int64_t H, const float* packed_bwd,
                       const float* dy, int64_t ld_dy,
                       const float* dgh_next, const float* saved,
                       const float* h_prev, int64_t ld_h,
                       float* dh_carry, float* dgx, float* dgh);

// ---------------------------------------------------------------- RNN ----

size_t rnn_packed_forward_size(int64_t H);   // H * 16*ceil(H/16)
size_t rnn_packed_backward_size(int64_t H);  // H * 16*ceil(H/16)

// w_hh: (H, H) row-major.
void rnn_pack_forward(const float* w_hh, int64_t H, float* packed);
void rnn_pack_backward(const float* w_hh, int64_t H, float* packed);

// h_out[b*ld_h_out+j] = act(gx[b*ld_gx+j] + Σ_k h_prev[b*ld_h+k] W_hh[j][k])
// (gx already holds b_ih + b_hh).  h_prev == nullptr means zeros.
void rnn_step_forward(int64_t B, int64_t H, bool relu, const float* packed_fwd,
                      const float* gx, int64_t ld_gx,
                      const float* h_prev, int64_t ld_h,
                      float* h_out, int64_t ld_h_out);

// dh = dy[b*ld_dy+j] + (dpre_next ? Σ_n dpre_next[b*H+n] W_hh[n][j] : 0)
// dpre[b*H+j] = dh · act'(h_t),  h_t = h[b*ld_h+j]:
//   tanh: 1 − h_t²;  relu: h_t <= 0 ? 0 : dh  (NaN h_t passes dh, like
//   torch's threshold_backward).
// dpre must not alias dpre_next.
void rnn_step_backward(int64_t B, int64_t H, bool relu, const float* packed_bwd,
                       const float* dy, int64_t ld_dy,
                       const float* dpre_next, const float* h, int64_t ld_h,
                       float* dpre);

}  // namespace cpu
}  // namespace fusedrnn
