"""The float32 FMA peak of this CPU, measured.

Compiles a small C program (the system's C compiler, OpenMP) whose threads
each run 12 independent chains of fused multiply-adds on the widest vectors
the CPU has (AVX-512, else AVX2 + FMA), and reports the best GFLOP/s of a few
repetitions.  bench_layers.py reports every CPU result as a share of it.

    python benchmarks/cpu_peak.py [--threads N]
"""
import argparse
import functools
import json
import os
import shutil
import subprocess
import tempfile

SOURCE = r"""
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

#if defined(__AVX512F__)
typedef __m512 vec;
#define LANES 16
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define ISA "avx512"
static float lane0(vec v) { return _mm512_cvtss_f32(v); }
#else
typedef __m256 vec;
#define LANES 8
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#define ISA "avx2"
static float lane0(vec v) { return _mm256_cvtss_f32(v); }
#endif

static float chains(long n) {
  vec a[12];
  const vec x = SET1(0.999999f), y = SET1(1e-7f);
  for (int i = 0; i < 12; ++i) a[i] = SET1(0.001f * i);
  for (long k = 0; k < n; ++k) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) a[i] = FMA(a[i], x, y);
  }
  float s = 0;
  for (int i = 0; i < 12; ++i) s += lane0(a[i]);
  return s;
}

int main(int argc, char** argv) {
  const int threads = atoi(argv[1]);
  const long n = 20000000;
  double best = 0, sink = 0;
  for (int r = 0; r < 5; ++r) {
    const double t0 = omp_get_wtime();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
    sink += chains(n);
    const double t = omp_get_wtime() - t0;
    const double g = 2.0 * LANES * 12 * n * threads / t / 1e9;
    if (g > best) best = g;
  }
  printf("{\"isa\": \"%s\", \"threads\": %d, \"gflops\": %.1f, \"sink\": %g}\n", ISA, threads,
         best, sink);
  return 0;
}
"""


@functools.lru_cache(maxsize=None)
def measure(threads):
    """{"isa", "threads", "gflops"} for `threads` threads, or None when no C
    compiler with OpenMP is available."""
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        return None
    with tempfile.TemporaryDirectory() as d:
        src, exe = os.path.join(d, "peak.c"), os.path.join(d, "peak")
        with open(src, "w") as f:
            f.write(SOURCE)
        build = subprocess.run([cc, "-O3", "-march=native", "-fopenmp", src, "-o", exe],
                               capture_output=True, text=True)
        if build.returncode != 0:
            return None
        run = subprocess.run([exe, str(threads)], capture_output=True, text=True, timeout=120)
        if run.returncode != 0:
            return None
        out = json.loads(run.stdout)
        out.pop("sink", None)
        return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=os.cpu_count())
    args = p.parse_args()
    res = measure(args.threads)
    if res is None:
        raise SystemExit("could not build the peak program (needs a C compiler with OpenMP)")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
