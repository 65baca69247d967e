// Fused CPU kernels for one LSTM layer-timestep (fp32).
//
// Each call does the recurrent matrix product and the LSTM cell math in one
// pass: the product is computed tile by tile in registers and the cell math
// runs as the tile's epilogue, so the gate pre-activations are never written
// out.  W_hh is packed once per sequence (pack_forward / pack_backward) into a
// layout that suits the micro-kernels and then reused for every timestep.
//
// An AVX-512 path is used when the CPU supports it (runtime check); otherwise
// (or on non-x86 builds) a portable scalar path computes the same formulas
// with fusedrnn::lstm_cell_forward / lstm_cell_backward from cell_math.h.
//
// The file does not depend on torch.  Threading goes through a hook installed
// with set_parallel_for (default: serial).
#pragma once

#include <cstddef>
#include <cstdint>

namespace fusedrnn {
namespace cpu {

// True when this CPU can run the AVX-512 kernels (avx512f/vl/bw/dq + fma).
// The public functions work on every CPU; this only says which path runs.
bool fast_step_supported();

// Number of floats the packed buffers need.  Any float alignment is correct
// (64-byte alignment is nice to have; no measurable difference here).  The
// packed buffers are read-only during the steps and may be shared by
// concurrent calls.
size_t packed_forward_size(int64_t H);   // ceil(H/16) * H * 64
size_t packed_backward_size(int64_t H);  // 4H * 16*ceil(H/16)

// w_hh: (4H, H) row-major, PyTorch layout (rows i, f, g, o).
// Pack for the forward product G += h_prev · W_hhᵀ.
void pack_forward(const float* w_hh, int64_t H, float* packed);
// Pack for the backward product dh += dG · W_hh  (dG is (B,4H), result (B,H)).
void pack_backward(const float* w_hh, int64_t H, float* packed);

// Forward step, for all b < B, j < H:
//   pre[gate] = gx[b*ld_gx + gate*H + j] + Σ_k h_prev[b*ld_h + k] * W_hh[gate*H + j][k]
//   r = lstm_cell_forward(pre_i, pre_f, pre_g, pre_o, c_prev[b*H + j])
//   if (gates_out) gates_out[b*4H + gate*H + j] = r.i / r.f / r.g / r.o
//   c_out[b*H + j] = r.c ;  h_out[b*ld_h_out + j] = r.h
// h_prev == nullptr means h_prev = 0 (the product is skipped).
// c_prev may alias c_out (in-place update), and gates_out may be gx itself
// when ld_gx == 4H (every tile reads its pre-activations before it writes the
// same elements; lstm_cpu.cpp's training forward relies on this).  h_out must
// not alias h_prev, and no other output may alias gx / h_prev.
void lstm_step_forward(int64_t B, int64_t H, const float* packed_fwd,
                       const float* gx, int64_t ld_gx,
                       const float* h_prev, int64_t ld_h,
                       const float* c_prev, float* c_out,
                       float* h_out, int64_t ld_h_out,
                       float* gates_out);

// Backward step at time t, for all b < B, j < H:
//   dh = dy[b*ld_dy + j] + (dG_next ? Σ_n dG_next[b*4H + n] * W_hh[n][j] : 0)
//   r = lstm_cell_backward(dh, dc[b*H+j], i,f,g,o from gates[b*4H + gate*H + j],
//                          c_prev[b*H+j], c[b*H+j])
//   dG[b*4H + gate*H + j] = r.di / r.df / r.dg / r.do_
//   dc[b*H + j] = r.dc_prev      (in place)
// dG must not alias dG_next.
void lstm_step_backward(int64_t B, int64_t H, const float* packed_bwd,
                        const float* dy, int64_t ld_dy,
                        const float* dG_next,
                        const float* gates, const float* c_prev, const float* c,
                        float* dc, float* dG);

// Threading hook.  pf(n_tasks, ctx, task) must call task(ctx, begin, end) on
// disjoint ranges that together cover [0, n_tasks) (possibly concurrently, from
// any threads) and return when all of them have finished.  Tasks write
// disjoint outputs.  Task ids are ordered so that contiguous ranges keep the
// same weight panels on the same thread from step to step (good for L2), so
// prefer a static split into one contiguous chunk per thread, as
// at::parallel_for(0, n_tasks, 1, ...) does.  nullptr (the default) = serial.
using ParallelFor = void (*)(int64_t n_tasks, void* ctx,
                             void (*task)(void* ctx, int64_t begin, int64_t end));
void set_parallel_for(ParallelFor pf);

// Testing aid: when true, the portable scalar path runs even on CPUs that
// support the AVX-512 kernels (process-wide; default false).
void set_force_scalar(bool force);

}  // namespace cpu
}  // namespace fusedrnn
