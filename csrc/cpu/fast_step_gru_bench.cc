// Standalone check + benchmark for csrc/cpu/fast_step_gru.{h,cpp}.
// (.cc on purpose: the extension build globs csrc/cpu/*.cpp.)
//
// Build (one line):
//   g++ -O3 -std=c++17 -Wall -Icsrc csrc/cpu/fast_step.cpp csrc/cpu/fast_step_gru.cpp
//       csrc/cpu/fast_step_gru_bench.cc -o /tmp/fsgb -pthread -fopenmp
// Run:    /tmp/fsgb            (checks + timings)
//         /tmp/fsgb --quick    (checks only)
//         /tmp/fsgb --bench-only [--reps N] [--shape B H]...

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

#include "cpu/fast_step.h"
#include "cpu/fast_step_gru.h"

using namespace fusedrnn::cpu;

// ---------------------------------------------------------------------------
// Spinning thread pool implementing the ParallelFor hook: the caller runs
// chunk 0, workers chunks 1..n-1 (contiguous static split).
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

inline void relax() {
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
  for (;;) {
    int spins = 0;
    uint64_t g;
    while ((g = g_gen.load(std::memory_order_acquire)) == seen) {
      if (g_stop.load(std::memory_order_relaxed)) return;
      if (++spins > 20000) std::this_thread::yield(); else relax();
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
    if (++spins > 20000) std::this_thread::yield(); else relax();
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
struct AlignedBuf {
  float* p = nullptr;
  size_t n = 0;
  explicit AlignedBuf(size_t n_) : n(n_) {
    p = static_cast<float*>(std::aligned_alloc(64, ((n * 4 + 63) / 64) * 64 + 64));
    std::memset(p, 0, n * 4);
  }
  ~AlignedBuf() { std::free(p); }
  AlignedBuf(const AlignedBuf&) = delete;
  AlignedBuf& operator=(const AlignedBuf&) = delete;
  float* data() { return p; }
  float& operator[](size_t i) { return p[i]; }
};

struct ErrStat {
  double max_abs = 0, max_rel = 0;  // rel = |a-r| / max(|r|, 1e-3)
  long n = 0, bad = 0, nan_mismatch = 0;
  void add(double a, double r, double atol = 1e-5, double rtol = 1e-5) {
    ++n;
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
    n += o.n; bad += o.bad; nan_mismatch += o.nan_mismatch;
  }
  bool ok() const { return bad == 0 && nan_mismatch == 0; }
  void print(const char* what) const {
    std::printf("   %-28s n=%-8ld max_abs %.3g  max_rel %.3g  bad %ld  nan-mismatch %ld\n",
                what, n, max_abs, max_rel, bad, nan_mismatch);
  }
};

static int g_failures = 0;

double sig_d(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// ---------------------------------------------------------------------------
// GRU: one forward + backward check against a double reference, and the
// AVX-512 path against the scalar path.
// ---------------------------------------------------------------------------
struct GruErr {
  ErrStat f, b, vs;  // forward vs ref, backward vs ref, avx vs scalar
};

// Values of gx / h_prev / dy: uniform, optionally with special values.
struct GruCase {
  int64_t B, H;
  bool zero_h, with_saved, with_dgn, with_bias;
  int special;  // 0 none, 1 extreme / NaN values
};

void fill_special(std::vector<float>& v, std::mt19937& rng, double frac) {
  static const float vals[] = {100.f, -100.f, 1e30f, -1e30f,
                               std::numeric_limits<float>::infinity(),
                               -std::numeric_limits<float>::infinity(), 88.5f, -88.5f,
                               89.f, -89.f, 1e-30f, -1e-30f, 0.f, -0.f, 9.f, -9.f, 20.f,
                               -20.f, 1e-8f, std::numeric_limits<float>::quiet_NaN()};
  std::uniform_real_distribution<double> U(0, 1);
  std::uniform_int_distribution<int> I(0, sizeof(vals) / sizeof(vals[0]) - 1);
  for (auto& x : v)
    if (U(rng) < frac) x = vals[I(rng)];
}

void check_gru(const GruCase& cs, std::mt19937& rng, GruErr& e) {
  const int64_t B = cs.B, H = cs.H, G = 3 * H;
  std::uniform_real_distribution<float> U(-1.f, 1.f);
  const int64_t ld_gx = G + 3, ld_h = H + 2, ld_ho = H + 5, ld_dy = H + 1;
  const float ws = 1.0f / std::sqrt(static_cast<float>(H));
  std::vector<float> W(G * H), bh(G), gx(B * ld_gx), h(B * ld_h);
  for (auto& v : W) v = U(rng) * ws * 2.0f;
  for (auto& v : bh) v = U(rng) * 0.5f;
  for (auto& v : gx) v = U(rng) * 2.0f;
  for (auto& v : h) v = cs.zero_h ? 0.0f : U(rng);
  if (cs.special) {
    fill_special(gx, rng, 0.08);
    if (!cs.zero_h) {
      // a NaN in h_prev: that row's gh is NaN everywhere; a huge h_prev
      // entry saturates it.
      h[(B / 2) * ld_h + H / 2] = std::numeric_limits<float>::quiet_NaN();
      if (B > 2) h[(B - 1) * ld_h] = 1e30f;
    }
  }
  const float* bptr = cs.with_bias ? bh.data() : nullptr;
  const float* hptr = cs.zero_h ? nullptr : h.data();

  AlignedBuf pf(gru_packed_forward_size(H)), pb(gru_packed_backward_size(H));
  gru_pack_forward(W.data(), bptr, H, pf.data());
  gru_pack_backward(W.data(), H, pb.data());

  std::vector<float> hout(B * ld_ho, -7.f), saved(B * 4 * H, -7.f);
  std::vector<float> hout_s(B * ld_ho, -7.f), saved_s(B * 4 * H, -7.f);
  gru_step_forward(B, H, pf.data(), gx.data(), ld_gx, hptr, ld_h, hout.data(), ld_ho,
                   cs.with_saved ? saved.data() : nullptr);
  set_force_scalar(true);
  gru_step_forward(B, H, pf.data(), gx.data(), ld_gx, hptr, ld_h, hout_s.data(), ld_ho,
                   saved_s.data());
  set_force_scalar(false);

  for (int64_t b = 0; b < B; ++b) {
    for (int64_t j = 0; j < H; ++j) {
      double gh[3];
      for (int q = 0; q < 3; ++q) {
        double s = cs.with_bias ? bh[q * H + j] : 0.0;
        if (!cs.zero_h)
          for (int64_t k = 0; k < H; ++k)
            s += static_cast<double>(h[b * ld_h + k]) * W[(q * H + j) * H + k];
        gh[q] = s;
      }
      const float* g = &gx[b * ld_gx];
      const double r = sig_d(g[j] + gh[0]), z = sig_d(g[H + j] + gh[1]);
      const double n = std::tanh(g[2 * H + j] + r * gh[2]);
      const double hp = cs.zero_h ? 0.0 : h[b * ld_h + j];
      const double hn = (1 - z) * n + z * hp;
      e.f.add(hout[b * ld_ho + j], hn);
      e.vs.add(hout[b * ld_ho + j], hout_s[b * ld_ho + j]);
      const double ref[4] = {r, z, n, gh[2]};
      for (int q = 0; q < 4; ++q) {
        e.f.add(saved_s[b * 4 * H + q * H + j], ref[q]);
        if (cs.with_saved) {
          e.f.add(saved[b * 4 * H + q * H + j], ref[q]);
          e.vs.add(saved[b * 4 * H + q * H + j], saved_s[b * 4 * H + q * H + j]);
        }
      }
    }
    for (int64_t j = H; j < ld_ho; ++j)
      if (hout[b * ld_ho + j] != -7.f || hout_s[b * ld_ho + j] != -7.f) ++e.f.bad;
  }
  if (!cs.with_saved)
    for (float v : saved)
      if (v != -7.f) { ++e.f.bad; break; }

  // Backward, saved state = the scalar path's (identical inputs for both).
  std::vector<float> dy(B * ld_dy), dgn(B * G), carry0(B * H);
  for (auto& v : dy) v = U(rng);
  for (auto& v : dgn) v = U(rng);
  for (auto& v : carry0) v = U(rng) * 0.5f;
  if (cs.special) {
    fill_special(dy, rng, 0.03);
    dgn[(B / 2) * G + G / 3] = std::numeric_limits<float>::quiet_NaN();
  }
  const float* dgnp = cs.with_dgn ? dgn.data() : nullptr;
  std::vector<float> carry(carry0), dgx(B * G, -7.f), dgh(B * G, -7.f);
  std::vector<float> carry_s(carry0), dgx_s(B * G, -7.f), dgh_s(B * G, -7.f);
  gru_step_backward(B, H, pb.data(), dy.data(), ld_dy, dgnp, saved_s.data(), hptr, ld_h,
                    carry.data(), dgx.data(), dgh.data());
  set_force_scalar(true);
  gru_step_backward(B, H, pb.data(), dy.data(), ld_dy, dgnp, saved_s.data(), hptr, ld_h,
                    carry_s.data(), dgx_s.data(), dgh_s.data());
  set_force_scalar(false);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < H; ++j) {
      double dh = static_cast<double>(dy[b * ld_dy + j]) + carry0[b * H + j];
      if (cs.with_dgn)
        for (int64_t n = 0; n < G; ++n) dh += static_cast<double>(dgn[b * G + n]) * W[n * H + j];
      const float* s = &saved_s[b * 4 * H + j];
      const double r = s[0], z = s[H], n = s[2 * H], ghn = s[3 * H];
      const double hp = cs.zero_h ? 0.0 : h[b * ld_h + j];
      const double dn = dh * (1 - z) * (1 - n * n);
      const double dz = dh * (hp - n) * z * (1 - z);
      const double dr = dn * ghn * r * (1 - r);
      const double rx[3] = {dr, dz, dn}, rh[3] = {dr, dz, dn * r};
      for (int q = 0; q < 3; ++q) {
        const int64_t i = b * G + q * H + j;
        e.b.add(dgx[i], rx[q]);
        e.b.add(dgh[i], rh[q]);
        e.vs.add(dgx[i], dgx_s[i]);
        e.vs.add(dgh[i], dgh_s[i]);
        e.b.add(dgx_s[i], rx[q]);
        e.b.add(dgh_s[i], rh[q]);
      }
      e.b.add(carry[b * H + j], dh * z);
      e.b.add(carry_s[b * H + j], dh * z);
      e.vs.add(carry[b * H + j], carry_s[b * H + j]);
    }
}

// ---------------------------------------------------------------------------
// RNN check.
// ---------------------------------------------------------------------------
void check_rnn(int64_t B, int64_t H, bool relu, bool zero_h, bool with_dpn, int special,
               std::mt19937& rng, GruErr& e) {
  std::uniform_real_distribution<float> U(-1.f, 1.f);
  const int64_t ld_gx = H + 3, ld_h = H + 2, ld_ho = H + 5, ld_dy = H + 1;
  const float ws = 1.0f / std::sqrt(static_cast<float>(H));
  std::vector<float> W(H * H), gx(B * ld_gx), h(B * ld_h);
  for (auto& v : W) v = U(rng) * ws * 2.0f;
  for (auto& v : gx) v = U(rng) * 2.0f;
  for (auto& v : h) v = zero_h ? 0.0f : U(rng);
  if (special) {
    fill_special(gx, rng, 0.08);
    if (!zero_h) h[(B / 2) * ld_h + H / 2] = std::numeric_limits<float>::quiet_NaN();
  }
  const float* hptr = zero_h ? nullptr : h.data();
  AlignedBuf pf(rnn_packed_forward_size(H)), pb(rnn_packed_backward_size(H));
  rnn_pack_forward(W.data(), H, pf.data());
  rnn_pack_backward(W.data(), H, pb.data());
  std::vector<float> ho(B * ld_ho, -7.f), ho_s(B * ld_ho, -7.f);
  rnn_step_forward(B, H, relu, pf.data(), gx.data(), ld_gx, hptr, ld_h, ho.data(), ld_ho);
  set_force_scalar(true);
  rnn_step_forward(B, H, relu, pf.data(), gx.data(), ld_gx, hptr, ld_h, ho_s.data(), ld_ho);
  set_force_scalar(false);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t j = 0; j < H; ++j) {
      double s = gx[b * ld_gx + j];
      if (!zero_h)
        for (int64_t k = 0; k < H; ++k) s += static_cast<double>(h[b * ld_h + k]) * W[j * H + k];
      const double ref = relu ? (s < 0 ? 0.0 : s) : std::tanh(s);
      e.f.add(ho[b * ld_ho + j], ref);
      e.f.add(ho_s[b * ld_ho + j], ref);
      e.vs.add(ho[b * ld_ho + j], ho_s[b * ld_ho + j]);
    }
    for (int64_t j = H; j < ld_ho; ++j)
      if (ho[b * ld_ho + j] != -7.f || ho_s[b * ld_ho + j] != -7.f) ++e.f.bad;
  }
  // Backward with h_t = the scalar forward output (row stride ld_ho).
  std::vector<float> dy(B * ld_dy), dpn(B * H);
  for (auto& v : dy) v = U(rng);
  for (auto& v : dpn) v = U(rng);
  if (special) {
    fill_special(dy, rng, 0.03);
    dpn[(B / 2) * H + H / 3] = std::numeric_limits<float>::quiet_NaN();
  }
  const float* dpp = with_dpn ? dpn.data() : nullptr;
  std::vector<float> dp(B * H, -7.f), dp_s(B * H, -7.f);
  rnn_step_backward(B, H, relu, pb.data(), dy.data(), ld_dy, dpp, ho_s.data(), ld_ho, dp.data());
  set_force_scalar(true);
  rnn_step_backward(B, H, relu, pb.data(), dy.data(), ld_dy, dpp, ho_s.data(), ld_ho,
                    dp_s.data());
  set_force_scalar(false);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < H; ++j) {
      double dh = dy[b * ld_dy + j];
      if (with_dpn)
        for (int64_t n = 0; n < H; ++n) dh += static_cast<double>(dpn[b * H + n]) * W[n * H + j];
      const double ht = ho_s[b * ld_ho + j];
      const double ref = relu ? (ht <= 0 ? 0.0 : dh) : dh * (1 - ht * ht);
      e.b.add(dp[b * H + j], ref);
      e.b.add(dp_s[b * H + j], ref);
      e.vs.add(dp[b * H + j], dp_s[b * H + j]);
    }
}

void run_grid(const char* label) {
  std::mt19937 rng(1234);
  GruErr gall, rall, gsp, rsp;  // variants 0-3 / special-value variants 4-5
  const int64_t Bs[] = {1, 3, 32, 33};
  const int64_t Hs[] = {1, 5, 16, 17, 256, 300};
  for (int64_t B : Bs)
    for (int64_t H : Hs)
      for (int variant = 0; variant < 6; ++variant) {
        // 0: all on; 1: no saved; 2: null h_prev; 3: null dgh_next, no bias;
        // 4: special values; 5: special values with null h_prev / dgh_next
        GruCase cs{B, H, variant == 2 || variant == 5, variant != 1, variant != 3 && variant != 5,
                   variant != 3, variant >= 4 ? 1 : 0};
        GruErr ge;
        check_gru(cs, rng, ge);
        if (!ge.f.ok() || !ge.b.ok() || !ge.vs.ok()) {
          std::printf("  FAIL GRU %s B=%ld H=%ld variant=%d: fwd bad=%ld nan=%ld bwd bad=%ld "
                      "nan=%ld vs-scalar bad=%ld nan=%ld\n",
                      label, (long)B, (long)H, variant, ge.f.bad, ge.f.nan_mismatch, ge.b.bad,
                      ge.b.nan_mismatch, ge.vs.bad, ge.vs.nan_mismatch);
          ++g_failures;
        }
        GruErr& ga = variant >= 4 ? gsp : gall;
        ga.f.merge(ge.f); ga.b.merge(ge.b); ga.vs.merge(ge.vs);
        GruErr re;
        const bool relu = variant & 1;
        check_rnn(B, H, relu, variant == 2 || variant == 5, variant != 3 && variant != 5,
                  variant >= 4, rng, re);
        if (!re.f.ok() || !re.b.ok() || !re.vs.ok()) {
          std::printf("  FAIL RNN %s B=%ld H=%ld variant=%d: fwd bad=%ld nan=%ld bwd bad=%ld "
                      "nan=%ld vs-scalar bad=%ld nan=%ld\n",
                      label, (long)B, (long)H, variant, re.f.bad, re.f.nan_mismatch, re.b.bad,
                      re.b.nan_mismatch, re.vs.bad, re.vs.nan_mismatch);
          ++g_failures;
        }
        GruErr& ra = variant >= 4 ? rsp : rall;
        ra.f.merge(re.f); ra.b.merge(re.b); ra.vs.merge(re.vs);
      }
  std::printf("[%s] grid B{1,3,32,33} x H{1,5,16,17,256,300}, 4 ordinary variants:\n", label);
  gall.f.print("GRU forward  vs double ref");
  gall.b.print("GRU backward vs double ref");
  gall.vs.print("GRU avx512 vs scalar path");
  rall.f.print("RNN forward  vs double ref");
  rall.b.print("RNN backward vs double ref");
  rall.vs.print("RNN avx512 vs scalar path");
  std::printf("  with extreme / inf / NaN inputs (errors scale with the 1e30 inputs):\n");
  gsp.f.print("GRU forward  vs double ref");
  gsp.b.print("GRU backward vs double ref");
  gsp.vs.print("GRU avx512 vs scalar path");
  rsp.f.print("RNN forward  vs double ref");
  rsp.b.print("RNN backward vs double ref");
  rsp.vs.print("RNN avx512 vs scalar path");
}

// Saturation / NaN spot checks with exact expectations (W = 0, no h_prev).
void check_special_exact() {
  const int64_t H = 21, B = 2, G = 3 * H;
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> W(G * H, 0.f), gx(B * G, 0.f), ho(B * H), saved(B * 4 * H);
  AlignedBuf pf(gru_packed_forward_size(H)), rf(rnn_packed_forward_size(H));
  gru_pack_forward(W.data(), nullptr, H, pf.data());
  rnn_pack_forward(W.data(), H, rf.data());
  int fails = 0;
  for (int mode = 0; mode < 2; ++mode) {
    set_force_scalar(mode == 1);
    // unit j: all three gates = x_j;  row 1: NaN in gate j % 3.
    const float xs[] = {1e30f, -1e30f, inf, -inf, 100.f, -100.f, 89.f, -89.f, 0.f};
    for (int64_t j = 0; j < H; ++j)
      for (int q = 0; q < 3; ++q) {
        gx[q * H + j] = xs[j % 9];
        gx[G + q * H + j] = q == j % 3 ? nan : 0.5f;
      }
    gru_step_forward(B, H, pf.data(), gx.data(), G, nullptr, H, ho.data(), H, saved.data());
    for (int64_t j = 0; j < H; ++j) {
      const double x = xs[j % 9];
      const double r = sig_d(x), n = std::tanh(x), hn = (1 - r) * n;
      auto off = [](double got, double ref) {
        return !(std::fabs(got - ref) <= 1e-6 * std::fabs(ref) + 1e-37);
      };
      if (off(saved[j], r) || off(saved[H + j], r) || off(saved[2 * H + j], n) ||
          off(ho[j], hn)) {
        std::printf("  special GRU x=%g: r %.9g z %.9g n %.9g h %.9g\n", x, saved[j],
                    saved[H + j], saved[2 * H + j], ho[j]);
        ++fails;
      }
      if (!std::isnan(ho[H + j]) || !std::isnan(saved[4 * H + (j % 3) * H + j])) {
        std::printf("  special GRU: NaN in gate %d not propagated\n", (int)(j % 3));
        ++fails;
      }
    }
    for (int relu = 0; relu < 2; ++relu) {
      std::vector<float> g1(H), o1(H);
      for (int64_t j = 0; j < H; ++j) g1[j] = j == H - 1 ? nan : xs[j % 9];
      rnn_step_forward(1, H, relu, rf.data(), g1.data(), H, nullptr, H, o1.data(), H);
      for (int64_t j = 0; j < H; ++j) {
        const double x = g1[j];
        const double ref = relu ? (x < 0 ? 0.0 : x) : std::tanh(x);
        if (std::isnan(ref) ? !std::isnan(o1[j])
                            : !(o1[j] == ref || std::fabs(o1[j] - ref) <= 1e-6 * std::fabs(ref))) {
          std::printf("  special RNN relu=%d x=%g -> %.9g\n", relu, x, o1[j]);
          ++fails;
        }
      }
    }
  }
  set_force_scalar(false);
  std::printf("[special values] exact saturation / NaN propagation: %s\n", fails ? "FAIL" : "ok");
  if (fails) ++g_failures;
}

// ---------------------------------------------------------------------------
// Timing: whole T-step sequences (distinct gx / saved per step, h chained),
// each step timed on its own; median per step.  Plus a hot single step.
// ---------------------------------------------------------------------------
using Clock = std::chrono::steady_clock;

struct Timer {
  std::vector<double> v;
  template <class F>
  void time(F&& f) {
    auto t0 = Clock::now();
    f();
    v.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
};

void line(const char* what, std::vector<double> v, double flop) {
  std::sort(v.begin(), v.end());
  const double med = v[v.size() / 2], p10 = v[v.size() / 10], best = v[0];
  std::printf("   %-24s %7.1f / %7.1f / %7.1f us   %6.1f / %6.1f / %6.1f GFLOP/s\n", what,
              med * 1e6, p10 * 1e6, best * 1e6, flop / med * 1e-9, flop / p10 * 1e-9,
              flop / best * 1e-9);
}

void bench(int64_t B, int64_t H, int threads, int reps) {
  const int64_t T = 35, G = 3 * H;
  std::mt19937 rng(99);
  std::uniform_real_distribution<float> U(-1.f, 1.f);
  std::vector<float> W(G * H), bh(G);
  for (auto& v : W) v = U(rng) / std::sqrt((float)H);
  for (auto& v : bh) v = U(rng) * 0.1f;
  AlignedBuf pf(gru_packed_forward_size(H)), pb(gru_packed_backward_size(H));
  gru_pack_forward(W.data(), bh.data(), H, pf.data());
  gru_pack_backward(W.data(), H, pb.data());
  AlignedBuf rpf(rnn_packed_forward_size(H)), rpb(rnn_packed_backward_size(H));
  rnn_pack_forward(W.data(), H, rpf.data());
  rnn_pack_backward(W.data(), H, rpb.data());
  AlignedBuf gx(T * B * G), hs((T + 1) * B * H), saved(T * B * 4 * H);
  for (size_t i = 0; i < gx.n; ++i) gx[i] = U(rng);
  AlignedBuf dy(T * B * H), dgx(T * B * G), dgh(2 * B * G), carry(B * H), dp(2 * B * H);
  for (size_t i = 0; i < dy.n; ++i) dy[i] = U(rng) * 0.01f;

  pool::start(threads);
  const double gflop = 2.0 * B * H * G, rflop = 2.0 * B * H * H;
  Timer gf, gb, gf1, gb1, rf, rb;
  for (int rep = 0; rep < reps; ++rep) {
    for (int64_t t = 0; t < T; ++t) {
      auto step = [&] {
        gru_step_forward(B, H, pf.data(), gx.data() + t * B * G, G,
                         t == 0 ? nullptr : hs.data() + t * B * H, H,
                         hs.data() + (t + 1) * B * H, H, saved.data() + t * B * 4 * H);
      };
      if (t > 0) gf.time(step); else step();  // t = 0 (h_prev = 0) has no product
    }
    std::memset(carry.data(), 0, B * H * 4);
    for (int64_t t = T - 1; t >= 0; --t) {
      float* cur = dgh.data() + (t % 2) * B * G;
      const float* next = t == T - 1 ? nullptr : dgh.data() + ((t + 1) % 2) * B * G;
      auto step = [&] {
        gru_step_backward(B, H, pb.data(), dy.data() + t * B * H, H, next,
                          saved.data() + t * B * 4 * H, hs.data() + t * B * H, H,
                          carry.data(), dgx.data() + t * B * G, cur);
      };
      if (next) gb.time(step); else step();  // t = T-1 has no product
    }
    for (int64_t t = 0; t < T; ++t)
      rf.time([&] {
        rnn_step_forward(B, H, false, rpf.data(), gx.data() + t * B * G, G,
                         hs.data() + t * B * H, H, hs.data() + (t + 1) * B * H, H);
      });
    for (int64_t t = T - 1; t >= 0; --t) {
      float* cur = dp.data() + (t % 2) * B * H;
      const float* next = t == T - 1 ? nullptr : dp.data() + ((t + 1) % 2) * B * H;
      auto step = [&] {
        rnn_step_backward(B, H, false, rpb.data(), dy.data() + t * B * H, H, next,
                          hs.data() + (t + 1) * B * H, H, cur);
      };
      if (next) rb.time(step); else step();
    }
  }
  for (int rep = 0; rep < reps * 10; ++rep)
    gf1.time([&] {
      gru_step_forward(B, H, pf.data(), gx.data(), G, hs.data(), H, hs.data() + B * H, H,
                       saved.data());
    });
  for (int rep = 0; rep < reps * 10; ++rep)
    gb1.time([&] {
      gru_step_backward(B, H, pb.data(), dy.data(), H, dgh.data(), saved.data(), hs.data(), H,
                        carry.data(), dgx.data(), dgh.data() + B * G);
    });
  pool::start(1);
  std::printf("B=%ld H=%ld threads=%d, %zu samples (median / p10 / best per step):\n", (long)B,
              (long)H, threads, gf.v.size());
  line("GRU forward (sequence)", gf.v, gflop);
  line("GRU forward (hot step)", gf1.v, gflop);
  line("GRU backward (sequence)", gb.v, gflop);
  line("GRU backward (hot step)", gb1.v, gflop);
  line("RNN tanh fwd (sequence)", rf.v, rflop);
  line("RNN tanh bwd (sequence)", rb.v, rflop);
}

int main(int argc, char** argv) {
  bool quick = false, bench_only = false;
  std::vector<std::pair<int64_t, int64_t>> shapes;
  int reps = 200;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--quick")) quick = true;
    else if (!std::strcmp(argv[i], "--bench-only")) bench_only = true;
    else if (!std::strcmp(argv[i], "--shape") && i + 2 < argc) {
      shapes.emplace_back(std::atoll(argv[i + 1]), std::atoll(argv[i + 2]));
      i += 2;
    } else if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) reps = std::atoi(argv[++i]);
  }
  std::printf("fast_step_supported() = %d\n", (int)fast_step_supported());
  if (!bench_only) {
    for (int threads : {1, 2, 3}) {
      pool::start(threads);
      char label[32];
      std::snprintf(label, sizeof label, "%d thread%s", threads, threads > 1 ? "s" : "");
      run_grid(label);
    }
    pool::start(1);
    check_special_exact();
    std::printf("%s\n", g_failures ? "CHECKS FAILED" : "all checks passed");
  }
  if (!quick) {
    if (shapes.empty()) shapes.emplace_back(32, 256);
    for (auto& sh : shapes)
      for (int threads : {1, 2}) bench(sh.first, sh.second, threads, reps);
  }
  pool::stop();
  return g_failures ? 1 : 0;
}
