// Bidirectional stacks (directions = 2, see ops.cpp) for every op and backend,
// built on the one-direction op: each backend's kernel function calls these
// right after its argument checks when s.D == 2.  (csrc/bidirectional.cpp)
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>
#include <vector>

#include "rnn_checks.h"

namespace fusedrnn {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
lstm_forward_bidirectional(const RnnSizes& s, const at::Tensor& input, const at::Tensor& hx,
                           const at::Tensor& cx, at::TensorList weights, bool has_biases,
                           bool train, const std::optional<at::Tensor>& batch_sizes);

std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>>
lstm_backward_bidirectional(const RnnSizes& s, const at::Tensor& grad_output,
                            const at::Tensor& grad_hy, const at::Tensor& grad_cy,
                            const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx,
                            at::TensorList weights, bool has_biases, const at::Tensor& output,
                            const at::Tensor& gates, const at::Tensor& cells,
                            const at::Tensor& hiddens,
                            const std::optional<at::Tensor>& batch_sizes, const GradMask& mask);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_forward_bidirectional(
    const RnnSizes& s, const at::Tensor& input, const at::Tensor& hx, at::TensorList weights,
    bool has_biases, bool train, const std::optional<at::Tensor>& batch_sizes);

std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> gru_backward_bidirectional(
    const RnnSizes& s, const at::Tensor& grad_output, const at::Tensor& grad_hy,
    const at::Tensor& input, const at::Tensor& hx, at::TensorList weights, bool has_biases,
    const at::Tensor& output, const at::Tensor& saved, const at::Tensor& hiddens,
    const std::optional<at::Tensor>& batch_sizes, const GradMask& mask);

std::tuple<at::Tensor, at::Tensor, at::Tensor> rnn_forward_bidirectional(
    const RnnSizes& s, const at::Tensor& input, const at::Tensor& hx, at::TensorList weights,
    bool has_biases, bool relu, bool train, const std::optional<at::Tensor>& batch_sizes);

std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> rnn_backward_bidirectional(
    const RnnSizes& s, const at::Tensor& grad_output, const at::Tensor& grad_hy,
    const at::Tensor& input, const at::Tensor& hx, at::TensorList weights, bool has_biases,
    bool relu, const at::Tensor& output, const at::Tensor& hiddens,
    const std::optional<at::Tensor>& batch_sizes, const GradMask& mask);

// The row permutation that reverses every sequence of layout q in time
// (row off[t] + b <-> row off[len_b - 1 - t] + b); an involution.
std::vector<int64_t> reverse_row_order(const SeqLayout& q);

// Reverses every sequence of a per-row tensor ((T, B, X) padded: a flip of
// dim 0; (N, X) packed: a gather by reverse_row_order, which keeps the packed
// layout).  Used by the composite below and the CUDA tier's one-launch
// bidirectional layers.
struct RowReverser {
  bool packed;
  at::Tensor perm;  // packed: reverse_row_order, on the tensors' device

  RowReverser(const SeqLayout& q, const at::Device& device);
  at::Tensor operator()(const at::Tensor& t) const;
};

// What the CUDA tier's one-launch bidirectional loops (every cell) share
// around their step kernels: each direction's rows are kept in its own
// processing order (the reverse direction's sequences reversed), in
// (2, N, ·) buffers.
struct PairLayer {
  const RnnSizes& s;
  RowReverser rev;
  PairLayer(const RnnSizes& s_, const at::Tensor& input);
  // (N, cols) rows of a per-row tensor, every sequence reversed in time.
  at::Tensor reversed(const at::Tensor& rows) const;
  // Both directions' input projections of layer l's input rows x (N, I_l)
  // into gx (2, N, G): x W_ihᵀ + b_ih (+ b_hh when fold_b_hh), the reverse
  // direction's over the reversed rows.  w: the op's weights (s.per_layer
  // per layer and direction).
  void input_projections(const at::Tensor& x, const std::vector<at::Tensor>& w, int64_t l,
                         bool has_biases, bool fold_b_hh, at::Tensor& gx) const;
  // The layer's output y ([forward | reverse in time order], N x 2H rows)
  // from both directions' rows in processing order, outs (2, N, H).
  void write_output(const at::Tensor& outs, at::Tensor& y) const;
  // The reverse: y (N, 2H) split into outs (2, N, H), processing order.
  void split_output(const at::Tensor& y, at::Tensor& outs) const;
  // Where layer l writes its output: `output` (the last layer), hiddens[l]
  // (train), else a new buffer.
  at::Tensor layer_output(int64_t l, bool train, const at::Tensor& output,
                          const at::Tensor& hiddens) const;
  // The layer's input gradient from each direction's dX in its processing
  // order: dx0 + reversed(dx1) (into dx0, which must be ours).
  at::Tensor input_grad(at::Tensor dx0, const at::Tensor& dx1) const;
};

}  // namespace fusedrnn
