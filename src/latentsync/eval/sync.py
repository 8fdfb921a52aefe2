"""StableSyncNet sync score of a talking-face video against speech: the mean cosine over 16-frame windows.

The video's speaker is found and aligned exactly as inference does it (`face.track` + `face.align`, at the
SyncNet's resolution), each window of 16 consecutive face frames is paired with the mel window of the same
instant, and the score is the mean cosine of the two embeddings (0..1; upstream's SyncNets are trained to put in-
sync pairs near 1). `offset` pairs frame t with the audio of frame t - offset, i.e. the audio played `offset`
frames late: scoring a lip-synced output against shifted copies of its own audio shows whether the mouth follows
the speech. `stable_syncnet_offset` searches that offset the way SyncNet v2's LSE does (`eval.lse`), with the same
sign: a best offset k > 0 means the audio runs k frames early and is synced by delaying it k / 25 s.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from latentsync.audio.mel import mel_window, mel_window_start, melspectrogram
from latentsync.errors import NoFaceError
from latentsync.eval.lse import summarise_offsets
from latentsync.face.align import Aligner
from latentsync.face.track import FaceTracker
from latentsync.models.syncnet import StableSyncNet, sync_probability, visual_input
from latentsync.video.reader import VideoFrames

WINDOW = 16


@dataclass(frozen=True)
class SyncScore:
    score: float  # mean cosine over the scored windows
    windows: int  # how many 16-frame windows were scored
    face_frames: int  # frames in which the speaker was found
    frames: int


def aligned_frames(
    video: str | os.PathLike, resolution: int, selector: str = "largest"
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """Each frame with the speaker's image -> crop affine (None where no face is found), fitted as inference does;
    `Aligner(resolution).warp(frame, affine)` cuts the crop."""
    aligner = Aligner(resolution)
    track_id = -1
    frames = VideoFrames(video)
    with FaceTracker(selector) as tracker:
        for image in frames.iter_range(0, len(frames)):
            face = tracker(image)
            if face is None:
                yield image, None
                continue
            if tracker.track_id != track_id:
                aligner.reset()
                track_id = tracker.track_id
            yield image, aligner.fit(face.points3)


def face_crops(video: str | os.PathLike, resolution: int, selector: str = "largest") -> list[np.ndarray | None]:
    """The speaker's aligned uint8 [res, res, 3] crop per frame (None where no face is found), as inference."""
    aligner = Aligner(resolution)
    return [None if m is None else aligner.warp(image, m) for image, m in aligned_frames(video, resolution, selector)]


def sync_score(
    syncnet: StableSyncNet,
    crops: list[np.ndarray | None],
    wav: np.ndarray,
    offset: int = 0,
    stride: int = WINDOW,
    batch: int = 16,
) -> SyncScore:
    """Score face crops (from `face_crops`) against 16 kHz speech; see the module docstring for `offset`."""
    scores = window_scores(syncnet, crops, wav, offset, stride, batch)
    face_frames = sum(c is not None for c in crops)
    return SyncScore(float(np.mean(list(scores.values()))), len(scores), face_frames, len(crops))


@torch.no_grad()
def window_scores(
    syncnet: StableSyncNet,
    crops: list[np.ndarray | None],
    wav: np.ndarray,
    offset: int = 0,
    stride: int = WINDOW,
    batch: int = 16,
) -> dict[int, float]:
    """The cosine of each scorable 16-frame window (every `stride` frames), by its first frame."""
    mel = melspectrogram(wav)
    starts = [
        s for s in range(0, len(crops) - WINDOW + 1, stride)
        if all(c is not None for c in crops[s : s + WINDOW])
        and s - offset >= 0 and mel_window_start(s - offset) < mel.shape[1]
    ]
    if not starts:
        face_frames = sum(c is not None for c in crops)
        raise NoFaceError(f"no window of {WINDOW} consecutive face frames with audio to score "
                          f"({face_frames} of {len(crops)} frames have a face)")
    device = next(syncnet.parameters()).device
    dtype = next(syncnet.parameters()).dtype
    sims = []
    for i in range(0, len(starts), batch):
        group = starts[i : i + batch]
        frames = _window_pixels(crops, group)
        mels = torch.stack([torch.from_numpy(mel_window(mel, s - offset, WINDOW)) for s in group]).unsqueeze(1)
        vision, audio = syncnet(visual_input(frames).to(device, dtype), mels.to(device, dtype))
        sims.append(sync_probability(vision, audio).float().cpu())
    return dict(zip(starts, torch.cat(sims).tolist()))


@torch.no_grad()
def stable_syncnet_offset(
    syncnet: StableSyncNet,
    crops: list[np.ndarray | None],
    wav: np.ndarray,
    max_offset: int = 15,
    stride: int = WINDOW,
    batch: int = 16,
) -> tuple[float, int, np.ndarray]:
    """(confidence, offset, per-offset mean distances) of face crops against 16 kHz speech, LSE-style.

    The distance is 1 - cosine of the StableSyncNet embeddings, averaged per offset -max_offset..max_offset over
    the 16-frame windows (every `stride` frames) that have a face in every frame and audio at every offset, so all
    offsets average the same windows. Confidence is the median minus the minimum of that curve, the offset its
    argmin (`eval.lse.summarise_offsets`); entry j of the curve is offset j - max_offset.
    """
    mel = melspectrogram(wav)
    starts = [
        s for s in range(max_offset, len(crops) - WINDOW + 1, stride)
        if all(c is not None for c in crops[s : s + WINDOW]) and mel_window_start(s + max_offset) < mel.shape[1]
    ]
    if not starts:
        raise NoFaceError(
            f"no window of {WINDOW} consecutive face frames with audio {max_offset} frames either side "
            f"({sum(c is not None for c in crops)} of {len(crops)} frames have a face)"
        )
    device = next(syncnet.parameters()).device
    dtype = next(syncnet.parameters()).dtype
    offsets = range(-max_offset, max_offset + 1)
    audio_starts = sorted({s - k for s in starts for k in offsets})
    vision, audio = [], []
    for i in range(0, len(starts), batch):
        group = starts[i : i + batch]
        frames = _window_pixels(crops, group)
        vision.append(_embed(syncnet.visual_encoder, visual_input(frames).to(device, dtype)))
    for i in range(0, len(audio_starts), batch):
        mels = torch.stack([torch.from_numpy(mel_window(mel, a, WINDOW)) for a in audio_starts[i : i + batch]])
        audio.append(_embed(syncnet.audio_encoder, mels.unsqueeze(1).to(device, dtype)))
    position = {a: n for n, a in enumerate(audio_starts)}
    pairs = torch.tensor([[position[s - k] for k in offsets] for s in starts])  # [windows, offsets]
    sims = F.cosine_similarity(torch.cat(vision)[:, None, :], torch.cat(audio)[pairs], dim=-1)
    curve = (1.0 - sims).mean(0)
    confidence, _, offset = summarise_offsets(curve, max_offset)
    return confidence, offset, curve.numpy()


def _embed(encoder: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """An encoder's output flattened and L2-normalised as `StableSyncNet.forward` does, in float32 on the CPU."""
    out = encoder(x)
    return F.normalize(out.reshape(out.shape[0], -1), p=2, dim=1).float().cpu()


def _window_pixels(crops: list[np.ndarray | None], starts: list[int]) -> torch.Tensor:
    """The 16-frame windows at `starts` (all frames present) as SyncNet input pixels [B, 16, 3, H, W] in [-1, 1]."""
    frames = torch.stack([torch.from_numpy(np.stack(crops[s : s + WINDOW])) for s in starts])  # type: ignore[arg-type]
    return frames.permute(0, 1, 4, 2, 3).float() / 127.5 - 1.0
