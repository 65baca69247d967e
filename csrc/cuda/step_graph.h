// A small cache of CUDA graphs for the step loops of the general tier
// (csrc/cuda/lstm_cuda.cu), selected by the option "cuda_step_launch" = graph.
//
// The loop of one layer issues T small kernels whose launch overhead dominates
// at small sizes.  run_step_graph() records such a loop into a CUDA graph once
// and afterwards replays it with one cudaGraphLaunch:
//
//   * The cache is keyed by the loop's *topology*: a vector of integers that
//     the caller fills with everything that changes the sequence of kernels
//     or their grids (device, dtype, direction, T, batch sizes of a packed
//     layout, H, tile config, which optional outputs exist, ...).
//   * Each entry also remembers the *pointer signature* (every data pointer
//     the loop passes to a kernel) it was recorded with.  Same topology and
//     same pointers: plain replay (no capture).  Same topology, new pointers:
//     the loop is recorded again (host work comparable to launching it) and
//     the executable graph is patched with cudaGraphExecUpdate, which is far
//     cheaper than a new instantiation; if the update is refused, the graph is
//     instantiated anew.  A replay therefore always uses exactly the pointers
//     of the current call, so no buffer has to outlive the call.
//   * Recording happens on a dedicated non-blocking stream of this cache (one
//     per device): the legacy default stream, which is PyTorch's default
//     current stream, cannot be captured, and a stream from PyTorch's pool
//     could receive other threads' work while it is capturing.  The capture
//     mode is cudaStreamCaptureModeThreadLocal, so other threads are not
//     restricted.  The executable graph is launched on the caller's stream,
//     so it is ordered with the surrounding work exactly like the per-step
//     launches it replaces.
//   * The recorded loop must not allocate, synchronize or call libraries that
//     allocate lazily (cuBLAS): only kernel launches.
//   * When the caller's stream is itself being captured (the user's own CUDA
//     graph), or when recording fails for any reason, run_step_graph returns
//     false and the caller issues the launches one by one: recording only
//     records, so nothing has run yet in that case.
//   * Destroying an executable graph that may still run is undefined, so each
//     entry records an event after each launch and waits on it before
//     destroying the graph (eviction, re-instantiation).  The cache holds at
//     most kMaxEntries graphs (least recently used evicted) and is never
//     destroyed (it lives until process exit, avoiding CUDA calls during
//     static destruction).
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <mutex>
#include <utility>
#include <vector>

namespace fusedrnn {
namespace step_graph {

struct Entry {
  cudaGraphExec_t exec = nullptr;
  cudaEvent_t done = nullptr;  // recorded after each launch of exec
  std::vector<const void*> ptrs;
  std::list<std::vector<int64_t>>::iterator lru;  // position in Cache::order
};

struct Cache {
  static constexpr size_t kMaxEntries = 256;
  std::mutex mu;
  std::map<std::vector<int64_t>, Entry> entries;
  std::list<std::vector<int64_t>> order;  // most recently used first
  std::map<int, cudaStream_t> capture_streams;  // device -> recording stream
};

inline Cache& cache() {
  static Cache* c = new Cache();  // intentionally leaked (see above)
  return *c;
}

// Frees an entry's graph once its last launch has finished.
inline void destroy_exec(Entry& e) {
  if (e.done != nullptr) {
    C10_CUDA_CHECK_WARN(cudaEventSynchronize(e.done));
  }
  if (e.exec != nullptr) {
    C10_CUDA_CHECK_WARN(cudaGraphExecDestroy(e.exec));
    e.exec = nullptr;
  }
}

// Records `record(stream)` on the cache's stream of the current device and
// returns the graph, or nullptr when recording failed (the error state is
// cleared).  Called with the cache's mutex held.
inline cudaGraph_t record_graph(Cache& c, int device,
                                const std::function<void(cudaStream_t)>& record) {
  cudaStream_t cs;
  auto it = c.capture_streams.find(device);
  if (it == c.capture_streams.end()) {
    C10_CUDA_CHECK(cudaStreamCreateWithFlags(&cs, cudaStreamNonBlocking));
    c.capture_streams.emplace(device, cs);
  } else {
    cs = it->second;
  }
  if (cudaStreamBeginCapture(cs, cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
    (void)cudaGetLastError();
    return nullptr;
  }
  bool ok = true;
  try {
    record(cs);
  } catch (...) {
    ok = false;  // e.g. a launch check that failed while recording
  }
  cudaGraph_t graph = nullptr;
  const cudaError_t err = cudaStreamEndCapture(cs, &graph);
  if (!ok || err != cudaSuccess || graph == nullptr) {
    if (graph != nullptr) (void)cudaGraphDestroy(graph);
    (void)cudaGetLastError();
    return nullptr;
  }
  return graph;
}

// Runs the step loop `record` through a cached CUDA graph on `stream` (the
// caller's current stream of the current device).  Returns true when the loop
// has been enqueued on `stream`, false when the caller must issue the
// launches itself (nothing has been enqueued then).  `topology` and `ptrs`
// are described at the top of this file.
inline bool run_step_graph(const std::vector<int64_t>& topology,
                           const std::vector<const void*>& ptrs, cudaStream_t stream,
                           const std::function<void(cudaStream_t)>& record) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &status) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  if (status != cudaStreamCaptureStatusNone) return false;  // inside the user's capture

  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);

  auto it = c.entries.find(topology);
  if (it == c.entries.end() || it->second.ptrs != ptrs) {
    cudaGraph_t graph = record_graph(c, device, record);
    if (graph == nullptr) return false;
    if (it != c.entries.end()) {
      // Same topology, new pointers: patch the executable graph in place
      // (launches already enqueued keep their old parameters).
      Entry& e = it->second;
      cudaGraphExecUpdateResultInfo info;
      if (cudaGraphExecUpdate(e.exec, graph, &info) != cudaSuccess) {
        (void)cudaGetLastError();
        destroy_exec(e);
        if (cudaGraphInstantiate(&e.exec, graph, 0) != cudaSuccess) {
          (void)cudaGetLastError();
          e.exec = nullptr;
          (void)cudaGraphDestroy(graph);
          if (e.done != nullptr) C10_CUDA_CHECK_WARN(cudaEventDestroy(e.done));
          c.order.erase(e.lru);
          c.entries.erase(it);
          return false;
        }
      }
      e.ptrs = ptrs;
    } else {
      cudaGraphExec_t exec = nullptr;
      if (cudaGraphInstantiate(&exec, graph, 0) != cudaSuccess) {
        (void)cudaGetLastError();
        (void)cudaGraphDestroy(graph);
        return false;
      }
      if (c.entries.size() >= Cache::kMaxEntries) {
        auto victim = c.entries.find(c.order.back());
        destroy_exec(victim->second);
        if (victim->second.done != nullptr) {
          C10_CUDA_CHECK_WARN(cudaEventDestroy(victim->second.done));
        }
        c.entries.erase(victim);
        c.order.pop_back();
      }
      Entry e;
      e.exec = exec;
      e.ptrs = ptrs;
      C10_CUDA_CHECK(cudaEventCreateWithFlags(&e.done, cudaEventDisableTiming));
      c.order.push_front(topology);
      e.lru = c.order.begin();
      it = c.entries.emplace(topology, std::move(e)).first;
    }
    C10_CUDA_CHECK(cudaGraphDestroy(graph));
  }

  Entry& e = it->second;
  c.order.splice(c.order.begin(), c.order, e.lru);  // most recently used
  C10_CUDA_CHECK(cudaGraphLaunch(e.exec, stream));
  C10_CUDA_CHECK(cudaEventRecord(e.done, stream));
  return true;
}

// A loop's topology key: `head` (the caller's loop kind, layer, dtype, sizes,
// tile and flags: whatever picks its kernels and grids), then the current
// device and, for a packed layout, its batch sizes (the rows of each step).
// Callers use distinct kinds, so the LSTM's and GRU/RNN's loops never collide.
inline std::vector<int64_t> loop_key(std::vector<int64_t> head, bool packed,
                                     const std::vector<int64_t>& batch_sizes) {
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  head.push_back(device);
  head.push_back(packed ? 1 : 0);
  if (packed) head.insert(head.end(), batch_sizes.begin(), batch_sizes.end());
  return head;
}

// Runs `steps` (the launches of one layer's loop, onto the stream it is given)
// through a cached graph when `use_graph` and the graph can be used, else
// directly on `stream`.
inline void run_steps(bool use_graph, const std::vector<int64_t>& topology,
                      const std::vector<const void*>& ptrs, cudaStream_t stream,
                      const std::function<void(cudaStream_t)>& steps) {
  if (use_graph && run_step_graph(topology, ptrs, stream, steps)) return;
  steps(stream);
}

}  // namespace step_graph
}  // namespace fusedrnn
