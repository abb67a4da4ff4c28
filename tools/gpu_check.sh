#!/usr/bin/env bash
# The GPU check of issue 14 (see tools/gpu_check.py): float32 against mixed precision on the
# tutorial preset, step times and peak memory, the native and fast layer paths' gradients.
#
#   tools/gpu_check.sh                         # on a machine with a GPU and Paddle's GPU wheel
#   tools/gpu_check.sh --steps 50 --json gpu_check.json
#   tools/gpu_check.sh --cpu-smoke             # its logic on the CPU at a tiny size
#
# PYTHON=path/to/python picks the interpreter (default: python3). Exit status: 0 all checks
# passed, 1 a check failed, 2 no usable GPU (without --cpu-smoke).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2 || true
fi
exec "$PYTHON" tools/gpu_check.py "$@"
