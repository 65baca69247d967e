// Checks csrc/cpu/gemm.cpp's sgemm against a double-precision reference:
// every operand layout (plain, transposed, strided C), tails in M, N and K,
// several K/M/N blocks, the transposed form for narrow C, the dot-product form
// for few rows, accumulate, bias and K = 0; and that the result is bitwise the
// same serial and with two threads.  Exits non-zero on any mismatch.
// Built and run by tests/test_cpu_step_kernels.py.
#include <omp.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "cpu/fast_step.h"
#include "cpu/gemm.h"

using namespace fusedrnn::cpu;

static void two_threads(int64_t n, void* ctx, void (*task)(void*, int64_t, int64_t)) {
#pragma omp parallel num_threads(2)
  {
    const int t = omp_get_thread_num();
    const int64_t c = (n + 1) / 2, b = t * c, e = std::min<int64_t>(n, b + c);
    if (b < e) task(ctx, b, e);
  }
}

static int failures = 0;

static void check(int64_t M, int64_t N, int64_t K, bool ta, bool tb, bool tc, bool acc,
                  bool bias) {
  std::mt19937 g(static_cast<unsigned>(M * 131 + N * 7 + K));
  std::normal_distribution<float> d;
  std::vector<float> A(M * K + 1), B(K * N + 1), C0(M * N + 1), bv(N + 1);
  for (auto& v : A) v = d(g);
  for (auto& v : B) v = d(g);
  for (auto& v : C0) v = d(g);
  for (auto& v : bv) v = d(g);
  const ConstMat a = ta ? ConstMat{A.data(), 1, M} : ConstMat{A.data(), K, 1};
  const ConstMat b = tb ? ConstMat{B.data(), 1, K} : ConstMat{B.data(), N, 1};
  std::vector<float> C1 = C0, C2 = C0;
  const auto cm = [&](std::vector<float>& c) {
    return tc ? MutMat{c.data(), 1, M} : MutMat{c.data(), N, 1};
  };
  set_parallel_for(nullptr);
  sgemm(M, N, K, a, b, cm(C1), acc, bias ? bv.data() : nullptr);
  set_parallel_for(&two_threads);
  sgemm(M, N, K, a, b, cm(C2), acc, bias ? bv.data() : nullptr);
  set_parallel_for(nullptr);
  const MutMat c1 = cm(C1);
  double worst = 0;
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      const int64_t at = i * c1.rs + j * c1.cs;
      double s = acc ? C0[at] : (bias ? bv[j] : 0.0), mag = std::fabs(s);
      for (int64_t k = 0; k < K; ++k) {
        const double p = double(a.p[i * a.rs + k * a.cs]) * b.p[k * b.rs + j * b.cs];
        s += p;
        mag += std::fabs(p);
      }
      worst = std::max(worst, std::fabs(C1[at] - s) / (mag + 1e-30));
    }
  const bool same = std::memcmp(C1.data(), C2.data(), C1.size() * sizeof(float)) == 0;
  const bool ok = worst < 1e-5 && same && C1[M * N] == C0[M * N];  // nothing past C
  if (!ok) ++failures;
  std::printf("%s M%ld N%ld K%ld ta%d tb%d tc%d acc%d bias%d: rel err %.2e, 1 vs 2 threads %s\n",
              ok ? "ok  " : "FAIL", long(M), long(N), long(K), ta, tb, tc, acc, bias, worst,
              same ? "bitwise equal" : "DIFFER");
}

int main() {
  const long shapes[][3] = {{1, 1, 1},     {1, 2560, 640}, {3, 1024, 28},  {8, 300, 257},
                            {9, 70, 33},   {35, 17, 5},    {61, 130, 300}, {200, 64, 513},
                            {1120, 28, 97}, {97, 1030, 260}, {7, 5, 0},   {400, 1100, 40}};
  for (const auto& s : shapes)
    for (int ta = 0; ta < 2; ++ta)
      for (int tb = 0; tb < 2; ++tb)
        for (int tc = 0; tc < 2; ++tc) {
          check(s[0], s[1], s[2], ta, tb, tc, false, false);
          check(s[0], s[1], s[2], ta, tb, tc, true, false);
          if (!tc) check(s[0], s[1], s[2], ta, tb, tc, false, true);
        }
  set_force_scalar(true);  // the portable loop
  for (const auto& s : shapes) check(s[0], s[1], s[2], true, false, false, true, false);
  set_force_scalar(false);
  if (failures) {
    std::printf("%d checks FAILED\n", failures);
    return 1;
  }
  std::printf("all checks passed\n");
  return 0;
}
