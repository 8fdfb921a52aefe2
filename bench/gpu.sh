#!/usr/bin/env bash
# The GPU bench, one call on a lent GPU machine (the `device` tool; bare image with torch, no network):
#   bash bench/gpu.sh            # writes $OUT/gpu_unet.md (or bench/gpu_unet.md without $OUT), about 5 minutes
#   bash bench/gpu.sh --dry      # the same script on this CPU with tiny shapes: check it before spending GPU time
# It times full-size 1.5 and 1.6 U-Nets (random weights give true speed) at upstream's 20 guided steps and at a
# distilled student's 1, 2 and 4 unguided steps, fp16/bf16, eager and compiled. Copy the table into
# bench/RESULTS.md with the device and the date.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ "${1:-}" = "--dry" ] && PY=.venv/bin/python
OUT_DIR=${OUT:-bench}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || true
PYTHONUNBUFFERED=1 timeout 480 "$PY" bench/gpu_unet.py --out "$OUT_DIR/gpu_unet.md" "$@"
