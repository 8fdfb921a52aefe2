"""Streaming: peak memory of a run must not grow with the length of the video (issue: upstream OOMs at ~2.5 min)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from media.clips import write_clip
from media.faces import astronaut_frames
from media.speech import speech, write_audio

from latentsync.models.create import create_model_dir

CONFIGS = Path(__file__).parent / "configs"
RUN = """
import json, sys
from latentsync.pipeline.lipsync import LipSyncPipeline, RunOptions
report = LipSyncPipeline.from_model(sys.argv[1], "cpu", "fp32").run(sys.argv[2], sys.argv[3], sys.argv[4], RunOptions(steps=1))
print(json.dumps({"frames": report.frames, "rss": report.peak_rss_mb}))
"""


def peak_rss(model: Path, video: Path, audio: Path, out: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", RUN, str(model), str(video), str(audio), str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_length(tmp_path):
    model = create_model_dir(CONFIGS / "unet_tiny.yaml", tmp_path / "m", vae=CONFIGS / "vae_tiny").root
    sentence = "The quick brown fox jumps over the lazy dog near the river bank. "
    runs = {}
    for name, seconds in [("short", 3), ("long", 9)]:
        wav = speech(sentence * (seconds // 3), rate=16000)[: seconds * 16000]
        audio = write_audio(tmp_path / f"{name}.wav", wav, 16000)
        video = write_clip(tmp_path / f"{name}.mp4", astronaut_frames(seconds * 25, size=(1280, 720), fps=25), fps=25)
        runs[name] = peak_rss(model, video, audio, tmp_path / f"{name}-out.mp4")
    assert runs["long"]["frames"] == 3 * runs["short"]["frames"]
    growth = runs["long"]["rss"] / runs["short"]["rss"] - 1
    assert growth < 0.20, f"peak RSS grew {100 * growth:.0f}% for a 3x longer input: {runs}"
