#!/usr/bin/env bash
# One command for a GPU machine: build wscswap_fast with its CUDA kernels, run every test that
# runs on the GPU (the cuda backend, and the triton backend, which runs on the GPU when there is
# one), then `wscswap bench --device cuda` suite by suite. Results go to OUTDIR:
#   gpu.txt        the GPU, driver, torch, triton and nvcc versions
#   build.log      the extension build
#   pytest_gpu.txt the GPU tests
#   bench.log      the benchmark's console output; bench_cuda.csv / bench_cuda.md its tables
#
#   bench/gpu_check.sh OUTDIR
#
# Python: the active virtualenv; else a python3 that already has a CUDA torch (an offline GPU
# image); else $VENV (default .venv), created with torch from PyPI. DEADLINE (seconds, default
# 3600) bounds the whole run (TEST_PATHS narrows the tests, SUITES the benchmark): the steps after the build share what is left, so a lease that ends
# still returns the test log and every benchmark suite finished so far.
set -uo pipefail

out=${1:?usage: bench/gpu_check.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
deadline=${DEADLINE:-3600}
export PYTHONUNBUFFERED=1

left() { echo $((deadline - SECONDS)); }
# run_for SECONDS CMD...: CMD under a time limit that also respects the deadline
run_for() {
  local want=$1; shift
  local t; t=$(left); [ "$want" -lt "$t" ] && t=$want
  if [ "$t" -le 5 ]; then echo "skipped (deadline): $*"; return 124; fi
  timeout --kill-after=10 "$t" "$@"
}

if [ -n "${VIRTUAL_ENV:-}" ]; then
  py=python
elif python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  py=python3
else
  venv=${VENV:-.venv}
  [ -d "$venv" ] || python3 -m venv "$venv"
  . "$venv/bin/activate"
  py=python
  # The PyPI torch wheel for Linux is a CUDA build; a CPU-only torch would build no CUDA kernels.
  $py -c "import torch" 2>/dev/null || pip install torch
fi

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  $py -c "import torch; print('torch', torch.__version__, '| CUDA', torch.version.cuda, '| GPU', torch.cuda.is_available())"
  $py -c "import triton; print('triton', triton.__version__)" 2>&1
  nvcc --version | tail -n 2
  nproc
} 2>&1 | tee "$out/gpu.txt"

# Without network the runtime dependencies must already be there: --no-deps keeps pip offline.
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$($py -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")}
build_ok=1
run_for 1200 $py -m pip install --no-build-isolation --no-deps -e '.[dev]' >"$out/build.log" 2>&1 || build_ok=0
if [ $build_ok = 1 ] && ! $py -c "import wscswap_fast._C as c; assert c.with_cuda" >>"$out/build.log" 2>&1; then
  echo "wscswap_fast._C was built without CUDA: needs a CUDA build of torch and nvcc" | tee -a "$out/build.log"
  build_ok=0
fi
if [ $build_ok = 0 ]; then
  # Keep the errors, then build the CPU kernels alone so that the Triton tests and benchmarks still run.
  grep -n -B2 -A6 "error" "$out/build.log" | head -n 200 > "$out/build_errors.txt"
  echo "CUDA build FAILED (build_errors.txt); building the CPU kernels only" | tee -a "$out/gpu.txt"
  WSCSWAP_NO_CUDA=1 run_for 1200 $py -m pip install --no-build-isolation --no-deps -e '.[dev]' >>"$out/build.log" 2>&1
fi
echo "build finished at ${SECONDS}s" | tee -a "$out/gpu.txt"

# The GPU tests: the cuda backend's (marked cuda) and the triton backend's, by test id.
xdist=()
$py -c "import xdist" 2>/dev/null && xdist=(-n "${TEST_WORKERS:-8}")
tests_status=0
run_for "${TEST_SECONDS:-1800}" $py -m pytest ${TEST_PATHS:-tests} -k "cuda or triton or gpu" "${xdist[@]}" \
  --continue-on-collection-errors -q -rfEs >"$out/pytest_gpu.txt" 2>&1 || tests_status=$?
tail -n 3 "$out/pytest_gpu.txt" | tee -a "$out/gpu.txt"
echo "tests finished at ${SECONDS}s" | tee -a "$out/gpu.txt"

# The benchmark, one suite per process (the compile-heavy suites last), merged after each.
suites=${SUITES:-winograd_conv2d,instance_norm_act,ain,blend,paste_faces,landmark_loss,rasterize,generator,train_step,pipeline}
rm -f "$out/bench_cuda.csv"
echo "# wscswap bench --device cuda" > "$out/bench_cuda.md"
tmp=$(mktemp -d)
for s in ${suites//,/ }; do
  echo "== $s (${SECONDS}s)" >>"$out/bench.log"
  run_for "${SUITE_SECONDS:-900}" $py -m wscswap_fast.cli bench --device "${BENCH_DEVICE:-cuda}" --ops "$s" \
    --csv "$tmp/$s.csv" --markdown "$tmp/$s.md" >>"$out/bench.log" 2>&1 || echo "suite $s: exit $?" >>"$out/bench.log"
  if [ -f "$tmp/$s.csv" ]; then
    if [ -f "$out/bench_cuda.csv" ]; then tail -n +2 "$tmp/$s.csv" >>"$out/bench_cuda.csv"; else cp "$tmp/$s.csv" "$out/bench_cuda.csv"; fi
    tail -n +2 "$tmp/$s.md" >>"$out/bench_cuda.md"
  fi
done
echo "bench finished at ${SECONDS}s" | tee -a "$out/gpu.txt"
[ $build_ok = 1 ] || exit 1
exit "$tests_status"
