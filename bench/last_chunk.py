"""The video's last chunk: denoise the n < 16 frames that are left (upstream), or mirror-pad them to 16 (the motion
modules were trained on 16 frames)? Measured against what the model makes of the same frames inside a full chunk.

    .venv/bin/python bench/last_chunk.py [--model demo] [--seeds 3]

For n in 2, 4, 8, 12, frames 32 .. 32+n-1 of a talking-face clip are denoised three ways: alone (n frames), padded
(n frames mirrored back and forth to 16, the extra outputs dropped) and in context (the 16-frame chunk that ends with
them, whose motion modules see 16 real frames: the reference). Prints the PSNR of the generated region (mask 0)
against the reference, next to the PSNR of the reference against itself with the next seed (how far the random
draws alone move the output), and the mean jump in that region from frame 31 (the end of the full chunk before) to
frame 32.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from media.faces import astronaut_frames  # noqa: E402
from media.speech import speech  # noqa: E402

from latentsync.audio.features import audio_features, frame_windows  # noqa: E402
from latentsync.face.align import Aligner  # noqa: E402
from latentsync.face.track import FaceTracker  # noqa: E402
from latentsync.pipeline.denoise import ChunkDenoiser, DenoiseSettings  # noqa: E402
from latentsync.pipeline.lipsync import LipSyncPipeline  # noqa: E402

TEXT = "Every morning the old fisherman walked down to the harbour and counted the boats."


def mirror(n: int, target: int = 16) -> list[int]:
    """0, 1, .., n-1, n-2, .., 1, 0, 1, ... up to `target` frames (the padding this project used before)."""
    cycle = list(range(n)) + list(range(n - 2, 0, -1)) or [0]
    return [cycle[i % len(cycle)] for i in range(target)]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255**2 / mse) if mse else float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    pipeline = LipSyncPipeline.from_model(args.model, "cpu", "fp32")
    models, res = pipeline.models, pipeline.models.resolution
    aligner = Aligner(res)
    crops = []
    with FaceTracker() as tracker:
        for frame in astronaut_frames(48, size=(640, 360), fps=25):
            face = tracker(frame)
            crops.append(aligner.warp(frame, aligner.fit(face.points3)))
    crops_t = torch.from_numpy(np.stack(crops))
    features = audio_features(speech(TEXT), models.audio_encoder)
    tokens = frame_windows(features, frames=torch.arange(48))
    generated = np.array(pipeline.mask) < 0.5
    steps = int(models.spec.inference.get("steps", 20))
    print(f"model {args.model}, {steps} steps, seeds {args.seeds}")
    print("| n | alone vs in context | padded vs in context | in context, next seed | jump 31->32: in context "
          "| alone | padded |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n in (2, 4, 8, 12):
        rows = []
        for seed in range(args.seeds):
            settings = DenoiseSettings(steps=steps, guidance=1.5, seed=1247 + seed)

            def run(index: list[int], seed_offset: int = 0) -> np.ndarray:
                idx = torch.tensor(index)
                chosen = DenoiseSettings(steps=steps, guidance=1.5, seed=settings.seed + seed_offset)
                return ChunkDenoiser(models, pipeline.mask, chosen).batch([(crops_t[idx], tokens[idx])])[0].numpy()

            before = run(list(range(16, 32)))[-1]  # frame 31, the end of the full chunk before the last one
            context = run(list(range(32 + n - 16, 32 + n)))[-n:]
            alone = run(list(range(32, 32 + n)))
            padded = run([32 + i for i in mirror(n)])[:n]
            other = run(list(range(32 + n - 16, 32 + n)), seed_offset=100)[-n:]
            jump = [float(np.abs(x[0].astype(float) - before.astype(float))[generated].mean())
                    for x in (context, alone, padded)]
            rows.append([psnr(x[:, generated], context[:, generated]) for x in (alone, padded, other)] + jump)
        mean = np.mean(rows, axis=0)
        print(f"| {n} | {mean[0]:.2f} dB | {mean[1]:.2f} dB | {mean[2]:.2f} dB | {mean[3]:.2f} | {mean[4]:.2f} "
              f"| {mean[5]:.2f} |")


if __name__ == "__main__":
    main()
