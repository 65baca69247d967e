// Bidirectional stacks (directions = 2; the contract is in ops.cpp), for
// every cell and backend, on top of the one-direction op.
//
// Forward, layer by layer: the forward direction is the one-direction op on
// the layer's input x with the layer's first weight group; the reverse
// direction the same op on x reversed in time (each sequence within its own
// length when packed: a gather with reverse_row_order, which keeps the packed
// layout) with the `_reverse` group, its output reversed back; the layer's
// output is both concatenated, [forward | reverse], and is the next layer's
// input.  The reverse direction's saved activations stay in its processing
// order, which is what its backward call reads.  Backward is the same walk
// from the top layer down, each direction's backward op on its half of the
// output gradient (reversed for the reverse direction), the two input
// gradients summed.
//
// The one-direction calls go through the dispatcher below the Autograd key
// (the backend kernels run inside the Autograd kernel's
// AutoDispatchBelowADInplaceOrView), so each picks its own tier as a
// one-direction call would, e.g. the persistent CUDA kernel for one layer.
// Saving the Python of the layer-by-layer loop is the gain over doing this in
// the module; the CUDA tier that runs both directions of a layer in one launch
// per step is in lstm_cuda.cu / gru_rnn_cuda.cu, which call these functions
// where it does not apply.
#include "bidirectional.h"

#include "cpu/products.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <functional>

namespace fusedrnn {

using at::Tensor;
using at::TensorList;
using OptTensor = std::optional<Tensor>;

std::vector<int64_t> reverse_row_order(const SeqLayout& q) {
  std::vector<int64_t> perm(q.N);
  // len[b]: the length of sequence b (the number of steps with bs[t] > b).
  std::vector<int64_t> len(q.B, 0);
  for (int64_t t = 0; t < q.T; ++t)
    for (int64_t b = 0; b < q.bs[t]; ++b) len[b] = t + 1;
  for (int64_t t = 0; t < q.T; ++t)
    for (int64_t b = 0; b < q.bs[t]; ++b) perm[q.off[t] + b] = q.off[len[b] - 1 - t] + b;
  return perm;
}

RowReverser::RowReverser(const SeqLayout& q, const at::Device& device) : packed(q.packed) {
  if (packed) {
    const std::vector<int64_t> p = reverse_row_order(q);
    perm = at::tensor(p, at::TensorOptions().dtype(at::kLong)).to(device);
  }
}

Tensor RowReverser::operator()(const Tensor& t) const {
  return packed ? t.index_select(0, perm) : t.flip(0);
}

PairLayer::PairLayer(const RnnSizes& s_, const Tensor& input)
    : s(s_), rev(s_.seq, input.device()) {}

Tensor PairLayer::reversed(const Tensor& rows) const {
  const int64_t cols = rows.size(-1);
  return rev(rows.reshape(s.rows_shape(cols))).reshape({s.seq.N, cols});
}

void PairLayer::input_projections(const Tensor& x, const std::vector<Tensor>& w, int64_t l,
                                  bool has_biases, bool fold_b_hh, Tensor& gx) const {
  const Tensor xr = reversed(x);
  for (int64_t d = 0; d < 2; ++d) {
    const Tensor* wl = &w[(2 * l + d) * s.per_layer];
    Tensor g = gx[d];
    const Tensor bias = has_biases ? (fold_b_hh ? wl[2] + wl[3] : wl[2]) : Tensor();
    cpu::product_into(g, d == 0 ? x : xr, wl[0].t(), false, has_biases ? &bias : nullptr);
  }
}

void PairLayer::write_output(const Tensor& outs, Tensor& y) const {
  const int64_t N = s.seq.N, H = outs.size(-1);
  Tensor y2 = y.view({N, 2 * H});
  y2.narrow(1, 0, H).copy_(outs[0]);
  y2.narrow(1, H, H).copy_(reversed(outs[1]));
}

void PairLayer::split_output(const Tensor& y, Tensor& outs) const {
  const int64_t H = outs.size(-1);
  outs[0].copy_(y.narrow(1, 0, H));
  outs[1].copy_(reversed(y.narrow(1, H, H)));
}

Tensor PairLayer::layer_output(int64_t l, bool train, const Tensor& output,
                               const Tensor& hiddens) const {
  if (l == s.L - 1) return output;
  return train ? hiddens[l] : at::empty(output.sizes(), output.options());
}

Tensor PairLayer::input_grad(Tensor dx0, const Tensor& dx1) const {
  return dx0.add_(reversed(dx1));
}

namespace {

template <typename Sig>
c10::TypedOperatorHandle<Sig> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

// One direction of one layer: its output (in its processing order), final
// states (each (1, B, ·)) and saved activations (each (1, rows, ·), or (0,)).
struct DirForward {
  Tensor out;
  std::vector<Tensor> finals, saved;
};

struct StackForward {
  Tensor output, hiddens;
  std::vector<Tensor> finals, saved;  // each (2L, ·), in (layer, direction) order
};

// run(x, k): the one-direction op on x for (layer, direction) index k.
StackForward forward_stack(const RnnSizes& s, const Tensor& input, bool train, size_t n_finals,
                           size_t n_saved,
                           const std::function<DirForward(const Tensor&, int64_t)>& run) {
  const RowReverser rev(s.seq, input.device());
  std::vector<std::vector<Tensor>> finals(n_finals), saved(n_saved);
  std::vector<Tensor> inner;  // train: the output of every layer but the last
  Tensor x = input;
  for (int64_t l = 0; l < s.L; ++l) {
    const DirForward f = run(x, 2 * l);
    const DirForward r = run(rev(x), 2 * l + 1);
    for (size_t i = 0; i < n_finals; ++i) {
      finals[i].push_back(f.finals[i]);
      finals[i].push_back(r.finals[i]);
    }
    for (size_t i = 0; train && i < n_saved; ++i) {
      saved[i].push_back(f.saved[i]);
      saved[i].push_back(r.saved[i]);
    }
    x = at::cat({f.out, rev(r.out)}, -1);
    if (train && l + 1 < s.L) inner.push_back(x);
  }
  StackForward res;
  res.output = x;
  const auto opts = input.options();
  for (auto& f : finals) res.finals.push_back(at::cat(f, 0));
  for (auto& v : saved) res.saved.push_back(train ? at::cat(v, 0) : at::empty({0}, opts));
  const int64_t width = x.size(-1);
  if (!train) {
    res.hiddens = at::empty({0}, opts);
  } else if (inner.empty()) {
    res.hiddens = at::empty(s.rows_shape(width, 0), opts);
  } else {
    res.hiddens = at::stack(inner, 0);
  }
  return res;
}

// One direction of one layer's backward: the gradient of its input, of its
// initial states (each (1, B, ·)) and of its weights.
struct DirBackward {
  Tensor grad_input;
  std::vector<Tensor> grad_states, grad_w;
};

struct StackBackward {
  Tensor grad_input;
  std::vector<Tensor> grad_states;  // each (2L, B, ·)
  std::vector<Tensor> grad_w;
};

// run(dy, x, out, k, m): the one-direction backward op for (layer, direction)
// index k, given the gradient of its output dy, its input x and its output
// `out`, all in its processing order, and its output_mask m (the op's, but
// with the input gradient of every layer above the first, which is the next
// layer's dy).  The gradients it returns follow `mask` (finish_masked).
StackBackward backward_stack(
    const RnnSizes& s, const Tensor& grad_output, const Tensor& input, const Tensor& output,
    const Tensor& hiddens, size_t n_states, const GradMask& mask,
    const std::function<DirBackward(const Tensor&, const Tensor&, const Tensor&, int64_t,
                                    std::array<bool, 3>)>& run) {
  const RowReverser rev(s.seq, input.device());
  const int64_t P = output.size(-1) / 2;
  std::vector<std::vector<Tensor>> states(n_states, std::vector<Tensor>(2 * s.L));
  StackBackward res;
  res.grad_w.resize(2 * s.L * s.per_layer);
  Tensor dy = grad_output;
  for (int64_t l = s.L - 1; l >= 0; --l) {
    const Tensor x = l == 0 ? input : hiddens[l - 1];
    const Tensor y = l == s.L - 1 ? output : hiddens[l];
    GradMask m = mask;
    m.input = l > 0 || mask.input;
    DirBackward f = run(dy.narrow(-1, 0, P), x, y.narrow(-1, 0, P), 2 * l, m.array());
    DirBackward r =
        run(rev(dy.narrow(-1, P, P)), rev(x), rev(y.narrow(-1, P, P)), 2 * l + 1, m.array());
    for (int d = 0; d < 2; ++d) {
      DirBackward& g = d == 0 ? f : r;
      const int64_t k = 2 * l + d;
      for (size_t i = 0; i < n_states; ++i) states[i][k] = g.grad_states[i];
      for (int64_t j = 0; mask.weights && j < s.per_layer; ++j)
        res.grad_w[k * s.per_layer + j] = g.grad_w[j];
    }
    // The op's grad_input is a fresh tensor, ours to add into.
    dy = m.input ? f.grad_input.add_(rev(r.grad_input)) : Tensor();
  }
  res.grad_input = dy;
  std::vector<Tensor*> state_ptrs;
  for (auto& v : states) res.grad_states.push_back(mask.states ? at::cat(v, 0) : Tensor());
  for (Tensor& t : res.grad_states) state_ptrs.push_back(&t);
  finish_masked(mask, input.options(), res.grad_input, state_ptrs, res.grad_w);
  return res;
}

TensorList group(TensorList weights, const RnnSizes& s, int64_t k) {
  return weights.slice(k * s.per_layer, s.per_layer);
}

Tensor one(const Tensor& t, int64_t k) { return t.narrow(0, k, 1); }

// The one-direction call's hiddens of a single layer: (0, rows, width).
Tensor no_hiddens(const RnnSizes& s, int64_t width, const Tensor& like) {
  return at::empty(s.rows_shape(width, 0), like.options());
}

}  // namespace

// ----------------------------------------------------------------- LSTM --

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward_bidirectional(
    const RnnSizes& s, const Tensor& input, const Tensor& hx, const Tensor& cx,
    TensorList weights, bool has_biases, bool train, const OptTensor& batch_sizes) {
  using Sig = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(
      const Tensor&, const Tensor&, const Tensor&, TensorList, bool, bool, const OptTensor&,
      int64_t);
  static const auto op = find_op<Sig>("fusedrnn::lstm_forward");
  StackForward r = forward_stack(s, input, train, 2, 2, [&](const Tensor& x, int64_t k) {
    auto [out, hy, cy, gates, cells, hiddens] = op.call(
        x, one(hx, k), one(cx, k), group(weights, s, k), has_biases, train, batch_sizes, 1);
    return DirForward{out, {hy, cy}, {gates, cells}};
  });
  return {r.output, r.finals[0], r.finals[1], r.saved[0], r.saved[1], r.hiddens};
}

std::tuple<Tensor, Tensor, Tensor, std::vector<Tensor>> lstm_backward_bidirectional(
    const RnnSizes& s, const Tensor& grad_output, const Tensor& grad_hy, const Tensor& grad_cy,
    const Tensor& input, const Tensor& hx, const Tensor& cx, TensorList weights,
    bool has_biases, const Tensor& output, const Tensor& gates, const Tensor& cells,
    const Tensor& hiddens, const OptTensor& batch_sizes, const GradMask& mask) {
  using Sig = std::tuple<Tensor, Tensor, Tensor, std::vector<Tensor>>(
      const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
      TensorList, bool, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
      const OptTensor&, int64_t, std::array<bool, 3>);
  static const auto op = find_op<Sig>("fusedrnn::lstm_backward");
  const Tensor none = no_hiddens(s, s.P, input);
  StackBackward r = backward_stack(
      s, grad_output, input, output, hiddens, 2, mask,
      [&](const Tensor& dy, const Tensor& x, const Tensor& out, int64_t k,
          std::array<bool, 3> m) {
        auto [gi, ghx, gcx, gw] =
            op.call(dy, one(grad_hy, k), one(grad_cy, k), x, one(hx, k), one(cx, k),
                    group(weights, s, k), has_biases, out, one(gates, k), one(cells, k), none,
                    batch_sizes, 1, m);
        return DirBackward{gi, {ghx, gcx}, gw};
      });
  return {r.grad_input, r.grad_states[0], r.grad_states[1], r.grad_w};
}

// ------------------------------------------------------------------ GRU --

std::tuple<Tensor, Tensor, Tensor, Tensor> gru_forward_bidirectional(
    const RnnSizes& s, const Tensor& input, const Tensor& hx, TensorList weights,
    bool has_biases, bool train, const OptTensor& batch_sizes) {
  using Sig = std::tuple<Tensor, Tensor, Tensor, Tensor>(
      const Tensor&, const Tensor&, TensorList, bool, bool, const OptTensor&, int64_t);
  static const auto op = find_op<Sig>("fusedrnn::gru_forward");
  StackForward r = forward_stack(s, input, train, 1, 1, [&](const Tensor& x, int64_t k) {
    auto [out, hy, saved, hiddens] =
        op.call(x, one(hx, k), group(weights, s, k), has_biases, train, batch_sizes, 1);
    return DirForward{out, {hy}, {saved}};
  });
  return {r.output, r.finals[0], r.saved[0], r.hiddens};
}

std::tuple<Tensor, Tensor, std::vector<Tensor>> gru_backward_bidirectional(
    const RnnSizes& s, const Tensor& grad_output, const Tensor& grad_hy, const Tensor& input,
    const Tensor& hx, TensorList weights, bool has_biases, const Tensor& output,
    const Tensor& saved, const Tensor& hiddens, const OptTensor& batch_sizes,
    const GradMask& mask) {
  using Sig = std::tuple<Tensor, Tensor, std::vector<Tensor>>(
      const Tensor&, const Tensor&, const Tensor&, const Tensor&, TensorList, bool,
      const Tensor&, const Tensor&, const Tensor&, const OptTensor&, int64_t,
      std::array<bool, 3>);
  static const auto op = find_op<Sig>("fusedrnn::gru_backward");
  const Tensor none = no_hiddens(s, s.H, input);
  StackBackward r = backward_stack(
      s, grad_output, input, output, hiddens, 1, mask,
      [&](const Tensor& dy, const Tensor& x, const Tensor& out, int64_t k,
          std::array<bool, 3> m) {
        auto [gi, ghx, gw] = op.call(dy, one(grad_hy, k), x, one(hx, k), group(weights, s, k),
                                     has_biases, out, one(saved, k), none, batch_sizes, 1, m);
        return DirBackward{gi, {ghx}, gw};
      });
  return {r.grad_input, r.grad_states[0], r.grad_w};
}

// ------------------------------------------------------------------ RNN --

std::tuple<Tensor, Tensor, Tensor> rnn_forward_bidirectional(
    const RnnSizes& s, const Tensor& input, const Tensor& hx, TensorList weights,
    bool has_biases, bool relu, bool train, const OptTensor& batch_sizes) {
  using Sig = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, TensorList, bool,
                                                 bool, bool, const OptTensor&, int64_t);
  static const auto op = find_op<Sig>("fusedrnn::rnn_forward");
  StackForward r = forward_stack(s, input, train, 1, 0, [&](const Tensor& x, int64_t k) {
    auto [out, hy, hiddens] =
        op.call(x, one(hx, k), group(weights, s, k), has_biases, relu, train, batch_sizes, 1);
    return DirForward{out, {hy}, {}};
  });
  return {r.output, r.finals[0], r.hiddens};
}

std::tuple<Tensor, Tensor, std::vector<Tensor>> rnn_backward_bidirectional(
    const RnnSizes& s, const Tensor& grad_output, const Tensor& grad_hy, const Tensor& input,
    const Tensor& hx, TensorList weights, bool has_biases, bool relu, const Tensor& output,
    const Tensor& hiddens, const OptTensor& batch_sizes, const GradMask& mask) {
  using Sig = std::tuple<Tensor, Tensor, std::vector<Tensor>>(
      const Tensor&, const Tensor&, const Tensor&, const Tensor&, TensorList, bool, bool,
      const Tensor&, const Tensor&, const OptTensor&, int64_t, std::array<bool, 3>);
  static const auto op = find_op<Sig>("fusedrnn::rnn_backward");
  const Tensor none = no_hiddens(s, s.H, input);
  StackBackward r = backward_stack(
      s, grad_output, input, output, hiddens, 1, mask,
      [&](const Tensor& dy, const Tensor& x, const Tensor& out, int64_t k,
          std::array<bool, 3> m) {
        auto [gi, ghx, gw] = op.call(dy, one(grad_hy, k), x, one(hx, k), group(weights, s, k),
                                     has_biases, relu, out, none, batch_sizes, 1, m);
        return DirBackward{gi, {ghx}, gw};
      });
  return {r.grad_input, r.grad_states[0], r.grad_w};
}

}  // namespace fusedrnn
