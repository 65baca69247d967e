// Argument checks shared by every fusedrnn op (LSTM, GRU, RNN) and backend.
//
// Each check is a full sentence that names the op, the argument and the
// expected vs actual value, so a bad call is a Python RuntimeError, never a
// crash or an out-of-bounds access.  lstm_checks.h wraps these for the LSTM
// (keeping its historical function names); the GRU and RNN ops call
// check_stack_args / check_gru_backward_args / check_rnn_backward_args.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <array>
#include <optional>
#include <initializer_list>
#include <string>
#include <vector>

namespace fusedrnn {

// Where each timestep's rows live.  Every op works on a row space of N rows:
//   padded input (T, B, I):  step t is rows [t*B, t*B + B)          (N = T*B)
//   packed input (N, I) with batch_sizes (T,) — PackedSequence's layout, the
//   sequences sorted by decreasing length: step t is rows
//   [off[t], off[t] + bs[t]), and row off[t] + b belongs to sequence b.
// bs is non-increasing with bs[0] = B, so at every step the active sequences
// are a prefix 0..bs[t]-1 of the batch, and their previous states are the
// first bs[t] rows of step t-1.  Sequence b's last step is the t with
// bs[t+1] <= b < bs[t] (bs[T] = 0): ended(t) gives that range.
struct SeqLayout {
  int64_t T = 0, B = 0, N = 0;
  bool packed = false;
  std::vector<int64_t> bs, off;  // bs[t], off[t] for t < T; off[T] = N

  int64_t rows(int64_t t) const { return bs[t]; }
  int64_t offset(int64_t t) const { return off[t]; }
  // Sequences whose last step is t: [ended_begin(t), rows(t)).
  int64_t ended_begin(int64_t t) const { return t + 1 < T ? bs[t + 1] : 0; }
};

// Sizes of one stacked-RNN call.
struct RnnSizes {
  int64_t T, B, I, H, L;
  int64_t D = 1;      // directions: 2 for a bidirectional stack (see ops.cpp)
  int64_t P;          // size of h (and of the output): H, or the LSTM's proj_size
  bool has_proj;      // P != H: each layer has a w_hr (P, H) after its biases
  int64_t per_layer;  // tensors per layer in `weights`: 4 with biases, 2 without, +1 with w_hr
  SeqLayout seq;
  // The shape of a per-row tensor with trailing size `cols`: (T, B, cols)
  // padded, (N, cols) packed; `lead` (e.g. L) is prepended when >= 0.
  std::vector<int64_t> rows_shape(int64_t cols, int64_t lead = -1) const {
    std::vector<int64_t> v;
    if (lead >= 0) v.push_back(lead);
    if (seq.packed) {
      v.push_back(seq.N);
    } else {
      v.push_back(T);
      v.push_back(B);
    }
    v.push_back(cols);
    return v;
  }
};

// Reads batch_sizes (PackedSequence's: 1-D int64 on the CPU, non-increasing,
// every entry >= 1) and fills the layout of an (N, I) packed input.
inline SeqLayout packed_layout(const char* op, const at::Tensor& input,
                               const at::Tensor& batch_sizes) {
  TORCH_CHECK(input.dim() == 2, op, ": with batch_sizes (a packed sequence), expected input "
              "of shape (N, I) (the PackedSequence's data), got ", input.dim(),
              "-D tensor of shape ", input.sizes());
  TORCH_CHECK(batch_sizes.dim() == 1 && batch_sizes.scalar_type() == at::kLong &&
                  batch_sizes.device().is_cpu(),
              op, ": expected batch_sizes to be a 1-D int64 CPU tensor (as in a "
              "PackedSequence), got a ", batch_sizes.dim(), "-D ", batch_sizes.scalar_type(),
              " tensor on ", batch_sizes.device());
  SeqLayout q;
  q.packed = true;
  q.T = batch_sizes.size(0);
  const at::Tensor bsc = batch_sizes.contiguous();
  const int64_t* p = bsc.data_ptr<int64_t>();
  q.bs.assign(p, p + q.T);
  q.off.resize(q.T + 1);
  int64_t n = 0;
  for (int64_t t = 0; t < q.T; ++t) {
    TORCH_CHECK(q.bs[t] >= 1, op, ": batch_sizes[", t, "] is ", q.bs[t],
                "; every step of a packed sequence must hold at least one row");
    TORCH_CHECK(t == 0 || q.bs[t] <= q.bs[t - 1], op, ": batch_sizes must be non-increasing "
                "(sequences sorted by decreasing length), but batch_sizes[", t, "] = ", q.bs[t],
                " > batch_sizes[", t - 1, "] = ", q.bs[t - 1]);
    q.off[t] = n;
    n += q.bs[t];
  }
  q.off[q.T] = n;
  q.N = n;
  q.B = q.T > 0 ? q.bs[0] : 0;
  TORCH_CHECK(input.size(0) == n, op, ": input has ", input.size(0), " rows but batch_sizes "
              "sums to ", n, "; input must be the PackedSequence's data");
  return q;
}

inline SeqLayout padded_layout(int64_t T, int64_t B) {
  SeqLayout q;
  q.T = T;
  q.B = B;
  q.N = T * B;
  q.bs.assign(T, B);
  q.off.resize(T + 1);
  for (int64_t t = 0; t <= T; ++t) q.off[t] = t * B;
  return q;
}

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
//   input (T, B, I); hx and every extra state (D*L, B, H); weights per layer
//   and direction w_ih (gates*H, I or D*H), w_hh (gates*H, H), then b_ih, b_hh
//   (gates*H).  With batch_sizes (a packed sequence) input is (N, I) instead;
//   see SeqLayout.  D = `directions` (1, or 2 for a bidirectional stack).
inline RnnSizes check_stack_args(const char* op, int64_t gates, const at::Tensor& input,
                                 const at::Tensor& hx,
                                 std::initializer_list<NamedState> extra_states,
                                 at::TensorList weights, bool has_biases,
                                 const std::optional<at::Tensor>& batch_sizes = std::nullopt,
                                 bool allow_proj = false, int64_t directions = 1) {
  RnnSizes s;
  TORCH_CHECK(directions == 1 || directions == 2, op, ": expected directions to be 1 or 2 "
              "(2 for a bidirectional stack), got ", directions);
  s.D = directions;
  if (batch_sizes.has_value()) {
    s.seq = packed_layout(op, input, *batch_sizes);
  } else {
    TORCH_CHECK(input.dim() == 3, op, ": expected input of shape (T, B, I), got ",
                input.dim(), "-D tensor of shape ", input.sizes());
    s.seq = padded_layout(input.size(0), input.size(1));
  }
  TORCH_CHECK(at::isFloatingType(input.scalar_type()),
              op, ": input must be a floating-point tensor, got ", input.scalar_type());
  // w_hh_l0 is (gates*H, P): P = H, or the LSTM's proj_size (P < H), in which
  // case each layer carries a fifth weight, w_hr (P, H).
  TORCH_CHECK(weights.size() >= 2 && weights[1].dim() == 2 && weights[1].size(0) % gates == 0,
              op, ": expected weights[1] (w_hh_l0) of shape (",
              gates == 1 ? std::string("H") : std::to_string(gates) + "*H", ", H), got ",
              weights.size() >= 2 ? weights[1].sizes() : at::IntArrayRef{});
  s.H = weights[1].size(0) / gates;
  s.P = weights[1].size(1);
  s.has_proj = s.P != s.H;
  const std::string rows = gates == 1 ? std::string("H") : std::to_string(gates) + "*H";
  TORCH_CHECK(!s.has_proj || (allow_proj && s.P < s.H),
              op, ": expected weights[1] (w_hh_l0) of shape (", rows, ", H)",
              allow_proj ? " or, with a projection, (4*H, P) with P < H" : "", ", got ",
              weights[1].sizes());
  s.per_layer = (has_biases ? 4 : 2) + (s.has_proj ? 1 : 0);
  TORCH_CHECK(!weights.empty() && weights.size() % (s.per_layer * s.D) == 0,
              op, ": expected weights to hold ", s.per_layer,
              " tensors per layer", s.D == 2 ? " and direction" : "", " (w_ih, w_hh",
              has_biases ? ", b_ih, b_hh" : "", s.has_proj ? ", w_hr" : "", "), got ",
              weights.size(), " tensors");
  s.L = static_cast<int64_t>(weights.size()) / (s.per_layer * s.D);
  s.T = s.seq.T;
  s.B = s.seq.B;
  s.I = input.size(-1);
  const int64_t H = s.H, P = s.P, GH = gates * H;
  check_same(op, hx, input, "hx");
  for (const auto& st : extra_states) check_same(op, *st.t, input, st.name);
  check_shape(op, hx, {s.D * s.L, s.B, P}, "hx (h0)");
  for (const auto& st : extra_states) check_shape(op, *st.t, {s.D * s.L, s.B, H}, st.label);
  static const char* names[5] = {"w_ih", "w_hh", "b_ih", "b_hh", "w_hr"};
  for (int64_t ld = 0; ld < s.L * s.D; ++ld) {
    const int64_t l = ld / s.D;
    for (int64_t k = 0; k < s.per_layer; ++k) {
      const int64_t kind = (s.has_proj && k == s.per_layer - 1) ? 4 : k;
      const at::Tensor& w = weights[ld * s.per_layer + k];
      const std::string name = std::string(names[kind]) + "_l" + std::to_string(l) +
                               (ld % s.D == 1 ? "_reverse" : "");
      check_same(op, w, input, name.c_str());
      if (kind == 0) {
        check_shape(op, w, {GH, l == 0 ? s.I : s.D * P}, name.c_str());
      } else if (kind == 1) {
        check_shape(op, w, {GH, P}, name.c_str());
      } else if (kind == 4) {
        check_shape(op, w, {P, H}, name.c_str());
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

// The saved activations of a train=True forward, as the ops return them.
inline void check_train_saved(const char* op, const char* fwd, const at::Tensor& saved,
                              const RnnSizes& s) {
  TORCH_CHECK(saved.dim() == (s.seq.packed ? 3 : 4), op, ": the saved activations must be the "
              "ones ", fwd, " returns with train=True, got shape ", saved.sizes(), "; call ",
              fwd, " with train=True to keep what backward needs");
}

// gru_backward: grad_output, output (T,B,D*H); grad_hy (D*L,B,H); saved
// (D*L,T,B,4H) = [r | z | n | gh_n]; hiddens (L-1,T,B,D*H).
inline void check_gru_backward_args(const RnnSizes& s, const at::Tensor& input,
                                    const at::Tensor& grad_output, const at::Tensor& grad_hy,
                                    const at::Tensor& output, const at::Tensor& saved,
                                    const at::Tensor& hiddens) {
  const char* op = "fusedrnn.gru_backward";
  check_train_saved(op, "gru_forward", saved, s);
  check_train_saved(op, "gru_forward", hiddens, s);
  check_saved_args(op, input, {
      {&grad_output, "grad_output", s.rows_shape(s.D * s.H)},
      {&grad_hy, "grad_hy", {s.D * s.L, s.B, s.H}},
      {&output, "output", s.rows_shape(s.D * s.H)},
      {&saved, "saved (from gru_forward with train=True)", s.rows_shape(4 * s.H, s.D * s.L)},
      {&hiddens, "hiddens (from gru_forward with train=True)",
       s.rows_shape(s.D * s.H, s.L - 1)},
  });
}

// rnn_backward: grad_output, output (T,B,D*H); grad_hy (D*L,B,H); hiddens
// (L-1,T,B,D*H).
inline void check_rnn_backward_args(const RnnSizes& s, const at::Tensor& input,
                                    const at::Tensor& grad_output, const at::Tensor& grad_hy,
                                    const at::Tensor& output, const at::Tensor& hiddens) {
  const char* op = "fusedrnn.rnn_backward";
  check_train_saved(op, "rnn_forward", hiddens, s);
  check_saved_args(op, input, {
      {&grad_output, "grad_output", s.rows_shape(s.D * s.H)},
      {&grad_hy, "grad_hy", {s.D * s.L, s.B, s.H}},
      {&output, "output", s.rows_shape(s.D * s.H)},
      {&hiddens, "hiddens (from rnn_forward with train=True)",
       s.rows_shape(s.D * s.H, s.L - 1)},
  });
}

// The backward ops' output_mask (ops.cpp): which gradients the caller wants,
// [input, initial states (hx, and cx for the LSTM), weights].  A backend may
// skip the work of a gradient left out (the layer-0 input GEMM, the h0
// GEMMs, every weight/bias GEMM and reduction); whatever it computed,
// finish_masked then returns each left-out gradient as an empty (0,) tensor
// (grad_weights: an empty list), so every backend keeps the same contract.
struct GradMask {
  bool input = true, states = true, weights = true;
  GradMask() = default;
  explicit GradMask(std::array<bool, 3> m) : input(m[0]), states(m[1]), weights(m[2]) {}
  std::array<bool, 3> array() const { return {input, states, weights}; }
  bool all() const { return input && states && weights; }
};

inline void finish_masked(const GradMask& m, const at::TensorOptions& opts,
                          at::Tensor& grad_input, c10::ArrayRef<at::Tensor*> grad_states,
                          std::vector<at::Tensor>& grad_w) {
  if (m.all()) return;
  if (!m.input) grad_input = at::empty({0}, opts);
  if (!m.states)
    for (at::Tensor* t : grad_states) *t = at::empty({0}, opts);
  if (!m.weights) grad_w.clear();
}

}  // namespace fusedrnn
