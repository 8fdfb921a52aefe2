#!/usr/bin/env bash
# `make demo`: lip-sync a face video to different speech with `latentsync run` and the bundled demo model.
# The sample is synthesised here (a talking face from a photo, and a second clip whose speech we borrow); the
# demo model (docs/demo-model.md) was trained on other clips of the same kind. It is a 128 px CPU model that shows
# the whole system working; real quality needs the official checkpoints: `latentsync download --model 1.6`.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
SAMPLE=build/demo-sample
OUT=build/demo.mp4
"$BIN/latentsync" data synth "$SAMPLE" --clips 2 --seconds 5 5 --seed 7 -q
"$BIN/latentsync" run "$SAMPLE/raw/clip_0000.mp4" "$SAMPLE/raw/clip_0001.mp4" -o "$OUT" --model demo
echo "demo output: $OUT  (the face of $SAMPLE/raw/clip_0000.mp4 speaking the words of $SAMPLE/raw/clip_0001.mp4)"
