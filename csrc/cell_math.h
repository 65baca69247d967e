// Cell math shared by the CPU and CUDA kernels.
//
// Every function here is `inline __host__ __device__` (plain `inline` when the
// file is compiled by a host compiler), so the CPU path runs exactly the same
// formulas as the GPU kernels and the CPU tests exercise them.
//
// Conventions (PyTorch's, so nn.LSTM weights load unchanged):
//   gate order i, f, g, o;  G = x W_ihᵀ + b_ih + h W_hhᵀ + b_hh   (B × 4H)
//   i, f, o = σ(G_i, G_f, G_o),  g = tanh(G_g)
//   c' = f·c + i·g,   h' = o·tanh(c')
// The *saved* gates are the activated values (i, f, g, o), which is all the
// backward step needs besides c_{t-1} and c_t.
#pragma once

#include <cmath>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FUSEDRNN_HD __host__ __device__ __forceinline__
#else
#define FUSEDRNN_HD inline
#endif

namespace fusedrnn {

// Accumulation type: float for float/half/bfloat16, double for double.
template <typename T> struct acc_type { using type = float; };
template <> struct acc_type<double> { using type = double; };

template <typename T> FUSEDRNN_HD T sigmoid(T x) {
  // 1 / (1 + e^-x) overflows gracefully: e^-x = inf gives 0, NaN propagates.
  return T(1) / (T(1) + std::exp(-x));
}

template <typename T> FUSEDRNN_HD T tanh_(T x) { return std::tanh(x); }

// Forward of one LSTM unit.  Inputs are the four pre-activations; outputs are
// the activated gates (for backward), the new cell and hidden values.
template <typename T>
struct LstmFwdOut {
  T i, f, g, o, c, h;
};

template <typename T>
FUSEDRNN_HD LstmFwdOut<T> lstm_cell_forward(T pi, T pf, T pg, T po, T c_prev) {
  LstmFwdOut<T> r;
  r.i = sigmoid(pi);
  r.f = sigmoid(pf);
  r.g = tanh_(pg);
  r.o = sigmoid(po);
  r.c = r.f * c_prev + r.i * r.g;
  r.h = r.o * tanh_(r.c);
  return r;
}

// Backward of one LSTM unit.
//   dh:      total gradient reaching h_t (from the layer above / the output and
//            from step t+1)
//   dc:      gradient reaching c_t from step t+1 (and from grad_cy at t = T-1)
//   i,f,g,o: activated gates saved by forward;  c_prev = c_{t-1},  c = c_t
// Produces the pre-activation gate gradients and dc_{t-1}.
template <typename T>
struct LstmBwdOut {
  T di, df, dg, do_, dc_prev;
};

template <typename T>
FUSEDRNN_HD LstmBwdOut<T> lstm_cell_backward(T dh, T dc, T i, T f, T g, T o,
                                             T c_prev, T c) {
  LstmBwdOut<T> r;
  const T tc = tanh_(c);
  const T dct = dc + dh * o * (T(1) - tc * tc);
  r.di = dct * g * i * (T(1) - i);
  r.df = dct * c_prev * f * (T(1) - f);
  r.dg = dct * i * (T(1) - g * g);
  r.do_ = dh * tc * o * (T(1) - o);
  r.dc_prev = dct * f;
  return r;
}


// ------------------------------------------------------------------- GRU --
//
// Conventions (PyTorch's nn.GRU), gate order r, z, n:
//   gx = x W_ihᵀ + b_ih,  gh = h W_hhᵀ + b_hh                    (B × 3H each)
//   r = σ(gx_r + gh_r),  z = σ(gx_z + gh_z)
//   n = tanh(gx_n + r·gh_n)        (b_hn is inside gh_n, so inside the r product)
//   h' = (1 − z)·n + z·h
// The input and recurrent n parts stay separate, so the step needs both; the
// saved values for backward are the activated r, z, n and gh_n.
template <typename T>
struct GruFwdOut {
  T r, z, n, h;
};

template <typename T>
FUSEDRNN_HD GruFwdOut<T> gru_cell_forward(T xr, T xz, T xn, T hr, T hz, T hn, T h_prev) {
  GruFwdOut<T> o;
  o.r = sigmoid(xr + hr);
  o.z = sigmoid(xz + hz);
  o.n = tanh_(xn + o.r * hn);
  o.h = (T(1) - o.z) * o.n + o.z * h_prev;
  return o;
}

// Backward of one GRU unit.
//   dh:          total gradient reaching h_t
//   r, z, n, hn: saved by forward (activated gates and gh_n = W_hn h + b_hn)
//   h_prev:      h_{t-1}
// Produces the gradients of the pre-activations on the input side
// (dxr, dxz, dxn: gradient of gx_r, gx_z, gx_n) and of the recurrent side
// (dhr = dxr, dhz = dxz, dhn: gradient of gh_n), and the part of dh_{t-1} that
// does not go through W_hh (dh·z); the rest is dgh · W_hh.
template <typename T>
struct GruBwdOut {
  T dr, dz, dxn, dhn, dh_prev;
};

template <typename T>
FUSEDRNN_HD GruBwdOut<T> gru_cell_backward(T dh, T r, T z, T n, T hn, T h_prev) {
  GruBwdOut<T> o;
  const T dn = dh * (T(1) - z) * (T(1) - n * n);  // through n = tanh(·)
  o.dxn = dn;
  o.dhn = dn * r;
  o.dr = dn * hn * r * (T(1) - r);
  o.dz = dh * (h_prev - n) * z * (T(1) - z);
  o.dh_prev = dh * z;
  return o;
}

// ------------------------------------------------------------------- RNN --
//
// h' = act(x W_ihᵀ + b_ih + h W_hhᵀ + b_hh),  act = tanh or ReLU.
// Backward needs only h' (tanh' = 1 − h'², ReLU' = [h' > 0]).
// ReLU keeps NaN (x < 0 is false for NaN), like torch.relu; its backward passes
// the gradient where h' is not <= 0, like torch's threshold_backward.
template <typename T>
FUSEDRNN_HD T rnn_cell_forward(T pre, bool relu) {
  if (relu) return pre < T(0) ? T(0) : pre;
  return tanh_(pre);
}

template <typename T>
FUSEDRNN_HD T rnn_cell_backward(T dh, T h, bool relu) {
  if (relu) return h <= T(0) ? T(0) : dh;
  return dh * (T(1) - h * h);
}

}  // namespace fusedrnn
