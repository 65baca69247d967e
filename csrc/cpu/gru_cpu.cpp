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

#include "bidirectional.h"
#include "cell_math.h"
#include "cpu/fast_step_gru.h"
#include "cpu/stack_common.h"
#include "rnn_checks.h"

namespace fusedrnn {

namespace {

using at::Tensor;

constexpr const char* kOp = "fusedrnn.gru";

// Grain for the pointwise passes: batch rows per task.
int64_t row_grain(int64_t H) { return std::max<int64_t>(1, 2048 / std::max<int64_t>(H, 1)); }

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

// Runs one layer over all steps of the row layout q.  x (N, I_l): the
// layer's input; `out` (N, H) receives h_t; saved (N, 4H) is filled when
// given (training).
void layer_forward(const SeqLayout& q, const Tensor& x, const Tensor& w_ih, const Tensor& w_hh,
                   const Tensor* b_ih, const Tensor* b_hh, const Tensor& h0, Tensor& out,
                   Tensor& hy, Tensor* saved) {
  const int64_t T = q.T, H = w_hh.size(1);
  const int64_t G3 = 3 * H, G4 = 4 * H;
  if (T == 0) {
    hy.copy_(h0);
    return;
  }
  if (cpu::use_fast_kernels(x) && cpu::packing_pays(q)) {
    // W_hh and b_hh packed once per call, reused by all T steps.
    Tensor packed_t =
        at::empty({static_cast<int64_t>(cpu::gru_packed_forward_size(H))}, x.options());
    float* packed = packed_t.data_ptr<float>();
    cpu::gru_pack_forward(w_hh.data_ptr<float>(), b_hh ? b_hh->data_ptr<float>() : nullptr, H,
                          packed);
    float* out_p = out.data_ptr<float>();
    cpu::project_in_chunks(q, x, w_ih, b_ih, G3, nullptr, [&](int64_t t0, int64_t t1, Tensor& gx) {
      const float* gx_p = gx.data_ptr<float>();
      cpu::run_steps([&] {
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t o = q.off[t];
          const float* h_prev = t == 0 ? h0.data_ptr<float>() : out_p + q.off[t - 1] * H;
          cpu::gru_step_forward(q.bs[t], H, packed, gx_p + (o - q.off[t0]) * G3, G3, h_prev, H,
                                out_p + o * H, H,
                                saved ? saved->data_ptr<float>() + o * G4 : nullptr);
        }
      });
    });
  } else {
    Tensor gh = at::empty({q.B, G3}, x.options());
    Tensor w_hh_t = w_hh.t();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "gru_forward_cpu", [&] {
      cpu::project_in_chunks(q, x, w_ih, b_ih, G3, nullptr, [&](int64_t t0, int64_t t1, Tensor& gx) {
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t o = q.off[t], n = q.bs[t];
          const Tensor h_prev = t == 0 ? h0.narrow(0, 0, n) : out.narrow(0, q.off[t - 1], n);
          Tensor gh_t = gh.narrow(0, 0, n);
          cpu::product_into(gh_t, h_prev, w_hh_t, false, b_hh);
          gru_forward_pass<scalar_t>(n, H, gx.data_ptr<scalar_t>() + (o - q.off[t0]) * G3,
                                     gh_t.data_ptr<scalar_t>(), h_prev.data_ptr<scalar_t>(),
                                     out.data_ptr<scalar_t>() + o * H,
                                     saved ? saved->data_ptr<scalar_t>() + o * G4 : nullptr);
        }
      });
    });
  }
  cpu::gather_final(q, out, hy);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> gru_forward_cpu(
    const Tensor& input_, const Tensor& hx_, at::TensorList weights_, bool has_biases,
    bool train, const std::optional<Tensor>& batch_sizes,
    int64_t directions) {
  const RnnSizes s = check_stack_args(kOp, 3, input_, hx_, {}, weights_, has_biases,
                                      batch_sizes, false, directions);
  if (s.D == 2)
    return gru_forward_bidirectional(s, input_, hx_, weights_, has_biases, train, batch_sizes);
  const SeqLayout& q = s.seq;
  const Tensor input = input_.contiguous().view({q.N, s.I});
  const Tensor hx = hx_.contiguous();
  std::vector<Tensor> w;
  for (const auto& t : weights_) w.push_back(t.contiguous());

  const auto opts = input.options();
  const int64_t H = s.H, L = s.L;
  Tensor output = at::empty(s.rows_shape(H), opts);
  Tensor hy = at::empty({L, s.B, H}, opts);
  Tensor saved, hiddens;
  if (train) {
    saved = at::empty(s.rows_shape(4 * H, L), opts);
    hiddens = at::empty(s.rows_shape(H, L - 1), opts);
  } else {
    saved = at::empty({0}, opts);
    hiddens = at::empty({0}, opts);
  }
  const Tensor saved2 = train ? saved.view({L, q.N, 4 * H}) : saved;
  cpu::LayerOutputs layer_out(output.view({q.N, H}),
                              train ? hiddens.view({L - 1, q.N, H}) : hiddens, train, L);
  Tensor x = input;
  for (int64_t l = 0; l < L; ++l) {
    const Tensor* wl = &w[l * s.per_layer];
    Tensor out = layer_out(l);
    Tensor hy_l = hy[l];
    Tensor saved_l = train ? saved2[l] : Tensor();
    layer_forward(q, x, wl[0], wl[1], has_biases ? &wl[2] : nullptr,
                  has_biases ? &wl[3] : nullptr, hx[l], out, hy_l, train ? &saved_l : nullptr);
    x = out;
  }
  return {output, hy, saved, hiddens};
}

// --------------------------------------------------------------- backward --

// dh (B, H) holds the full gradient reaching h_t; saved (B, 4H) the step's
// [r | z | n | gh_n].  Writes dGx_t, dGh_t (B, 3H) and replaces dh by the part
// of dh_{t-1} that does not pass through W_hh (z_t·dh_t).
template <typename scalar_t>
void gru_backward_pass(int64_t B, int64_t H, scalar_t* dh, const scalar_t* saved,
                       const scalar_t* h_prev, scalar_t* dgx, scalar_t* dgh) {
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
        dh[k] = r.dh_prev;
      }
    }
  });
}

// Backward through one layer.  dy (N, H): the gradient reaching the layer's
// outputs, grad_hy already added at each sequence's last step; out (N, H):
// the layer's h_t; saved (N, 4H).  Writes dgx, dgh (3H each) through g
// (cpu::GradChunks, sets 0 and 1) and, when T > 0 and defined, grad_h0 (B, H).
void layer_backward(const SeqLayout& q, const Tensor& dy, const Tensor& w_hh,
                    const Tensor& saved, const Tensor& h0, const Tensor& out, Tensor& grad_h0,
                    cpu::GradChunks& g) {
  const int64_t T = q.T, H = w_hh.size(1);
  const int64_t G4 = 4 * H;
  if (T == 0) return;
  // z_{t+1}·dh_{t+1} per sequence: zero for rows that end at step t (rows
  // only become active going backwards, so they are still untouched then).
  Tensor carry = at::zeros({q.B, H}, dy.options());
  if (cpu::use_fast_kernels(dy)) {
    Tensor packed_t;
    const float* packed = cpu::pack_for_steps(
        q, w_hh, H, cpu::gru_packed_backward_size(H), packed_t, cpu::gru_pack_backward);
    const float* dy_p = dy.data_ptr<float>();
    const float* out_p = out.data_ptr<float>();
    const float* saved_p = saved.data_ptr<float>();
    float* carry_p = carry.data_ptr<float>();
    g.run_reverse(true, [&](int64_t t) {
      const int64_t o = q.off[t], n = q.bs[t];
      const int64_t nn = t + 1 < T ? q.bs[t + 1] : 0;  // rows that continue to t+1
      const float* h_prev = t > 0 ? out_p + q.off[t - 1] * H : h0.data_ptr<float>();
      float* dgx = g.at<float>(0, t);
      float* dgh = g.at<float>(1, t);
      if (nn > 0) {
        cpu::gru_step_backward(nn, H, packed, dy_p + o * H, H, g.at<float>(1, t + 1),
                               saved_p + o * G4, h_prev, H, carry_p, dgx, dgh);
      }
      if (n > nn) {
        const int64_t G3 = 3 * H;
        cpu::gru_step_backward(n - nn, H, packed, dy_p + (o + nn) * H, H, nullptr,
                               saved_p + (o + nn) * G4, h_prev + nn * H, H, carry_p + nn * H,
                               dgx + nn * G3, dgh + nn * G3);
      }
    });
  } else {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dy.scalar_type(), "gru_backward_cpu", [&] {
      g.run_reverse(false, [&](int64_t t) {
        const int64_t o = q.off[t], n = q.bs[t];
        const int64_t nn = t + 1 < T ? q.bs[t + 1] : 0;
        Tensor dh = carry.narrow(0, 0, n);  // becomes the full dh_t
        dh.add_(dy.narrow(0, o, n));
        if (nn > 0) dh.narrow(0, 0, nn).addmm_(g.step(1, t + 1), w_hh);
        const scalar_t* h_prev =
            t > 0 ? out.data_ptr<scalar_t>() + q.off[t - 1] * H : h0.data_ptr<scalar_t>();
        gru_backward_pass<scalar_t>(n, H, dh.data_ptr<scalar_t>(),
                                    saved.data_ptr<scalar_t>() + o * G4, h_prev,
                                    g.at<scalar_t>(0, t), g.at<scalar_t>(1, t));
      });
    });
  }
  // Every sequence is active at step 0 (bs[0] = B).
  if (grad_h0.defined()) at::addmm_out(grad_h0, carry, g.step(1, 0), w_hh);
}

std::tuple<Tensor, Tensor, std::vector<Tensor>> gru_backward_cpu(
    const Tensor& grad_output_, const Tensor& grad_hy_, const Tensor& input_, const Tensor& hx_,
    at::TensorList weights_, bool has_biases, const Tensor& output_, const Tensor& saved_,
    const Tensor& hiddens_, const std::optional<Tensor>& batch_sizes, int64_t directions,
    std::array<bool, 3> output_mask) {
  const GradMask mask(output_mask);
  const RnnSizes s = check_stack_args(kOp, 3, input_, hx_, {}, weights_, has_biases,
                                      batch_sizes, false, directions);
  check_gru_backward_args(s, input_, grad_output_, grad_hy_, output_, saved_, hiddens_);
  if (s.D == 2)
    return gru_backward_bidirectional(s, grad_output_, grad_hy_, input_, hx_, weights_,
                                      has_biases, output_, saved_, hiddens_, batch_sizes, mask);
  const SeqLayout& q = s.seq;
  const int64_t N = q.N, H = s.H, L = s.L, G3 = 3 * H;
  const Tensor input = input_.contiguous().view({N, s.I}), hx = hx_.contiguous();
  const Tensor output = output_.contiguous().view({N, H});
  const Tensor saved = saved_.contiguous().view({L, N, 4 * H});
  const Tensor hiddens = hiddens_.contiguous().view({L - 1, N, H});
  const Tensor grad_hy = grad_hy_.contiguous();
  std::vector<Tensor> w;
  for (const auto& t : weights_) w.push_back(t.contiguous());

  Tensor grad_hx = at::empty_like(hx);
  std::vector<Tensor> grad_w(w.size());
  // A private copy: grad_hy is added into it at each sequence's last step.
  Tensor dy = grad_output_.contiguous().view({N, H}).clone();
  dy = cpu::stack_backward(s, dy, input, output, hiddens, hx, grad_hy, w, has_biases, grad_hx,
                           grad_w, mask, G3, 2,
                           [&](int64_t l, const Tensor& dy_l, Tensor& gh0, cpu::GradChunks& g) {
                             const Tensor out = l == L - 1 ? output : hiddens[l];
                             layer_backward(q, dy_l, w[l * s.per_layer + 1], saved[l], hx[l],
                                            out, gh0, g);
                           });
  Tensor grad_input = mask.input ? dy.view(input_.sizes()) : Tensor();
  finish_masked(mask, input_.options(), grad_input, {&grad_hx}, grad_w);
  return {grad_input, grad_hx, grad_w};
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedrnn, CPU, m) {
  m.impl("gru_forward", &gru_forward_cpu);
  m.impl("gru_backward", &gru_backward_cpu);
}

}  // namespace fusedrnn
