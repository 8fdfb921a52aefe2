#!/usr/bin/env bash
# `make demo`: lip-sync a face video to different speech with `latentsync run`.
# The sample is synthesised here (a talking face from a photo, and a second clip whose speech we borrow).
# Until the trained demo model is bundled, the model is a freshly initialised small one: the run exercises the
# whole pipeline, but the mouth it paints is noise. Real quality needs `latentsync download --model 1.6`.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
MODEL=build/demo-model
SAMPLE=build/demo-sample
OUT=build/demo.mp4
if [ ! -f "$MODEL/model.yaml" ]; then
  "$BIN/latentsync" model init --config small --out "$MODEL" --seed 0
fi
"$BIN/latentsync" data synth "$SAMPLE" --clips 2 --seconds 5 5 --seed 7 -q
"$BIN/latentsync" run "$SAMPLE/raw/clip_0000.mp4" "$SAMPLE/raw/clip_0001.mp4" -o "$OUT" --model "$MODEL" --steps 5
echo "demo output: $OUT  (video of $SAMPLE/raw/clip_0000.mp4, speech of $SAMPLE/raw/clip_0001.mp4; untrained model)"
