// Argument checks shared by every fusedrnn op (LSTM, GRU, RNN) and backend.
//
// Each check is a full sentence that names the op, the argument and the
// expected vs actual value, so a bad call is a Python RuntimeError, never a
// crash or an out-of-bounds access.  lstm_checks.h wraps these for the LSTM
// (keeping its historical function names); the GRU and RNN ops call
// check_stack_args / check_gru_backward_args / check_rnn_backward_args.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <initializer_list>
#include <string>
#include <vector>

namespace fusedrnn {

// Sizes of one stacked-RNN call.
struct RnnSizes {
  int64_t T, B, I, H, L;
  int64_t per_layer;  // tensors per layer in `weights`: 4 with biases, 2 without
};

// `op` is the name used in messages, e.g. "fusedrnn.gru".
inline void check_same(const char* op, const at::Tensor& t, const at::Tensor& input,
                       const char* name) {
  TORCH_CHECK(t.scalar_type() == input.scalar_type(), op, ": ", name,
              " has dtype ", t.scalar_type(), " but input has dtype ",
              input.scalar_type(), "; all tensors must share one dtype");
  TORCH_CHECK(t.device() == input.device(), op, ": ", name, " is on ",
              t.device(), " but input is on ", input.device(),
              "; all tensors must be on one device");
}

inline void check_shape(const char* op, const at::Tensor& t, at::IntArrayRef expected,
                        const char* name) {
  TORCH_CHECK(t.sizes() == expected, op, ": expected ", name,
              " of shape ", expected, ", got ", t.sizes());
}

// A state tensor (L, B, H) besides hx, e.g. the LSTM's cx: its name in dtype /
// device messages and its label in shape messages ("cx" and "cx (c0)").
struct NamedState {
  const at::Tensor* t;
  const char* name;
  const char* label;
};

// Validates the forward arguments of a stacked RNN whose weights hold `gates`
// blocks of H rows (LSTM 4, GRU 3, RNN 1) and returns the sizes.
//   input (T, B, I); hx and every extra state (L, B, H); weights per layer
//   w_ih (gates*H, I or H), w_hh (gates*H, H), then b_ih, b_hh (gates*H).
inline RnnSizes check_stack_args(const char* op, int64_t gates, const at::Tensor& input,
                                 const at::Tensor& hx,
                                 std::initializer_list<NamedState> extra_states,
                                 at::TensorList weights, bool has_biases) {
  TORCH_CHECK(input.dim() == 3, op, ": expected input of shape (T, B, I), got ",
              input.dim(), "-D tensor of shape ", input.sizes());
  TORCH_CHECK(at::isFloatingType(input.scalar_type()),
              op, ": input must be a floating-point tensor, got ", input.scalar_type());
  RnnSizes s;
  s.per_layer = has_biases ? 4 : 2;
  TORCH_CHECK(!weights.empty() && weights.size() % s.per_layer == 0,
              op, ": expected weights to hold ", s.per_layer,
              " tensors per layer (w_ih, w_hh", has_biases ? ", b_ih, b_hh" : "",
              "), got ", weights.size(), " tensors");
  s.L = static_cast<int64_t>(weights.size()) / s.per_layer;
  s.T = input.size(0);
  s.B = input.size(1);
  s.I = input.size(2);
  const std::string rows = gates == 1 ? std::string("H") : std::to_string(gates) + "*H";
  TORCH_CHECK(weights[1].dim() == 2 && weights[1].size(0) % gates == 0 &&
                  weights[1].size(0) == gates * weights[1].size(1),
              op, ": expected weights[1] (w_hh_l0) of shape (", rows, ", H), got ",
              weights[1].sizes());
  s.H = weights[1].size(1);
  const int64_t H = s.H, GH = gates * H;
  check_same(op, hx, input, "hx");
  for (const auto& st : extra_states) check_same(op, *st.t, input, st.name);
  check_shape(op, hx, {s.L, s.B, H}, "hx (h0)");
  for (const auto& st : extra_states) check_shape(op, *st.t, {s.L, s.B, H}, st.label);
  static const char* names[4] = {"w_ih", "w_hh", "b_ih", "b_hh"};
  for (int64_t l = 0; l < s.L; ++l) {
    for (int64_t k = 0; k < s.per_layer; ++k) {
      const at::Tensor& w = weights[l * s.per_layer + k];
      const std::string name = std::string(names[k]) + "_l" + std::to_string(l);
      check_same(op, w, input, name.c_str());
      if (k == 0) {
        check_shape(op, w, {GH, l == 0 ? s.I : H}, name.c_str());
      } else if (k == 1) {
        check_shape(op, w, {GH, H}, name.c_str());
      } else {
        check_shape(op, w, {GH}, name.c_str());
      }
    }
  }
  return s;
}

// The gradients and saved tensors of a backward call: dtype/device like input,
// and the shapes the forward (with train=True) produced.
struct SavedArg {
  const at::Tensor* t;
  const char* name;
  std::vector<int64_t> shape;
};

inline void check_saved_args(const char* op, const at::Tensor& input,
                             std::initializer_list<SavedArg> args) {
  for (const auto& a : args) check_same(op, *a.t, input, a.name);
  for (const auto& a : args) check_shape(op, *a.t, a.shape, a.name);
}

// gru_backward: grad_output, output (T,B,H); grad_hy (L,B,H); saved (L,T,B,4H)
// = [r | z | n | gh_n]; hiddens (L-1,T,B,H).
inline void check_gru_backward_args(const RnnSizes& s, const at::Tensor& input,
                                    const at::Tensor& grad_output, const at::Tensor& grad_hy,
                                    const at::Tensor& output, const at::Tensor& saved,
                                    const at::Tensor& hiddens) {
  const char* op = "fusedrnn.gru_backward";
  TORCH_CHECK(saved.dim() == 4 && hiddens.dim() == 4,
              op, ": saved and hiddens must be the ones gru_forward returns with "
              "train=True (4-D), got shapes ", saved.sizes(), " and ", hiddens.sizes(),
              "; call gru_forward with train=True to keep what backward needs");
  check_saved_args(op, input, {
      {&grad_output, "grad_output", {s.T, s.B, s.H}},
      {&grad_hy, "grad_hy", {s.L, s.B, s.H}},
      {&output, "output", {s.T, s.B, s.H}},
      {&saved, "saved (from gru_forward with train=True)", {s.L, s.T, s.B, 4 * s.H}},
      {&hiddens, "hiddens (from gru_forward with train=True)", {s.L - 1, s.T, s.B, s.H}},
  });
}

// rnn_backward: grad_output, output (T,B,H); grad_hy (L,B,H); hiddens (L-1,T,B,H).
inline void check_rnn_backward_args(const RnnSizes& s, const at::Tensor& input,
                                    const at::Tensor& grad_output, const at::Tensor& grad_hy,
                                    const at::Tensor& output, const at::Tensor& hiddens) {
  const char* op = "fusedrnn.rnn_backward";
  TORCH_CHECK(hiddens.dim() == 4,
              op, ": hiddens must be the one rnn_forward returns with train=True "
              "(shape (L-1, T, B, H)), got shape ", hiddens.sizes(),
              "; call rnn_forward with train=True to keep what backward needs");
  check_saved_args(op, input, {
      {&grad_output, "grad_output", {s.T, s.B, s.H}},
      {&grad_hy, "grad_hy", {s.L, s.B, s.H}},
      {&output, "output", {s.T, s.B, s.H}},
      {&hiddens, "hiddens (from rnn_forward with train=True)", {s.L - 1, s.T, s.B, s.H}},
  });
}

}  // namespace fusedrnn
