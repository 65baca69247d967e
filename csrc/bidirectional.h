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
                            const std::optional<at::Tensor>& batch_sizes);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_forward_bidirectional(
    const RnnSizes& s, const at::Tensor& input, const at::Tensor& hx, at::TensorList weights,
    bool has_biases, bool train, const std::optional<at::Tensor>& batch_sizes);

std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> gru_backward_bidirectional(
    const RnnSizes& s, const at::Tensor& grad_output, const at::Tensor& grad_hy,
    const at::Tensor& input, const at::Tensor& hx, at::TensorList weights, bool has_biases,
    const at::Tensor& output, const at::Tensor& saved, const at::Tensor& hiddens,
    const std::optional<at::Tensor>& batch_sizes);

std::tuple<at::Tensor, at::Tensor, at::Tensor> rnn_forward_bidirectional(
    const RnnSizes& s, const at::Tensor& input, const at::Tensor& hx, at::TensorList weights,
    bool has_biases, bool relu, bool train, const std::optional<at::Tensor>& batch_sizes);

std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> rnn_backward_bidirectional(
    const RnnSizes& s, const at::Tensor& grad_output, const at::Tensor& grad_hy,
    const at::Tensor& input, const at::Tensor& hx, at::TensorList weights, bool has_biases,
    bool relu, const at::Tensor& output, const at::Tensor& hiddens,
    const std::optional<at::Tensor>& batch_sizes);

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

}  // namespace fusedrnn
