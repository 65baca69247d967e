// Packed AVX-512 single-precision matrix product for the large products of
// the CPU path (input projections over all timesteps, weight and input
// gradients), written for this project because MKL runs a non-AVX-512 code
// path on AMD CPUs (about 40% of the FMA peak there).
//
//   C = [C +] A · B [+ 1·biasᵀ]          A (M × K), B (K × N), C (M × N)
//
// Every operand is addressed through strides, so transposed operands need no
// copy: element (i, j) of X lives at X.p[i * X.rs + j * X.cs].  A and B are
// packed block by block into the micro-kernel's layout (BLIS-style: B panels
// of 64 columns, A panels of 6 rows), C is updated by 6 × 64 register tiles.
//
// Results do not depend on the thread count: each element of C is summed in
// the same order (k ascending, in blocks of kKc) whichever thread owns it.
//
// With few rows of A (at most 8, A's rows and B's columns contiguous: a
// decoding step against a weight used transposed) each element is instead a
// dot product along k, straight from the operands, since packing would cost
// more than the product.
//
// On CPUs without AVX-512 (or under set_force_scalar) a plain loop computes
// the same product slowly; the torch-facing wrapper (cpu/products.h) uses
// ATen there.  Threading goes through fast_step.h's set_parallel_for hook.
#pragma once

#include <cstdint>

namespace fusedrnn {
namespace cpu {

struct ConstMat {
  const float* p;
  int64_t rs, cs;  // element (i, j) at p[i * rs + j * cs]
};
struct MutMat {
  float* p;
  int64_t rs, cs;
};

// C (M × N) = (accumulate ? C : 0) + A · B + (bias ? bias[j] : 0).
// bias (N floats) is only allowed with accumulate == false.  C must not
// alias A or B.  K == 0 gives C = (accumulate ? C : 0) + bias.
void sgemm(int64_t M, int64_t N, int64_t K, ConstMat A, ConstMat B, MutMat C,
           bool accumulate, const float* bias);

}  // namespace cpu
}  // namespace fusedrnn
