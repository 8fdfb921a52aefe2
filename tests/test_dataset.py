"""Training datasets: window sampling, mel/whisper alignment, the audio cache and user errors."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from media.clips import index_frame, read_index, write_clip
from safetensors import safe_open

from latentsync.audio.features import audio_features, frame_windows
from latentsync.audio.load import load_audio
from latentsync.audio.mel import melspectrogram
from latentsync.data.dataset import ClipInfo, SyncNetDataset, UNetDataset, prepare_cache
from latentsync.errors import ConfigError, VideoError
from latentsync.models.whisper import load_whisper_encoder
from latentsync.models.whisper_ct2 import tiny_en_path

SIZE = 128


def _clip(path: Path, n_frames: int, width: int = SIZE, height: int = SIZE, seed: int = 0) -> Path:
    """Frames that carry their index (top 3/4), and noise bursts as audio so the mel varies over time."""
    rng = np.random.default_rng(seed)
    frames = [index_frame(i, width, height) for i in range(n_frames)]
    n = n_frames * 640
    wav = (0.3 * rng.standard_normal(n) * (np.sin(np.arange(n) / 900) > 0)).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_clip(path, frames, 25, audio=(wav, 16000, 1), codec_options={"g": "10"})


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    for i, n in enumerate([60, 72, 50]):
        _clip(root / "clips" / f"c{i}.mp4", n, seed=i)
    _clip(root / "clips" / "short.mp4", 40, seed=9)  # too short for the U-Net (< 48), fine for SyncNet (>= 32)
    (root / "filelist.txt").write_text("clips/c0.mp4\nclips/c1.mp4\n\n# a comment\nclips/c2.mp4\nclips/short.mp4\n")
    return root


def _pixels(frame: torch.Tensor) -> np.ndarray:
    return ((frame.permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)


def test_syncnet_items_pair_frames_with_aligned_or_disjoint_mel(data_root: Path, reference_dir: Path) -> None:
    constants = json.loads((reference_dir / "pipeline_constants.json").read_text())["syncnet_inputs"]
    assert "int(80 * start_frame / 25)" in constants["audio"] and "ceil(num_frames / 5 * 16)" in constants["audio"]
    ds = SyncNetDataset(data_root, "filelist.txt", SIZE, samples_per_epoch=40, seed=3)
    assert len(ds) == 40 and ds.skipped == 0
    ys = []
    for index in range(0, 40, 3):
        s = ds.sample(index)
        item = ds[index]
        assert item["frames"].shape == (16, 3, SIZE, SIZE) and item["mel"].shape == (1, 80, math.ceil(16 / 5 * 16))
        assert -1.0 <= item["frames"].min() and item["frames"].max() <= 1.0
        assert [read_index(_pixels(f)) for f in item["frames"][::5]] == list(range(s.start, s.start + 16, 5))
        if s.y == 1.0:
            assert s.audio_start == s.start
        else:
            assert abs(s.audio_start - s.start) >= 16
        assert float(item["y"]) == s.y
        mel = melspectrogram(load_audio(s.clip.path))
        first = int(80 * s.audio_start / 25)
        np.testing.assert_array_equal(item["mel"][0].numpy(), mel[:, first : first + 52])
        ys.append(s.y)
    assert 0 < sum(ys) < len(ys)
    # 50% positives over many samples (sampling only, no decoding)
    share = np.mean([ds.sample(i).y for i in range(2000)])
    assert 0.45 < share < 0.55


def test_sampling_is_seeded_by_seed_epoch_and_index(data_root: Path) -> None:
    a = SyncNetDataset(data_root, "filelist.txt", SIZE, samples_per_epoch=50, seed=1)
    b = SyncNetDataset(data_root, "filelist.txt", SIZE, samples_per_epoch=50, seed=1)
    assert [a.sample(i) for i in range(50)] == [b.sample(i) for i in range(50)]
    b.set_epoch(1)
    assert [a.sample(i) for i in range(50)] != [b.sample(i) for i in range(50)]


def test_window_starts_stay_inside_video_and_mel() -> None:
    for num_frames, mel_frames in [(60, 193), (60, 150), (75, 241), (20, 100)]:
        info = ClipInfo(Path("x"), Path("y"), num_frames, mel_frames, 64)
        last = info.max_start(16)
        fits = [s for s in range(num_frames) if s + 16 <= num_frames and int(80 * s / 25) + 52 <= mel_frames]
        assert last == (max(fits) if fits else -1)


def test_resize_to_the_training_resolution(data_root: Path) -> None:
    ds = SyncNetDataset(data_root, "filelist.txt", 64, samples_per_epoch=4)
    frames = ds[0]["frames"]
    assert frames.shape == (16, 3, 64, 64) and -1.0 <= frames.min() and frames.max() <= 1.0


def test_augmented_windows_vary_alike_and_keep_their_mel(data_root: Path) -> None:
    """`augment`: one flip, gain and shift for all of a window's frames (so motion is what it was), the mel and the
    pairing untouched, reproducible per (seed, epoch, index)."""
    plain = SyncNetDataset(data_root, "filelist.txt", SIZE, samples_per_epoch=12, seed=5)
    varied = SyncNetDataset(data_root, "filelist.txt", SIZE, samples_per_epoch=12, seed=5, augment=True)
    changed = 0
    for index in range(12):
        a, b = plain[index], varied[index]
        assert torch.equal(a["mel"], b["mel"]) and float(a["y"]) == float(b["y"])
        assert b["frames"].shape == a["frames"].shape and -1.0 <= b["frames"].min() and b["frames"].max() <= 1.0
        changed += not torch.allclose(a["frames"], b["frames"])
        # the same change in every frame: frame-to-frame differences shrink or grow alike, never reorder
        ratio = (b["frames"][1:] - b["frames"][:-1]).abs().mean() / (a["frames"][1:] - a["frames"][:-1]).abs().mean()
        assert 0.5 < float(ratio) < 1.5
    assert changed >= 10
    assert torch.equal(varied[3]["frames"], varied[3]["frames"])


def test_unet_items_reference_window_and_whisper_alignment(data_root: Path) -> None:
    encoder = tiny_en_path()
    ds = UNetDataset(data_root, "filelist.txt", SIZE, encoder_path=encoder, samples_per_epoch=30, seed=5)
    assert ds.skipped == 1 and all(c.path.name != "short.mp4" for c in ds.clips)  # 40 < 48 frames
    starts = [ds.sample(i)[1:] for i in range(30)]
    assert all(abs(ref - start) >= 16 for start, ref in starts)
    clip, start, ref = ds.sample(7)
    item = ds[7]
    assert item["frames"].shape == item["ref_frames"].shape == (16, 3, SIZE, SIZE)
    assert item["audio"].shape == (16, 50, 384) and item["audio"].dtype == torch.float32
    assert item["mel"].shape == (1, 80, 52)
    assert read_index(_pixels(item["frames"][0])) == start and read_index(_pixels(item["ref_frames"][0])) == ref
    features = audio_features(load_audio(clip.path), load_whisper_encoder(encoder), dtype=torch.float16)
    expected = frame_windows(features, frames=torch.arange(start, start + 16)).float()
    torch.testing.assert_close(item["audio"], expected)


def test_cache_is_written_once_and_recomputed_when_the_clip_changes(tmp_path: Path) -> None:
    _clip(tmp_path / "a.mp4", 40)
    (tmp_path / "filelist.txt").write_text("a.mp4\n")
    (info,) = prepare_cache(tmp_path, quiet=True)
    assert info.cache == tmp_path / ".cache" / "mel" / "a.mp4.safetensors" and info.num_frames == 40
    stamp = info.cache.stat().st_mtime_ns
    with safe_open(str(info.cache), framework="pt") as f:
        assert set(f.keys()) == {"mel"}
    assert prepare_cache(tmp_path, quiet=True) == [info]
    assert info.cache.stat().st_mtime_ns == stamp  # reused, not rewritten

    _clip(tmp_path / "a.mp4", 44, seed=1)  # the clip changes: its entry is recomputed
    os.utime(tmp_path / "a.mp4", ns=(stamp + 10**9, stamp + 10**9))
    (again,) = prepare_cache(tmp_path, quiet=True)
    assert again.num_frames == 44 and again.cache.stat().st_mtime_ns != stamp
    assert sorted(p.name for p in (tmp_path / ".cache" / "mel").iterdir()) == ["a.mp4.safetensors"]  # no temp files


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="filelist not found"):
        SyncNetDataset(tmp_path, "filelist.txt", SIZE)
    (tmp_path / "filelist.txt").write_text("\n# nothing\n")
    with pytest.raises(ConfigError, match="lists no clips"):
        SyncNetDataset(tmp_path, "filelist.txt", SIZE)
    (tmp_path / "filelist.txt").write_text("gone.mp4\n")
    with pytest.raises(ConfigError, match="do not exist.*gone.mp4"):
        SyncNetDataset(tmp_path, "filelist.txt", SIZE)
    _clip(tmp_path / "wide.mp4", 40, width=160, height=128)
    (tmp_path / "filelist.txt").write_text("wide.mp4\n")
    with pytest.raises(VideoError, match="160x128.*square"):
        SyncNetDataset(tmp_path, "filelist.txt", SIZE)
    _clip(tmp_path / "tiny.mp4", 20)
    (tmp_path / "filelist.txt").write_text("tiny.mp4\n")
    with pytest.raises(ConfigError, match="long enough"):
        SyncNetDataset(tmp_path, "filelist.txt", SIZE)
    with pytest.raises(ConfigError, match="even resolution"):
        SyncNetDataset(tmp_path, "filelist.txt", 63)
