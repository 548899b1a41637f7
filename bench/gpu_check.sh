#!/usr/bin/env bash
# One command for a GPU machine: build wscswap_fast with its CUDA kernels, run the CUDA tests and
# the CUDA benchmark. Results go to OUTDIR: gpu.txt, pytest_cuda.txt, bench_cuda.{csv,md}.
#   bench/gpu_check.sh OUTDIR
# Uses the active virtualenv, else creates/uses $VENV (default .venv in the repository).
set -euo pipefail

out=${1:?usage: bench/gpu_check.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."

if [ -z "${VIRTUAL_ENV:-}" ]; then
  venv=${VENV:-.venv}
  [ -d "$venv" ] || python3 -m venv "$venv"
  . "$venv/bin/activate"
fi
# The PyPI torch wheel for Linux is a CUDA build; a CPU-only torch would build no CUDA kernels.
python -c "import torch" 2>/dev/null || pip install torch
python -c "import torch; print('torch', torch.__version__, '| CUDA', torch.version.cuda, '| GPU available', torch.cuda.is_available())"

MAX_JOBS=${MAX_JOBS:-$(nproc)} pip install --no-build-isolation -e '.[dev]'
if ! python -c "import wscswap_fast._C as c; assert c.with_cuda"; then
  echo "ERROR: wscswap_fast._C was built without CUDA: needs a CUDA build of torch and nvcc (see the build log above)" >&2
  exit 1
fi

nvidia-smi --query-gpu=name --format=csv,noheader | tee "$out/gpu.txt"
# Run the benchmark even when a test fails, then report the test failure in the exit status.
tests_status=0
pytest -m cuda -v 2>&1 | tee "$out/pytest_cuda.txt" || tests_status=$?
wscswap bench --device cuda --csv "$out/bench_cuda.csv" --markdown "$out/bench_cuda.md"
exit "$tests_status"
