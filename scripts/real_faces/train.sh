#!/usr/bin/env bash
# Train the real-face demo model (issue 13) from the clips in ../shared/data/talking, with the project's own
# commands, on 2 CPU cores. docs/real-faces.md gives the figures. Every step resumes where it stopped if re-run,
# so a session that ends mid-way loses at most one checkpoint interval: run the same command again.
#   bash scripts/real_faces/train.sh [WORK_DIR]     (default build)
set -euo pipefail
cd "$(dirname "$0")/../.."
LS=.venv/bin/latentsync
CLIPS=${CLIPS:-../shared/data/talking/clips}
WORK=${1:-build}
DATA=$WORK/talking-data          # the real clips through the data pipeline, 128 px
SYNTH=$WORK/real-synth           # synthetic clips of the training people's faces, varied
RUNS=$WORK/real-train

"$LS" data run "$CLIPS" "$DATA" --resolution 128 --min-seconds 2 --workers 2
"$LS" data split "$DATA/filelist.txt" scripts/real_faces/split.yaml    # train.txt, held_out.txt (by person)
"$LS" data synth "$SYNTH" --clips 80 --seconds 2 4 --photo scripts/real_faces/photos.txt --augment --seed 13 \
  --workers 2
# The U-Net's list: the real training clips, then the synthetic ones (relative to $DATA, as filelists are).
{ cat "$DATA/train.txt"; sed 's|^|../real-synth/aligned/|' "$SYNTH/aligned/filelist.txt"; } > "$DATA/train_mix.txt"

# The VAE sees only real training people; validation is on the held-out people. Its encoder is then frozen as the
# U-Net's (vae-unet): from there on the latents never change, and only the decoder goes on training.
OMP_NUM_THREADS=1 "$LS" train vae vae_small --set vae.config=small-f4 --set data.root="$DATA" \
  --set data.filelist=train.txt --set data.val_filelist="$PWD/$DATA/held_out.txt" --set run.max_steps=4500 \
  --set optimizer.schedule=cosine --set run.output_dir="$RUNS/vae-f4-narrow"
[ -d "$RUNS/vae-unet" ] || cp -r "$RUNS/vae-f4-narrow/vae" "$RUNS/vae-unet"
# The decoder alone goes on (the encoder, hence the U-Net's latents, stays bit-identical): the shipped decoder.
OMP_NUM_THREADS=1 "$LS" train vae vae_small --set vae.init_from="$RUNS/vae-unet" --set vae.train=decoder \
  --set data.root="$DATA" --set data.filelist=train.txt --set data.val_filelist="$PWD/$DATA/held_out.txt" \
  --set run.max_steps=1500 --set optimizer.lr=0.0002 --set optimizer.schedule=cosine \
  --set run.output_dir="$RUNS/vae-dec"

# The SyncNet (real training people only) and the U-Net (real + synthetic), one core each.
OMP_NUM_THREADS=1 "$LS" train syncnet syncnet_real --set data.root="$DATA" --set data.filelist=train.txt \
  --set data.val_filelist="$PWD/$DATA/held_out.txt" \
  --set run.output_dir="$RUNS/syncnet-aug" &
SYNCNET_JOB=$!
OMP_NUM_THREADS=1 "$LS" train unet unet_real --set data.root="$DATA" --set data.filelist=train_mix.txt \
  --set data.val_filelist=held_out.txt --set vae="$RUNS/vae-unet" --set run.output_dir="$RUNS/unet"
wait "$SYNCNET_JOB"
