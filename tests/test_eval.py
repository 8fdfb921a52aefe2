"""`latentsync eval`: metric maths on cases with known answers, a video against itself with its audio shifted by k
frames (the offset moves by exactly k), and FID/FVD plumbing through stand-in TorchScript networks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from media.clips import write_clip

from latentsync.audio.load import load_audio
from latentsync.data.steps.common import Piece, write_pieces
from latentsync.data.synth import synthesize
from latentsync.eval.evaluate import EvalSettings, evaluate
from latentsync.eval.lse import shift_audio
from latentsync.eval.metrics import FeatureStats, frechet_distance, psnr, ssim
from latentsync.eval.report import write_report
from latentsync.video.reader import VideoFrames

SEED = 13  # held-out for the demo SyncNet (trained on seed 0), as in test_data_steps
SHIFT = 4  # frames


def test_psnr_and_ssim_known_values() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 250, (64, 64, 3), dtype=np.uint8)
    assert psnr(a, a) == float("inf") and ssim(a, a) == pytest.approx(1.0)
    assert psnr(a, a + 1) == pytest.approx(20 * np.log10(255.0), abs=1e-6)  # MSE 1
    assert ssim(a, 255 - a) < 0  # anti-correlated
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(a, a[:32])


def test_frechet_distance_of_known_gaussians() -> None:
    # Diagonal covariances: d^2 = |mu1 - mu2|^2 + sum (sigma1 - sigma2)^2.
    a = FeatureStats(np.array([0.0, 1.0, 2.0]), np.diag([1.0, 4.0, 9.0]), 100)
    b = FeatureStats(np.array([1.0, 1.0, 0.0]), np.diag([4.0, 4.0, 1.0]), 100)
    assert frechet_distance(a, b) == pytest.approx(1 + 4 + (1 - 2) ** 2 + 0 + (3 - 1) ** 2)
    x = np.random.default_rng(1).normal(size=(500, 8))
    assert frechet_distance(FeatureStats.of(x), FeatureStats.of(x)) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(FeatureStats.of(x), FeatureStats.of(x + 0.5)) == pytest.approx(8 * 0.25, rel=1e-6)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 5 s synthetic talking clip (full frames, face drifting), and the same frames with the audio 4 frames late
    and 4 frames early."""
    root = tmp_path_factory.mktemp("eval")
    synthesize(root / "synth", 1, seconds=(5, 5), seed=SEED)
    own = root / "synth" / "raw" / "clip_0000.mp4"
    source = VideoFrames(own)
    out = {"own": own}
    for name, frames in (("late", SHIFT), ("early", -SHIFT)):
        out[name] = root / f"{name}.mp4"
        write_pieces(source, shift_audio(load_audio(own), frames), [Piece(0, len(source), 0)], [out[name]])
    return out


def test_shifted_audio_moves_the_offset_by_exactly_k(clips: dict[str, Path], tmp_path: Path) -> None:
    videos = [clips["own"], clips["late"], clips["early"]]
    report = evaluate(videos, [clips["own"]] * 3, EvalSettings(syncnet="demo"))
    own, late, early = report.videos
    assert abs(own.sync_offset) <= 1, own
    assert late.sync_offset - own.sync_offset == -SHIFT  # audio behind the lips: the offset drops by k
    assert early.sync_offset - own.sync_offset == SHIFT  # audio ahead: it rises by k
    assert own.sync_score > max(late.sync_score, early.sync_score)  # the score at offset 0 drops when shifted
    assert own.psnr == float("inf") and own.ssim == pytest.approx(1.0)  # the reference is the video itself
    assert np.isfinite(late.psnr)  # same frames, re-encoded once more
    paths = write_report(report, tmp_path / "report")
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert data["videos"][1]["sync_offset"] == late.sync_offset and len(data["videos"][0]["curves"]) == 1
    assert [p.name for p in paths] == ["report.json", "report.md", "sync_offsets.png"]


class _Inception(torch.nn.Module):
    """Stand-in with the real file's call: uint8 NCHW in, `return_features=True` -> [N, D] features."""

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = x.float() / 255.0
        return 100 * torch.cat([x.mean((2, 3)), x.std((2, 3)), x[:, :, ::8, ::8].flatten(2).mean(2) ** 2], 1)


class _I3D(torch.nn.Module):
    """Stand-in with the real file's call: [N, 3, T, 224, 224] in [-1, 1] -> [N, D]."""

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        assert x.shape[1:] == (3, 16, 224, 224)
        return 100 * torch.cat([x.mean((2, 3, 4)), (x[:, :, 1:] - x[:, :, :-1]).abs().mean((2, 3, 4))], 1)


def test_fid_and_fvd_through_torchscript_files(clips: dict[str, Path], tmp_path: Path) -> None:
    inception, i3d = tmp_path / "inception.pt", tmp_path / "i3d.pt"
    torch.jit.script(_Inception()).save(str(inception))
    torch.jit.script(_I3D()).save(str(i3d))
    settings = EvalSettings(syncnet=None, inception=inception, i3d=i3d)
    same = evaluate([clips["own"]], [clips["own"]], settings)
    assert same.fid == pytest.approx(0.0, abs=1e-3) and same.fvd == pytest.approx(0.0, abs=1e-3)
    noisy = tmp_path / "noisy.mp4"
    source = VideoFrames(clips["own"])
    rng = np.random.default_rng(0)
    frames = [np.clip(f.astype(int) + rng.integers(-40, 40, f.shape), 0, 255).astype(np.uint8)
              for f in source.iter_range(0, len(source))]
    write_clip(noisy, frames, fps=25, audio=(load_audio(clips["own"]), 16000, 1))
    other = evaluate([noisy], [clips["own"]], settings)
    assert other.fid > 1.0 and other.fvd > 1.0  # noise moves the feature statistics
    assert other.videos[0].psnr < 30


def test_cli_eval_and_its_errors(clips: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "r"
    run = subprocess.run([sys.executable, "-m", "latentsync.cli", "eval", str(clips["own"]), "-o", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "| clip_0000.mp4 | 125 (125) |" in run.stdout and (out / "report.md").is_file()
    bad = subprocess.run([sys.executable, "-m", "latentsync.cli", "eval", str(clips["own"]), "--reference",
                          str(clips["own"]), str(clips["late"]), "-o", str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
    assert "2 files for 1 videos" in bad.stderr and not (tmp_path / "x").exists()
    missing = subprocess.run([sys.executable, "-m", "latentsync.cli", "eval", str(clips["own"]), "--i3d",
                              str(tmp_path / "nope.pt"), "-o", str(tmp_path / "y")],
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "I3D file not found" in missing.stderr
