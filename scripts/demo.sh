#!/usr/bin/env bash
# `make demo`: the main job that works at this stage of the project.
# Today: build a small randomly initialised model (real Whisper tiny.en audio encoder) and run every
# component on it: Whisper features of a test signal, one guided U-Net step, a VAE decode.
# Lip-sync of a video (`latentsync run`) and the trained demo model replace this when they land.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
MODEL=build/demo-model
if [ ! -f "$MODEL/model.yaml" ]; then
  "$BIN/latentsync" model init --config small --syncnet small --out "$MODEL" --seed 0
fi
"$BIN/latentsync" model info --model "$MODEL" --check
echo "demo model: $MODEL"
