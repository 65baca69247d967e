// The large matrix products of the CPU ops (input projections over all
// timesteps, weight and input gradients), on at::Tensors: gemm.h's packed
// AVX-512 kernel for float32 when the fused CPU kernels are on (see
// fusedrnn._C.set_cpu_fast_step_enabled), ATen (MKL) otherwise.
#pragma once

#include <ATen/ATen.h>

#include "cpu/gemm.h"

namespace fusedrnn {

// Defined in lstm_cpu.cpp, which owns the switch of the project's float32
// CPU kernels (fusedrnn._C.set_cpu_fast_step_enabled) and installs their
// threading hook the first time availability is asked.
bool cpu_fast_step_available();
bool cpu_fast_step_enabled();

namespace cpu {

// Whether t's op runs the project's kernels: the fused step kernels and the
// products below (float32 on a CPU with AVX-512, the switch on).
inline bool use_fast_kernels(const at::Tensor& t) {
  return t.is_cpu() && t.scalar_type() == at::kFloat && cpu_fast_step_enabled() &&
         cpu_fast_step_available();
}

// C = (accumulate ? C : 0) + A · B (+ bias, broadcast over rows).  2-D
// tensors with any strides; bias (N) only with accumulate == false.
inline void product_into(at::Tensor& C, const at::Tensor& A, const at::Tensor& B,
                    bool accumulate = false, const at::Tensor* bias = nullptr) {
  if (use_fast_kernels(C) && A.scalar_type() == at::kFloat &&
      B.scalar_type() == at::kFloat) {
    const at::Tensor b = bias ? bias->contiguous() : at::Tensor();
    sgemm(C.size(0), C.size(1), A.size(1), {A.const_data_ptr<float>(), A.stride(0), A.stride(1)},
          {B.const_data_ptr<float>(), B.stride(0), B.stride(1)},
          {C.mutable_data_ptr<float>(), C.stride(0), C.stride(1)}, accumulate,
          bias ? b.const_data_ptr<float>() : nullptr);
  } else if (accumulate) {
    C.addmm_(A, B);
  } else if (bias) {
    at::addmm_out(C, *bias, A, B);
  } else {
    at::mm_out(C, A, B);
  }
}

inline at::Tensor product(const at::Tensor& A, const at::Tensor& B) {
  at::Tensor C = at::empty({A.size(0), B.size(1)}, A.options());
  product_into(C, A, B);
  return C;
}

}  // namespace cpu
}  // namespace fusedrnn
