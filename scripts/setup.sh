#!/usr/bin/env bash
# Sets up .venv on a fresh machine: torch (the CPU build 2.13.0 unless a torch is already there),
# then wscswap_fast built in place with its compiled kernels and dev tools.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${WSCSWAP_VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
. "$VENV/bin/activate"
python -m pip install -q --upgrade "setuptools>=64" wheel ninja
# A GPU machine brings its own CUDA torch; the pinned CPU build is only for a torch-less machine.
python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0
MAX_JOBS=${MAX_JOBS:-2} python -m pip install -q --no-build-isolation -e '.[dev]'
python -c "import wscswap_fast, torch; print('wscswap_fast ready: torch', torch.__version__, 'backends', wscswap_fast.ops.available())"
