// Standalone check + benchmark for csrc/cpu/fast_step.{h,cpp}.
// (.cc on purpose: the extension build globs csrc/cpu/*.cpp.)
//
// Build (one line):
//   g++ -O3 -std=c++17 -Icsrc csrc/cpu/fast_step.cpp csrc/cpu/fast_step_bench.cc -o /tmp/fsb -pthread
// Run:    /tmp/fsb            (checks + timings)
//         /tmp/fsb --quick    (checks only)
//         /tmp/fsb --bench-only [--reps N] [--shape B H]...

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <thread>
#include <vector>

#include "cell_math.h"
#include "cpu/fast_step.h"

using namespace fusedrnn;
using namespace fusedrnn::cpu;

// ---------------------------------------------------------------------------
// A small spinning thread pool implementing the ParallelFor hook: the calling
// thread runs chunk 0, workers run chunks 1..n-1 (contiguous static split).
// ---------------------------------------------------------------------------
namespace pool {
int g_threads = 1;
std::vector<std::thread> g_workers;
std::atomic<uint64_t> g_gen{0};
std::atomic<int> g_done{0};
std::atomic<bool> g_stop{false};
int64_t g_n = 0;
void* g_ctx = nullptr;
void (*g_task)(void*, int64_t, int64_t) = nullptr;

inline void cpu_relax() {
#if defined(__x86_64__)
  __builtin_ia32_pause();
#endif
}

void run_chunk(int id) {
  const int64_t n = g_n, nt = g_threads;
  const int64_t b = n * id / nt, e = n * (id + 1) / nt;
  if (b < e) g_task(g_ctx, b, e);
}

void worker(int id, uint64_t seen) {
  // seen = the generation current when the pool was started (a new worker
  // must not run the previous pool's last job).
  for (;;) {
    int spins = 0;
    uint64_t g;
    while ((g = g_gen.load(std::memory_order_acquire)) == seen) {
      if (g_stop.load(std::memory_order_relaxed)) return;
      if (++spins > 20000) std::this_thread::yield(); else cpu_relax();
    }
    seen = g;
    run_chunk(id);
    g_done.fetch_add(1, std::memory_order_acq_rel);
  }
}

void parallel_for(int64_t n, void* ctx, void (*task)(void*, int64_t, int64_t)) {
  if (g_threads <= 1) { task(ctx, 0, n); return; }
  g_n = n; g_ctx = ctx; g_task = task;
  g_done.store(0, std::memory_order_relaxed);
  g_gen.fetch_add(1, std::memory_order_acq_rel);
  run_chunk(0);
  int spins = 0;
  while (g_done.load(std::memory_order_acquire) != g_threads - 1) {
    if (++spins > 20000) std::this_thread::yield(); else cpu_relax();
  }
}

void stop() {
  g_stop.store(true);
  for (auto& t : g_workers) t.join();
  g_workers.clear();
  g_stop.store(false);
}

void start(int threads) {
  stop();
  g_threads = threads;
  const uint64_t gen0 = g_gen.load();
  for (int i = 1; i < threads; ++i) g_workers.emplace_back(worker, i, gen0);
  set_parallel_for(threads > 1 ? parallel_for : nullptr);
}
}  // namespace pool

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------
template <typename T>
struct AlignedBuf {
  T* p = nullptr;
  size_t n = 0;
  explicit AlignedBuf(size_t n_) : n(n_) {
    p = static_cast<T*>(std::aligned_alloc(64, ((n * sizeof(T) + 63) / 64) * 64 + 64));
    std::memset(p, 0, n * sizeof(T));
  }
  ~AlignedBuf() { std::free(p); }
  AlignedBuf(const AlignedBuf&) = delete;
  AlignedBuf& operator=(const AlignedBuf&) = delete;
  T* data() { return p; }
  T& operator[](size_t i) { return p[i]; }
};

struct ErrStat {
  double max_abs = 0, max_rel = 0;  // rel = |a-r| / max(|r|, 1e-3)
  long bad = 0, nan_mismatch = 0;
  void add(double a, double r, double atol = 1e-5, double rtol = 1e-5) {
    const bool an = std::isnan(a), rn = std::isnan(r);
    if (an || rn) { if (an != rn) ++nan_mismatch; return; }
    if (std::isinf(a) || std::isinf(r)) { if (a != r) ++bad; return; }
    const double d = std::fabs(a - r);
    max_abs = std::max(max_abs, d);
    max_rel = std::max(max_rel, d / std::max(std::fabs(r), 1e-3));
    if (d > atol + rtol * std::fabs(r)) ++bad;
  }
  void merge(const ErrStat& o) {
    max_abs = std::max(max_abs, o.max_abs);
    max_rel = std::max(max_rel, o.max_rel);
    bad += o.bad; nan_mismatch += o.nan_mismatch;
  }
  bool ok() const { return bad == 0 && nan_mismatch == 0; }
};

// ---------------------------------------------------------------------------
// Correctness over a grid
// ---------------------------------------------------------------------------
struct Case {
  int64_t B, H;
};

static int g_failures = 0;

// One forward + backward check against a double reference.
void check_case(int64_t B, int64_t H, bool inplace, bool with_gates, bool zero_h,
                bool with_dgnext, std::mt19937& rng, ErrStat& ef, ErrStat& eb,
                ErrStat& ef_vs_scalar) {
  std::uniform_real_distribution<float> U(-1.f, 1.f);
  const int64_t G = 4 * H;
  const int64_t ld_gx = G + 3, ld_h = H + 2, ld_ho = H + 5, ld_dy = H + 1;
  const float ws = 1.0f / std::sqrt(static_cast<float>(H));
  std::vector<float> W(G * H), gx(B * ld_gx), h(B * ld_h), c0(B * H);
  for (auto& v : W) v = U(rng) * ws * 2.0f;
  for (auto& v : gx) v = U(rng) * 2.0f;
  for (auto& v : h) v = zero_h ? 0.0f : U(rng);
  for (auto& v : c0) v = U(rng) * 2.0f;

  AlignedBuf<float> pf(packed_forward_size(H)), pb(packed_backward_size(H));
  pack_forward(W.data(), H, pf.data());
  pack_backward(W.data(), H, pb.data());

  std::vector<float> cbuf(c0), cout_sep(B * H, -7.f), hout(B * ld_ho, -7.f),
      gates(B * G, -7.f);
  float* c_out = inplace ? cbuf.data() : cout_sep.data();
  lstm_step_forward(B, H, pf.data(), gx.data(), ld_gx, zero_h ? nullptr : h.data(),
                    ld_h, cbuf.data(), c_out, hout.data(), ld_ho,
                    with_gates ? gates.data() : nullptr);

  // Scalar path for comparison.
  set_force_scalar(true);
  std::vector<float> cs(c0), hs(B * ld_ho, -7.f), gs(B * G, -7.f);
  lstm_step_forward(B, H, pf.data(), gx.data(), ld_gx, zero_h ? nullptr : h.data(),
                    ld_h, cs.data(), cs.data(), hs.data(), ld_ho, gs.data());
  set_force_scalar(false);

  // Reference.
  std::vector<double> rg(B * G), rc(B * H), rh(B * H);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t j = 0; j < H; ++j) {
      double pre[4];
      for (int g = 0; g < 4; ++g) {
        double s = gx[b * ld_gx + g * H + j];
        if (!zero_h)
          for (int64_t k = 0; k < H; ++k)
            s += static_cast<double>(h[b * ld_h + k]) * W[(g * H + j) * H + k];
        pre[g] = s;
      }
      auto r = lstm_cell_forward<double>(pre[0], pre[1], pre[2], pre[3], c0[b * H + j]);
      rg[b * G + 0 * H + j] = r.i; rg[b * G + 1 * H + j] = r.f;
      rg[b * G + 2 * H + j] = r.g; rg[b * G + 3 * H + j] = r.o;
      rc[b * H + j] = r.c; rh[b * H + j] = r.h;
    }
  }
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t j = 0; j < H; ++j) {
      ef.add(c_out[b * H + j], rc[b * H + j]);
      ef.add(hout[b * ld_ho + j], rh[b * H + j]);
      ef_vs_scalar.add(c_out[b * H + j], cs[b * H + j]);
      ef_vs_scalar.add(hout[b * ld_ho + j], hs[b * ld_ho + j]);
      if (with_gates)
        for (int g = 0; g < 4; ++g) {
          ef.add(gates[b * G + g * H + j], rg[b * G + g * H + j]);
          ef_vs_scalar.add(gates[b * G + g * H + j], gs[b * G + g * H + j]);
        }
    }
    // Padding of h_out must be untouched.
    for (int64_t j = H; j < ld_ho; ++j)
      if (hout[b * ld_ho + j] != -7.f) { ++ef.bad; }
  }
  if (!inplace)
    for (int64_t i = 0; i < B * H; ++i)
      if (cbuf[i] != c0[i]) { ++ef.bad; break; }
  if (!with_gates)
    for (auto v : gates)
      if (v != -7.f) { ++ef.bad; break; }

  // Backward: use the float gates/c from the scalar path as saved state.
  std::vector<float> dy(B * ld_dy), dGn(B * G), dc0(B * H);
  for (auto& v : dy) v = U(rng);
  for (auto& v : dGn) v = U(rng);
  for (auto& v : dc0) v = U(rng);
  std::vector<float> dc(dc0), dG(B * G, -7.f);
  const std::vector<float>& sg = gs;   // saved gates
  const std::vector<float>& sc = cs;   // saved c_t
  lstm_step_backward(B, H, pb.data(), dy.data(), ld_dy,
                     with_dgnext ? dGn.data() : nullptr, sg.data(), c0.data(),
                     sc.data(), dc.data(), dG.data());
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t j = 0; j < H; ++j) {
      double dh = dy[b * ld_dy + j];
      if (with_dgnext)
        for (int64_t n = 0; n < G; ++n)
          dh += static_cast<double>(dGn[b * G + n]) * W[n * H + j];
      const float* gt = &sg[b * G + j];
      auto r = lstm_cell_backward<double>(dh, dc0[b * H + j], gt[0], gt[H], gt[2 * H],
                                          gt[3 * H], c0[b * H + j], sc[b * H + j]);
      eb.add(dG[b * G + 0 * H + j], r.di);
      eb.add(dG[b * G + 1 * H + j], r.df);
      eb.add(dG[b * G + 2 * H + j], r.dg);
      eb.add(dG[b * G + 3 * H + j], r.do_);
      eb.add(dc[b * H + j], r.dc_prev);
    }
  }
}

void run_grid(const char* label) {
  std::mt19937 rng(1234);
  ErrStat ef_all, eb_all, es_all;
  const int64_t Bs[] = {1, 3, 32, 33};
  const int64_t Hs[] = {1, 5, 16, 17, 256, 300};
  for (int64_t B : Bs)
    for (int64_t H : Hs)
      for (int variant = 0; variant < 4; ++variant) {
        ErrStat ef, eb, es;
        const bool inplace = variant & 1, gates = variant != 2,
                   zero_h = variant == 3, dgn = variant != 3;
        check_case(B, H, inplace, gates, zero_h, dgn, rng, ef, eb, es);
        if (!ef.ok() || !eb.ok() || !es.ok()) {
          std::printf("  FAIL %s B=%ld H=%ld variant=%d: fwd bad=%ld nan=%ld "
                      "(max_abs %.3g) bwd bad=%ld nan=%ld (max_abs %.3g) "
                      "vs-scalar bad=%ld\n",
                      label, (long)B, (long)H, variant, ef.bad, ef.nan_mismatch,
                      ef.max_abs, eb.bad, eb.nan_mismatch, eb.max_abs, es.bad);
          ++g_failures;
        }
        ef_all.merge(ef); eb_all.merge(eb); es_all.merge(es);
      }
  std::printf("[%s] grid B{1,3,32,33} x H{1,5,16,17,256,300} x 4 variants:\n"
              "   forward  vs double ref: max_abs %.3g  max_rel %.3g  bad %ld\n"
              "   backward vs double ref: max_abs %.3g  max_rel %.3g  bad %ld\n"
              "   forward  vs scalar path: max_abs %.3g max_rel %.3g\n",
              label, ef_all.max_abs, ef_all.max_rel, ef_all.bad + ef_all.nan_mismatch,
              eb_all.max_abs, eb_all.max_rel, eb_all.bad + eb_all.nan_mismatch,
              es_all.max_abs, es_all.max_rel);
}

// Activation accuracy: h_prev = 0 and c_prev = 0 so gates_out = act(gx).
void check_activations() {
  const int64_t H = 4099, B = 64;  // odd H exercises the masked tail
  const int64_t G = 4 * H;
  std::vector<float> gx(B * G), c(B * H, 0.f), h(B * H), gates(B * G);
  std::vector<float> W(G * H, 0.f);
  AlignedBuf<float> pf(packed_forward_size(H));
  pack_forward(W.data(), H, pf.data());
  // Values: a dense log-spaced sweep in both signs, plus uniform in [-20,20].
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> U(-20.f, 20.f);
  std::uniform_real_distribution<float> L(-30.f, 4.5f);
  for (size_t i = 0; i < gx.size(); ++i) {
    if (i % 2) gx[i] = U(rng);
    else gx[i] = (i % 4 ? 1.f : -1.f) * std::exp(L(rng));
  }
  lstm_step_forward(B, H, pf.data(), gx.data(), G, nullptr, H, c.data(), c.data(),
                    h.data(), H, gates.data());
  double max_rel_sig = 0, max_rel_tanh = 0, max_abs_sig = 0, worst_s = 0, worst_t = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t n = 0; n < G; ++n) {
      const double x = gx[b * G + n];
      const bool is_g = (n / H) == 2;
      const double ref = is_g ? std::tanh(x) : 1.0 / (1.0 + std::exp(-x));
      const double got = gates[b * G + n];
      // Relative error where the result is a normal float; below FLT_MIN
      // (sigmoid(x < -87.3)) float has no relative precision left, and the
      // scalar formula gives 0 there too, so only the absolute error counts.
      const double fmin = std::numeric_limits<float>::min();
      const double d = std::fabs(got - ref);
      const double rel = std::fabs(ref) >= fmin ? d / std::fabs(ref) : (d < fmin ? 0.0 : 1.0);
      if (is_g) {
        if (rel > max_rel_tanh) { max_rel_tanh = rel; worst_t = x; }
      } else {
        if (rel > max_rel_sig) { max_rel_sig = rel; worst_s = x; }
        max_abs_sig = std::max(max_abs_sig, d);
      }
    }
  // tanh(c) through h = o * tanh(i*g) is covered by the grid; here the raw
  // activations.
  std::printf("[activations] %ld values: sigmoid max_rel %.3g at x=%.9g (max_abs %.3g), "
              "tanh max_rel %.3g at x=%.9g  (float eps = %.3g)\n",
              (long)(B * G), max_rel_sig, worst_s, max_abs_sig, max_rel_tanh, worst_t,
              (double)std::numeric_limits<float>::epsilon());
  if (max_rel_sig > 1e-6 || max_rel_tanh > 1e-6) {
    std::printf("  FAIL activation accuracy\n");
    ++g_failures;
  }
}

// Special values: NaN propagation and saturation.
void check_special() {
  const int64_t H = 19, B = 3, G = 4 * H;
  std::vector<float> W(G * H, 0.f);
  AlignedBuf<float> pf(packed_forward_size(H)), pb(packed_backward_size(H));
  pack_forward(W.data(), H, pf.data());
  pack_backward(W.data(), H, pb.data());
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float vals[] = {100.f, -100.f, 1e30f, -1e30f, inf, -inf, 88.5f, -88.5f,
                        89.f, -89.f, 1e-30f, -1e-30f, 0.f, -0.f, 9.f, -9.f,
                        20.f, -20.f, 1e-8f};
  int fails = 0;
  for (int mode = 0; mode < 2; ++mode) {  // 0 = AVX-512 (if any), 1 = scalar
    set_force_scalar(mode == 1);
    std::vector<float> gx(B * G), c(B * H, 0.5f), h(B * H), gates(B * G);
    // row 0: all gates = vals[j]; row 1: NaN in gate (j % 4) of unit j;
    // row 2: c_prev NaN at even units
    for (int64_t j = 0; j < H; ++j)
      for (int g = 0; g < 4; ++g) {
        gx[0 * G + g * H + j] = vals[j];
        gx[1 * G + g * H + j] = (g == j % 4) ? nan : 1.0f;
        gx[2 * G + g * H + j] = 0.3f;
      }
    for (int64_t j = 0; j < H; j += 2) c[2 * H + j] = nan;
    lstm_step_forward(B, H, pf.data(), gx.data(), G, nullptr, H, c.data(), c.data(),
                      h.data(), H, gates.data());
    for (int64_t j = 0; j < H; ++j) {
      const double x = vals[j];
      const double sr = 1.0 / (1.0 + std::exp(-x)), tr = std::tanh(x);
      for (int g = 0; g < 4; ++g) {
        const double got = gates[g * H + j], ref = g == 2 ? tr : sr;
        if (std::isnan(got) || std::fabs(got - ref) > 1e-6 * std::max(1.0, std::fabs(ref)) + 1e-38) {
          if (!(std::fabs(ref) < 1e-30 && std::fabs(got) < 1e-30)) {
            std::printf("  special: act(%g) gate %d -> %.9g (ref %.9g)\n", x, g, got, ref);
            ++fails;
          }
        }
      }
      if (std::isnan(h[j]) || std::isnan(c[j])) {
        std::printf("  special: NaN from finite/inf input %g\n", x);
        ++fails;
      }
      // NaN gate -> that gate NaN, c NaN unless the NaN is in o; h NaN.
      const int ng = j % 4;
      if (!std::isnan(gates[G + ng * H + j]) || !std::isnan(h[H + j]) ||
          (ng != 3 && !std::isnan(c[H + j]))) {
        std::printf("  special: NaN in gate %d not propagated (unit %ld)\n", ng, (long)j);
        ++fails;
      }
      if ((j % 2 == 0) != (std::isnan(c[2 * H + j]) && std::isnan(h[2 * H + j]))) {
        std::printf("  special: c_prev NaN propagation wrong at unit %ld\n", (long)j);
        ++fails;
      }
    }
    // Backward: NaN in c -> outputs NaN; huge c -> tanh saturates, no NaN.
    std::vector<float> dy(B * H, 1.f), dGn(B * G, 0.1f), sg(B * G, 0.5f),
        cp(B * H, 0.2f), cc(B * H, 0.3f), dc(B * H, 0.1f), dG(B * G);
    for (int64_t j = 0; j < H; ++j) { cc[j] = vals[j]; cc[H + j] = j % 2 ? nan : 1.f; }
    lstm_step_backward(B, H, pb.data(), dy.data(), H, dGn.data(), sg.data(), cp.data(),
                       cc.data(), dc.data(), dG.data());
    for (int64_t j = 0; j < H; ++j) {
      if (std::isnan(dc[j]) || std::isnan(dG[3 * H + j])) {
        std::printf("  special: backward NaN from c=%g\n", vals[j]);
        ++fails;
      }
      if ((j % 2 == 1) != std::isnan(dc[H + j])) {
        std::printf("  special: backward NaN propagation wrong at unit %ld\n", (long)j);
        ++fails;
      }
    }
  }
  set_force_scalar(false);
  std::printf("[special values] NaN propagation / saturation: %s\n",
              fails ? "FAIL" : "ok");
  if (fails) ++g_failures;
}

// ---------------------------------------------------------------------------
// Timing: a whole T-step sequence (distinct gx/gates per step, h chained),
// repeated; median per-step time.
// ---------------------------------------------------------------------------
using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

void bench(int64_t B, int64_t H, int threads, int reps) {
  const int64_t T = 35, G = 4 * H;
  std::mt19937 rng(99);
  std::uniform_real_distribution<float> U(-1.f, 1.f);
  std::vector<float> W(G * H);
  for (auto& v : W) v = U(rng) / std::sqrt((float)H);
  AlignedBuf<float> pf(packed_forward_size(H)), pb(packed_backward_size(H));
  pack_forward(W.data(), H, pf.data());
  pack_backward(W.data(), H, pb.data());
  AlignedBuf<float> gx(T * B * G), hs((T + 1) * B * H), c(B * H), gates(T * B * G),
      cs((T + 1) * B * H);
  for (size_t i = 0; i < gx.n; ++i) gx[i] = U(rng);
  AlignedBuf<float> dy(T * B * H), dG(2 * B * G), dc(B * H);
  for (size_t i = 0; i < dy.n; ++i) dy[i] = U(rng) * 0.01f;

  pool::start(threads);
  const double flop = 2.0 * B * H * G;
  // Per-step times (each step timed on its own, so a preemption by another
  // process spoils one sample, not a whole sequence).
  std::vector<double> tf, tb, tf1;
  for (int rep = 0; rep < reps; ++rep) {
    std::memset(c.data(), 0, B * H * sizeof(float));
    for (int64_t t = 0; t < T; ++t) {
      auto t0 = Clock::now();
      lstm_step_forward(B, H, pf.data(), gx.data() + t * B * G, G, hs.data() + t * B * H,
                        H, c.data(), c.data(), hs.data() + (t + 1) * B * H, H,
                        gates.data() + t * B * G);
      tf.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    }
    std::memset(dc.data(), 0, B * H * sizeof(float));
    for (int64_t t = T - 1; t >= 0; --t) {
      float* dg_cur = dG.data() + (t % 2) * B * G;
      const float* dg_next = t == T - 1 ? nullptr : dG.data() + ((t + 1) % 2) * B * G;
      auto t0 = Clock::now();
      lstm_step_backward(B, H, pb.data(), dy.data() + t * B * H, H, dg_next,
                         gates.data() + t * B * G, cs.data() + t * B * H,
                         cs.data() + (t + 1) * B * H, dc.data(), dg_cur);
      // t = T-1 has no product: not a full step, left out.
      if (dg_next != nullptr)
        tb.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    }
  }
  // Hot single step (same buffers every time).
  for (int rep = 0; rep < reps * 10; ++rep) {
    auto t0 = Clock::now();
    lstm_step_forward(B, H, pf.data(), gx.data(), G, hs.data(), H, c.data(), c.data(),
                      hs.data() + B * H, H, gates.data());
    tf1.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  std::vector<double> tb1;
  for (int rep = 0; rep < reps * 10; ++rep) {
    auto t0 = Clock::now();
    lstm_step_backward(B, H, pb.data(), dy.data(), H, dG.data(), gates.data(), cs.data(),
                       cs.data() + B * H, dc.data(), dG.data() + B * G);
    tb1.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  pool::start(1);
  auto line = [&](const char* what, std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const double med = v[v.size() / 2], p10 = v[v.size() / 10], best = v[0];
    std::printf("   %-19s %7.1f / %7.1f / %7.1f us   %6.1f / %6.1f / %6.1f GFLOP/s\n",
                what, med * 1e6, p10 * 1e6, best * 1e6, flop / med * 1e-9,
                flop / p10 * 1e-9, flop / best * 1e-9);
  };
  std::printf("B=%ld H=%ld threads=%d, %zu samples each (median / p10 / best per step):\n",
              (long)B, (long)H, threads, tf.size());
  line("forward (sequence)", tf);
  line("forward (hot step)", tf1);
  line("backward (sequence)", tb);
  line("backward (hot step)", tb1);
}

int main(int argc, char** argv) {
  bool quick = false, bench_only = false;
  std::vector<std::pair<int64_t, int64_t>> shapes;
  int reps = 300;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--quick")) quick = true;
    else if (!std::strcmp(argv[i], "--bench-only")) bench_only = true;
    else if (!std::strcmp(argv[i], "--shape") && i + 2 < argc) {
      shapes.emplace_back(std::atoll(argv[i + 1]), std::atoll(argv[i + 2]));
      i += 2;
    }
    else if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) reps = std::atoi(argv[++i]);
  }
  std::printf("fast_step_supported() = %d\n", (int)fast_step_supported());
  for (int threads : {1, 2, 3}) {
    if (bench_only) break;
    pool::start(threads);
    char label[32];
    std::snprintf(label, sizeof label, "%d thread%s", threads, threads > 1 ? "s" : "");
    run_grid(label);
  }
  pool::start(1);
  if (!bench_only) {
    check_activations();
    check_special();
  }
  std::printf("%s\n", g_failures ? "CHECKS FAILED" : "all checks passed");
  if (!quick) {
    if (shapes.empty()) shapes.emplace_back(32, 256);
    for (auto& sh : shapes)
      for (int threads : {1, 2}) bench(sh.first, sh.second, threads, reps);
  }
  pool::stop();
  return g_failures ? 1 : 0;
}
