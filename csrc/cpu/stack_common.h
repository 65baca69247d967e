// Stack plumbing shared by the LSTM, GRU and RNN CPU ops:
//   LayerOutputs       where each layer of the forward writes its h_t;
//   pack_for_steps, run_steps: a layer's step loop (W_hh packed, threads held);
//   project_in_chunks  a forward's input projection, a chunk of steps ahead;
//   GradChunks, stack_backward: a backward's layer loop, its gradient rows a
//                      chunk of steps at a time, and after each chunk the
//                      products that need no sequential loop (weight, bias
//                      and input gradients over the chunk's rows);
//   gather_final, add_final_grad, add_dw_hh: the row bookkeeping of packed
//                      sequences (each sequence ends at its own step).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <functional>
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

// Bytes of rows a layer's loop handles per chunk of steps: the forward's
// input projection (project_in_chunks), the backward's pre-activation
// gradients (GradChunks).  Well inside the L3 cache, large enough that the
// products over a chunk run at full rate.  tests/test_cpu_products.py sizes
// its several-chunk cases from this value.
#ifndef FUSEDRNN_CHUNK_BYTES
#define FUSEDRNN_CHUNK_BYTES (8 << 20)
#endif

// Steps per chunk for rows of row_bytes bytes: about FUSEDRNN_CHUNK_BYTES,
// at least one step, the same for every chunk but the last.
inline int64_t chunk_steps(const SeqLayout& q, int64_t row_bytes) {
  const int64_t want = std::max<int64_t>(
      1, FUSEDRNN_CHUNK_BYTES / std::max<int64_t>(1, row_bytes) / std::max<int64_t>(1, q.B));
  const int64_t n_chunks = (q.T + want - 1) / want;
  return n_chunks == 0 ? 1 : (q.T + n_chunks - 1) / n_chunks;
}

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
  const int64_t per = chunk_steps(q, G * x.element_size());
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

// The pre-activation gradients of a layer's reverse recurrence, (rows, G)
// for each of `sets` kinds (1: dG of the LSTM and RNN; 2: the GRU's dgx and
// dgh), held a chunk of steps at a time.  run_reverse(held, step) runs
// step(t) from the last step to the first, chunk by chunk: step t writes
// its rows (at / step) and reads those of step t + 1, which may lie in the
// chunk run before (two buffers alternate).  After each chunk,
// on_chunk(t0, t1) takes the rows of its steps [t0, t1) for the products
// that need no sequential loop (stack_backward sets it).  The
// whole-sequence gradients are never held: no fresh (N, G) buffer per call,
// and the products read rows that are still in the cache.
class GradChunks {
 public:
  GradChunks(const SeqLayout& q, int64_t G, int sets, const at::TensorOptions& opts)
      : q_(q), G_(G),
        per_(chunk_steps(q, G * static_cast<int64_t>(opts.dtype().itemsize()))) {
    const int64_t rows = std::min(q.N, per_ * q.B);
    for (int slot = 0; slot < (n_chunks() > 1 ? 2 : 1); ++slot)
      for (int k = 0; k < sets; ++k) buf_[slot][k] = at::empty({rows, G}, opts);
  }

  std::function<void(int64_t, int64_t)> on_chunk;

  // With `held`, each chunk's loop holds torch's threads (run_steps, for the
  // fused step kernels).
  template <typename Step>
  void run_reverse(bool held, Step&& step) {
    for (int64_t c = n_chunks() - 1; c >= 0; --c) {
      const int64_t t0 = c * per_, t1 = std::min(q_.T, t0 + per_);
      auto loop = [&] {
        for (int64_t t = t1 - 1; t >= t0; --t) step(t);
      };
      if (held) {
        run_steps(loop);
      } else {
        loop();
      }
      if (on_chunk) on_chunk(t0, t1);
    }
  }

  // Rows [q.off[t0], q.off[t1]) of set k, for the chunk [t0, t1).
  at::Tensor rows(int k, int64_t t0, int64_t t1) const {
    return buf_[slot(t0)][k].narrow(0, 0, q_.off[t1] - q_.off[t0]);
  }
  // Step t's rows of set k (the chunk being run or the one run before it).
  at::Tensor step(int k, int64_t t) const {
    return buf_[slot(t)][k].narrow(0, row(t), q_.bs[t]);
  }
  template <typename T>
  T* at(int k, int64_t t) const {
    return buf_[slot(t)][k].template data_ptr<T>() + row(t) * G_;
  }

 private:
  int64_t n_chunks() const { return (q_.T + per_ - 1) / per_; }
  int slot(int64_t t) const { return static_cast<int>((t / per_) % 2); }
  int64_t row(int64_t t) const { return q_.off[t] - q_.off[t / per_ * per_]; }

  const SeqLayout& q_;
  int64_t G_;
  int64_t per_;
  at::Tensor buf_[2][2];
};

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

// dw_hh (G, X) += dghᵀ · H_prev over the rows of steps [t0, t1): dgh
// (rows, G) and their h_{t-1}, which is h0's first bs[0] rows for step 0, then
// for step t the first bs[t] rows of step t-1 of out (N, X).  Padded, those
// rows are contiguous in h0 and out (no copy); packed, they are gathered.
inline void add_dw_hh(at::Tensor& dw_hh, const SeqLayout& q, const at::Tensor& dgh,
                      const at::Tensor& h0, const at::Tensor& out, int64_t t0, int64_t t1) {
  const int64_t r0 = q.off[t0], n = q.off[t1] - r0;
  if (!q.packed) {
    const int64_t skip = t0 == 0 ? q.B : 0;  // step 0's rows, against h0
    if (skip > 0) product_into(dw_hh, dgh.narrow(0, 0, skip).t(), h0, true);
    if (n > skip)
      product_into(dw_hh, dgh.narrow(0, skip, n - skip).t(),
                   out.narrow(0, r0 + skip - q.B, n - skip), true);
    return;
  }
  at::Tensor hp = at::empty({n, out.size(1)}, out.options());
  for (int64_t t = t0; t < t1; ++t) {
    at::Tensor dst = hp.narrow(0, q.off[t] - r0, q.bs[t]);
    dst.copy_(t == 0 ? h0.narrow(0, 0, q.bs[0]) : out.narrow(0, q.off[t - 1], q.bs[t]));
  }
  product_into(dw_hh, dgh.t(), hp, true);
}

// The layer loop of a stack's backward, shared by the LSTM, GRU and RNN ops:
// layers from the top down, each one's reverse recurrence chunk by chunk
// (GradChunks), and after each chunk the products over its rows that need no
// sequential loop: dW_ih += dgxᵀ·X, dW_hh += dghᵀ·H_prev, the bias sums, and
// the chunk's rows of dX = dgx·W_ih, the gradient for the layer below.
//   dy        (N, P) a private copy of grad_output (grad_hy is added into it
//             at each sequence's last step)
//   input     (N, I) the op's input; output (N, P); hiddens (L-1, N, P)
//   hx (L, B, P); grad_hy (L, B, P); grad_hx (L, B, P) receives grad_h0
//             (left undefined, and grad_h0 too, when mask.states is false)
//   G, sets   the gradient rows' width and kinds (GradChunks); with two,
//             set 0 is dgx (of x W_ihᵀ + b_ih) and set 1 dgh (of
//             h W_hhᵀ + b_hh): the GRU's n gate keeps b_hn inside the r
//             product.  With one, both are set 0.
//   recur(l, dy, grad_h0, chunks) layer l's reverse recurrence on dy
//             through chunks.run (writing grad_h0 when T > 0 and it is
//             defined)
//   mask      the op's output_mask (weight gradients, the input's)
// grad_w[l·per_layer + 0..3] receive dW_ih, dW_hh, db_ih, db_hh.  Returns
// the gradient of the op's input, (N, I), undefined when mask.input is
// false.
template <typename Recur>
at::Tensor stack_backward(const RnnSizes& s, at::Tensor dy, const at::Tensor& input,
                          const at::Tensor& output, const at::Tensor& hiddens,
                          const at::Tensor& hx, const at::Tensor& grad_hy,
                          const std::vector<at::Tensor>& w, bool has_biases,
                          at::Tensor& grad_hx, std::vector<at::Tensor>& grad_w,
                          const GradMask& mask, int64_t G, int sets, Recur recur) {
  const SeqLayout& q = s.seq;
  GradChunks chunks(q, G, sets, dy.options());
  for (int64_t l = s.L - 1; l >= 0; --l) {
    const at::Tensor x = l == 0 ? input : hiddens[l - 1];       // layer input (N, I_l)
    const at::Tensor out = l == s.L - 1 ? output : hiddens[l];  // layer output h_t (N, P)
    const at::Tensor& w_ih = w[l * s.per_layer];
    const int64_t base = l * s.per_layer;
    const bool want_dx = l > 0 || mask.input;
    add_final_grad(q, dy, grad_hy[l]);
    at::Tensor dx = want_dx ? at::empty({q.N, x.size(1)}, x.options()) : at::Tensor();
    if (mask.weights) {
      grad_w[base] = at::zeros_like(w_ih);
      grad_w[base + 1] = at::zeros({G, out.size(1)}, x.options());
      if (has_biases) {
        grad_w[base + 2] = at::zeros({G}, x.options());
        grad_w[base + 3] = at::zeros({G}, x.options());
      }
    }
    chunks.on_chunk = [&](int64_t t0, int64_t t1) {
      const int64_t r0 = q.off[t0], n = q.off[t1] - r0;
      const at::Tensor dgx = chunks.rows(0, t0, t1);
      const at::Tensor dgh = sets == 2 ? chunks.rows(1, t0, t1) : dgx;
      if (want_dx) {
        at::Tensor dx_c = dx.narrow(0, r0, n);
        product_into(dx_c, dgx, w_ih);
      }
      if (!mask.weights) return;
      product_into(grad_w[base], dgx.t(), x.narrow(0, r0, n), true);
      add_dw_hh(grad_w[base + 1], q, dgh, hx[l], out, t0, t1);
      if (has_biases) {
        grad_w[base + 2].add_(dgx.sum(0));
        if (sets == 2) grad_w[base + 3].add_(dgh.sum(0));
      }
    };
    at::Tensor gh0 = mask.states ? grad_hx[l] : at::Tensor();
    recur(l, dy, gh0, chunks);
    if (has_biases && mask.weights && sets == 1) grad_w[base + 3].copy_(grad_w[base + 2]);
    if (q.T == 0 && gh0.defined()) gh0.copy_(grad_hy[l]);  // hy = hx
    dy = dx;
  }
  chunks.on_chunk = nullptr;
  return dy;
}

}  // namespace cpu
}  // namespace fusedrnn
