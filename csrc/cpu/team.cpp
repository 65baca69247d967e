// See team.h.
#include "team.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#include <algorithm>
#include <atomic>
#include <exception>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define FUSEDRNN_PAUSE() _mm_pause()
#else
#define FUSEDRNN_PAUSE() ((void)0)
#endif

namespace fusedrnn {
namespace cpu {

namespace {

using Task = void (*)(void*, int64_t, int64_t);

// The current region is published like a seqlock: gen is odd while the
// calling thread writes it, even once it is complete.
struct Team {
  std::atomic<uint64_t> gen{0};   // 2k: k regions posted
  std::atomic<int> joined{0};     // helpers that have arrived (index 1, 2, ...)
  std::atomic<int> pending{0};    // helpers still running the current region
  std::atomic<bool> stop{false};
  std::atomic<int> parts{1};
  std::atomic<int64_t> n{0};
  std::atomic<void*> ctx{nullptr};
  std::atomic<Task> task{nullptr};
};

thread_local Team* t_team = nullptr;  // set on the thread running a team's body

void run_chunk(Task task, void* ctx, int64_t n, int parts, int c) {
  const int64_t per = (n + parts - 1) / parts;
  const int64_t b = std::min(n, c * per), e = std::min(n, b + per);
  if (b < e) task(ctx, b, e);
}

[[maybe_unused]] void helper(Team& team) {
  const int idx = team.joined.fetch_add(1) + 1;
  // 0, not the current gen: a region posted between joining and this load
  // may count on this helper.
  uint64_t seen = 0;
  for (;;) {
    const uint64_t g = team.gen.load();
    if (g == seen || (g & 1)) {
      if (team.stop.load()) return;
      FUSEDRNN_PAUSE();
      continue;
    }
    const int parts = team.parts.load();
    const int64_t n = team.n.load();
    void* const ctx = team.ctx.load();
    const Task task = team.task.load();
    if (team.gen.load() != g) continue;  // being rewritten: read it again
    seen = g;
    // A region posted before this helper joined was split without it.
    if (idx >= parts) continue;
    run_chunk(task, ctx, n, parts, idx);
    team.pending.fetch_sub(1);
  }
}

}  // namespace

bool team_run(int64_t n, void* ctx, Task task) {
  Team* team = t_team;
  if (team == nullptr) return false;
  if (n <= 0) return true;
  const int parts =
      static_cast<int>(std::min<int64_t>(n, 1 + team->joined.load()));
  if (parts <= 1) {
    task(ctx, 0, n);
    return true;
  }
  team->gen.fetch_add(1);  // odd: writing
  team->parts.store(parts);
  team->n.store(n);
  team->ctx.store(ctx);
  team->task.store(task);
  team->pending.store(parts - 1);
  team->gen.fetch_add(1);  // even: posted
  run_chunk(task, ctx, n, parts, 0);
  while (team->pending.load() != 0) FUSEDRNN_PAUSE();
  return true;
}

void run_with_team(int threads, void (*body)(void*), void* ctx) {
#ifndef _OPENMP
  // A torch without OpenMP: no team; the kernels use at::parallel_for.
  (void)threads;
  body(ctx);
#else
  if (threads <= 1 || omp_in_parallel() || t_team != nullptr) {
    body(ctx);
    return;
  }
  Team team;
  std::exception_ptr error;
#pragma omp parallel num_threads(threads)
  {
    if (omp_get_thread_num() == 0) {
      t_team = &team;
      try {
        body(ctx);
      } catch (...) {
        error = std::current_exception();
      }
      t_team = nullptr;
      team.stop.store(true);
    } else {
      helper(team);
    }
  }
  if (error) std::rethrow_exception(error);
#endif
}

}  // namespace cpu
}  // namespace fusedrnn
