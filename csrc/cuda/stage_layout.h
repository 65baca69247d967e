// The per-step staging copy of the persistent kernels (lstm_persistent.cu,
// stage_rows), shared by the CUDA kernels and a CPU replay that the CPU tests
// run (tests/test_persistent_plan.py, through fusedrnn._C.persistent_stage_check).
//
// Every step each CTA copies `rows` rows of kv elements (16-byte vectors, or
// scalars) of the step's input into shared memory: element (b, k) comes from
// a[b * ldv + k] for k < kav, else from c[b * ldv + k - kav], and goes to
// dst[b * dst_ldv + k].  Thread tid takes the elements idx = b * kv + k =
// tid, tid + nthreads, ... and issues `Batch` loads before it stores any.
//
// Why this is its own code: the first version found (b, k) from idx with a
// division and a remainder per element, twice (load and store).  The SASS of
// the float32 kernels (sm_90, nvdisasm, 2026-12-04) showed ~660 instructions
// per round of 8 elements, most of them the integer division: at D2L L2,
// float32, about 1,300 of the ~4,000 instructions a warp of the second
// layer issues per forward step, and ~2,600 per backward step, in a kernel
// that ncu found issue-bound (H100, 2026-11-23: 2 warps per scheduler, 66%
// of cycles with no eligible warp).  Here a thread divides once per call and
// then steps (b, k) by additions: nthreads = db * kv + dk.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#if defined(__CUDACC__)
#define FUSEDRNN_STAGE_HD __host__ __device__ __forceinline__
#define FUSEDRNN_STAGE_UNROLL _Pragma("unroll")
#else
#define FUSEDRNN_STAGE_HD inline
#define FUSEDRNN_STAGE_UNROLL
#endif

namespace fusedrnn {
namespace persistent {

// Loads each thread issues before it stores any (the kernels' batch).
constexpr int kStageBatch = 8;

// A thread's position (b, k) in its walk, and the stride nthreads as whole
// rows db plus columns dk.
struct StageWalk {
  int b, k, db, dk;
};

// kv > 0.
FUSEDRNN_STAGE_HD StageWalk stage_walk_begin(int tid, int nthreads, int kv) {
  StageWalk w;
  w.b = tid / kv;
  w.k = tid - w.b * kv;
  w.db = nthreads / kv;
  w.dk = nthreads - w.db * kv;
  return w;
}

// The next element, nthreads further on: (b, k) + (db, dk), carrying into b
// (dk < kv and k < kv, so at most one carry).
FUSEDRNN_STAGE_HD void stage_walk_next(StageWalk& w, int kv) {
  w.b += w.db;
  w.k += w.dk;
  if (w.k >= kv) {
    w.k -= kv;
    ++w.b;
  }
}

// Thread tid's share of the copy.  load(side, offset) returns the element at
// offset of a (side 0) or c (side 1); store(offset, value) writes dst.
// Nothing to do when rows or kv is 0 (the backward's top layer stages no
// columns at its last step).  Offsets are int: the kernels' staged rows fit
// in shared memory, so b * ldv + k < rows * kv does too (ldv <= kv there).
// The body is straight-line code: a slot past the end (only in a thread's
// last round) loads element (0, 0) again and does not store it, which costs
// less than a branch around every element.
template <int Batch, typename V, typename Load, typename Store>
FUSEDRNN_STAGE_HD void stage_copy(int tid, int nthreads, int rows, int kv, int kav, int ldv,
                                  int dst_ldv, const Load& load, const Store& store) {
  if (rows <= 0 || kv <= 0) return;
  StageWalk w = stage_walk_begin(tid, nthreads, kv);
  while (w.b < rows) {
    V v[Batch];
    int doff[Batch];
    FUSEDRNN_STAGE_UNROLL
    for (int u = 0; u < Batch; ++u) {
      const bool valid = w.b < rows;
      const int b = valid ? w.b : 0, k = valid ? w.k : 0;
      doff[u] = valid ? b * dst_ldv + k : -1;
      const int side = k < kav ? 0 : 1;
      v[u] = load(side, b * ldv + (side == 0 ? k : k - kav));
      stage_walk_next(w, kv);
    }
    FUSEDRNN_STAGE_UNROLL
    for (int u = 0; u < Batch; ++u) {
      if (doff[u] >= 0) store(doff[u], v[u]);
    }
  }
}

// CPU replay of one CTA's copy (every thread of nthreads, the kernels'
// kStageBatch) on arrays: "" when every staged element (b, k) holds the
// right source element, was stored once by thread (b * kv + k) % nthreads
// (consecutive threads take consecutive elements: coalesced), nothing else
// of dst was written and no load left its side's rows; else what went wrong.
inline std::string stage_copy_check(int nthreads, int rows, int kv, int kav, int ldv,
                                    int dst_ldv) {
  if (nthreads <= 0 || rows < 0 || kv < 0 || kav < 0 || kav > kv || dst_ldv < kv ||
      ldv < kv - kav || ldv < kav)
    return "invalid arguments";
  // Source element (side, b, col) is encoded as a distinct positive value.
  const auto code = [&](int side, int b, int col) {
    return 1 + side + 2 * (static_cast<int64_t>(b) * (ldv + 1) + col);
  };
  const int64_t a_len = rows > 0 ? static_cast<int64_t>(rows - 1) * ldv + kav : 0;
  const int64_t c_len = rows > 0 ? static_cast<int64_t>(rows - 1) * ldv + (kv - kav) : 0;
  std::vector<int64_t> dst(static_cast<size_t>(rows) * dst_ldv, 0);
  std::vector<int> writer(dst.size(), -1);
  std::string err;
  for (int tid = 0; tid < nthreads && err.empty(); ++tid) {
    const auto load = [&](int side, int off) -> int64_t {
      const int64_t len = side == 0 ? a_len : c_len;
      if (off < 0 || off >= len) {
        if (err.empty())
          err = "thread " + std::to_string(tid) + " loaded offset " + std::to_string(off) +
                " of side " + std::to_string(side) + " (" + std::to_string(len) + " elements)";
        return 0;
      }
      return code(side, off / ldv, off % ldv);
    };
    const auto store = [&](int off, int64_t v) {
      if (off < 0 || off >= static_cast<int>(dst.size()) || off % dst_ldv >= kv) {
        if (err.empty()) err = "thread " + std::to_string(tid) + " stored to offset " +
                               std::to_string(off);
        return;
      }
      if (writer[off] != -1 && err.empty())
        err = "offset " + std::to_string(off) + " stored twice";
      writer[off] = tid;
      dst[off] = v;
    };
    stage_copy<kStageBatch, int64_t>(tid, nthreads, rows, kv, kav, ldv, dst_ldv, load, store);
  }
  for (int b = 0; b < rows && err.empty(); ++b) {
    for (int k = 0; k < kv && err.empty(); ++k) {
      const int off = b * dst_ldv + k;
      const int64_t want = k < kav ? code(0, b, k) : code(1, b, k - kav);
      if (dst[off] != want) {
        err = "element (" + std::to_string(b) + ", " + std::to_string(k) + ") is wrong";
      } else if (writer[off] != (b * kv + k) % nthreads) {
        err = "element (" + std::to_string(b) + ", " + std::to_string(k) +
              ") was stored by thread " + std::to_string(writer[off]);
      }
    }
  }
  return err;
}

}  // namespace persistent
}  // namespace fusedrnn
