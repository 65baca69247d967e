// The one place where every fusedrnn op schema is declared.
//
// Backends register implementations with TORCH_LIBRARY_IMPL in csrc/cpu and
// csrc/cuda; the forward ops' autograd is C++ too (csrc/autograd.cpp, the
// Autograd key); the fake (meta) implementations live in Python
// (fusedrnn/ops.py, torch.library.register_fake).
//
// Shapes (T = sequence length, B = batch, I = input size, H = hidden size,
// L = number of layers; all tensors of one call share dtype and device):
//
// lstm_forward
//   input   (T, B, I)
//   hx, cx  (L, B, H)
//   weights per layer, in nn.LSTM's order: w_ih (4H, I or H), w_hh (4H, H),
//           then b_ih (4H), b_hh (4H) when has_biases
//   train   when true, the activations backward needs are returned:
//             gates   (L, T, B, 4H)  activated i, f, g, o
//             cells   (L, T, B, H)   c_t of every layer and step
//             hiddens (L-1, T, B, H) h_t of every layer but the last (the last
//                                    layer's h_t is `output`)
//           when false these three are empty tensors of shape (0,).
//   returns output (T, B, H), hy (L, B, H), cy (L, B, H), gates, cells, hiddens
//
// lstm_backward
//   takes the incoming gradients (grad_output (T,B,H), grad_hy, grad_cy (L,B,H);
//   pass zeros for those that are not needed), the forward's inputs, its
//   output and its saved gates/cells/hiddens, and returns
//   grad_input (T,B,I), grad_hx, grad_cx (L,B,H), and one gradient per weight.
//
// output_mask (every backward op): which gradients to compute, [input,
//   initial states (grad_hx, and grad_cx for the LSTM), weights]; default all.
//   A gradient left out is returned as an empty (0,) tensor (grad_weights as
//   an empty list), and its work is skipped where that saves any: the layer-0
//   input GEMM, the GEMMs into grad_hx, every weight and bias GEMM and
//   reduction.  (The autograd functions pass which inputs need a gradient,
//   as torch's cuDNN RNN backward does.)
//
// gru_forward
//   input   (T, B, I)
//   hx      (L, B, H)
//   weights per layer, in nn.GRU's order: w_ih (3H, I or H), w_hh (3H, H),
//           then b_ih (3H), b_hh (3H) when has_biases; gate order r, z, n
//   train   when true, the activations backward needs are returned:
//             saved   (L, T, B, 4H)  per row [r | z | n | gh_n]: the activated
//                                    r, z, n and gh_n = W_hn h_{t-1} + b_hn (the
//                                    recurrent n part, needed for dr because b_hn
//                                    sits inside r·(…))
//             hiddens (L-1, T, B, H) h_t of every layer but the last
//           when false both are empty tensors of shape (0,).
//   returns output (T, B, H), hy (L, B, H), saved, hiddens
//
// gru_backward
//   takes grad_output (T,B,H) and grad_hy (L,B,H) (zeros for those not
//   needed), the forward's inputs, its output and its saved/hiddens;
//   returns grad_input (T,B,I), grad_hx (L,B,H) and one gradient per weight.
//
// rnn_forward (plain Elman RNN: h' = tanh or relu(x W_ihᵀ + b_ih + h W_hhᵀ + b_hh))
//   input (T, B, I); hx (L, B, H); weights as nn.RNN's: w_ih (H, I or H),
//   w_hh (H, H), then b_ih (H), b_hh (H) when has_biases; relu selects ReLU
//   (else tanh).  train: hiddens (L-1, T, B, H) h_t of every layer but the last
//   (the activation's derivative is a function of h_t alone), else (0,).
//   returns output (T, B, H), hy (L, B, H), hiddens
//
// rnn_backward
//   takes grad_output (T,B,H), grad_hy (L,B,H), the forward's inputs, its
//   output and hiddens; returns grad_input, grad_hx and one gradient per weight.
//
// Packed sequences (every op): batch_sizes, when given, is a PackedSequence's
// (1-D int64 on the CPU, non-increasing, every entry >= 1; T = its length,
// B = batch_sizes[0]) and every (T, B, X) tensor above is instead (N, X), the
// packed rows (N = sum(batch_sizes)): step t is rows off[t] .. off[t]+bs[t]-1
// and holds sequences 0 .. bs[t]-1.  No work is done for padding, and
// hy/cy hold each sequence's state at its own last step.  The backward call
// takes the same batch_sizes as the forward.  (See SeqLayout in rnn_checks.h.)
//
// LSTM projection (nn.LSTM's proj_size = P < H): each layer's weights gain a
// fifth (third without biases) tensor w_hr (P, H); h_t = (o ⊙ tanh c_t) W_hrᵀ
// is (B, P), so hx, hy, output, hiddens and grad_hy/grad_output have P
// columns, w_hh is (4H, P) and w_ih of layers > 0 is (4H, P).  The op sees the
// projection from w_hh's shape.
//
// Bidirectional stacks (every op): directions = 2 runs each layer twice, the
// second time (the "reverse" direction, nn.LSTM's `_reverse` weights) over
// every sequence reversed in time (within its own length when packed), and
// the layer's output is the two directions' outputs concatenated, [forward |
// reverse] in time order, which is the next layer's input.  Then hx, cx, hy,
// cy, grad_hy, grad_cy are (2L, B, ·) in (layer, direction) order; weights
// hold one group per (layer, direction) in that order (nn.LSTM's flat
// weights), layer l > 0's w_ih being (gates*H, 2P); output and grad_output
// are (T, B, 2P); the saved activations gates/cells/saved are (2L, T, B, ·)
// (the reverse direction's rows in its own processing order: each sequence
// reversed), hiddens (L-1, T, B, 2P).  csrc/bidirectional.cpp implements it
// on top of the one-direction op, for every backend.
#include <torch/library.h>

TORCH_LIBRARY(fusedrnn, m) {
  m.def(
      "lstm_forward(Tensor input, Tensor hx, Tensor cx, Tensor[] weights, "
      "bool has_biases, bool train, Tensor? batch_sizes=None, int directions=1) -> (Tensor output, Tensor hy, Tensor cy, "
      "Tensor gates, Tensor cells, Tensor hiddens)");
  m.def(
      "lstm_backward(Tensor grad_output, Tensor grad_hy, Tensor grad_cy, "
      "Tensor input, Tensor hx, Tensor cx, Tensor[] weights, bool has_biases, "
      "Tensor output, Tensor gates, Tensor cells, Tensor hiddens, Tensor? batch_sizes=None, int directions=1, "
      "bool[3] output_mask=[True, True, True]) -> "
      "(Tensor grad_input, Tensor grad_hx, Tensor grad_cx, Tensor[] grad_weights)");
  m.def(
      "gru_forward(Tensor input, Tensor hx, Tensor[] weights, bool has_biases, bool train, "
      "Tensor? batch_sizes=None, int directions=1) "
      "-> (Tensor output, Tensor hy, Tensor saved, Tensor hiddens)");
  m.def(
      "gru_backward(Tensor grad_output, Tensor grad_hy, Tensor input, Tensor hx, "
      "Tensor[] weights, bool has_biases, Tensor output, Tensor saved, Tensor hiddens, "
      "Tensor? batch_sizes=None, int directions=1, bool[3] output_mask=[True, True, True]) -> "
      "(Tensor grad_input, Tensor grad_hx, Tensor[] grad_weights)");
  m.def(
      "rnn_forward(Tensor input, Tensor hx, Tensor[] weights, bool has_biases, bool relu, "
      "bool train, Tensor? batch_sizes=None, int directions=1) -> (Tensor output, Tensor hy, Tensor hiddens)");
  m.def(
      "rnn_backward(Tensor grad_output, Tensor grad_hy, Tensor input, Tensor hx, "
      "Tensor[] weights, bool has_biases, bool relu, Tensor output, Tensor hiddens, "
      "Tensor? batch_sizes=None, int directions=1, bool[3] output_mask=[True, True, True]) -> "
      "(Tensor grad_input, Tensor grad_hx, Tensor[] grad_weights)");
}
