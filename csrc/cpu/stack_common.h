// Stack plumbing shared by the LSTM, GRU and RNN CPU ops:
//   LayerOutputs       where each layer of the forward writes its h_t;
//   layer_param_grads  the part of a layer's backward that needs no sequential
//                      loop: once its reverse recurrence has produced the
//                      pre-activation gradients of every step, its weight, bias
//                      and input gradients are a few large GEMMs / reductions
//                      over all T·B rows.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace fusedrnn {
namespace cpu {

// Where layer l of a forward writes its outputs h_t (T, B, H): the op's
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

// dgx (T, B, G): gradients of the input-side pre-activations x W_ihᵀ + b_ih.
// dgh (T, B, G): gradients of the recurrent-side pre-activations h W_hhᵀ + b_hh
//                (the same tensor as dgx for LSTM and RNN; they differ for the
//                GRU, whose n gate keeps b_hn inside the r product).
// x (T, B, I_l): the layer's input;  h0 (B, H): its initial state;
// out (T, B, H): its outputs h_t, so h_{t-1} is h0 then out[0..T-2].
// Writes grad_w[base] = dW_ih, grad_w[base+1] = dW_hh and, with biases,
// grad_w[base+2] = db_ih, grad_w[base+3] = db_hh; returns dX (T, B, I_l), the
// gradient for the layer below (or the op's input).
inline at::Tensor layer_param_grads(const at::Tensor& dgx, const at::Tensor& dgh,
                                    const at::Tensor& x, const at::Tensor& h0,
                                    const at::Tensor& out, const at::Tensor& w_ih,
                                    bool has_biases, std::vector<at::Tensor>& grad_w,
                                    int64_t base) {
  const int64_t T = dgx.size(0), B = dgx.size(1), G = dgx.size(2);
  const int64_t I = x.size(2), H = out.size(2);
  const at::Tensor dgx2 = dgx.reshape({T * B, G});
  const at::Tensor dgh2 = dgh.reshape({T * B, G});
  grad_w[base] = at::mm(dgx2.t(), x.reshape({T * B, I}));
  at::Tensor dw_hh;
  if (T == 0) {
    dw_hh = at::zeros({G, H}, dgx.options());
  } else {
    dw_hh = at::mm(dgh[0].t(), h0);
    if (T > 1) {
      dw_hh.addmm_(dgh.slice(0, 1).reshape({(T - 1) * B, G}).t(),
                   out.slice(0, 0, T - 1).reshape({(T - 1) * B, H}));
    }
  }
  grad_w[base + 1] = dw_hh;
  if (has_biases) {
    grad_w[base + 2] = dgx2.sum(0);
    grad_w[base + 3] = dgh.is_same(dgx) ? grad_w[base + 2].clone() : dgh2.sum(0);
  }
  return at::mm(dgx2, w_ih).view({T, B, I});
}

}  // namespace cpu
}  // namespace fusedrnn
