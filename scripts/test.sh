#!/usr/bin/env bash
# Set-up plus every test: the C++ kernel tests and nvcc compile check (cmake + ctest), then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. "${WSCSWAP_VENV:-.venv}/bin/activate"
cmake -S . -B build/cmake -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build build/cmake -j "${MAX_JOBS:-2}"
ctest --test-dir build/cmake --output-on-failure
python -m pytest -q "$@"
