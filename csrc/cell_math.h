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

}  // namespace fusedrnn
