#!/usr/bin/env bash
# Reproduce the bundled demo model (src/latentsync/assets/demo-model) from nothing: synthetic data, then the VAE,
# the SyncNet and the U-Net, each trained by `latentsync train` on 2 CPU cores, then packed in float16.
# docs/demo-model.md gives the figures of the shipped run. Every step resumes where it stopped if re-run.
#   bash scripts/train_demo.sh [WORK_DIR]     (default build; ~2.5 h on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
LS=.venv/bin/latentsync
WORK=${1:-build}
TRAIN=$WORK/synth/aligned
VAL=$PWD/$WORK/synth-val/aligned/filelist.txt   # held out: another seed, never trained on
RUNS=$WORK/demo-train

"$LS" data synth "$WORK/synth" --clips 80 --seed 0 --workers 2
"$LS" data synth "$WORK/synth-val" --clips 10 --seed 1 --workers 2

# The VAE and the SyncNet are independent: one core each.
OMP_NUM_THREADS=1 "$LS" train vae vae_small --set data.root="$TRAIN" --set data.val_filelist="$VAL" \
  --set run.output_dir="$RUNS/vae" &
VAE_JOB=$!
OMP_NUM_THREADS=1 "$LS" train syncnet syncnet_small --set data.root="$TRAIN" --set data.val_filelist="$VAL" \
  --set run.output_dir="$RUNS/syncnet" --set data.num_workers=1 &
SYNCNET_JOB=$!
wait "$VAE_JOB"
wait "$SYNCNET_JOB"

OMP_NUM_THREADS=2 "$LS" train unet unet_small --set data.root="$TRAIN" --set data.val_filelist="$VAL" \
  --set vae="$RUNS/vae/vae" --set run.output_dir="$RUNS/unet" \
  --set validation.video="$WORK/synth-val/raw/clip_0000.mp4" --set validation.audio="$WORK/synth-val/raw/clip_0001.mp4"

"$LS" model pack "$RUNS/unet/model" src/latentsync/assets/demo-model --force --steps 10 \
  --syncnet-config "$RUNS/syncnet/syncnet.yaml" --syncnet "$RUNS/syncnet/checkpoints/checkpoint-500.pt"
