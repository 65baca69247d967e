// CPU implementation of fusedrnn::lstm_forward / lstm_backward: the whole
// stack in one op call.
//
// Per layer (layers run one after another):
//   1. the input projection of all T steps as one GEMM:
//        Gx = X (T·B × I_l) · W_ihᵀ + (b_ih + b_hh)
//   2. per timestep ONE fused step: the recurrent product h_{t-1} · W_hhᵀ with
//      the activations and the c/h update applied right after it, in one
//      pass parallel over batch × hidden.  For float32 on CPUs with AVX-512
//      the step is fast_step.cpp's kernel, whose GEMM keeps W_hh packed for
//      the whole sequence and runs the cell math as its epilogue; otherwise
//      it is an at::addmm into Gx_t followed by one parallel pointwise pass.
// Backward runs each layer's recurrence in reverse (one fused step per t:
// dh = dy + dG_{t+1} · W_hh, then the cell backward), and afterwards computes
// the weight, bias and input gradients as large GEMMs over all timesteps.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cell_math.h"
#include "cpu/fast_step.h"
#include "cpu/stack_common.h"

#include <atomic>
#include "lstm_checks.h"

namespace fusedrnn {
namespace {

using at::Tensor;

// Grain for the pointwise passes: batch rows per task.
int64_t row_grain(int64_t H) { return std::max<int64_t>(1, 2048 / std::max<int64_t>(H, 1)); }

void torch_parallel_for(int64_t n, void* ctx, void (*task)(void*, int64_t, int64_t)) {
  at::parallel_for(0, n, 1, [&](int64_t b, int64_t e) { task(ctx, b, e); });
}

std::atomic<bool> g_fast_step_enabled{true};

bool fast_step_available() {
  static const bool ok = [] {
    if (!cpu::fast_step_supported()) return false;
    cpu::set_parallel_for(&torch_parallel_for);
    return true;
  }();
  return ok;
}

bool use_fast_step(const Tensor& input) {
  return input.scalar_type() == at::kFloat && g_fast_step_enabled.load() &&
         fast_step_available();
}

// ---------------------------------------------------------------- forward --

// Generic fused step: G (B, 4H) already holds Gx_t + h_{t-1} W_hhᵀ; apply the
// cell to every (b, j) in one parallel pass.
template <typename scalar_t>
void cell_forward_pass(int64_t B, int64_t H, const scalar_t* G, const scalar_t* c_prev,
                       scalar_t* c_out, scalar_t* h_out, scalar_t* gates_out) {
  using acc_t = typename acc_type<scalar_t>::type;
  at::parallel_for(0, B, row_grain(H), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const scalar_t* g = G + b * 4 * H;
      scalar_t* go = gates_out ? gates_out + b * 4 * H : nullptr;
      for (int64_t j = 0; j < H; ++j) {
        auto r = lstm_cell_forward<acc_t>(g[j], g[H + j], g[2 * H + j], g[3 * H + j],
                                          c_prev[b * H + j]);
        if (go) {
          go[j] = r.i;
          go[H + j] = r.f;
          go[2 * H + j] = r.g;
          go[3 * H + j] = r.o;
        }
        c_out[b * H + j] = r.c;
        h_out[b * H + j] = r.h;
      }
    }
  });
}

// Runs one layer over all T steps.  `out` (T, B, H) receives h_t; `cells`
// (T, B, H) receives c_t when given (training), otherwise c lives in `cy`.
void layer_forward(const Tensor& x, const Tensor& w_ih, const Tensor& w_hh,
                   const Tensor* b_ih, const Tensor* b_hh, const Tensor& h0,
                   const Tensor& c0, Tensor& out, Tensor& hy, Tensor& cy,
                   Tensor* gates, Tensor* cells) {
  const int64_t T = x.size(0), B = x.size(1), H = w_hh.size(1);
  const int64_t G4 = 4 * H;
  Tensor x2 = x.reshape({T * B, x.size(2)});
  Tensor gx = at::empty({T, B, G4}, x.options());
  Tensor gx2 = gx.view({T * B, G4});
  if (b_ih) {
    at::addmm_out(gx2, *b_ih + *b_hh, x2, w_ih.t());
  } else {
    at::mm_out(gx2, x2, w_ih.t());
  }
  cy.copy_(c0);
  if (T == 0) {
    hy.copy_(h0);
    return;
  }

  if (use_fast_step(x)) {
    // Packed once per call, reused by all T steps (uninitialised: packing fills it).
    Tensor packed_t = at::empty({static_cast<int64_t>(cpu::packed_forward_size(H))}, x.options());
    float* packed = packed_t.data_ptr<float>();
    cpu::pack_forward(w_hh.data_ptr<float>(), H, packed);
    const float* h_prev = h0.data_ptr<float>();
    float* c_state = cy.data_ptr<float>();
    for (int64_t t = 0; t < T; ++t) {
      float* c_out = cells ? cells->data_ptr<float>() + t * B * H : c_state;
      const float* c_prev = (cells && t > 0) ? c_out - B * H : c_state;
      float* h_out = out.data_ptr<float>() + t * B * H;
      cpu::lstm_step_forward(B, H, packed, gx.data_ptr<float>() + t * B * G4, G4,
                             h_prev, H, c_prev, c_out, h_out, H,
                             gates ? gates->data_ptr<float>() + t * B * G4 : nullptr);
      h_prev = h_out;
    }
  } else {
    Tensor w_hh_t = w_hh.t();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "lstm_forward_cpu", [&] {
      for (int64_t t = 0; t < T; ++t) {
        Tensor g_t = gx[t];
        Tensor h_prev = t == 0 ? h0 : out[t - 1];
        g_t.addmm_(h_prev, w_hh_t);
        scalar_t* c_out = cells ? cells->data_ptr<scalar_t>() + t * B * H : cy.data_ptr<scalar_t>();
        const scalar_t* c_prev =
            (cells && t > 0) ? c_out - B * H : cy.data_ptr<scalar_t>();
        cell_forward_pass<scalar_t>(B, H, g_t.data_ptr<scalar_t>(), c_prev, c_out,
                                    out.data_ptr<scalar_t>() + t * B * H,
                                    gates ? gates->data_ptr<scalar_t>() + t * B * G4 : nullptr);
      }
    });
  }
  hy.copy_(out[T - 1]);
  if (cells) cy.copy_((*cells)[T - 1]);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward_cpu(
    const Tensor& input_, const Tensor& hx_, const Tensor& cx_, at::TensorList weights_,
    bool has_biases, bool train, const std::optional<Tensor>& batch_sizes) {
  const LstmSizes s = check_lstm_args(input_, hx_, cx_, weights_, has_biases, batch_sizes);
  TORCH_CHECK(!s.seq.packed && !s.has_proj, "TODO");
  const Tensor input = input_.contiguous();
  const Tensor hx = hx_.contiguous();
  const Tensor cx = cx_.contiguous();
  std::vector<Tensor> w;
  for (const auto& t : weights_) w.push_back(t.contiguous());

  const auto opts = input.options();
  Tensor output = at::empty({s.T, s.B, s.H}, opts);
  Tensor hy = at::empty({s.L, s.B, s.H}, opts);
  Tensor cy = at::empty({s.L, s.B, s.H}, opts);
  Tensor gates, cells, hiddens;
  if (train) {
    gates = at::empty({s.L, s.T, s.B, 4 * s.H}, opts);
    cells = at::empty({s.L, s.T, s.B, s.H}, opts);
    hiddens = at::empty({s.L - 1, s.T, s.B, s.H}, opts);
  } else {
    gates = at::empty({0}, opts);
    cells = at::empty({0}, opts);
    hiddens = at::empty({0}, opts);
  }
  cpu::LayerOutputs layer_out(output, hiddens, train, s.L);
  Tensor x = input;
  for (int64_t l = 0; l < s.L; ++l) {
    const Tensor* wl = &w[l * s.per_layer];
    Tensor out = layer_out(l);
    Tensor hy_l = hy[l], cy_l = cy[l];
    Tensor gates_l, cells_l;
    if (train) {
      gates_l = gates[l];
      cells_l = cells[l];
    }
    layer_forward(x, wl[0], wl[1], has_biases ? &wl[2] : nullptr, has_biases ? &wl[3] : nullptr,
                  hx[l], cx[l], out, hy_l, cy_l, train ? &gates_l : nullptr,
                  train ? &cells_l : nullptr);
    x = out;
  }
  return {output, hy, cy, gates, cells, hiddens};
}

// --------------------------------------------------------------- backward --

// Generic fused step backward: dh (B, H) holds the full gradient reaching h_t;
// writes dG_t (B, 4H) and replaces dc (B, H) by dc_{t-1}.
template <typename scalar_t>
void cell_backward_pass(int64_t B, int64_t H, const scalar_t* dh, const scalar_t* gates,
                        const scalar_t* c_prev, const scalar_t* c, scalar_t* dc,
                        scalar_t* dG) {
  using acc_t = typename acc_type<scalar_t>::type;
  at::parallel_for(0, B, row_grain(H), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const scalar_t* g = gates + b * 4 * H;
      scalar_t* d = dG + b * 4 * H;
      for (int64_t j = 0; j < H; ++j) {
        const int64_t k = b * H + j;
        auto r = lstm_cell_backward<acc_t>(dh[k], dc[k], g[j], g[H + j], g[2 * H + j],
                                           g[3 * H + j], c_prev[k], c[k]);
        d[j] = r.di;
        d[H + j] = r.df;
        d[2 * H + j] = r.dg;
        d[3 * H + j] = r.do_;
        dc[k] = r.dc_prev;
      }
    }
  });
}

// Backward through one layer.  dy (T, B, H): gradient reaching the layer's
// outputs from above.  Returns dG (T, B, 4H); writes grad_h0 / grad_c0 (B, H).
Tensor layer_backward(const Tensor& dy, const Tensor& dhy, const Tensor& dcy,
                      const Tensor& w_hh, const Tensor& gates, const Tensor& cells,
                      const Tensor& c0, Tensor& grad_h0, Tensor& grad_c0) {
  const int64_t T = dy.size(0), B = dy.size(1), H = w_hh.size(1);
  const int64_t G4 = 4 * H;
  Tensor dG = at::empty({T, B, G4}, dy.options());
  grad_c0.copy_(dcy);  // dc accumulates in place, from dc_T-1 down to dc_-1
  if (T == 0) {
    grad_h0.copy_(dhy);
    return dG;
  }
  // The last step also receives grad_hy.
  Tensor dy_last = dy[T - 1] + dhy;

  if (use_fast_step(dy)) {
    Tensor packed_t = at::empty({static_cast<int64_t>(cpu::packed_backward_size(H))}, dy.options());
    float* packed = packed_t.data_ptr<float>();
    cpu::pack_backward(w_hh.data_ptr<float>(), H, packed);
    float* dc = grad_c0.data_ptr<float>();
    for (int64_t t = T - 1; t >= 0; --t) {
      const float* dy_t = t == T - 1 ? dy_last.data_ptr<float>() : dy.data_ptr<float>() + t * B * H;
      const float* c_prev = t > 0 ? cells.data_ptr<float>() + (t - 1) * B * H : c0.data_ptr<float>();
      cpu::lstm_step_backward(B, H, packed, dy_t, H,
                              t == T - 1 ? nullptr : dG.data_ptr<float>() + (t + 1) * B * G4,
                              gates.data_ptr<float>() + t * B * G4, c_prev,
                              cells.data_ptr<float>() + t * B * H, dc,
                              dG.data_ptr<float>() + t * B * G4);
    }
  } else {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dy.scalar_type(), "lstm_backward_cpu", [&] {
      Tensor dh = at::empty({B, H}, dy.options());
      for (int64_t t = T - 1; t >= 0; --t) {
        if (t == T - 1) {
          dh.copy_(dy_last);
        } else {
          at::addmm_out(dh, dy[t], dG[t + 1], w_hh);
        }
        const scalar_t* c_prev =
            t > 0 ? cells.data_ptr<scalar_t>() + (t - 1) * B * H : c0.data_ptr<scalar_t>();
        cell_backward_pass<scalar_t>(B, H, dh.data_ptr<scalar_t>(),
                                     gates.data_ptr<scalar_t>() + t * B * G4, c_prev,
                                     cells.data_ptr<scalar_t>() + t * B * H,
                                     grad_c0.data_ptr<scalar_t>(),
                                     dG.data_ptr<scalar_t>() + t * B * G4);
      }
    });
  }
  at::mm_out(grad_h0, dG[0], w_hh);
  return dG;
}

std::tuple<Tensor, Tensor, Tensor, std::vector<Tensor>> lstm_backward_cpu(
    const Tensor& grad_output_, const Tensor& grad_hy_, const Tensor& grad_cy_,
    const Tensor& input_, const Tensor& hx_, const Tensor& cx_, at::TensorList weights_,
    bool has_biases, const Tensor& output_, const Tensor& gates_, const Tensor& cells_,
    const Tensor& hiddens_, const std::optional<Tensor>& batch_sizes) {
  const LstmSizes s = check_lstm_args(input_, hx_, cx_, weights_, has_biases, batch_sizes);
  TORCH_CHECK(!s.seq.packed && !s.has_proj, "TODO");
  check_backward_args(s, input_, grad_output_, grad_hy_, grad_cy_, output_, gates_, cells_,
                      hiddens_);
  const Tensor input = input_.contiguous(), hx = hx_.contiguous(), cx = cx_.contiguous();
  const Tensor output = output_.contiguous(), gates = gates_.contiguous();
  const Tensor cells = cells_.contiguous(), hiddens = hiddens_.contiguous();
  const Tensor grad_hy = grad_hy_.contiguous(), grad_cy = grad_cy_.contiguous();
  std::vector<Tensor> w;
  for (const auto& t : weights_) w.push_back(t.contiguous());

  Tensor grad_hx = at::empty_like(hx);
  Tensor grad_cx = at::empty_like(cx);
  std::vector<Tensor> grad_w(w.size());
  Tensor dy = grad_output_.contiguous();
  Tensor grad_input;
  for (int64_t l = s.L - 1; l >= 0; --l) {
    const Tensor* wl = &w[l * s.per_layer];
    const Tensor x = l == 0 ? input : hiddens[l - 1];          // layer input (T, B, I_l)
    const Tensor out = l == s.L - 1 ? output : hiddens[l];     // layer output h_t
    Tensor gh = grad_hx[l], gc = grad_cx[l];
    Tensor dG = layer_backward(dy, grad_hy[l], grad_cy[l], wl[1], gates[l], cells[l], cx[l],
                               gh, gc);
    // Weight, bias and input gradients: large GEMMs over all timesteps.
    dy = cpu::layer_param_grads(dG, dG, x, hx[l], out, wl[0], has_biases, grad_w,
                                l * s.per_layer);
    if (l == 0) grad_input = dy;
  }
  return {grad_input, grad_hx, grad_cx, grad_w};
}

}  // namespace

// Switches for fusedrnn._C (see csrc/module.cpp).
bool cpu_fast_step_available() { return fast_step_available(); }
void set_cpu_fast_step_enabled(bool on) { g_fast_step_enabled.store(on); }
bool cpu_fast_step_enabled() { return g_fast_step_enabled.load(); }

TORCH_LIBRARY_IMPL(fusedrnn, CPU, m) {
  m.impl("lstm_forward", &lstm_forward_cpu);
  m.impl("lstm_backward", &lstm_backward_cpu);
}

}  // namespace fusedrnn
