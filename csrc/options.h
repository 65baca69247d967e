// Process-wide switches of fusedrnn's kernels, read by the backends at each op
// call and set from Python through fusedrnn.set_option (fusedrnn/__init__.py)
// -> fusedrnn._C.set_option (csrc/module.cpp).  Each option is a small integer
// whose meaning the table in options.cpp documents; 0 is always "auto".
#pragma once

#include <cstdint>

namespace fusedrnn {

enum class Option : int {
  // Which CUDA LSTM tier runs: 0 auto (the selector), 1 the general tier
  // (one fused kernel per layer-timestep), 2 the persistent wavefront kernel
  // (an error when the sizes do not fit it).
  kCudaTier = 0,
  // How the general tier issues its T·L step kernels: 0 auto, 1 one launch per
  // step from the host loop, 2 the step loop captured once in a CUDA graph and
  // replayed (csrc/cuda/step_graph.h).  auto = the graph for the LSTM, as fast
  // or faster at every LSTM size benchmarked on an H100 (lstm_cuda.cu,
  // graph_mode), and for GRU/RNN too (gru_rnn_cuda.cu, gru_rnn_graph_mode:
  // every value but 1 takes the graph).
  kCudaStepLaunch = 1,
  // Tensor-core (WMMA) products in the persistent tier's kernels (forward and
  // backward), for bfloat16/float16 (float32 as TF32 when torch's matmul TF32
  // flag allows it) where the tiles fit
  // (csrc/cuda/persistent_plan.h): 0 auto
  // (= off: EXPERIMENTAL; it passes its tests on an H200 but measured faster
  // only at 8 layers, 2026-12-04), 1 off, 2 on.
  kPersistentMma = 2,
  // Bidirectional layers on CUDA (ops with directions=2): 0 auto (one_launch
  // for GRU/RNN, and for the LSTM unless the persistent tier would run its
  // directions: lstm_cuda.cu one_launch_applies; measured on an H200,
  // 2026-12-04), 1 separate (each direction its own one-direction op call,
  // csrc/bidirectional.cpp), 2 one_launch (the general tier runs both
  // directions of a layer with one kernel launch per step, every cell:
  // lstm_cuda.cu, gru_rnn_cuda.cu; the LSTM falls back to separate with a
  // projection or cuda_tier='persistent').
  kCudaBidirectional = 3,
  // The persistent tier's backward may split the batch across up to 4 CTAs per
  // unit block where its staged rows (8H long) do not fit one CTA whole
  // (csrc/cuda/persistent_plan.h, plan_lstm's max_batch_split): 0 auto (= on:
  // measured on an H200, 2026-12-04, D2L L=2 forward+backward 1.587 -> 1.280
  // ms, no change where the rows fit whole), 1 off, 2 on.
  kPersistentBwdSplit = 4,
  // The persistent forward's FMA path applies the LSTM cell CTA-wide, one
  // (unit, batch row) pair per thread after all of a chunk's warp tasks
  // (csrc/cuda/persistent_plan.h, cta_epilogue_bytes), instead of lane r of
  // each task for its row: 0 auto (on for float32 and 2-byte scalars where
  // its product area costs no staged rows, off for float64: measured on an
  // H200, 2026-12-04, persistent_plan.h plan_lstm_auto), 1 off, 2 on.
  kPersistentCtaEpilogue = 5,
  // Threads per CTA of the persistent kernels: 0 auto, 1 256, 2 512 (twice
  // the warps per SM to hide latency with, at most 128 registers a thread;
  // not with the tensor-core products).  auto: 512 for the float32 and
  // 2-byte backward and the float32 forward with >= 16 warp tasks per CTA,
  // else 256 (measured on an H200, 2026-12-04; persistent_plan.h,
  // auto_threads).
  kPersistentThreads = 6,
  // Hidden units per forward warp task in the persistent tier's FMA path: 0
  // auto (= 1), 1, 2 (EXPERIMENTAL, written without a GPU on 2026-12-04: a
  // task of two units x 8 batch rows loads each staged chunk once for 64
  // products instead of 32, a third less shared-memory traffic per product;
  // only with the CTA-wide epilogue, at 256 threads per CTA or (float32) 512,
  // persistent_plan.h "two-unit forward tasks"), 3 "regs" (EXPERIMENTAL,
  // written without a GPU on 2026-12-05: float32 forward weights resident in
  // registers, each warp owning up to 8 gate rows for every step, so the k
  // loop reads only the staged rows from shared memory; 256 threads, the
  // CTA-wide epilogue, H % 4 == 0, a staged row K <= 512 (K = H at L = 1, else 2H);
  // persistent_plan.h kFwdRegs).
  kPersistentFwdTaskUnits = 7,
  kCount = 8,
};

// Current value (thread-safe; relaxed atomics).
int64_t get_option(Option o);
void set_option(Option o, int64_t value);

// Name <-> option, for the Python binding.  Returns -1 for an unknown name.
int option_index(const char* name);
const char* option_name(int index);
// Number of values an option takes (values are 0 .. count-1).
int64_t option_value_count(int index);

}  // namespace fusedrnn
