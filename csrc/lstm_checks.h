// Argument checks of fusedrnn::lstm_forward / lstm_backward, shared by every
// backend.  Thin wrappers over the op-generic checks in rnn_checks.h with the
// op name "fusedrnn.lstm"; each check is a full sentence naming the argument
// and the expected vs actual value, so a bad call is a Python RuntimeError,
// never a crash or an out-of-bounds access.
#pragma once

#include "rnn_checks.h"

namespace fusedrnn {

using LstmSizes = RnnSizes;

inline void check_same(const at::Tensor& t, const at::Tensor& input, const char* name) {
  check_same("fusedrnn.lstm", t, input, name);
}

inline void check_shape(const at::Tensor& t, at::IntArrayRef expected, const char* name) {
  check_shape("fusedrnn.lstm", t, expected, name);
}

// Validates the forward arguments and returns the sizes.
// With a projection (proj_size P < H, as nn.LSTM's): hx is (L, B, P), w_ih of
// layers > 0 is (4H, P), w_hh (4H, P), and each layer ends with w_hr (P, H).
inline LstmSizes check_lstm_args(const at::Tensor& input, const at::Tensor& hx,
                                 const at::Tensor& cx, at::TensorList weights,
                                 bool has_biases,
                                 const std::optional<at::Tensor>& batch_sizes = std::nullopt,
                                 int64_t directions = 1) {
  return check_stack_args("fusedrnn.lstm", 4, input, hx, {{&cx, "cx", "cx (c0)"}}, weights,
                          has_biases, batch_sizes, /*allow_proj=*/true, directions);
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
  const int64_t DL = s.D * s.L;
  check_shape(grad_output, s.rows_shape(s.D * s.P), "grad_output");
  check_shape(grad_hy, {DL, s.B, s.P}, "grad_hy");
  check_shape(grad_cy, {DL, s.B, s.H}, "grad_cy");
  check_shape(output, s.rows_shape(s.D * s.P), "output");
  TORCH_CHECK(gates.numel() > 0 || s.seq.N * s.H == 0,
              "fusedrnn.lstm_backward: gates is empty; call lstm_forward with train=True "
              "to keep what backward needs");
  check_shape(gates, s.rows_shape(4 * s.H, DL), "gates (from lstm_forward with train=True)");
  check_shape(cells, s.rows_shape(s.H, DL), "cells (from lstm_forward with train=True)");
  check_shape(hiddens, s.rows_shape(s.D * s.P, s.L - 1),
              "hiddens (from lstm_forward with train=True)");
}

}  // namespace fusedrnn
