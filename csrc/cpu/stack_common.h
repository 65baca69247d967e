// Stack plumbing shared by the LSTM, GRU and RNN CPU ops:
//   LayerOutputs       where each layer of the forward writes its h_t;
//   layer_param_grads  the part of a layer's backward that needs no sequential
//                      loop: once its reverse recurrence has produced the
//                      pre-activation gradients of every step, its weight, bias
//                      and input gradients are a few large GEMMs / reductions
//                      over all N rows;
//   gather_final, add_final_grad, prev_rows: the row bookkeeping of packed
//                      sequences (each sequence ends at its own step).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "cpu/products.h"
#include "cpu/team.h"
#include "rnn_checks.h"

namespace fusedrnn {
namespace cpu {

// Where layer l of a forward writes its outputs h_t (rows, H): the op's
// `output` for the last layer; in training the saved `hiddens[l]` (backward
// needs them); in inference one of two ping-pong buffers, allocated on first use.
class LayerOutputs {
 public:
  LayerOutputs(const at::Tensor& output, const at::Tensor& hiddens, bool train, int64_t L)
      : output_(output), hiddens_(hiddens), train_(train), L_(L) {}

  at::Tensor operator()(int64_t l) {
    if (l == L_ - 1) return output_;
    if (train_) return hiddens_[l];
    at::Tensor& buf = scratch_[l % 2];
    if (!buf.defined()) buf = at::empty_like(output_);
    return buf;
  }

 private:
  at::Tensor output_, hiddens_;
  bool train_;
  int64_t L_;
  at::Tensor scratch_[2];
};

// Whether a layer's fused step kernels should pack W_hh for this call: the
// pack is one pass over W_hh in a transposing order, which a single step
// (a decoding loop's call) does not earn back; there the step runs as a
// product straight from W_hh (products.h) plus the pointwise cell.
inline bool packing_pays(const SeqLayout& q) { return q.T > 1; }

// W_hh packed for a layer's step loop by pack(w_hh, H, dst) into `floats`
// floats held by `holder`, or nullptr when packing does not pay (a single
// step: its product runs straight from W_hh, and a backward step has no
// product at all).
template <typename Pack>
float* pack_for_steps(const SeqLayout& q, const at::Tensor& w_hh, int64_t H, size_t floats,
                      at::Tensor& holder, Pack pack) {
  if (!packing_pays(q)) return nullptr;
  holder = at::empty({static_cast<int64_t>(floats)}, w_hh.options());
  float* packed = holder.data_ptr<float>();
  pack(w_hh.data_ptr<float>(), H, packed);
  return packed;
}

// Runs a layer's step loop (the fused step kernels, one parallel region per
// step) with torch's threads held for the whole loop (team.h).
template <typename F>
void run_steps(F&& loop) {
  with_team(at::get_num_threads(), loop);
}

// Bytes of input projection a forward computes ahead of its steps (see
// project_in_chunks): well inside the L3 cache, large enough that the
// product of a chunk runs at full rate.
#ifndef FUSEDRNN_CHUNK_BYTES
#define FUSEDRNN_CHUNK_BYTES (8 << 20)
#endif

// A forward layer's input projection gx = x · W_ihᵀ (+ bias), G columns,
// computed a chunk of steps at a time just before those steps run:
// steps(t0, t1, gx) runs steps [t0, t1), whose rows are gx's (step t's
// first row is gx's row q.off[t] - q.off[t0]).  The chunk's rows are then
// still in the cache when the steps read them, and without `dst` one
// buffer of a chunk's size serves every chunk: a whole-sequence buffer
// (52 MB at B64 T100 H512 for the LSTM) is fresh memory on every call,
// whose page faults alone cost about a tenth of the call.  With `dst`
// (N, G) (the LSTM's saved gates) the chunks are dst's rows.
template <typename Steps>
void project_in_chunks(const SeqLayout& q, const at::Tensor& x, const at::Tensor& w_ih,
                       const at::Tensor* bias, int64_t G, at::Tensor* dst, Steps&& steps) {
  if (q.T == 0) return;
  const int64_t row_bytes = std::max<int64_t>(1, G * x.element_size());
  const int64_t want =
      std::max<int64_t>(1, FUSEDRNN_CHUNK_BYTES / row_bytes / std::max<int64_t>(1, q.B));
  const int64_t n_chunks = (q.T + want - 1) / want;
  const int64_t per = (q.T + n_chunks - 1) / n_chunks;  // the same size for all
  const at::Tensor w_t = w_ih.t();
  at::Tensor buf = dst ? at::Tensor() : at::empty({std::min(q.N, per * q.B), G}, x.options());
  for (int64_t t0 = 0; t0 < q.T; t0 += per) {
    const int64_t t1 = std::min(q.T, t0 + per);
    const int64_t r0 = q.off[t0], r1 = q.off[t1];
    at::Tensor gx = dst ? dst->narrow(0, r0, r1 - r0) : buf.narrow(0, 0, r1 - r0);
    product_into(gx, x.narrow(0, r0, r1 - r0), w_t, false, bias);
    steps(t0, t1, gx);
  }
}

// ------------------------------------------------------------------------
// Row-space helpers.  Inside the CPU ops every per-row tensor is handled as a
// 2-D (N, X) view (see SeqLayout in rnn_checks.h): step t owns rows
// [q.off[t], q.off[t] + q.bs[t]), a prefix of the batch.

// dst (B, X) <- each sequence's row at its own last step of out (N, X).
inline void gather_final(const SeqLayout& q, const at::Tensor& out, at::Tensor& dst) {
  for (int64_t t = 0; t < q.T; ++t) {
    const int64_t e = q.ended_begin(t), n = q.bs[t];
    if (n > e) dst.narrow(0, e, n - e).copy_(out.narrow(0, q.off[t] + e, n - e));
  }
}

// dy (N, X) += each sequence's grad_hy row (B, X) at its own last step.
inline void add_final_grad(const SeqLayout& q, at::Tensor& dy, const at::Tensor& dhy) {
  for (int64_t t = 0; t < q.T; ++t) {
    const int64_t e = q.ended_begin(t), n = q.bs[t];
    if (n > e) dy.narrow(0, q.off[t] + e, n - e).add_(dhy.narrow(0, e, n - e));
  }
}

// h_{t-1} of every row (N, X): h0's first bs[0] rows for step 0, then for
// step t the first bs[t] rows of step t-1 of out (N, X).
inline at::Tensor prev_rows(const SeqLayout& q, const at::Tensor& h0, const at::Tensor& out) {
  at::Tensor hp = at::empty({q.N, out.size(1)}, out.options());
  if (q.T == 0) return hp;
  hp.narrow(0, 0, q.bs[0]).copy_(h0.narrow(0, 0, q.bs[0]));
  if (!q.packed) {
    if (q.T > 1) hp.narrow(0, q.B, q.N - q.B).copy_(out.narrow(0, 0, q.N - q.B));
    return hp;
  }
  for (int64_t t = 1; t < q.T; ++t) {
    hp.narrow(0, q.off[t], q.bs[t]).copy_(out.narrow(0, q.off[t - 1], q.bs[t]));
  }
  return hp;
}

// dgx (N, G): gradients of the input-side pre-activations x W_ihᵀ + b_ih.
// dgh (N, G): gradients of the recurrent-side pre-activations h W_hhᵀ + b_hh
//             (the same tensor as dgx for LSTM and RNN; they differ for the
//             GRU, whose n gate keeps b_hn inside the r product).
// x (N, I_l): the layer's input;  h0 (B, P): its initial state;
// out (N, P): its outputs h_t (so h_{t-1} of step t's rows is h0, then the
// first rows of step t-1).
// Writes grad_w[base] = dW_ih, grad_w[base+1] = dW_hh and, with biases,
// grad_w[base+2] = db_ih, grad_w[base+3] = db_hh; returns dX (N, I_l), the
// gradient for the layer below (or the op's input).  weights = false skips
// the weight and bias gradients, want_dx = false dX (then undefined).
inline at::Tensor layer_param_grads(const SeqLayout& q, const at::Tensor& dgx,
                                    const at::Tensor& dgh, const at::Tensor& x,
                                    const at::Tensor& h0, const at::Tensor& out,
                                    const at::Tensor& w_ih, bool has_biases,
                                    std::vector<at::Tensor>& grad_w, int64_t base,
                                    bool weights = true, bool want_dx = true) {
  const int64_t G = dgx.size(1), P = out.size(1);
  if (!weights) return want_dx ? product(dgx, w_ih) : at::Tensor();
  grad_w[base] = product(dgx.t(), x);  // dW_ih = dGᵀ·X
  at::Tensor dw_hh;
  if (q.T == 0) {
    dw_hh = at::zeros({G, P}, dgx.options());
  } else if (!q.packed) {
    // Padded: h_{t-1} rows are h0 then out's rows shifted by one step; two
    // products instead of a copy.
    dw_hh = product(dgh.narrow(0, 0, q.B).t(), h0);
    if (q.T > 1) product_into(dw_hh, dgh.narrow(0, q.B, q.N - q.B).t(), out.narrow(0, 0, q.N - q.B), true);
  } else {
    dw_hh = product(dgh.t(), prev_rows(q, h0, out));
  }
  grad_w[base + 1] = dw_hh;
  if (has_biases) {
    grad_w[base + 2] = dgx.sum(0);
    grad_w[base + 3] = dgh.is_same(dgx) ? grad_w[base + 2].clone() : dgh.sum(0);
  }
  return want_dx ? product(dgx, w_ih) : at::Tensor();
}

// The layer loop of a stack's backward, shared by the LSTM, GRU and RNN ops:
// layers from the top down, each one's reverse recurrence, then its weight,
// bias and input gradients as large GEMMs (layer_param_grads), whose input
// gradient is the next layer's dy.
//   dy        (N, P) a private copy of grad_output (grad_hy is added into it
//             at each sequence's last step)
//   input     (N, I) the op's input; output (N, P); hiddens (L-1, N, P)
//   hx (L, B, P); grad_hy (L, B, P); grad_hx (L, B, P) receives grad_h0
//             (left undefined, and grad_h0 too, when mask.states is false)
//   recur(l, dy, grad_h0) -> {dgx, dgh}: layer l's reverse recurrence on dy
//             (writing grad_h0 when T > 0 and it is defined); dgx, dgh as in
//             layer_param_grads
//   mask      the op's output_mask (weight gradients, the input's)
// Returns the gradient of the op's input, (N, I), undefined when mask.input
// is false.
template <typename Recur>
at::Tensor stack_backward(const RnnSizes& s, at::Tensor dy, const at::Tensor& input,
                          const at::Tensor& output, const at::Tensor& hiddens,
                          const at::Tensor& hx, const at::Tensor& grad_hy,
                          const std::vector<at::Tensor>& w, bool has_biases,
                          at::Tensor& grad_hx, std::vector<at::Tensor>& grad_w,
                          const GradMask& mask, Recur recur) {
  const SeqLayout& q = s.seq;
  for (int64_t l = s.L - 1; l >= 0; --l) {
    const at::Tensor x = l == 0 ? input : hiddens[l - 1];       // layer input (N, I_l)
    const at::Tensor out = l == s.L - 1 ? output : hiddens[l];  // layer output h_t (N, P)
    add_final_grad(q, dy, grad_hy[l]);
    at::Tensor gh0 = mask.states ? grad_hx[l] : at::Tensor();
    const auto dg = recur(l, dy, gh0);
    if (q.T == 0 && gh0.defined()) gh0.copy_(grad_hy[l]);  // hy = hx
    dy = layer_param_grads(q, dg.first, dg.second, x, hx[l], out, w[l * s.per_layer],
                           has_biases, grad_w, l * s.per_layer, mask.weights,
                           l > 0 || mask.input);
  }
  return dy;
}

}  // namespace cpu
}  // namespace fusedrnn
