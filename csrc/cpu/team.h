// Holding threads across a recurrence's steps.
//
// A layer's recurrence is T short dependent parallel regions (one per step,
// tens of microseconds each).  Entering an OpenMP parallel region for each
// (at::parallel_for) costs time on every step: the 1-layer D2L forward alone
// took 4.1-5.1 ms that way against 4.0 ms with one region for the loop, on
// the 2-core development VM.  A spinning pool of our own threads was as fast
// alone but 30% slower next to torch's ops, whose OpenMP threads it fought
// for the cores.  run_with_team instead enters
// ONE OpenMP region (torch's own threads) for the whole loop: the calling
// thread runs the loop, the other threads of the region wait, spinning, for
// the parallel regions the loop's kernels post through team_run, and leave
// when the loop ends.
//
// The team never waits for a thread that has not arrived: a region is split
// among the threads that have joined by the time it is posted (with one
// thread, or nested inside another parallel region, everything runs on the
// calling thread).  The split never changes results: every task computes its
// outputs the same way on any thread.
#pragma once

#include <cstdint>
#include <type_traits>

namespace fusedrnn {
namespace cpu {

// Runs body(ctx) on the calling thread with up to threads - 1 helpers
// serving team_run; exceptions from body propagate to the caller.
void run_with_team(int threads, void (*body)(void*), void* ctx);

// Inside run_with_team's body, on its thread: runs task over [0, n) split in
// contiguous chunks among the team and returns true.  Elsewhere returns false
// (the caller then runs the region some other way).
bool team_run(int64_t n, void* ctx, void (*task)(void* ctx, int64_t begin, int64_t end));

template <typename F>
void with_team(int threads, F&& f) {
  run_with_team(
      threads, [](void* p) { (*static_cast<std::remove_reference_t<F>*>(p))(); }, &f);
}

}  // namespace cpu
}  // namespace fusedrnn
