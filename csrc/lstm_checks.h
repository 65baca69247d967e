// Argument checks shared by every backend of fusedrnn::lstm_forward /
// lstm_backward.  Each check is a full sentence naming the argument and the
// expected vs actual value, so a bad call is a Python RuntimeError, never a
// crash or an out-of-bounds access.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <vector>

namespace fusedrnn {

struct LstmSizes {
  int64_t T, B, I, H, L;
  int64_t per_layer;  // tensors per layer in `weights`: 4 with biases, 2 without
};

inline void check_same(const at::Tensor& t, const at::Tensor& input, const char* name) {
  TORCH_CHECK(t.scalar_type() == input.scalar_type(), "fusedrnn.lstm: ", name,
              " has dtype ", t.scalar_type(), " but input has dtype ",
              input.scalar_type(), "; all tensors must share one dtype");
  TORCH_CHECK(t.device() == input.device(), "fusedrnn.lstm: ", name, " is on ",
              t.device(), " but input is on ", input.device(),
              "; all tensors must be on one device");
}

inline void check_shape(const at::Tensor& t, at::IntArrayRef expected, const char* name) {
  TORCH_CHECK(t.sizes() == expected, "fusedrnn.lstm: expected ", name,
              " of shape ", expected, ", got ", t.sizes());
}

// Validates the forward arguments and returns the sizes.
inline LstmSizes check_lstm_args(const at::Tensor& input, const at::Tensor& hx,
                                 const at::Tensor& cx, at::TensorList weights,
                                 bool has_biases) {
  TORCH_CHECK(input.dim() == 3, "fusedrnn.lstm: expected input of shape (T, B, I), got ",
              input.dim(), "-D tensor of shape ", input.sizes());
  TORCH_CHECK(at::isFloatingType(input.scalar_type()),
              "fusedrnn.lstm: input must be a floating-point tensor, got ",
              input.scalar_type());
  LstmSizes s;
  s.per_layer = has_biases ? 4 : 2;
  TORCH_CHECK(!weights.empty() && weights.size() % s.per_layer == 0,
              "fusedrnn.lstm: expected weights to hold ", s.per_layer,
              " tensors per layer (w_ih, w_hh", has_biases ? ", b_ih, b_hh" : "",
              "), got ", weights.size(), " tensors");
  s.L = static_cast<int64_t>(weights.size()) / s.per_layer;
  s.T = input.size(0);
  s.B = input.size(1);
  s.I = input.size(2);
  TORCH_CHECK(weights[1].dim() == 2 && weights[1].size(0) % 4 == 0 &&
                  weights[1].size(0) == 4 * weights[1].size(1),
              "fusedrnn.lstm: expected weights[1] (w_hh_l0) of shape (4*H, H), got ",
              weights[1].sizes());
  s.H = weights[1].size(1);
  const int64_t H = s.H;
  check_same(hx, input, "hx");
  check_same(cx, input, "cx");
  check_shape(hx, {s.L, s.B, H}, "hx (h0)");
  check_shape(cx, {s.L, s.B, H}, "cx (c0)");
  static const char* names[4] = {"w_ih", "w_hh", "b_ih", "b_hh"};
  for (int64_t l = 0; l < s.L; ++l) {
    for (int64_t k = 0; k < s.per_layer; ++k) {
      const at::Tensor& w = weights[l * s.per_layer + k];
      std::string name = std::string(names[k]) + "_l" + std::to_string(l);
      check_same(w, input, name.c_str());
      if (k == 0) {
        check_shape(w, {4 * H, l == 0 ? s.I : H}, name.c_str());
      } else if (k == 1) {
        check_shape(w, {4 * H, H}, name.c_str());
      } else {
        check_shape(w, {4 * H}, name.c_str());
      }
    }
  }
  return s;
}

inline void check_backward_args(const LstmSizes& s, const at::Tensor& input,
                                const at::Tensor& grad_output, const at::Tensor& grad_hy,
                                const at::Tensor& grad_cy, const at::Tensor& output,
                                const at::Tensor& gates, const at::Tensor& cells,
                                const at::Tensor& hiddens) {
  const char* names[7] = {"grad_output", "grad_hy", "grad_cy", "output",
                          "gates", "cells", "hiddens"};
  const at::Tensor* ts[7] = {&grad_output, &grad_hy, &grad_cy, &output,
                             &gates, &cells, &hiddens};
  for (int k = 0; k < 7; ++k) check_same(*ts[k], input, names[k]);
  check_shape(grad_output, {s.T, s.B, s.H}, "grad_output");
  check_shape(grad_hy, {s.L, s.B, s.H}, "grad_hy");
  check_shape(grad_cy, {s.L, s.B, s.H}, "grad_cy");
  check_shape(output, {s.T, s.B, s.H}, "output");
  TORCH_CHECK(gates.numel() > 0 || s.T * s.B * s.H == 0,
              "fusedrnn.lstm_backward: gates is empty; call lstm_forward with train=True "
              "to keep what backward needs");
  check_shape(gates, {s.L, s.T, s.B, 4 * s.H}, "gates (from lstm_forward with train=True)");
  check_shape(cells, {s.L, s.T, s.B, s.H}, "cells (from lstm_forward with train=True)");
  check_shape(hiddens, {s.L - 1, s.T, s.B, s.H}, "hiddens (from lstm_forward with train=True)");
}

}  // namespace fusedrnn
