// A guard shared by the CUDA ops: packed sequences are refused inside a CUDA
// graph capture of the caller's stream.  Their row-index tensors (final
// states, previous-step rows for dW_hh) are built on the host and copied to
// the device on each call; a captured copy would re-read that host memory on
// every replay, after it may have been freed.  A padded batch captures fine.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>

#include "rnn_checks.h"

namespace fusedrnn {

// Call after the CUDAGuard (it asks about the current stream of the device).
inline void check_packed_not_capturing(const SeqLayout& q, const char* op) {
  if (!q.packed) return;
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(at::cuda::getCurrentCUDAStream(), &status));
  TORCH_CHECK_NOT_IMPLEMENTED(
      status == cudaStreamCaptureStatusNone, "fusedrnn.", op,
      " (CUDA): packed sequences (batch_sizes) cannot be captured in a CUDA graph yet (their "
      "row indices are copied from the host on every call); capture a padded batch instead");
}

}  // namespace fusedrnn
