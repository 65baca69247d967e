// CPU implementation of fusedrnn::gru_forward / gru_backward: the whole stack
// in one op call (same architecture as lstm_cpu.cpp).
//
// Per layer (layers run one after another):
//   1. the input projection of all T steps as one GEMM:
//        Gx = X (T·B × I_l) · W_ihᵀ + b_ih                         (T, B, 3H)
//      b_hh is NOT folded in: b_hn belongs to the recurrent part, inside r·(…).
//   2. per timestep ONE fused step: the recurrent product
//      Gh = h_{t-1} · W_hhᵀ + b_hh with gru_cell_forward (cell_math.h) applied
//      right after it, writing h_t and, when training, the saved row
//      [r | z | n | Gh_n] (B × 4H) for backward.  For float32 on CPUs with
//      AVX-512 the step is fast_step_gru.cpp's kernel (W_hh and b_hh packed
//      once per call, cell math as the GEMM tile's epilogue); otherwise it is
//      an at::addmm into a (B, 3H) buffer and one parallel pointwise pass.
// Backward runs each layer's recurrence in reverse.  Per step one fused step
// (AVX-512 kernel, or one GEMM dh += dGh_{t+1} · W_hh followed by one
// pointwise pass): dh = dy_t + z_{t+1}·dh_{t+1} + dGh_{t+1} · W_hh, then
// gru_cell_backward gives the input-side gradients dGx_t and the
// recurrent-side gradients dGh_t (they differ in the n block:
// dGh_n = r·dGx_n).  Afterwards dW_ih = dGxᵀX, dW_hh = dGhᵀH_prev,
// db_ih = Σ dGx, db_hh = Σ dGh and dX = dGx·W_ih are large GEMMs/reductions
// over all timesteps.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cell_math.h"
#include "cpu/fast_step_gru.h"
#include "cpu/stack_common.h"
#include "rnn_checks.h"

namespace fusedrnn {

// lstm_cpu.cpp owns the switch of the fused float32 step kernels
// (fusedrnn._C.set_cpu_fast_step_enabled) and installs at::parallel_for as
// their threading hook the first time availability is asked.
bool cpu_fast_step_available();
bool cpu_fast_step_enabled();

namespace {

using at::Tensor;

constexpr const char* kOp = "fusedrnn.gru";

// Grain for the pointwise passes: batch rows per task.
int64_t row_grain(int64_t H) { return std::max<int64_t>(1, 2048 / std::max<int64_t>(H, 1)); }

bool use_fast_step(const Tensor& t) {
  return t.scalar_type() == at::kFloat && cpu_fast_step_enabled() && cpu_fast_step_available();
}

// ---------------------------------------------------------------- forward --

// gx (B, 3H): this step's input projection (with b_ih); gh (B, 3H): the
// recurrent product (with b_hh).  Writes h_out (B, H) and, when given, the
// saved row [r | z | n | gh_n] (B, 4H).
template <typename scalar_t>
void gru_forward_pass(int64_t B, int64_t H, const scalar_t* gx, const scalar_t* gh,
                      const scalar_t* h_prev, scalar_t* h_out, scalar_t* saved) {
  using acc_t = typename acc_type<scalar_t>::type;
  at::parallel_for(0, B, row_grain(H), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const scalar_t* x = gx + b * 3 * H;
      const scalar_t* h = gh + b * 3 * H;
      scalar_t* sv = saved ? saved + b * 4 * H : nullptr;
      for (int64_t j = 0; j < H; ++j) {
        const int64_t k = b * H + j;
        auto r = gru_cell_forward<acc_t>(x[j], x[H + j], x[2 * H + j], h[j], h[H + j],
                                         h[2 * H + j], h_prev[k]);
        if (sv) {
          sv[j] = r.r;
          sv[H + j] = r.z;
          sv[2 * H + j] = r.n;
          sv[3 * H + j] = h[2 * H + j];
        }
        h_out[k] = r.h;
      }
    }
  });
}

// Runs one layer over all T steps.  `out` (T, B, H) receives h_t; saved
// (T, B, 4H) is filled when given (training).
void layer_forward(const Tensor& x, const Tensor& w_ih, const Tensor& w_hh,
                   const Tensor* b_ih, const Tensor* b_hh, const Tensor& h0, Tensor& out,
                   Tensor& hy, Tensor* saved) {
  const int64_t T = x.size(0), B = x.size(1), H = w_hh.size(1);
  const int64_t G3 = 3 * H, G4 = 4 * H;
  Tensor gx = at::empty({T, B, G3}, x.options());
  Tensor gx2 = gx.view({T * B, G3});
  Tensor x2 = x.reshape({T * B, x.size(2)});
  if (b_ih) {
    at::addmm_out(gx2, *b_ih, x2, w_ih.t());
  } else {
    at::mm_out(gx2, x2, w_ih.t());
  }
  if (T == 0) {
    hy.copy_(h0);
    return;
  }
  if (use_fast_step(x)) {
    // W_hh and b_hh packed once per call, reused by all T steps.
    Tensor packed_t =
        at::empty({static_cast<int64_t>(cpu::gru_packed_forward_size(H))}, x.options());
    float* packed = packed_t.data_ptr<float>();
    cpu::gru_pack_forward(w_hh.data_ptr<float>(), b_hh ? b_hh->data_ptr<float>() : nullptr, H,
                          packed);
    const float* h_prev = h0.data_ptr<float>();
    for (int64_t t = 0; t < T; ++t) {
      float* h_out = out.data_ptr<float>() + t * B * H;
      cpu::gru_step_forward(B, H, packed, gx.data_ptr<float>() + t * B * G3, G3, h_prev, H,
                            h_out, H, saved ? saved->data_ptr<float>() + t * B * G4 : nullptr);
      h_prev = h_out;
    }
  } else {
    Tensor gh = at::empty({B, G3}, x.options());
    Tensor w_hh_t = w_hh.t();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "gru_forward_cpu", [&] {
      for (int64_t t = 0; t < T; ++t) {
        const Tensor h_prev = t == 0 ? h0 : out[t - 1];
        if (b_hh) {
          at::addmm_out(gh, *b_hh, h_prev, w_hh_t);
        } else {
          at::mm_out(gh, h_prev, w_hh_t);
        }
        gru_forward_pass<scalar_t>(B, H, gx.data_ptr<scalar_t>() + t * B * G3,
                                   gh.data_ptr<scalar_t>(), h_prev.data_ptr<scalar_t>(),
                                   out.data_ptr<scalar_t>() + t * B * H,
                                   saved ? saved->data_ptr<scalar_t>() + t * B * G4 : nullptr);
      }
    });
  }
  hy.copy_(out[T - 1]);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> gru_forward_cpu(
    const Tensor& input_, const Tensor& hx_, at::TensorList weights_, bool has_biases,
    bool train, const std::optional<Tensor>& batch_sizes) {
  const RnnSizes s = check_stack_args(kOp, 3, input_, hx_, {}, weights_, has_biases, batch_sizes);
  TORCH_CHECK(!s.seq.packed, "TODO");
  const Tensor input = input_.contiguous();
  const Tensor hx = hx_.contiguous();
  std::vector<Tensor> w;
  for (const auto& t : weights_) w.push_back(t.contiguous());

  const auto opts = input.options();
  Tensor output = at::empty({s.T, s.B, s.H}, opts);
  Tensor hy = at::empty({s.L, s.B, s.H}, opts);
  Tensor saved, hiddens;
  if (train) {
    saved = at::empty({s.L, s.T, s.B, 4 * s.H}, opts);
    hiddens = at::empty({s.L - 1, s.T, s.B, s.H}, opts);
  } else {
    saved = at::empty({0}, opts);
    hiddens = at::empty({0}, opts);
  }
  cpu::LayerOutputs layer_out(output, hiddens, train, s.L);
  Tensor x = input;
  for (int64_t l = 0; l < s.L; ++l) {
    const Tensor* wl = &w[l * s.per_layer];
    Tensor out = layer_out(l);
    Tensor hy_l = hy[l];
    Tensor saved_l = train ? saved[l] : Tensor();
    layer_forward(x, wl[0], wl[1], has_biases ? &wl[2] : nullptr, has_biases ? &wl[3] : nullptr,
                  hx[l], out, hy_l, train ? &saved_l : nullptr);
    x = out;
  }
  return {output, hy, saved, hiddens};
}

// --------------------------------------------------------------- backward --

// dh (B, H) holds the full gradient reaching h_t; saved (B, 4H) the step's
// [r | z | n | gh_n].  Writes dGx_t, dGh_t (B, 3H) and replaces dh by the part
// of dh_{t-1} that does not pass through W_hh (z_t·dh_t), plus dy_prev (the
// gradient from above at t-1) when given.
template <typename scalar_t>
void gru_backward_pass(int64_t B, int64_t H, scalar_t* dh, const scalar_t* saved,
                       const scalar_t* h_prev, const scalar_t* dy_prev, scalar_t* dgx,
                       scalar_t* dgh) {
  using acc_t = typename acc_type<scalar_t>::type;
  at::parallel_for(0, B, row_grain(H), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const scalar_t* g = saved + b * 4 * H;
      scalar_t* dx = dgx + b * 3 * H;
      scalar_t* dr = dgh + b * 3 * H;
      for (int64_t j = 0; j < H; ++j) {
        const int64_t k = b * H + j;
        auto r = gru_cell_backward<acc_t>(dh[k], g[j], g[H + j], g[2 * H + j], g[3 * H + j],
                                          h_prev[k]);
        dx[j] = r.dr;
        dx[H + j] = r.dz;
        dx[2 * H + j] = r.dxn;
        dr[j] = r.dr;
        dr[H + j] = r.dz;
        dr[2 * H + j] = r.dhn;
        dh[k] = dy_prev ? r.dh_prev + static_cast<acc_t>(dy_prev[k]) : r.dh_prev;
      }
    }
  });
}

// Backward through one layer.  dy (T, B, H): gradient reaching the layer's
// outputs from above; out (T, B, H): the layer's h_t; saved (T, B, 4H).
// Fills dGx, dGh (T, B, 3H) and grad_h0 (B, H).
void layer_backward(const Tensor& dy, const Tensor& dhy, const Tensor& w_hh,
                    const Tensor& saved, const Tensor& h0, const Tensor& out, Tensor& dgx,
                    Tensor& dgh, Tensor& grad_h0) {
  const int64_t T = dy.size(0), B = dy.size(1), H = w_hh.size(1);
  const int64_t G3 = 3 * H, G4 = 4 * H;
  if (T == 0) {
    grad_h0.copy_(dhy);
    return;
  }
  Tensor dy_last = dy[T - 1] + dhy;  // the last step also receives grad_hy
  Tensor carry;                      // z_{t+1}·dh_{t+1} (+ dy_t on the generic path)
  if (use_fast_step(dy)) {
    Tensor packed_t =
        at::empty({static_cast<int64_t>(cpu::gru_packed_backward_size(H))}, dy.options());
    float* packed = packed_t.data_ptr<float>();
    cpu::gru_pack_backward(w_hh.data_ptr<float>(), H, packed);
    carry = at::zeros({B, H}, dy.options());
    for (int64_t t = T - 1; t >= 0; --t) {
      const float* dy_t =
          t == T - 1 ? dy_last.data_ptr<float>() : dy.data_ptr<float>() + t * B * H;
      const float* h_prev = t > 0 ? out.data_ptr<float>() + (t - 1) * B * H : h0.data_ptr<float>();
      cpu::gru_step_backward(B, H, packed, dy_t, H,
                             t == T - 1 ? nullptr : dgh.data_ptr<float>() + (t + 1) * B * G3,
                             saved.data_ptr<float>() + t * B * G4, h_prev, H,
                             carry.data_ptr<float>(), dgx.data_ptr<float>() + t * B * G3,
                             dgh.data_ptr<float>() + t * B * G3);
    }
  } else {
    carry = dy_last;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dy.scalar_type(), "gru_backward_cpu", [&] {
      for (int64_t t = T - 1; t >= 0; --t) {
        if (t < T - 1) carry.addmm_(dgh[t + 1], w_hh);  // carry is now the full dh_t
        const scalar_t* h_prev =
            t > 0 ? out.data_ptr<scalar_t>() + (t - 1) * B * H : h0.data_ptr<scalar_t>();
        gru_backward_pass<scalar_t>(
            B, H, carry.data_ptr<scalar_t>(), saved.data_ptr<scalar_t>() + t * B * G4, h_prev,
            t > 0 ? dy.data_ptr<scalar_t>() + (t - 1) * B * H : nullptr,
            dgx.data_ptr<scalar_t>() + t * B * G3, dgh.data_ptr<scalar_t>() + t * B * G3);
      }
    });
  }
  at::addmm_out(grad_h0, carry, dgh[0], w_hh);
}

std::tuple<Tensor, Tensor, std::vector<Tensor>> gru_backward_cpu(
    const Tensor& grad_output_, const Tensor& grad_hy_, const Tensor& input_, const Tensor& hx_,
    at::TensorList weights_, bool has_biases, const Tensor& output_, const Tensor& saved_,
    const Tensor& hiddens_, const std::optional<Tensor>& batch_sizes) {
  const RnnSizes s = check_stack_args(kOp, 3, input_, hx_, {}, weights_, has_biases, batch_sizes);
  TORCH_CHECK(!s.seq.packed, "TODO");
  check_gru_backward_args(s, input_, grad_output_, grad_hy_, output_, saved_, hiddens_);
  const Tensor input = input_.contiguous(), hx = hx_.contiguous();
  const Tensor output = output_.contiguous(), saved = saved_.contiguous();
  const Tensor hiddens = hiddens_.contiguous();
  const Tensor grad_hy = grad_hy_.contiguous();
  std::vector<Tensor> w;
  for (const auto& t : weights_) w.push_back(t.contiguous());

  const int64_t T = s.T, B = s.B, H = s.H, G3 = 3 * H;
  const auto opts = input.options();
  Tensor grad_hx = at::empty_like(hx);
  std::vector<Tensor> grad_w(w.size());
  Tensor dy = grad_output_.contiguous();
  Tensor grad_input;
  Tensor dgx = at::empty({T, B, G3}, opts), dgh = at::empty({T, B, G3}, opts);
  for (int64_t l = s.L - 1; l >= 0; --l) {
    const Tensor* wl = &w[l * s.per_layer];
    const Tensor x = l == 0 ? input : hiddens[l - 1];       // layer input (T, B, I_l)
    const Tensor out = l == s.L - 1 ? output : hiddens[l];  // layer output h_t
    Tensor gh0 = grad_hx[l];
    layer_backward(dy, grad_hy[l], wl[1], saved[l], hx[l], out, dgx, dgh, gh0);
    // Weight, bias and input gradients: large GEMMs over all timesteps.
    dy = cpu::layer_param_grads(dgx, dgh, x, hx[l], out, wl[0], has_biases, grad_w,
                                l * s.per_layer);
    if (l == 0) grad_input = dy;
  }
  return {grad_input, grad_hx, grad_w};
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedrnn, CPU, m) {
  m.impl("gru_forward", &gru_forward_cpu);
  m.impl("gru_backward", &gru_backward_cpu);
}

}  // namespace fusedrnn
