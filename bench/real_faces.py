"""The held-out table of issue 13: a model on people it never saw (`latentsync.eval.heldout`).

    .venv/bin/python bench/real_faces.py                        # the demo model, every held-out person
    .venv/bin/python bench/real_faces.py --model DIR --seconds 4 --syncnet DIR_OR_MODEL

For each held-out person's clip (scripts/real_faces/split.yaml), its first `--seconds`:
- reconstruction: lip-synced to its own speech; lower-face SSIM and colour difference against the source;
- new speech: lip-synced to the next held-out clip's speech; the SyncNet's windows with the driving speech vs the
  same speech 0.5 s late, and the offset it finds;
- source: the same SyncNet figures for the untouched clip with its own speech, the ceiling a lip-sync can reach in
  the judge's eyes (and the judge's own held-out accuracy on real footage).
The SyncNet is the model's own (trained without the held-out people) unless `--syncnet` names another model.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from media.speech import write_audio  # noqa: E402

from latentsync.audio.load import load_audio  # noqa: E402
from latentsync.eval.heldout import new_speech, reconstruction  # noqa: E402
from latentsync.models.modeldir import ModelDir  # noqa: E402
from latentsync.models.syncnet import load_syncnet, load_syncnet_yaml  # noqa: E402
from latentsync.models.whisper import SAMPLE_RATE  # noqa: E402
from latentsync.pipeline.lipsync import LipSyncPipeline, RunOptions  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CLIPS = REPO.parent / "shared/data/talking/clips"


def held_out_clips() -> list[Path]:
    plan = yaml.safe_load((REPO / "scripts/real_faces/split.yaml").read_text())
    return [CLIPS / clips[0] for clips in plan["held_out"].values()]


def cut_speech(path: Path, seconds: float, out: Path) -> tuple[Path, np.ndarray]:
    wav = load_audio(path, SAMPLE_RATE)[: int(seconds * SAMPLE_RATE)]
    return write_audio(out, wav, SAMPLE_RATE), wav


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("clips", nargs="*", type=Path)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--syncnet", help="model whose SyncNet scores the outputs (default: --model's)")
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    clips = args.clips or held_out_clips()
    pipeline = LipSyncPipeline.from_model(args.model)
    judge = ModelDir.resolve(args.syncnet or args.model).spec
    if judge.syncnet_config is None or judge.syncnet_weights is None:
        raise SystemExit(f"{judge.root} has no SyncNet: pass --syncnet")
    syncnet = load_syncnet(judge.syncnet_config, judge.syncnet_weights)
    sync_res = int(load_syncnet_yaml(str(judge.syncnet_config))["data"]["resolution"])
    res = pipeline.models.resolution
    print("| held-out clip | lower-face SSIM | colour diff (levels) | driving beats 0.5 s late | score: driving / late "
          "| offset (frames) | source: own beats late, offset |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, clip in enumerate(clips):
            own, _ = cut_speech(clip, args.seconds, Path(tmp) / "own.wav")
            pipeline.run(clip, own, Path(tmp) / "recon.mp4", RunOptions())
            recon = reconstruction(clip, Path(tmp) / "recon.mp4", res, pipeline.mask)
            other, wav = cut_speech(clips[(i + 1) % len(clips)], args.seconds, Path(tmp) / "other.wav")
            pipeline.run(clip, other, Path(tmp) / "dubbed.mp4", RunOptions())
            sync = new_speech(syncnet, Path(tmp) / "dubbed.mp4", wav, sync_res)
            source = new_speech(syncnet, clip, load_audio(clip, SAMPLE_RATE), sync_res)
            rows.append((recon.ssim, recon.colour, sync.late_wins, sync.offset, source.late_wins))
            print(f"| {clip.name} | {recon.ssim:.3f} | {recon.colour:.1f} | {sync.late_wins:.0%} of {sync.windows} "
                  f"| {sync.score:.3f} / {sync.late_score:.3f} | {sync.offset:+d} "
                  f"| {source.late_wins:.0%}, {source.offset:+d} |", flush=True)
    ssim, colour, wins, _, ceiling = np.mean(rows, axis=0)
    in_sync = sum(abs(r[3]) <= 1 for r in rows)
    print(f"| **mean** | **{ssim:.3f}** | **{colour:.1f}** | **{wins:.0%}** | | {in_sync} of {len(rows)} within +-1 "
          f"| {ceiling:.0%} |")


if __name__ == "__main__":
    main()
