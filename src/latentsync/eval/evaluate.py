"""`latentsync eval`: lip-sync and image quality of output videos, with optional references.

Per video, on the speaker's aligned face crops (inference's tracker and template, `eval.sync.face_crops`) and the
video's own soundtrack:
- StableSyncNet (`--syncnet`, default the demo model's): mean sync cosine over 16-frame windows, and LSE-style
  confidence / offset over offsets -15..+15 (1 - cosine distances; `eval.sync`);
- SyncNet v2 (`--syncnet-v2 syncnet_v2.model`): LSE-C, LSE-D and the AV offset, as syncnet_python computes them
  (`eval.lse`), on the longest run of frames with a face, crops resized to 224;
- against a reference of the same video (`--reference`, frame for frame): PSNR and SSIM of whole frames;
and over all videos: FID of face crops (`--inception`) and FVD of 16-frame face clips (`--i3d`) against the
references' (`eval.features`). Offsets are in frames; positive means the audio runs ahead of the lips.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from latentsync.audio.load import load_audio
from latentsync.errors import ConfigError, LatentSyncError
from latentsync.eval import features as feats
from latentsync.eval import lse as lse_eval
from latentsync.eval.metrics import FeatureStats, frechet_distance, psnr, ssim
from latentsync.eval.sync import face_crops, stable_syncnet_offset, sync_score
from latentsync.models.syncnet_files import load_sync_network, stable_syncnet_resolution
from latentsync.models.syncnet_v2 import CROP_SIZE, load_syncnet_v2
from latentsync.video.reader import VideoFrames

SAMPLES_PER_FRAME = 640  # 16 kHz / 25 fps
OFFSET_STRIDE = 4  # a StableSyncNet window every 4 frames for the offset search, as the sync filter


@dataclass(frozen=True)
class EvalSettings:
    syncnet: str | None = "demo"  # a StableSyncNet: model name, model folder or weights file; None: skip
    syncnet_v2: Path | None = None
    inception: Path | None = None
    i3d: Path | None = None
    face: str = "largest"
    crop_size: int = 256
    device: str = "cpu"


@dataclass
class VideoMetrics:
    video: str
    reference: str | None
    frames: int
    face_frames: int
    sync_score: float | None = None
    sync_conf: float | None = None
    sync_offset: int | None = None
    lse_c: float | None = None
    lse_d: float | None = None
    lse_offset: int | None = None
    psnr: float | None = None
    ssim: float | None = None
    curves: dict[str, list[float]] = field(default_factory=dict)  # distance per offset -15..+15, per network


@dataclass
class EvalReport:
    videos: list[VideoMetrics]
    fid: float | None = None
    fvd: float | None = None
    notes: list[str] = field(default_factory=list)

    def means(self) -> dict[str, float]:
        """Each per-video metric averaged over the videos that have it (offsets as mean absolute offset)."""
        out = {}
        for name in ("sync_score", "sync_conf", "lse_c", "lse_d", "psnr", "ssim"):
            values = [getattr(v, name) for v in self.videos if getattr(v, name) is not None]
            values = [x for x in values if np.isfinite(x)]  # PSNR of a video against itself is inf
            if values:
                out[name] = float(np.mean(values))
        for name in ("sync_offset", "lse_offset"):
            values = [abs(getattr(v, name)) for v in self.videos if getattr(v, name) is not None]
            if values:
                out[f"mean_abs_{name}"] = float(np.mean(values))
        return out


class Evaluator:
    """The networks of an evaluation, loaded once; `__call__` evaluates a set of videos."""

    def __init__(self, settings: EvalSettings) -> None:
        self.settings = settings
        device = settings.device
        self.stable = None
        if settings.syncnet is not None:
            network = load_sync_network(Path(settings.syncnet), device)
            if network.is_v2:
                raise ConfigError(f"--syncnet {settings.syncnet} is SyncNet v2: pass it as --syncnet-v2")
            self.stable, self.stable_size = network.net, stable_syncnet_resolution(network)
        self.v2 = load_syncnet_v2(settings.syncnet_v2, device) if settings.syncnet_v2 else None
        self.inception = feats.load_feature_net(settings.inception, "Inception", device) if settings.inception else None
        self.i3d = feats.load_feature_net(settings.i3d, "I3D", device) if settings.i3d else None

    def __call__(self, videos: Sequence[str | os.PathLike], references: Sequence[str | os.PathLike] = ()) -> EvalReport:
        if references and len(references) != len(videos):
            raise ConfigError(f"--reference: {len(references)} files for {len(videos)} videos (give one per video)")
        report = EvalReport([])
        fake: dict[str, list[np.ndarray]] = {"fid": [], "fvd": []}
        real: dict[str, list[np.ndarray]] = {"fid": [], "fvd": []}
        pairs = list(zip(videos, references or [None] * len(videos)))
        for video, reference in tqdm(pairs, desc="eval", unit="video", disable=len(pairs) < 2):
            metrics, crops = self._video(Path(video), report.notes)
            if reference is not None:
                metrics.reference = str(reference)
                self._against_reference(Path(video), Path(reference), metrics, report.notes)
            self._collect(crops, fake)
            if reference is not None and (self.inception is not None or self.i3d is not None):
                self._collect(face_crops(reference, self.settings.crop_size, self.settings.face), real)
            report.videos.append(metrics)
        for key, value in self._frechet(fake, real, report.notes).items():
            setattr(report, key, value)
        return report

    def _video(self, video: Path, notes: list[str]) -> tuple[VideoMetrics, list[np.ndarray | None]]:
        crops = face_crops(video, self.settings.crop_size, self.settings.face)
        wav = load_audio(video)
        metrics = VideoMetrics(str(video), None, len(crops), sum(c is not None for c in crops))
        if self.stable is not None:
            sized = _resized(crops, self.stable_size)
            try:
                metrics.sync_score = sync_score(self.stable, sized, wav).score
                conf, offset, curve = stable_syncnet_offset(self.stable, sized, wav, lse_eval.MAX_OFFSET, OFFSET_STRIDE)
                metrics.sync_conf, metrics.sync_offset = conf, offset
                metrics.curves["StableSyncNet (1 - cos)"] = curve.tolist()
            except LatentSyncError as exc:
                notes.append(f"{video.name}: no StableSyncNet score: {exc}")
        if self.v2 is not None:
            start, stop = _longest_run(crops)
            try:
                track = np.stack(_resized(crops[start:stop], CROP_SIZE))  # type: ignore[arg-type]
                result = lse_eval.lse(track, wav[start * SAMPLES_PER_FRAME :], self.v2)
                metrics.lse_c, metrics.lse_d, metrics.lse_offset = result.confidence, result.distance, result.offset
                metrics.curves["SyncNet v2 (euclidean)"] = result.per_offset_distances.tolist()
            except (LatentSyncError, ValueError) as exc:
                notes.append(f"{video.name}: no LSE: {exc}")
        return metrics, crops

    def _against_reference(self, video: Path, reference: Path, metrics: VideoMetrics, notes: list[str]) -> None:
        out, ref = VideoFrames(video), VideoFrames(reference)
        if (out.info.width, out.info.height) != (ref.info.width, ref.info.height):
            notes.append(f"{video.name}: no PSNR/SSIM: {out.info.width}x{out.info.height} vs reference "
                         f"{ref.info.width}x{ref.info.height}")
            return
        count = min(len(out), len(ref))
        scores = [(psnr(a, b), ssim(a, b)) for a, b in zip(out.iter_range(0, count), ref.iter_range(0, count))]
        finite = [p for p, _ in scores if np.isfinite(p)]
        metrics.psnr = float(np.mean(finite)) if finite else float("inf")
        metrics.ssim = float(np.mean([s for _, s in scores]))

    def _collect(self, crops: list[np.ndarray | None], into: dict[str, list[np.ndarray]]) -> None:
        present = [c for c in crops if c is not None]
        if self.inception is not None and present:
            into["fid"].append(feats.inception_features(self.inception, np.stack(present)))
        if self.i3d is not None:
            start, stop = _longest_run(crops)
            clips = feats.i3d_clips(np.stack(crops[start:stop])) if stop - start >= feats.I3D_FRAMES else []  # type: ignore[arg-type]
            if clips:
                into["fvd"].append(feats.i3d_features(self.i3d, clips))

    def _frechet(self, fake: dict[str, list[np.ndarray]], real: dict[str, list[np.ndarray]], notes: list[str]
                 ) -> dict[str, float]:
        out = {}
        for key, net in (("fid", self.inception), ("fvd", self.i3d)):
            if net is None:
                continue
            a, b = (np.concatenate(x[key]) if x[key] else np.zeros((0, 1)) for x in (fake, real))
            if len(a) < 2 or len(b) < 2:
                notes.append(f"no {key.upper()}: needs at least 2 samples from outputs and references "
                             f"(got {len(a)} and {len(b)}); give --reference videos with faces")
                continue
            out[key] = frechet_distance(FeatureStats.of(a), FeatureStats.of(b))
            if min(len(a), len(b)) < a.shape[1]:
                notes.append(f"{key.upper()} from {len(a)} and {len(b)} samples of {a.shape[1]}-d features: "
                             "fewer samples than dimensions, so it is biased upwards; compare only like with like")
        return out


def evaluate(videos: Sequence[str | os.PathLike], references: Sequence[str | os.PathLike] = (),
             settings: EvalSettings = EvalSettings()) -> EvalReport:
    """One-call API: load the networks `settings` name and evaluate `videos`."""
    with torch.no_grad():
        return Evaluator(settings)(videos, references)


def _resized(crops: list[np.ndarray | None], size: int) -> list[np.ndarray | None]:
    """Crops resized to a network's input size (None stays None), as the sync filter resizes aligned clips."""
    present = [i for i, c in enumerate(crops) if c is not None]
    out: list[np.ndarray | None] = [None] * len(crops)
    for block in range(0, len(present), 64):
        idx = present[block : block + 64]
        pixels = feats.resize(np.stack([crops[i] for i in idx]), size)  # type: ignore[misc]
        for i, image in zip(idx, pixels.round().byte().permute(0, 2, 3, 1).numpy()):
            out[i] = image
    return out


def _longest_run(crops: list[Any]) -> tuple[int, int]:
    """[start, stop) of the longest run of consecutive frames with a face (a face track)."""
    best, start = (0, 0), None
    for i, crop in enumerate([*crops, None]):
        if crop is not None and start is None:
            start = i
        elif crop is None and start is not None:
            best = max(best, (start, i), key=lambda r: r[1] - r[0])
            start = None
    return best
