#!/usr/bin/env bash
# The one script to run on a lent GPU machine (H100/H200, PyTorch 2.11 + Python
# 3.12 preinstalled, no network), from the repository root, in a single call:
#
#   bash scripts/gpu_check.sh
#
# It records the machine, builds fusedrnn._C in place with its CUDA kernels,
# runs the CUDA tests (every test that needs a GPU) and the layer benchmark
# against cuDNN.  Everything it produces goes under a work folder,
# GPU_CHECK_DIR (default: a new /tmp/fusedrnn_gpu_check.* when OUT is set,
# else /tmp/fusedrnn_gpu_check), written $OUT below; when
# the environment names an OUT (the device tool's folder of files to bring
# back, which takes at most 8 files), the script ends, even when a step or
# the DEADLINE cut it short, by packing the work folder into
# OUT/gpu_check.tgz and copying summary.txt, tests.log and bench.log beside it:
#   $OUT/env.log     nvidia-smi, python/torch/cuDNN versions
#   $OUT/build.log   python setup.py build_ext --inplace
#   $OUT/tests.log   python -m pytest FILE -v for each file with CUDA tests,
#                    TEST_JOBS files at a time (TESTS=tests: all files)
#   $OUT/bench.log   python benchmarks/bench_layers.py --device cuda --out $OUT/results
#   $OUT/bench_variants.log  the persistent tier's auto choice against the
#                    four pinned settings of threads per CTA (256/512) x
#                    forward epilogue (lanes'/CTA-wide): -base, -ctaepi, -wide,
#                    -wide-ctaepi, -pairs / -wide-pairs (two-unit forward
#                    tasks, EXPERIMENTAL); float32, the D2L layer sweep, fastrnns and
#                    one-step, $OUT/results_variants (bench_variants_bf16.log:
#                    bfloat16, d2l and d2l-L8, $OUT/results_variants_bf16;
#                    bench_variants_regs.log: -regs, the float32 forward
#                    weights in registers, EXPERIMENTAL, D2L L1-L8,
#                    $OUT/results_variants_regs)
#   $OUT/bench_split.log  (SPLIT=1 only: measured on an H200, 2026-12-04, now
#                    the default) the persistent backward with and without its batch
#                    split (fusedrnn-persistent-nosplit), results in $OUT/results_split
#   $OUT/bench_mma.log  (MMA=1 only: measured mixed on an H200, 2026-12-04)
#                    bfloat16 persistent tier with and without the
#                    tensor-core products (fusedrnn-persistent-mma), $OUT/results_mma
#   $OUT/host_profile.log  scripts/profile_step.py --torch-profile, D2L L=2
#                    forward and forward+backward, L=8 forward+backward: kernel
#                    time vs call time, and where the GPU waited for the host
#                    (scripts/trace_gaps.py; timelines: $OUT/trace_d2l_L2.json,
#                    trace_d2l_L2_bwd.json, trace_d2l_L8_bwd.json)
#   $OUT/train.log   (TRAIN=1 only) benchmarks/train_time_machine.py --device cuda --compare
#                    (results/train_time_machine_cuda.json)
#   $OUT/summary.txt one line per step with its exit status, and the issue-4
#                    target figures of every result file (scripts/targets.py)
# A failing step does not stop the later ones; the script exits non-zero when
# any step failed.
#
# Knobs (environment): TORCH_CUDA_ARCH_LIST (default 9.0), MAX_JOBS (16),
# BENCH_ARGS (extra bench_layers.py arguments, e.g. --configs d2l), PROFILE=1
# (Nsight Compute reports of one D2L forward per tier, scripts/profile_step.py),
# BENCH=0 / VARIANTS=0 / HOSTPROF=0 (skip those steps), TEST_JOBS (test files
# run at once, default 4), TRAIN=1 (run the D2L
# training on CUDA, measured 2026-12-04), MMA=1 / SPLIT=1 (run the
# tensor-core / batch-split A/B, measured on 2026-12-04), TESTS (test files;
# "none": no tests), TRAIN_ARGS, BUILD_TIMEOUT /
# SMOKE_TIMEOUT / TEST_TIMEOUT / BENCH_TIMEOUT / VARIANTS_TIMEOUT / SPLIT_TIMEOUT /
# MMA_TIMEOUT / TRAIN_TIMEOUT in seconds (240 / 45 / 200 / 240 / 120 each of
# two / 60 / 90 / 120), each cut
# to what is left of DEADLINE (default 560 s for the whole script, so that one
# call of the device tool with timeout_s=600 brings everything back; on an
# H200, 2026-12-04, the steps took build 75, smoke 13, tests 123, bench 162,
# mma 26, split 18, train 51 s: about 470 s; at commit 17c4c19 (TRAIN=0)
# build 86, smoke 14, tests 143, bench 168, variants 19 s: 431 s; the variants
# step has grown since (float32 with fastrnns and one-step, and bfloat16), so
# expect ~500 s by default (without the training; ~550 with TRAIN=1)); since
# 2026-12-05 the test files run 4 at a time (not yet timed on a GPU: an
# estimate of ~60 s for the 143 s above, the longest file alone was 46 s),
# so that a hung step still leaves the logs of the others behind.
set -u

cd "$(dirname "${BASH_SOURCE[0]}")/.."
DEST="${OUT:-}"
if [ -n "${GPU_CHECK_DIR:-}" ]; then
  OUT="$GPU_CHECK_DIR"
elif [ -n "$DEST" ]; then
  OUT="$(mktemp -d /tmp/fusedrnn_gpu_check.XXXXXX)"
else
  OUT=/tmp/fusedrnn_gpu_check
fi
mkdir -p "$OUT"
if [ -n "$DEST" ] && [ "$(cd "$DEST" && pwd)" = "$(cd "$OUT" && pwd)" ]; then
  DEST=""  # the work folder is OUT itself: nothing to pack
fi
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
FAILED=0
START=$SECONDS
DEADLINE="${DEADLINE:-560}"

# pack: the work folder into DEST (the device tool brings back 8 files at most).
pack() {
  [ -n "$DEST" ] || return 0
  mkdir -p "$DEST"
  tar czf "$DEST/gpu_check.tgz" -C "$OUT" . 2>/dev/null
  for f in summary.txt tests.log bench.log; do
    [ -f "$OUT/$f" ] && cp "$OUT/$f" "$DEST/"
  done
  echo "packed $OUT into $DEST/gpu_check.tgz"
}
trap pack EXIT
trap 'echo "gpu_check: terminated"; exit 143' TERM INT

# limit_left LIMIT: LIMIT, or what is left of DEADLINE (less 10 s for packing).
limit_left() {
  local left=$((DEADLINE - (SECONDS - START) - 10))
  if [ "$1" -lt "$left" ]; then echo "$1"; else echo "$left"; fi
}

export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS="${MAX_JOBS:-16}"
BUILD_TIMEOUT="${BUILD_TIMEOUT:-240}"
TEST_TIMEOUT="${TEST_TIMEOUT:-200}"
BENCH_TIMEOUT="${BENCH_TIMEOUT:-240}"
# Python writes its output unbuffered, so a step killed by its timeout still
# leaves everything it printed in its log.
export PYTHONUNBUFFERED=1

phase() {
  printf '\n==== [+%4ds] %s\n' "$((SECONDS - START))" "$*"
}

# record NAME RC: note a step's result in the summary and the overall status.
record() {
  local name=$1 rc=$2 what
  if [ "$rc" -eq 0 ]; then
    what="ok"
  elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    what="FAILED (timed out, exit status $rc)"
    FAILED=1
  else
    what="FAILED (exit status $rc)"
    FAILED=1
  fi
  printf '%-6s %s (%ds so far)\n' "$name" "$what" "$((SECONDS - START))" | tee -a "$SUMMARY"
}

# run_logged NAME LOG TIMEOUT CMD...: run CMD with its output to LOG and to the
# console (the tail of the console is what a remote run shows first).
run_logged() {
  local name=$1 log=$2 limit
  limit=$(limit_left "$3")
  shift 3
  if [ "$limit" -lt 5 ]; then
    phase "$name: skipped, no time left before the DEADLINE (${DEADLINE}s)"
    record "$name" 124
    return 124
  fi
  phase "$name: $* (log: $log, limit ${limit}s)"
  timeout --signal=TERM --kill-after=15 "$limit" "$@" > "$log" 2>&1
  local rc=$?
  tail -n 40 "$log"
  record "$name" "$rc"
  return "$rc"
}

# ------------------------------------------------------------- environment --
phase "environment (log: $OUT/env.log)"
{
  echo "date:   $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "repo:   $PWD ($(git rev-parse --short HEAD 2>/dev/null || echo 'no git'))"
  echo "cores:  $(nproc)"
  echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS"
  echo
  nvidia-smi || echo "nvidia-smi failed (exit status $?)"
  echo
  echo "nvcc: $(command -v nvcc || echo 'not on PATH')"
  nvcc --version 2>/dev/null | tail -n 2
  echo
  python --version
  python - <<'EOF'
import torch
print("torch", torch.__version__, "| CUDA", torch.version.cuda,
      "| cuDNN", torch.backends.cudnn.version())
print("cuda available:", torch.cuda.is_available(), "| devices:", torch.cuda.device_count())
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"  cuda:{i} {p.name}, capability {p.major}.{p.minor}, {p.multi_processor_count} SMs, "
          f"{p.total_memory / 2**30:.1f} GiB")
EOF
} > "$OUT/env.log" 2>&1
cat "$OUT/env.log"

# ------------------------------------------------------------------- build --
# The compiler.  On the lent H100 machine CC/CXX name /opt/gcc/bin/gcc and g++,
# wrappers whose links put pieces of libstdc++ into _C.so itself (nm shows
# codecvt::do_unshift defined in it).  That build loads, computes and passes
# every numerical test, but formatting an integer into an error message
# (TORCH_CHECK(..., n)) then crashes the process with a segfault -- seen
# 2026-11-23 for the CPU and the CUDA ops alike.  The distribution's own
# gcc/g++ link libstdc++ dynamically, like torch, and everything passes; so
# they are used when present.  FUSEDRNN_KEEP_CC=1 keeps CC/CXX as they are.
if [ "${FUSEDRNN_KEEP_CC:-0}" != 1 ] && [ -x /usr/bin/gcc ] && [ -x /usr/bin/g++ ]; then
  export CC=/usr/bin/gcc CXX=/usr/bin/g++ LDSHARED="/usr/bin/g++ -shared"
fi
echo "compilers: CC=${CC:-} CXX=${CXX:-} LDSHARED=${LDSHARED:-}" >> "$OUT/env.log"
# Build in place so the tests and the benchmark import this checkout.
rm -f fusedrnn/_C*.so
run_logged build "$OUT/build.log" "$BUILD_TIMEOUT" python setup.py build_ext --inplace
python - >> "$OUT/build.log" 2>&1 <<'EOF'
import fusedrnn
print("fusedrnn._C.cuda_compiled =", fusedrnn._C.cuda_compiled)
EOF
tail -n 1 "$OUT/build.log"
# libstdc++ must come from the shared library, not be linked into _C.so (see above).
if nm -C --defined-only fusedrnn/_C*.so 2>/dev/null | grep -q "codecvt.*do_unshift"; then
  echo "WARNING: _C.so holds its own copy of libstdc++ code (compiler: ${CXX:-default});" \
       "error messages with numbers may crash: rebuild with the system gcc/g++" | tee -a "$OUT/build.log"
fi

# ------------------------------------------------------ persistent smoke --
# The persistent tier has a hand-rolled grid barrier (first run on an H100 on
# 2026-11-23, where it passed): a bug there hangs, and would eat the time of
# every later step.  A short smoke
# test first; when it fails, the test step leaves its test file out and the
# benchmark its rows (--no-persistent), so the rest still gets measured.
NO_PERSISTENT=()
SKIP_PERSISTENT=0
if ! FUSEDRNN_TEST_TIMEOUT=30 FUSEDRNN_TEST_TIMEOUT_LOG="$OUT/persistent_smoke.hang" \
    run_logged smoke "$OUT/persistent_smoke.log" "${SMOKE_TIMEOUT:-45}" \
    python -m pytest tests/test_cuda_persistent.py -x -q -rs \
    -k "wavefront_floor or float64_both_tiers"; then
  echo "persistent tier smoke test failed: its tests and benchmark rows are skipped below"
  NO_PERSISTENT=(--no-persistent)
  SKIP_PERSISTENT=1
fi

# ------------------------------------------------------------------- tests --
# The files with CUDA tests (tests/test_cuda*.py, test_bidirectional.py,
# test_autocast.py and test_autograd.py, which have one each, and
# test_output_mask.py) by default: the CPU suite runs in CI and
# would spend this call's limited time on what CI already covers.  TESTS=tests
# runs everything, TESTS=none nothing.
# Each file runs in its own pytest process, so a crash in one (a segfault
# takes the whole interpreter) still leaves the others' results.  TEST_JOBS
# (default 4) files run at once, longest first (on an H200, 2026-12-04, one
# after the other they took 143 s, test_cuda_gru_rnn.py alone 46 s, and most
# of it is CPU work: the float64 references, imports, CUDA start-up), each
# with 16 / TEST_JOBS intra-op threads; they share the GPU, which is fine for
# tests (nothing in them is timed).  A test that runs over TEST_HANG_TIMEOUT
# (default 60) seconds ends its file's process (tests/conftest.py,
# hang_watchdog) and the summary says HUNG.  A file that fails or times out among the
# others is run once more on its own when time is left, and the summary
# names both results ("failed concurrently, ok alone" says the failure needs
# another process on the GPU to show).  All files share TEST_TIMEOUT; every
# file's output goes to tests.log, in the order of TESTS.
: > "$OUT/tests.log"
TEST_FILES=()
# shellcheck disable=SC2086
for f in ${TESTS:-tests/test_cuda_gru_rnn.py tests/test_bidirectional.py tests/test_cuda*.py tests/test_output_mask.py tests/test_autograd.py tests/test_autocast.py}; do
  if [ "$f" = none ] || [[ " ${TEST_FILES[*]} " == *" $f "* ]]; then
    continue  # (none, or named twice: the default list names the longest first)
  elif [ -d "$f" ]; then
    for g in "$f"/test_*.py; do TEST_FILES+=("$g"); done
  elif [ "$SKIP_PERSISTENT" = 1 ] && [ "$f" = tests/test_cuda_persistent.py ]; then
    echo "(skipping $f: the persistent smoke test failed)" >> "$OUT/tests.log"
  else
    TEST_FILES+=("$f")
  fi
done
TEST_JOBS="${TEST_JOBS:-4}"
# tests/conftest.py's hang watchdog: a single test over this many seconds ends
# its file's process with the tracebacks in the log (no rerun then).
TEST_HANG_TIMEOUT="${TEST_HANG_TIMEOUT:-60}"
[ "$TEST_JOBS" -ge 1 ] 2>/dev/null || TEST_JOBS=1
TEST_THREADS=$(( $(nproc) / TEST_JOBS )); [ "$TEST_THREADS" -ge 1 ] || TEST_THREADS=1
TEST_DEADLINE=$((SECONDS + $(limit_left "$TEST_TIMEOUT")))
mkdir -p "$OUT/tests"
# test_one FILE LOG: one pytest process for FILE, its exit status in LOG.rc.
test_one() {
  local left=$((TEST_DEADLINE - SECONDS))
  if [ "$left" -lt 5 ]; then
    echo "(no time left for $1)" > "$2"
    echo 124 > "$2.rc"
    return
  fi
  echo "==== $1 (limit ${left}s)" > "$2"
  : > "$2.hang"
  OMP_NUM_THREADS=$TEST_THREADS FUSEDRNN_TEST_TIMEOUT="$TEST_HANG_TIMEOUT" \
    FUSEDRNN_TEST_TIMEOUT_LOG="$2.hang" timeout --signal=TERM --kill-after=10 "$left" \
    python -m pytest "$1" -v -rs >> "$2" 2>&1
  echo $? > "$2.rc"
  if [ -s "$2.hang" ]; then
    echo "==== HUNG: a test ran over ${TEST_HANG_TIMEOUT}s; the watchdog's tracebacks:" >> "$2"
    cat "$2.hang" >> "$2"
  fi
}
phase "tests: ${#TEST_FILES[@]} files, $TEST_JOBS at a time (limit $((TEST_DEADLINE - SECONDS))s)"
running=0
for f in "${TEST_FILES[@]}"; do
  if [ "$running" -ge "$TEST_JOBS" ]; then
    wait -n
    running=$((running - 1))
  fi
  test_one "$f" "$OUT/tests/$(basename "$f" .py).log" &
  running=$((running + 1))
done
wait
for f in "${TEST_FILES[@]}"; do
  name=$(basename "$f" .py)
  log="$OUT/tests/$name.log"
  rc=$(cat "$log.rc" 2>/dev/null || echo 1)
  cat "$log" >> "$OUT/tests.log"
  echo "$name: $(grep -E "passed|failed|no time left|Fatal Python error" "$log" | tail -n 1)"
  if [ -s "$log.hang" ]; then
    printf '%-6s %s\n' "tests:$name" "FAILED: HUNG (a test ran over ${TEST_HANG_TIMEOUT}s; tracebacks in tests.log)" \
      | tee -a "$SUMMARY"
    FAILED=1
    continue
  fi
  if [ "$rc" -ne 0 ] && [ $((TEST_DEADLINE - SECONDS)) -ge 5 ]; then
    # Once more, alone on the GPU.
    phase "tests: $f again, on its own (it exited with $rc among the others)"
    test_one "$f" "$log.alone"
    rc2=$(cat "$log.alone.rc" 2>/dev/null || echo 1)
    { echo "==== $f again, on its own"; cat "$log.alone"; } >> "$OUT/tests.log"
    grep -E "passed|failed|Fatal Python error" "$log.alone" | tail -n 1
    if [ "$rc2" -eq 0 ]; then
      printf '%-6s %s\n' "tests:$name" "FAILED concurrently (exit status $rc), ok alone" \
        | tee -a "$SUMMARY"
      FAILED=1
      continue
    fi
    rc=$rc2
  fi
  record "tests:$name" "$rc"
done
grep -E "^(FAILED|ERROR) " "$OUT/tests.log" | head -n 60

# --------------------------------------------------------------- benchmark --
# BENCH=0 skips it.
mkdir -p "$OUT/results"
if [ "${BENCH:-1}" = 1 ] && ! run_logged bench "$OUT/bench.log" "$BENCH_TIMEOUT" \
    python benchmarks/bench_layers.py --device cuda --out "$OUT/results" ${NO_PERSISTENT[@]+"${NO_PERSISTENT[@]}"} ${BENCH_ARGS:-}; then
  echo "the benchmark (benchmarks/bench_layers.py) failed; see $OUT/bench.log"
fi

# ------------------------------------------------ persistent variants A/B --
# The persistent tier's auto choice (fusedrnn-persistent) against the four
# pinned settings of persistent_threads x persistent_cta_epilogue (-base: 256
# threads, the lanes' forward epilogue, the defaults before 2026-12-04;
# -ctaepi: 256, CTA-wide; -wide: 512, lanes'; -wide-ctaepi: 512, CTA-wide),
# forward and forward+backward side by side in one process: float32 on the
# D2L layer sweep, fastrnns and one-step ($OUT/results_variants), bfloat16 on
# d2l and d2l-L8 ($OUT/results_variants_bf16); and -pairs / -wide-pairs
# (256 / 512 threads, CTA-wide, the EXPERIMENTAL two-unit forward tasks of
# 2026-12-04; -wide-pairs is float32 only: not in the bfloat16 run;
# persistent_fwd_task_units "2", not yet run on a GPU when added; its tests:
# test_two_unit_tasks_*).  The auto values come from
# this step's float32 run on an H200, 2026-12-04 (persistent_plan.h,
# auto_threads / auto_cta_epilogue).  Their correctness tests are in
# tests/test_cuda_persistent.py (test_cta_epilogue_*, test_wide_ctas_*).
# VARIANTS=0 skips it.
if [ "${VARIANTS:-1}" = 1 ] && [ "$SKIP_PERSISTENT" = 0 ]; then
  # The EXPERIMENTAL register-resident float32 forward weights (2026-12-05,
  # not yet run on a GPU when added; tests: test_register_weights_*) in a
  # process of their own, so that a fault in that kernel cannot cost the rows
  # below; beside auto and the two-unit tasks, on the D2L layer sweep.  First,
  # because these rows decide the layer-scaling target (D2L L8 / L1, issue 4).
  run_logged variants_regs "$OUT/bench_variants_regs.log" "${VARIANTS_TIMEOUT:-120}" \
    python benchmarks/bench_layers.py --device cuda --out "$OUT/results_variants_regs" \
    --configs d2l-L1,d2l,d2l-L4,d2l-L8 --cells lstm --no-reference --budget 1.5 \
    --impls fusedrnn-persistent,fusedrnn-persistent-ctaepi,fusedrnn-persistent-wide-pairs,fusedrnn-persistent-regs
  # The same sweep with TF32 allowed for cuDNN and fusedrnn alike (PyTorch's
  # default for cuDNN RNNs; the issue's targets ask for the same TF32 policy
  # on both sides): auto (FMA kernels; only layer 0's input GEMM takes TF32)
  # against the EXPERIMENTAL tensor-core forward (persistent_mma "on": TF32
  # tiles).  Never measured on a GPU before 2026-12-05.
  run_logged variants_tf32 "$OUT/bench_variants_tf32.log" "${VARIANTS_TIMEOUT:-120}" \
    python benchmarks/bench_layers.py --device cuda --tf32 on --out "$OUT/results_variants_tf32" \
    --configs d2l-L1,d2l,d2l-L4,d2l-L8 --cells lstm --no-reference --budget 1.5 \
    --impls fusedrnn-persistent,fusedrnn-persistent-mma
  VARIANT_IMPLS=fusedrnn-persistent,fusedrnn-persistent-base,fusedrnn-persistent-ctaepi,fusedrnn-persistent-wide,fusedrnn-persistent-wide-ctaepi,fusedrnn-persistent-pairs,fusedrnn-persistent-wide-pairs
  run_logged variants "$OUT/bench_variants.log" "${VARIANTS_TIMEOUT:-120}" \
    python benchmarks/bench_layers.py --device cuda --out "$OUT/results_variants" \
    --configs d2l-L1,d2l,d2l-L4,d2l-L8,fastrnns,one-step --cells lstm --no-reference \
    --budget 1.5 --impls "$VARIANT_IMPLS"
  run_logged variants_bf16 "$OUT/bench_variants_bf16.log" "${VARIANTS_TIMEOUT:-120}" \
    python benchmarks/bench_layers.py --device cuda --dtype bfloat16 \
    --out "$OUT/results_variants_bf16" --configs d2l,d2l-L8 --cells lstm --no-reference \
    --budget 1.5 --impls "${VARIANT_IMPLS%,fusedrnn-persistent-wide-pairs}"
fi

# ------------------------------------------- kernel time against call time --
# scripts/profile_step.py --torch-profile (auto tier, D2L L = 2 forward and
# forward+backward, L = 8 forward+backward, 20 calls each): the kernels' GPU
# time beside the whole call's, i.e. how much of a call is host work (on an
# H200, 2026-12-04: 60-70 us of a 0.31 ms forward), and from each call's
# timeline (trace_d2l_L*.json) scripts/trace_gaps.py's account of where the
# GPU waited and for which host op; those accounts also go into the summary.
# HOSTPROF=0 skips it.
if [ "${HOSTPROF:-1}" = 1 ]; then
  run_logged hostprof "$OUT/host_profile.log" "${HOSTPROF_TIMEOUT:-75}" \
    bash -c 'for la in "2" "2 --backward" "8 --backward"; do
      set -- $la; l=$1; b=${2:-};
      echo "== profile_step.py --L $l $b";
      python scripts/profile_step.py --tier auto --L "$l" --iters 20 --torch-profile $b \
        --trace "$0/trace_d2l_L$l${b:+_bwd}.json" || exit $?;
    done' "$OUT"
  awk '/^== profile_step/ {print; next} /^trace_gaps:/ {on = 1; print; next}
       on && /^  [^ ]/ {print; next} {on = 0}' "$OUT/host_profile.log" >> "$SUMMARY"
fi

# ------------------------------------------------- tensor-core A/B (bf16) --
# The persistent tier with and without its experimental tensor-core products
# (persistent_mma "on"), bfloat16, forward and forward+backward, side by side
# in one process; its
# correctness tests are in tests/test_cuda_persistent.py (test_mma_*).
# Measured on an H200 (2026-12-04): mixed, so it runs only with MMA=1.
if [ "${MMA:-0}" = 1 ] && [ "$SKIP_PERSISTENT" = 0 ]; then
  run_logged mma "$OUT/bench_mma.log" "${MMA_TIMEOUT:-90}" \
    python benchmarks/bench_layers.py --device cuda --dtype bfloat16 --out "$OUT/results_mma" \
    --configs small-batch,d2l-L1,d2l,d2l-L8 --cells lstm --no-reference \
    --impls fusedrnn-persistent,fusedrnn-persistent-mma
fi

# ----------------------------------------------- backward batch split A/B --
# The persistent tier's backward with its batch split (the default since
# 2026-12-04) against the backward without it (persistent_bwd_split "off"),
# side by side in one process (forward+backward; the forward is the same
# kernel).  Measured on an H200 (2026-12-04) and the default since, so it
# runs only with SPLIT=1.
if [ "${SPLIT:-0}" = 1 ] && [ "$SKIP_PERSISTENT" = 0 ]; then
  run_logged split "$OUT/bench_split.log" "${SPLIT_TIMEOUT:-60}" \
    python benchmarks/bench_layers.py --device cuda --out "$OUT/results_split" \
    --configs d2l-L1,d2l,d2l-L4,d2l-L8 --cells lstm --modes fwdbwd \
    --impls fusedrnn-persistent,fusedrnn-persistent-nosplit
fi

# --------------------------------------------------- the D2L chapter, on CUDA --
# benchmarks/train_time_machine.py --compare: the chapter's 2-layer LSTM on The
# Time Machine, fusedrnn and torch.nn (cuDNN) trained side by side: perplexity
# and tokens/second.  Measured on an H200 (2026-12-04, 51 s); since the
# variants and hostprof steps grew, it runs only with TRAIN=1 (the whole
# script would not fit its DEADLINE otherwise); TRAIN_ARGS adds arguments.
if [ "${TRAIN:-0}" = 1 ]; then
  run_logged train "$OUT/train.log" "${TRAIN_TIMEOUT:-120}" \
    python benchmarks/train_time_machine.py --device cuda --compare \
    --json "$OUT/results/train_time_machine_cuda.json" ${TRAIN_ARGS:-}
fi

# ----------------------------------------------------------------- profile --
# PROFILE=1: Nsight Compute reports of a D2L-size forward ($OUT/ncu_<name>.ncu-rep;
# open with ncu-ui) and their details pages as text ($OUT/ncu_<name>.txt):
# the persistent forward at L = 2, its backward at L = 2, the forward at L = 8
# (also with the two-unit tasks) and L = 1 (one launch each after the warm-up) and six step kernels of the
# general tier at L = 2.  PROFILE_ARGS adds
# profile_step.py arguments (e.g. "--B 8 --T 64").
if [ "${PROFILE:-0}" = 1 ] && command -v ncu > /dev/null; then
  prof() {  # prof NAME KERNEL_REGEX SKIP COUNT profile_step.py-args...
    local name=$1 kre=$2 skip=$3 count=$4
    shift 4
    run_logged "ncu:$name" "$OUT/ncu_$name.log" "${PROFILE_TIMEOUT:-90}" \
      ncu --kernel-name "regex:$kre" --launch-skip "$skip" --launch-count "$count" --set full \
      --import-source yes -o "$OUT/ncu_$name" python scripts/profile_step.py "$@" ${PROFILE_ARGS:-}
    ncu --import "$OUT/ncu_$name.ncu-rep" --page details > "$OUT/ncu_$name.txt" 2>&1
    # The hottest source lines by warp-stall samples, when this ncu can print them.
    ncu --import "$OUT/ncu_$name.ncu-rep" --page source --csv --print-source cuda \
      > "$OUT/ncu_${name}_source.csv" 2>&1 || true
  }
  prof persistent_L2 lstm_persistent_fwd 3 1 --tier persistent --L 2
  prof persistent_bwd_L2 lstm_persistent_bwd 3 1 --tier persistent --L 2 --backward
  prof persistent_L8 lstm_persistent_fwd 3 1 --tier persistent --L 8
  # The two-unit forward tasks (EXPERIMENTAL) at L = 8, where they should pay
  # if the k loop is shared-memory bound (benchmarks/NOTES_gpu.md).
  prof persistent_L8_pairs lstm_persistent_fwd 3 1 --tier persistent --L 8 \
    --option persistent_fwd_task_units=2
  prof persistent_L1 lstm_persistent_fwd 3 1 --tier persistent --L 1
  prof general_L2 lstm 40 6 --tier general --L 2
fi

# Issue 4's targets, from every result file this call wrote (scripts/targets.py
# only reads them), into the summary.
python scripts/targets.py "$OUT"/results* >> "$SUMMARY" 2>&1 || true

phase "summary"
cat "$SUMMARY"
if [ "$FAILED" -ne 0 ]; then
  echo "gpu_check: at least one step FAILED"
  exit 1
fi
echo "gpu_check: all steps passed"
exit 0
