// Autograd for the three forward ops, in C++ (the Autograd dispatch key).
//
// Each forward op (lstm_forward, gru_forward, rnn_forward) becomes
// differentiable through a torch::autograd::Function whose backward calls the
// matching backward op (lstm_backward, ...); the schemas are in ops.cpp, the
// fake (shape) implementations in fusedrnn/ops.py.
//
// Why C++ and not torch.library.register_autograd: the Python registration
// flattens and unflattens every argument with pytree and redispatches through
// Python on each call.  On the 2-core CPU VM (2026-11-23, a 1-step 2-layer
// LSTM, so the kernels cost little) that was about 95 µs of a forward with
// gradients and about 150 µs of the backward; at the sizes the persistent CUDA
// tier targets a whole call is a few hundred µs, and the host time before the
// kernel starts is part of it.
//
// Behaviour:
//  * outputs that did not reach the loss get no gradient tensor (no
//    materialised zeros); the backward op gets zeros only for output, hy, cy
//    (as the Python registration did);
//  * backward after a forward with train=False is a clear error (as before);
//  * the backward op is told, through its output_mask, which of [input,
//    initial states, weights] need a gradient (needs_input_grad), and skips
//    the work of the others (new; torch's cuDNN RNN backward does the same);
//  * the saved activations (gates/cells/hiddens, saved/hiddens) are outputs
//    of the op that autograd marks non-differentiable (new);
//  * the backward ops are not differentiable, so with create_graph=True the
//    gradients come back attached to an error node (what Python's
//    @once_differentiable does): differentiating them again raises a clear
//    error instead of failing inside a kernel's out= product (new).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/functions/basic_ops.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <tuple>
#include <vector>

namespace fusedrnn {
namespace {

using at::Tensor;
using at::TensorList;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = std::optional<Tensor>;

// The op's handle, for calling it below the Autograd key (each call site
// keeps it in a function-local static: looked up once).
template <typename Sig>
c10::TypedOperatorHandle<Sig> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

Tensor or_zeros(const Tensor& grad, const Tensor& like) {
  return grad.defined() ? grad : at::zeros_like(like, at::MemoryFormat::Contiguous);
}

void check_trained(AutogradContext* ctx, const char* op) {
  TORCH_CHECK(ctx->saved_data.at("train").toBool(), "fusedrnn.", op,
              "_forward was called with train=False, which keeps nothing for backward; call it "
              "with train=True (fusedrnn.ops.", op, " does this whenever a gradient is needed)");
}

// Saves the common bookkeeping; `tensors` go to save_for_backward.
void save(AutogradContext* ctx, bool has_biases, bool train, const OptTensor& batch_sizes,
          int64_t directions, variable_list tensors, TensorList weights) {
  ctx->set_materialize_grads(false);
  ctx->saved_data["has_biases"] = has_biases;
  ctx->saved_data["train"] = train;
  ctx->saved_data["directions"] = directions;
  ctx->saved_data["num_weights"] = static_cast<int64_t>(weights.size());
  tensors.push_back(batch_sizes.has_value() ? *batch_sizes : Tensor());
  tensors.insert(tensors.end(), weights.begin(), weights.end());
  ctx->save_for_backward(tensors);
}

int64_t directions(AutogradContext* ctx) { return ctx->saved_data.at("directions").toInt(); }

// Unpacks what save() stored: the first n tensors, then batch_sizes, then the weights.
struct Saved {
  variable_list head;
  OptTensor batch_sizes;
  std::vector<Tensor> weights;
};

Saved unpack(AutogradContext* ctx, size_t n) {
  variable_list all = ctx->get_saved_variables();
  Saved s;
  s.head.assign(all.begin(), all.begin() + n);
  if (all[n].defined()) s.batch_sizes = all[n];
  s.weights.assign(all.begin() + n + 1, all.end());
  return s;
}

// The backward op's output_mask from which inputs need a gradient: the
// input (argument 0), the initial states (arguments 1 .. n_states), the
// weights (the num_weights arguments after them).
std::array<bool, 3> output_mask(AutogradContext* ctx, size_t n_states) {
  const size_t nw = static_cast<size_t>(ctx->saved_data.at("num_weights").toInt());
  std::array<bool, 3> m{ctx->needs_input_grad(0), false, false};
  for (size_t i = 1; i <= n_states; ++i) m[1] = m[1] || ctx->needs_input_grad(i);
  for (size_t i = 0; i < nw; ++i) m[2] = m[2] || ctx->needs_input_grad(1 + n_states + i);
  return m;
}

// A gradient the mask left out comes back as an empty (0,) tensor (or, for
// the weights, an empty list): autograd wants undefined tensors instead.
Tensor unless_masked(bool wanted, const Tensor& g) { return wanted ? g : Tensor(); }

std::vector<Tensor> weight_grads(AutogradContext* ctx, std::vector<Tensor> gw) {
  gw.resize(static_cast<size_t>(ctx->saved_data.at("num_weights").toInt()));
  return gw;
}

// The gradient list autograd expects: one entry per tensor argument in order
// (the weights one each), undefined for the trailing non-tensor arguments.
// When autograd is recording the backward (create_graph=True) the gradients
// are made to raise on a second differentiation (see the top of the file).
variable_list grads_out(const char* op, std::initializer_list<Tensor> leading,
                        const std::vector<Tensor>& gw, int trailing, bool recording) {
  variable_list g(leading);
  g.insert(g.end(), gw.begin(), gw.end());
  g.resize(g.size() + trailing);
  if (!recording) return g;
  for (Tensor& t : g) {
    if (t.defined()) {
      t = t.detach();
      t.set_requires_grad(true);
    }
  }
  torch::autograd::DelayedError error(
      std::string("fusedrnn.") + op + ": the backward of the fused " + op +
          " ops is not differentiable, so a second derivative through them "
          "(backward of gradients taken with create_graph=True) is not supported",
      static_cast<int64_t>(g.size()));
  return error.apply(std::move(g));
}

}  // namespace

// The autograd functions; their nodes are named like torch's own backward
// nodes (grad_fn.name() ends in fusedrnn::FusedLstmBackward etc.).

// ----------------------------------------------------------------- LSTM --

using LstmFwdSig = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(
    const Tensor&, const Tensor&, const Tensor&, TensorList, bool, bool, const OptTensor&,
    int64_t);
using LstmBwdSig = std::tuple<Tensor, Tensor, Tensor, std::vector<Tensor>>(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
    TensorList, bool, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
    const OptTensor&, int64_t, std::array<bool, 3>);

struct FusedLstmBackward : torch::autograd::Function<FusedLstmBackward> {
  static variable_list forward(AutogradContext* ctx, const Tensor& input, const Tensor& hx,
                               const Tensor& cx, TensorList weights, bool has_biases, bool train,
                               const OptTensor& batch_sizes, int64_t directions) {
    static const auto op = find_op<LstmFwdSig>("fusedrnn::lstm_forward");
    at::AutoDispatchBelowADInplaceOrView below;
    auto [out, hy, cy, gates, cells, hiddens] =
        op.call(input, hx, cx, weights, has_biases, train, batch_sizes, directions);
    save(ctx, has_biases, train, batch_sizes, directions,
         {input, hx, cx, out, gates, cells, hiddens}, weights);
    ctx->mark_non_differentiable({gates, cells, hiddens});
    return {out, hy, cy, gates, cells, hiddens};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = find_op<LstmBwdSig>("fusedrnn::lstm_backward");
    check_trained(ctx, "lstm");
    const bool recording = at::GradMode::is_enabled();
    at::AutoGradMode no_grad(false);
    Saved s = unpack(ctx, 7);
    const Tensor &input = s.head[0], &hx = s.head[1], &cx = s.head[2], &out = s.head[3];
    const std::array<bool, 3> m = output_mask(ctx, 2);
    auto [gi, ghx, gcx, gw] =
        op.call(or_zeros(grads[0], out), or_zeros(grads[1], hx), or_zeros(grads[2], cx), input,
                hx, cx, s.weights, ctx->saved_data.at("has_biases").toBool(), out, s.head[4],
                s.head[5], s.head[6], s.batch_sizes, directions(ctx), m);
    return grads_out("lstm",
                     {unless_masked(m[0], gi), unless_masked(m[1], ghx), unless_masked(m[1], gcx)},
                     weight_grads(ctx, std::move(gw)), 4, recording);
  }
};

static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward_autograd(
    const Tensor& input, const Tensor& hx, const Tensor& cx, TensorList weights,
    bool has_biases, bool train, const OptTensor& batch_sizes, int64_t directions) {
  auto r = FusedLstmBackward::apply(input, hx, cx, weights, has_biases, train, batch_sizes,
                                    directions);
  return {r[0], r[1], r[2], r[3], r[4], r[5]};
}

// ------------------------------------------------------------------ GRU --

using GruFwdSig = std::tuple<Tensor, Tensor, Tensor, Tensor>(const Tensor&, const Tensor&,
                                                             TensorList, bool, bool,
                                                             const OptTensor&, int64_t);
using GruBwdSig = std::tuple<Tensor, Tensor, std::vector<Tensor>>(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, TensorList, bool, const Tensor&,
    const Tensor&, const Tensor&, const OptTensor&, int64_t, std::array<bool, 3>);

struct FusedGruBackward : torch::autograd::Function<FusedGruBackward> {
  static variable_list forward(AutogradContext* ctx, const Tensor& input, const Tensor& hx,
                               TensorList weights, bool has_biases, bool train,
                               const OptTensor& batch_sizes, int64_t directions) {
    static const auto op = find_op<GruFwdSig>("fusedrnn::gru_forward");
    at::AutoDispatchBelowADInplaceOrView below;
    auto [out, hy, saved, hiddens] =
        op.call(input, hx, weights, has_biases, train, batch_sizes, directions);
    save(ctx, has_biases, train, batch_sizes, directions, {input, hx, out, saved, hiddens},
         weights);
    ctx->mark_non_differentiable({saved, hiddens});
    return {out, hy, saved, hiddens};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = find_op<GruBwdSig>("fusedrnn::gru_backward");
    check_trained(ctx, "gru");
    const bool recording = at::GradMode::is_enabled();
    at::AutoGradMode no_grad(false);
    Saved s = unpack(ctx, 5);
    const Tensor &input = s.head[0], &hx = s.head[1], &out = s.head[2];
    const std::array<bool, 3> m = output_mask(ctx, 1);
    auto [gi, ghx, gw] = op.call(or_zeros(grads[0], out), or_zeros(grads[1], hx), input, hx,
                                 s.weights, ctx->saved_data.at("has_biases").toBool(), out,
                                 s.head[3], s.head[4], s.batch_sizes, directions(ctx), m);
    return grads_out("gru", {unless_masked(m[0], gi), unless_masked(m[1], ghx)},
                     weight_grads(ctx, std::move(gw)), 4, recording);
  }
};

static std::tuple<Tensor, Tensor, Tensor, Tensor> gru_forward_autograd(
    const Tensor& input, const Tensor& hx, TensorList weights, bool has_biases, bool train,
    const OptTensor& batch_sizes, int64_t directions) {
  auto r = FusedGruBackward::apply(input, hx, weights, has_biases, train, batch_sizes, directions);
  return {r[0], r[1], r[2], r[3]};
}

// ------------------------------------------------------------------ RNN --

using RnnFwdSig = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, TensorList,
                                                     bool, bool, bool, const OptTensor&, int64_t);
using RnnBwdSig = std::tuple<Tensor, Tensor, std::vector<Tensor>>(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, TensorList, bool, bool,
    const Tensor&, const Tensor&, const OptTensor&, int64_t, std::array<bool, 3>);

struct FusedRnnBackward : torch::autograd::Function<FusedRnnBackward> {
  static variable_list forward(AutogradContext* ctx, const Tensor& input, const Tensor& hx,
                               TensorList weights, bool has_biases, bool relu, bool train,
                               const OptTensor& batch_sizes, int64_t directions) {
    static const auto op = find_op<RnnFwdSig>("fusedrnn::rnn_forward");
    at::AutoDispatchBelowADInplaceOrView below;
    auto [out, hy, hiddens] =
        op.call(input, hx, weights, has_biases, relu, train, batch_sizes, directions);
    save(ctx, has_biases, train, batch_sizes, directions, {input, hx, out, hiddens}, weights);
    ctx->saved_data["relu"] = relu;
    ctx->mark_non_differentiable({hiddens});
    return {out, hy, hiddens};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = find_op<RnnBwdSig>("fusedrnn::rnn_backward");
    check_trained(ctx, "rnn");
    const bool recording = at::GradMode::is_enabled();
    at::AutoGradMode no_grad(false);
    Saved s = unpack(ctx, 4);
    const Tensor &input = s.head[0], &hx = s.head[1], &out = s.head[2];
    const std::array<bool, 3> m = output_mask(ctx, 1);
    auto [gi, ghx, gw] = op.call(or_zeros(grads[0], out), or_zeros(grads[1], hx), input, hx,
                                 s.weights, ctx->saved_data.at("has_biases").toBool(),
                                 ctx->saved_data.at("relu").toBool(), out, s.head[3],
                                 s.batch_sizes, directions(ctx), m);
    return grads_out("rnn", {unless_masked(m[0], gi), unless_masked(m[1], ghx)},
                     weight_grads(ctx, std::move(gw)), 5, recording);
  }
};

static std::tuple<Tensor, Tensor, Tensor> rnn_forward_autograd(
    const Tensor& input, const Tensor& hx, TensorList weights, bool has_biases, bool relu,
    bool train, const OptTensor& batch_sizes, int64_t directions) {
  auto r = FusedRnnBackward::apply(input, hx, weights, has_biases, relu, train, batch_sizes,
                                   directions);
  return {r[0], r[1], r[2]};
}

TORCH_LIBRARY_IMPL(fusedrnn, Autograd, m) {
  m.impl("lstm_forward", &lstm_forward_autograd);
  m.impl("gru_forward", &gru_forward_autograd);
  m.impl("rnn_forward", &rnn_forward_autograd);
}

}  // namespace fusedrnn
