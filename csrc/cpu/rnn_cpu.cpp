// CPU implementation of fusedrnn::rnn_forward / rnn_backward (plain Elman RNN,
// tanh or ReLU): the whole stack in one op call (same architecture as
// lstm_cpu.cpp).
//
// Per layer (layers run one after another):
//   1. the input projection of all T steps as one GEMM, written straight into
//      the layer's output buffer:  Out = X (T·B × I_l) · W_ihᵀ + (b_ih + b_hh)
//   2. per timestep ONE fused step: h_{t-1} · W_hhᵀ with the activation
//      (rnn_cell_forward, cell_math.h) applied right after it.  For float32 on
//      CPUs with AVX-512 the step is fast_step_gru.cpp's kernel (W_hh packed
//      once per call, activation as the GEMM tile's epilogue; the projection
//      then goes to a separate buffer); otherwise one GEMM Out_t += h_{t-1} ·
//      W_hhᵀ (at::addmm_) and one parallel pointwise pass in place.
// Backward runs each layer's recurrence in reverse.  Per step one fused step
// (kernel, or GEMM + pointwise pass): dG_t = (dy_t + dG_{t+1} · W_hh) times
// the activation's derivative, a function of h_t alone (tanh' = 1 − h²,
// ReLU' = [h > 0]); so the forward saves only the layer outputs.  Afterwards dW_ih,
// dW_hh, db (= db_ih = db_hh) and dX are large GEMMs/reductions over all
// timesteps.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "bidirectional.h"
#include "cell_math.h"
#include "cpu/fast_step_gru.h"
#include "cpu/stack_common.h"
#include "rnn_checks.h"

namespace fusedrnn {

namespace {

using at::Tensor;

constexpr const char* kOp = "fusedrnn.rnn";

// Grain for the pointwise passes: elements per task.
constexpr int64_t kGrain = 4096;

// ---------------------------------------------------------------- forward --

// In place over n = B·H elements: h = act(pre).
template <typename scalar_t>
void rnn_forward_pass(int64_t n, scalar_t* h, bool relu) {
  using acc_t = typename acc_type<scalar_t>::type;
  at::parallel_for(0, n, kGrain, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) h[k] = rnn_cell_forward<acc_t>(h[k], relu);
  });
}

// Runs one layer over all steps of the row layout q; x (N, I_l) is the
// layer's input, `out` (N, H) receives h_t.
void layer_forward(const SeqLayout& q, const Tensor& x, const Tensor& w_ih, const Tensor& w_hh,
                   const Tensor* b_ih, const Tensor* b_hh, const Tensor& h0, bool relu,
                   Tensor& out, Tensor& hy) {
  const int64_t T = q.T, H = w_hh.size(1);
  if (T == 0) {
    hy.copy_(h0);
    return;
  }
  const Tensor bias = b_ih ? *b_ih + *b_hh : Tensor();
  const Tensor* bias_p = b_ih ? &bias : nullptr;
  if (cpu::use_fast_kernels(x) && cpu::packing_pays(q)) {
    Tensor packed_t =
        at::empty({static_cast<int64_t>(cpu::rnn_packed_forward_size(H))}, x.options());
    float* packed = packed_t.data_ptr<float>();
    cpu::rnn_pack_forward(w_hh.data_ptr<float>(), H, packed);
    float* out_p = out.data_ptr<float>();
    // The kernel's output must not alias its gx: the chunks get a buffer.
    cpu::project_in_chunks(q, x, w_ih, bias_p, H, nullptr, [&](int64_t t0, int64_t t1, Tensor& gx) {
      const float* gx_p = gx.data_ptr<float>();
      cpu::run_steps([&] {
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t o = q.off[t];
          const float* h_prev = t == 0 ? h0.data_ptr<float>() : out_p + q.off[t - 1] * H;
          cpu::rnn_step_forward(q.bs[t], H, relu, packed, gx_p + (o - q.off[t0]) * H, H, h_prev,
                                H, out_p + o * H, H);
        }
      });
    });
  } else {
    // The projection goes straight into `out`, each step finished in place.
    Tensor w_hh_t = w_hh.t();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "rnn_forward_cpu", [&] {
      cpu::project_in_chunks(q, x, w_ih, bias_p, H, &out, [&](int64_t t0, int64_t t1, Tensor&) {
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t o = q.off[t], n = q.bs[t];
          Tensor o_t = out.narrow(0, o, n);
          cpu::product_into(o_t, t == 0 ? h0.narrow(0, 0, n) : out.narrow(0, q.off[t - 1], n),
                            w_hh_t, true);
          rnn_forward_pass<scalar_t>(n * H, o_t.data_ptr<scalar_t>(), relu);
        }
      });
    });
  }
  cpu::gather_final(q, out, hy);
}

std::tuple<Tensor, Tensor, Tensor> rnn_forward_cpu(const Tensor& input_, const Tensor& hx_,
                                                   at::TensorList weights_, bool has_biases,
                                                   bool relu, bool train,
                                                   const std::optional<Tensor>& batch_sizes,
    int64_t directions) {
  const RnnSizes s = check_stack_args(kOp, 1, input_, hx_, {}, weights_, has_biases,
                                      batch_sizes, false, directions);
  if (s.D == 2)
    return rnn_forward_bidirectional(s, input_, hx_, weights_, has_biases, relu, train,
                                     batch_sizes);
  const SeqLayout& q = s.seq;
  const Tensor input = input_.contiguous().view({q.N, s.I});
  const Tensor hx = hx_.contiguous();
  std::vector<Tensor> w;
  for (const auto& t : weights_) w.push_back(t.contiguous());

  const auto opts = input.options();
  const int64_t H = s.H, L = s.L;
  Tensor output = at::empty(s.rows_shape(H), opts);
  Tensor hy = at::empty({L, s.B, H}, opts);
  Tensor hiddens = train ? at::empty(s.rows_shape(H, L - 1), opts) : at::empty({0}, opts);
  cpu::LayerOutputs layer_out(output.view({q.N, H}),
                              train ? hiddens.view({L - 1, q.N, H}) : hiddens, train, L);
  Tensor x = input;
  for (int64_t l = 0; l < L; ++l) {
    const Tensor* wl = &w[l * s.per_layer];
    Tensor out = layer_out(l);
    Tensor hy_l = hy[l];
    layer_forward(q, x, wl[0], wl[1], has_biases ? &wl[2] : nullptr,
                  has_biases ? &wl[3] : nullptr, hx[l], relu, out, hy_l);
    x = out;
  }
  return {output, hy, hiddens};
}

// --------------------------------------------------------------- backward --

// In place over n = B·H elements: dG = act'(h) · dh, dG holding dh on entry.
template <typename scalar_t>
void rnn_backward_pass(int64_t n, scalar_t* dG, const scalar_t* h, bool relu) {
  using acc_t = typename acc_type<scalar_t>::type;
  at::parallel_for(0, n, kGrain, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) dG[k] = rnn_cell_backward<acc_t>(dG[k], h[k], relu);
  });
}

// Backward through one layer.  dy (N, H): the gradient reaching the layer's
// outputs, grad_hy already added at each sequence's last step; out (N, H):
// the layer's h_t.  Writes the pre-activation gradients dG (H) through g
// (cpu::GradChunks, one set) and, when T > 0 and defined, grad_h0 (B, H).
void layer_backward(const SeqLayout& q, const Tensor& dy, const Tensor& w_hh, const Tensor& out,
                    bool relu, Tensor& grad_h0, cpu::GradChunks& g) {
  const int64_t T = q.T, H = w_hh.size(1);
  if (T == 0) return;
  if (cpu::use_fast_kernels(dy)) {
    Tensor packed_t;
    const float* packed = cpu::pack_for_steps(
        q, w_hh, H, cpu::rnn_packed_backward_size(H), packed_t, cpu::rnn_pack_backward);
    const float* dy_p = dy.data_ptr<float>();
    const float* out_p = out.data_ptr<float>();
    g.run_reverse(true, [&](int64_t t) {
      const int64_t o = q.off[t], n = q.bs[t];
      const int64_t nn = t + 1 < T ? q.bs[t + 1] : 0;  // rows that continue to t+1
      float* dG = g.at<float>(0, t);
      if (nn > 0) {
        cpu::rnn_step_backward(nn, H, relu, packed, dy_p + o * H, H, g.at<float>(0, t + 1),
                               out_p + o * H, H, dG);
      }
      if (n > nn) {
        cpu::rnn_step_backward(n - nn, H, relu, packed, dy_p + (o + nn) * H, H, nullptr,
                               out_p + (o + nn) * H, H, dG + nn * H);
      }
    });
  } else {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dy.scalar_type(), "rnn_backward_cpu", [&] {
      g.run_reverse(false, [&](int64_t t) {
        const int64_t o = q.off[t], n = q.bs[t];
        const int64_t nn = t + 1 < T ? q.bs[t + 1] : 0;
        Tensor dG_t = g.step(0, t);
        dG_t.copy_(dy.narrow(0, o, n));
        if (nn > 0) dG_t.narrow(0, 0, nn).addmm_(g.step(0, t + 1), w_hh);
        rnn_backward_pass<scalar_t>(n * H, dG_t.data_ptr<scalar_t>(),
                                    out.data_ptr<scalar_t>() + o * H, relu);
      });
    });
  }
  // Every sequence is active at step 0 (bs[0] = B).
  if (grad_h0.defined()) at::mm_out(grad_h0, g.step(0, 0), w_hh);
}

std::tuple<Tensor, Tensor, std::vector<Tensor>> rnn_backward_cpu(
    const Tensor& grad_output_, const Tensor& grad_hy_, const Tensor& input_, const Tensor& hx_,
    at::TensorList weights_, bool has_biases, bool relu, const Tensor& output_,
    const Tensor& hiddens_, const std::optional<Tensor>& batch_sizes, int64_t directions,
    std::array<bool, 3> output_mask) {
  const GradMask mask(output_mask);
  const RnnSizes s = check_stack_args(kOp, 1, input_, hx_, {}, weights_, has_biases,
                                      batch_sizes, false, directions);
  check_rnn_backward_args(s, input_, grad_output_, grad_hy_, output_, hiddens_);
  if (s.D == 2)
    return rnn_backward_bidirectional(s, grad_output_, grad_hy_, input_, hx_, weights_,
                                      has_biases, relu, output_, hiddens_, batch_sizes, mask);
  const SeqLayout& q = s.seq;
  const int64_t N = q.N, H = s.H, L = s.L;
  const Tensor input = input_.contiguous().view({N, s.I}), hx = hx_.contiguous();
  const Tensor output = output_.contiguous().view({N, H});
  const Tensor hiddens = hiddens_.contiguous().view({L - 1, N, H});
  const Tensor grad_hy = grad_hy_.contiguous();
  std::vector<Tensor> w;
  for (const auto& t : weights_) w.push_back(t.contiguous());

  Tensor grad_hx = at::empty_like(hx);
  std::vector<Tensor> grad_w(w.size());
  // A private copy: grad_hy is added into it at each sequence's last step.
  Tensor dy = grad_output_.contiguous().view({N, H}).clone();
  dy = cpu::stack_backward(s, dy, input, output, hiddens, hx, grad_hy, w, has_biases, grad_hx,
                           grad_w, mask, H, 1,
                           [&](int64_t l, const Tensor& dy_l, Tensor& gh0, cpu::GradChunks& g) {
                             const Tensor out = l == L - 1 ? output : hiddens[l];
                             layer_backward(q, dy_l, w[l * s.per_layer + 1], out, relu, gh0, g);
                           });
  Tensor grad_input = mask.input ? dy.view(input_.sizes()) : Tensor();
  finish_masked(mask, input_.options(), grad_input, {&grad_hx}, grad_w);
  return {grad_input, grad_hx, grad_w};
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedrnn, CPU, m) {
  m.impl("rnn_forward", &rnn_forward_cpu);
  m.impl("rnn_backward", &rnn_backward_cpu);
}

}  // namespace fusedrnn
