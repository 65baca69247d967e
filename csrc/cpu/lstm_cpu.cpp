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
#include "bidirectional.h"
#include "lstm_checks.h"

namespace fusedrnn {
namespace {

using at::Tensor;

// Grain for the pointwise passes: batch rows per task.
int64_t row_grain(int64_t H) { return std::max<int64_t>(1, 2048 / std::max<int64_t>(H, 1)); }

// The kernels' threading hook: the team holding torch's threads inside a
// step loop (cpu::run_steps), at::parallel_for elsewhere.
void torch_parallel_for(int64_t n, void* ctx, void (*task)(void*, int64_t, int64_t)) {
  if (cpu::team_run(n, ctx, task)) return;
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

// Runs one layer over all steps of the row layout q.  x (N, I_l): the layer's
// input; `out` (N, P) receives h_t; `cells` (N, H) receives c_t when given
// (training), otherwise c lives in `cy`, updated in place (rows that have
// ended keep their last c).  With a projection (w_hr (P, H), P < H) the cell
// writes o ⊙ tanh(c_t) into a scratch buffer and h_t = that · W_hrᵀ.
void layer_forward(const SeqLayout& q, const Tensor& x, const Tensor& w_ih, const Tensor& w_hh,
                   const Tensor* b_ih, const Tensor* b_hh, const Tensor* w_hr, const Tensor& h0,
                   const Tensor& c0, Tensor& out, Tensor& hy, Tensor& cy, Tensor* gates,
                   Tensor* cells) {
  const int64_t T = q.T, B = q.B, H = w_hh.size(0) / 4;
  const int64_t G4 = 4 * H;
  cy.copy_(c0);
  if (T == 0) {
    hy.copy_(h0);
    return;
  }
  // Training: the input projection goes straight into the layer's saved-gates
  // rows, which the steps then overwrite in place with the activations (each
  // tile reads its pre-activations before writing the same elements).
  const Tensor bias = b_ih ? *b_ih + *b_hh : Tensor();
  const Tensor* bias_p = b_ih ? &bias : nullptr;

  if (!w_hr && cpu::use_fast_kernels(x)) {
    // Packed once per call, reused by all T steps (uninitialised: packing
    // fills it).  A single step instead adds h0 W_hhᵀ to gx with a product
    // straight from W_hh, and the kernel runs only the cell (no h_prev).
    Tensor packed_t;
    const float* packed =
        cpu::pack_for_steps(q, w_hh, H, cpu::packed_forward_size(H), packed_t, cpu::pack_forward);
    float* out_p = out.data_ptr<float>();
    float* c_state = cy.data_ptr<float>();
    float* cells_p = cells ? cells->data_ptr<float>() : nullptr;
    cpu::project_in_chunks(q, x, w_ih, bias_p, G4, gates, [&](int64_t t0, int64_t t1, Tensor& gx) {
      if (!packed) {
        Tensor g0 = gx.narrow(0, 0, q.bs[0]);
        cpu::product_into(g0, h0.narrow(0, 0, q.bs[0]), w_hh.t(), true);
      }
      float* gx_p = gx.data_ptr<float>();
      const int64_t r0 = q.off[t0];
      cpu::run_steps([&] {
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t o = q.off[t];
          const float* h_prev = !packed  ? nullptr
                                : t == 0 ? h0.data_ptr<float>()
                                         : out_p + q.off[t - 1] * H;
          float* c_out = cells_p ? cells_p + o * H : c_state;
          const float* c_prev = (cells_p && t > 0) ? cells_p + q.off[t - 1] * H : c_state;
          float* g = gx_p + (o - r0) * G4;
          cpu::lstm_step_forward(q.bs[t], H, packed, g, G4, h_prev, H, c_prev, c_out,
                                 out_p + o * H, H, gates ? g : nullptr);
        }
      });
    });
  } else {
    Tensor w_hh_t = w_hh.t();
    Tensor w_hr_t = w_hr ? w_hr->t() : Tensor();
    Tensor h_raw = w_hr ? at::empty({B, H}, x.options()) : Tensor();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "lstm_forward_cpu", [&] {
      scalar_t* cells_p = cells ? cells->data_ptr<scalar_t>() : nullptr;
      scalar_t* c_state = cy.data_ptr<scalar_t>();
      cpu::project_in_chunks(q, x, w_ih, bias_p, G4, gates, [&](int64_t t0, int64_t t1, Tensor& gx) {
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t o = q.off[t], n = q.bs[t];
          Tensor g_t = gx.narrow(0, o - q.off[t0], n);
          Tensor h_prev = t == 0 ? h0.narrow(0, 0, n) : out.narrow(0, q.off[t - 1], n);
          cpu::product_into(g_t, h_prev, w_hh_t, true);
          scalar_t* c_out = cells_p ? cells_p + o * H : c_state;
          const scalar_t* c_prev = (cells_p && t > 0) ? cells_p + q.off[t - 1] * H : c_state;
          scalar_t* h_dst = w_hr ? h_raw.data_ptr<scalar_t>() : out.data_ptr<scalar_t>() + o * H;
          cell_forward_pass<scalar_t>(n, H, g_t.data_ptr<scalar_t>(), c_prev, c_out, h_dst,
                                      gates ? g_t.data_ptr<scalar_t>() : nullptr);
          if (w_hr) {
            Tensor out_t = out.narrow(0, o, n);
            cpu::product_into(out_t, h_raw.narrow(0, 0, n), w_hr_t);
          }
        }
      });
    });
  }
  cpu::gather_final(q, out, hy);
  if (cells) cpu::gather_final(q, *cells, cy);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward_cpu(
    const Tensor& input_, const Tensor& hx_, const Tensor& cx_, at::TensorList weights_,
    bool has_biases, bool train, const std::optional<Tensor>& batch_sizes,
    int64_t directions) {
  const LstmSizes s =
      check_lstm_args(input_, hx_, cx_, weights_, has_biases, batch_sizes, directions);
  if (s.D == 2)
    return lstm_forward_bidirectional(s, input_, hx_, cx_, weights_, has_biases, train,
                                      batch_sizes);
  const SeqLayout& q = s.seq;
  const Tensor input = input_.contiguous().view({q.N, s.I});
  const Tensor hx = hx_.contiguous();
  const Tensor cx = cx_.contiguous();
  std::vector<Tensor> w;
  for (const auto& t : weights_) w.push_back(t.contiguous());

  const auto opts = input.options();
  const int64_t H = s.H, P = s.P, L = s.L;
  Tensor output = at::empty(s.rows_shape(P), opts);
  Tensor hy = at::empty({L, s.B, P}, opts);
  Tensor cy = at::empty({L, s.B, H}, opts);
  Tensor gates, cells, hiddens;
  if (train) {
    gates = at::empty(s.rows_shape(4 * H, L), opts);
    cells = at::empty(s.rows_shape(H, L), opts);
    hiddens = at::empty(s.rows_shape(P, L - 1), opts);
  } else {
    gates = at::empty({0}, opts);
    cells = at::empty({0}, opts);
    hiddens = at::empty({0}, opts);
  }
  // Every per-row tensor as (N, X) rows.
  const Tensor gates2 = train ? gates.view({L, q.N, 4 * H}) : gates;
  const Tensor cells2 = train ? cells.view({L, q.N, H}) : cells;
  cpu::LayerOutputs layer_out(output.view({q.N, P}),
                              train ? hiddens.view({L - 1, q.N, P}) : hiddens, train, L);
  Tensor x = input;
  for (int64_t l = 0; l < L; ++l) {
    const Tensor* wl = &w[l * s.per_layer];
    Tensor out = layer_out(l);
    Tensor hy_l = hy[l], cy_l = cy[l];
    Tensor gates_l, cells_l;
    if (train) {
      gates_l = gates2[l];
      cells_l = cells2[l];
    }
    layer_forward(q, x, wl[0], wl[1], has_biases ? &wl[2] : nullptr,
                  has_biases ? &wl[3] : nullptr, s.has_proj ? &wl[s.per_layer - 1] : nullptr,
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

// Backward through one layer.  dy (N, P): the gradient reaching the layer's
// outputs, grad_hy already added at each sequence's last step.  Writes dG
// through g (cpu::GradChunks, one set of 4H), grad_h0 (B, P) (when T > 0
// and defined) and grad_c0 (B, H).  With a projection, dh_proj (N, P)
// receives every step's dh (for dW_hr afterwards).
void layer_backward(const SeqLayout& q, const Tensor& dy, const Tensor& dcy, const Tensor& w_hh,
                    const Tensor* w_hr, const Tensor& gates, const Tensor& cells,
                    const Tensor& c0, Tensor& grad_h0, Tensor& grad_c0, Tensor* dh_proj,
                    cpu::GradChunks& g) {
  const int64_t T = q.T, H = w_hh.size(0) / 4, P = w_hh.size(1);
  const int64_t G4 = 4 * H;
  grad_c0.copy_(dcy);  // dc of each row, updated in place from its last step down to t = -1
  if (T == 0) return;  // (the caller passes grad_hy through to grad_h0)

  if (!w_hr && cpu::use_fast_kernels(dy)) {
    Tensor packed_t;
    const float* packed =
        cpu::pack_for_steps(q, w_hh, H, cpu::packed_backward_size(H), packed_t, cpu::pack_backward);
    float* dc = grad_c0.data_ptr<float>();
    const float* dy_p = dy.data_ptr<float>();
    const float* gates_p = gates.data_ptr<float>();
    const float* cells_p = cells.data_ptr<float>();
    g.run_reverse(true, [&](int64_t t) {
      const int64_t o = q.off[t], n = q.bs[t];
      const int64_t nn = t + 1 < T ? q.bs[t + 1] : 0;  // rows that continue to t+1
      const float* c_prev = t > 0 ? cells_p + q.off[t - 1] * H : c0.data_ptr<float>();
      float* dG = g.at<float>(0, t);
      // Rows [0, nn) receive dG_{t+1}·W_hh; rows [nn, n) end here (no t+1 term).
      if (nn > 0) {
        cpu::lstm_step_backward(nn, H, packed, dy_p + o * H, H, g.at<float>(0, t + 1),
                                gates_p + o * G4, c_prev, cells_p + o * H, dc, dG);
      }
      if (n > nn) {
        cpu::lstm_step_backward(n - nn, H, packed, dy_p + (o + nn) * H, H, nullptr,
                                gates_p + (o + nn) * G4, c_prev + nn * H,
                                cells_p + (o + nn) * H, dc + nn * H, dG + nn * G4);
      }
    });
  } else {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dy.scalar_type(), "lstm_backward_cpu", [&] {
      Tensor dh = at::empty({q.B, P}, dy.options());
      Tensor dh_raw = w_hr ? at::empty({q.B, H}, dy.options()) : Tensor();
      g.run_reverse(false, [&](int64_t t) {
        const int64_t o = q.off[t], n = q.bs[t];
        const int64_t nn = t + 1 < T ? q.bs[t + 1] : 0;
        Tensor dh_t = w_hr ? dh_proj->narrow(0, o, n) : dh.narrow(0, 0, n);
        dh_t.copy_(dy.narrow(0, o, n));
        if (nn > 0) dh_t.narrow(0, 0, nn).addmm_(g.step(0, t + 1).narrow(0, 0, nn), w_hh);
        Tensor dcell = dh_t;
        if (w_hr) {
          dcell = dh_raw.narrow(0, 0, n);
          at::mm_out(dcell, dh_t, *w_hr);
        }
        const scalar_t* c_prev =
            t > 0 ? cells.data_ptr<scalar_t>() + q.off[t - 1] * H : c0.data_ptr<scalar_t>();
        cell_backward_pass<scalar_t>(n, H, dcell.data_ptr<scalar_t>(),
                                     gates.data_ptr<scalar_t>() + o * G4, c_prev,
                                     cells.data_ptr<scalar_t>() + o * H,
                                     grad_c0.data_ptr<scalar_t>(), g.at<scalar_t>(0, t));
      });
    });
  }
  // Every sequence is active at step 0 (bs[0] = B): the gradient flowing to t = -1.
  if (grad_h0.defined()) at::mm_out(grad_h0, g.step(0, 0), w_hh);
}

std::tuple<Tensor, Tensor, Tensor, std::vector<Tensor>> lstm_backward_cpu(
    const Tensor& grad_output_, const Tensor& grad_hy_, const Tensor& grad_cy_,
    const Tensor& input_, const Tensor& hx_, const Tensor& cx_, at::TensorList weights_,
    bool has_biases, const Tensor& output_, const Tensor& gates_, const Tensor& cells_,
    const Tensor& hiddens_, const std::optional<Tensor>& batch_sizes, int64_t directions,
    std::array<bool, 3> output_mask) {
  const GradMask mask(output_mask);
  const LstmSizes s =
      check_lstm_args(input_, hx_, cx_, weights_, has_biases, batch_sizes, directions);
  check_backward_args(s, input_, grad_output_, grad_hy_, grad_cy_, output_, gates_, cells_,
                      hiddens_);
  if (s.D == 2)
    return lstm_backward_bidirectional(s, grad_output_, grad_hy_, grad_cy_, input_, hx_, cx_,
                                       weights_, has_biases, output_, gates_, cells_, hiddens_,
                                       batch_sizes, mask);
  const SeqLayout& q = s.seq;
  const int64_t N = q.N, H = s.H, P = s.P, L = s.L;
  const Tensor input = input_.contiguous().view({N, s.I});
  const Tensor hx = hx_.contiguous(), cx = cx_.contiguous();
  const Tensor output = output_.contiguous().view({N, P});
  const Tensor gates = gates_.contiguous().view({L, N, 4 * H});
  const Tensor cells = cells_.contiguous().view({L, N, H});
  const Tensor hiddens = hiddens_.contiguous().view({L - 1, N, P});
  const Tensor grad_hy = grad_hy_.contiguous(), grad_cy = grad_cy_.contiguous();
  std::vector<Tensor> w;
  for (const auto& t : weights_) w.push_back(t.contiguous());

  Tensor grad_hx = at::empty_like(hx);
  Tensor grad_cx = at::empty_like(cx);
  std::vector<Tensor> grad_w(w.size());
  // A private copy: grad_hy is added into it at each sequence's last step.
  Tensor dy = grad_output_.contiguous().view({N, P}).clone();
  Tensor dh_proj = s.has_proj ? at::empty({N, P}, dy.options()) : Tensor();
  dy = cpu::stack_backward(
      s, dy, input, output, hiddens, hx, grad_hy, w, has_biases, grad_hx, grad_w, mask, 4 * H, 1,
      [&](int64_t l, const Tensor& dy_l, Tensor& gh, cpu::GradChunks& g) {
        const Tensor* wl = &w[l * s.per_layer];
        const Tensor* w_hr = s.has_proj ? &wl[s.per_layer - 1] : nullptr;
        Tensor gc = grad_cx[l];
        layer_backward(q, dy_l, grad_cy[l], wl[1], w_hr, gates[l], cells[l], cx[l], gh, gc,
                       s.has_proj ? &dh_proj : nullptr, g);
        if (w_hr && mask.weights) {
          // h_t = h_raw_t W_hrᵀ with h_raw = o ⊙ tanh(c): dW_hr = Σ dh_tᵀ h_raw_t.
          const Tensor h_raw = gates[l].narrow(1, 3 * H, H) * at::tanh(cells[l]);
          grad_w[l * s.per_layer + s.per_layer - 1] = at::mm(dh_proj.t(), h_raw);
        }
      });
  Tensor grad_input = mask.input ? dy.view(input_.sizes()) : Tensor();
  finish_masked(mask, input_.options(), grad_input, {&grad_hx, &grad_cx}, grad_w);
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
