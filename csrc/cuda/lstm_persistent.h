// The persistent wavefront tier of the CUDA LSTM (csrc/cuda/lstm_persistent.cu),
// as the general tier (lstm_cuda.cu) calls it: at the top of each op, after
// the argument checks,
//     if (auto r = persistent_lstm_forward_if_selected(s, ...)) return *r;
// runs the persistent tier when the option "cuda_tier" and the planner
// (persistent_plan.h) select it, and otherwise returns std::nullopt so that
// the general tier runs.  Forcing the tier (cuda_tier = persistent) on sizes
// or arguments it does not support raises a clear error here.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>
#include <vector>

#include "lstm_checks.h"

namespace fusedrnn {

using LstmForwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                     at::Tensor, at::Tensor>;
using LstmBackwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor,
                                      std::vector<at::Tensor>>;

// `s` is what check_lstm_args returned for these arguments.
std::optional<LstmForwardResult> persistent_lstm_forward_if_selected(
    const LstmSizes& s, const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx,
    at::TensorList weights, bool has_biases, bool train);

// The reverse wavefront: selected like the forward (its own plan: the staged
// rows are 4x longer).  It consumes the saved gates/cells/hiddens of either
// tier's forward (both write the same layout), so the forward and backward
// tiers may differ within one training step.
std::optional<LstmBackwardResult> persistent_lstm_backward_if_selected(
    const LstmSizes& s, const at::Tensor& grad_output, const at::Tensor& grad_hy,
    const at::Tensor& grad_cy, const at::Tensor& input, const at::Tensor& hx,
    const at::Tensor& cx, at::TensorList weights, bool has_biases, const at::Tensor& output,
    const at::Tensor& gates, const at::Tensor& cells, const at::Tensor& hiddens,
    const GradMask& mask);

// Whether the persistent tier would run one direction of one layer of the
// bidirectional stack `s` (the one-layer, one-direction op call that the
// separate path, csrc/bidirectional.cpp, makes for it), forward or backward,
// under the current options.  The bidirectional "auto" choice of lstm_cuda.cu
// runs such stacks as separate calls and all others with one launch per step.
bool persistent_lstm_runs_direction(const LstmSizes& s, const at::Tensor& input, bool backward);

}  // namespace fusedrnn
