"""The seamless paste (`--paste seamless`): no edge and no colour step where the generated lower face meets the
source, measured by `eval.seam`; upstream's paste stays the default and unchanged."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from media.faces import astronaut_frames
from media.fidelity import write_coded_clip
from media.speech import write_audio

from latentsync.errors import ConfigError
from latentsync.eval.seam import measure_seam, paste_region
from latentsync.face.align import Aligner
from latentsync.face.blend import colour_match, paste_weight
from latentsync.face.mask import load_mask
from latentsync.pipeline.denoise import ChunkDenoiser
from latentsync.pipeline.lipsync import LipSyncPipeline, RunOptions
from latentsync.video.colour import RANGE_UNSPECIFIED, UNSPECIFIED, Colour
from latentsync.video.reader import VideoFrames

CAST = np.array([30, 12, -18], dtype=np.int16)  # a model's colour error: redder, greyer than the source


def textured(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Smooth shading plus fine grain, as skin and backgrounds look: uint8 [H, W, 3]."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = 110 + 40 * np.sin(xx / w * 3) + 30 * np.cos(yy / h * 2)
    grain = cv2.GaussianBlur(np.random.default_rng(seed).normal(0, 10, (h, w)), (0, 0), 1.0)
    rgb = np.stack([base + grain, 0.8 * base + grain, 0.6 * base + grain], axis=2)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def with_cast(crop: np.ndarray) -> np.ndarray:
    return np.clip(crop.astype(np.int16) + CAST, 0, 255).astype(np.uint8)


def test_paste_weight_is_zero_on_the_region_edge_and_one_deep_inside():
    mask = load_mask(128)
    w = paste_weight(mask)
    assert w.shape == (128, 128) and w.dtype == np.float32
    assert (w[mask >= 0.5] == 0).all()  # the kept upper face is never pasted
    regen = (mask < 0.5).astype(np.uint8)
    depth = cv2.distanceTransform(regen, cv2.DIST_L2, 5)
    assert w[(depth > 0) & (depth <= 1)].max() < 0.05  # fades in: no step at the edge
    assert w[depth > 20].min() > 0.99  # the mouth area is wholly generated


def test_colour_match_removes_a_cast_and_keeps_the_mouth():
    mask = load_mask(128)
    w = paste_weight(mask)
    source = textured((128, 128))
    generated = with_cast(source)
    cv2.ellipse(generated, (64, 100), (22, 10), 0, 0, 360, (60, 20, 30), -1)  # a new mouth, not in the source
    out = colour_match(source, generated, w)
    ring = (w > 0) & (w < 0.5)  # where the generated face meets the source
    assert np.abs(out[ring].astype(float) - source[ring]).mean() < 1.5  # was the cast: 20 levels on average
    mouth = np.zeros((128, 128), bool)
    cv2.ellipse(mouth.view(np.uint8), (64, 100), (22, 10), 0, 0, 360, 1, -1)
    around = (w > 0.99) & ~mouth
    contrast = lambda img: img[mouth].mean(axis=0) - img[around].mean(axis=0)  # noqa: E731
    assert np.abs(contrast(out.astype(float)) - contrast(generated.astype(float))).max() < 4
    assert np.array_equal(colour_match(source, source, w), source)  # a model without colour error: untouched


def face_setup(resolution: int = 64):
    """A textured 320x240 frame, a face transform into it, upstream's mask, the crop and a cast generation."""
    frame = textured((240, 320), seed=3)
    aligner = Aligner(resolution)
    m = aligner.fit(np.array([[130.0, 100.0], [190.0, 100.0], [160.0, 140.0]]), smooth=False)
    crop = aligner.warp(frame, m)
    mask = load_mask(resolution)
    keep = mask[:, :, None]
    upstream_crop = np.rint(with_cast(crop) * (1 - keep) + crop * keep).astype(np.uint8)
    return frame, aligner, m, crop, mask, upstream_crop


def test_the_seam_measure_sees_upstreams_edge_and_not_the_seamless_paste():
    frame, aligner, m, crop, mask, generated = face_setup()
    region, width = paste_region(aligner, frame.shape, m, mask)
    assert 1.0 <= width < 4.0 and 500 < region.sum() < 20_000

    same = measure_seam(frame, frame, region, width)
    assert same.ratio == same.source_ratio and same.step == 0.0

    upstream = measure_seam(aligner.restore(frame, generated, m), frame, region, width)
    assert upstream.excess > 5 and upstream.step > 15, upstream  # measured: 12.2 and 30 levels

    w = paste_weight(mask)
    seamless_frame = aligner.restore(frame, colour_match(crop, generated, w), m, w)
    seamless = measure_seam(seamless_frame, frame, region, width)
    assert seamless.excess < 1.3 and seamless.step < 2.0, seamless  # measured: 1.18 and 0.02
    untouched = aligner.soft_mask(frame.shape, m, w) == 0
    assert np.array_equal(seamless_frame[untouched], frame[untouched])  # the upper face: the source's own pixels
    regenerated = aligner.soft_mask(frame.shape, m, (mask < 0.5).astype(np.float32)) > 0
    near = cv2.dilate(regenerated.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    assert not (~untouched & ~near).any()  # nothing beyond the regenerated region (+2 px of interpolation)
    upper_face = (aligner.soft_mask(frame.shape, m) > 0.5) & untouched
    assert upper_face.sum() > 0.3 * (aligner.soft_mask(frame.shape, m) > 0.5).sum()  # upstream pastes it too


def test_a_weight_limits_what_restore_pastes():
    frame, aligner, m, crop, mask, generated = face_setup()
    whole = aligner.restore(frame, generated, m, np.ones((64, 64), np.float32))
    assert np.abs(whole.astype(int) - aligner.restore(frame, generated, m)).max() <= 1  # the crop's rim, resampled
    assert np.array_equal(aligner.restore(frame, generated, m, np.zeros((64, 64), np.float32)), frame)
    with pytest.raises(ValueError, match=r"\[64, 64\] weight"):
        aligner.restore(frame, generated, m, np.ones((32, 32), np.float32))


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("seam")
    untagged = Colour(UNSPECIFIED, UNSPECIFIED, UNSPECIFIED, RANGE_UNSPECIFIED)
    video = write_coded_clip(folder / "in.mp4", astronaut_frames(16, size=(480, 360), fps=25), untagged)
    t = np.arange(16000 * 16 // 25) / 16000
    audio = write_audio(folder / "tone.wav", (0.2 * np.sin(440 * t)).astype(np.float32), 16000)
    return video, audio


def cast_run(model: Path, clip: tuple[Path, Path], out: Path, monkeypatch, paste: str | None = None):
    """A run whose denoiser returns the crops with a colour cast in the regenerated region (upstream's composite
    of a model with a colour error); the seam of every output frame against its source frame."""
    pipeline = LipSyncPipeline.from_model(model, "cpu", "fp32")
    keep = pipeline.mask[None, :, :, None]
    affines = []
    restore = Aligner.restore

    def recording_restore(self, frame, crop, m, weight=None):
        affines.append(m)
        return restore(self, frame, crop, m, weight)

    def cast_batch(self, chunks):
        return [torch.from_numpy(np.rint(with_cast(crops.numpy()) * (1 - keep) + crops.numpy() * keep).astype(np.uint8))
                for crops, _ in chunks]

    monkeypatch.setattr(ChunkDenoiser, "batch", cast_batch)
    monkeypatch.setattr(Aligner, "restore", recording_restore)
    report = pipeline.run(clip[0], clip[1], out, RunOptions(steps=1, paste=paste))
    aligner = Aligner(pipeline.models.resolution)
    seams = []
    for source, output, m in zip(VideoFrames(clip[0]).iter_range(0, 16), VideoFrames(out).iter_range(0, 16), affines):
        region, width = paste_region(aligner, source.shape, m, pipeline.mask)
        seams.append(measure_seam(output, source, region, width))
    return report, seams


def test_a_model_asks_for_the_seamless_paste_and_the_run_has_no_seam(tiny_model, clip, tmp_path, monkeypatch):
    report, seams = cast_run(tiny_model, clip, tmp_path / "upstream.mp4", monkeypatch)
    assert "seamless" not in report.sampling  # the default stays upstream's
    assert np.mean([s.step for s in seams]) > 15

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    spec = yaml.safe_load((model / "model.yaml").read_text())
    spec["inference"] = {**spec.get("inference", {}), "paste": "seamless"}
    (model / "model.yaml").write_text(yaml.safe_dump(spec))
    report, seams = cast_run(model, clip, tmp_path / "seamless.mp4", monkeypatch)
    assert report.sampling.endswith("seamless paste")
    assert np.mean([s.step for s in seams]) < 2.5
    assert np.mean([s.excess for s in seams]) < 1.2

    _, seams = cast_run(model, clip, tmp_path / "forced.mp4", monkeypatch, paste="upstream")  # --paste overrides
    assert np.mean([s.step for s in seams]) > 15


def test_bad_paste_values_are_refused(tiny_model, clip, tmp_path):
    with pytest.raises(ConfigError, match="--paste must be one of upstream, seamless"):
        RunOptions(paste="poisson")
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    spec = yaml.safe_load((model / "model.yaml").read_text())
    spec["inference"] = {"paste": "blend"}
    (model / "model.yaml").write_text(yaml.safe_dump(spec))
    pipeline = LipSyncPipeline.from_model(model, "cpu", "fp32")
    with pytest.raises(ConfigError, match="inference.paste must be one of upstream, seamless, got 'blend'"):
        pipeline.run(clip[0], clip[1], tmp_path / "out.mp4", RunOptions(steps=1))
    assert not (tmp_path / "out.mp4").exists()
