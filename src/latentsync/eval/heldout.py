"""Does a model work on a person it never saw? The held-out evidence of issue 13, per clip.

- **Reconstruction** (the clip lip-synced to its own speech): the lower face of the output against the source,
  both cut with the source's alignment (so a paste that moved the face counts against it). SSIM over the
  regenerated region's bounding box, and the colour difference: the largest per-channel difference of the region's
  mean colour, in levels. A model that paints another face, or a grey one, fails both.
- **New speech** (driven by another clip's speech): the output's 16-frame windows scored by a SyncNet against the
  driving speech and against the same speech 0.5 s late (`late_wins`: the share of windows where the first scores
  higher), and the offset the SyncNet finds (0 when the mouth follows the speech, `eval.sync`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from latentsync.eval.metrics import ssim
from latentsync.eval.sync import aligned_frames, face_crops, stable_syncnet_offset, window_scores
from latentsync.face.align import Aligner
from latentsync.models.syncnet import StableSyncNet
from latentsync.video.reader import VideoFrames

LATE_SAMPLES = 8000  # 0.5 s at 16 kHz
STRIDE = 4  # frames between scored windows: overlapping windows, so a 4 s clip gives 22 of them


@dataclass(frozen=True)
class Reconstruction:
    ssim: float  # mean over frames of the lower face's SSIM
    colour: float  # levels: largest channel difference of the lower face's mean colour
    frames: int


@dataclass(frozen=True)
class NewSpeech:
    late_wins: float  # share of windows scoring higher with the driving speech than with it 0.5 s late
    score: float  # mean cosine with the driving speech
    late_score: float  # mean cosine with it 0.5 s late
    offset: int  # frames; 0 = in sync
    windows: int


def lower_face_box(mask: np.ndarray) -> tuple[slice, slice]:
    """Rows and columns of the crop that the mask regenerates (its 0s)."""
    rows, cols = np.nonzero(np.asarray(mask) < 0.5)
    return slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1)


def reconstruction(source: str | os.PathLike, output: str | os.PathLike, resolution: int, mask: np.ndarray
                   ) -> Reconstruction:
    """Lower-face SSIM and colour difference of `output` against `source`, frame by frame (see the docstring)."""
    aligner, box = Aligner(resolution), lower_face_box(mask)
    scores, means = [], []
    out_frames = VideoFrames(output)
    pairs = zip(aligned_frames(source, resolution), out_frames.iter_range(0, len(out_frames)))
    for (frame, m), out in pairs:
        if m is None:
            continue
        a, b = aligner.warp(frame, m)[box], aligner.warp(out, m)[box]
        scores.append(ssim(a, b))
        means.append(b.reshape(-1, 3).mean(axis=0) - a.reshape(-1, 3).mean(axis=0))
    if not scores:
        raise ValueError(f"no face in {source} to compare")
    colour = float(np.abs(np.mean(means, axis=0)).max())
    return Reconstruction(float(np.mean(scores)), colour, len(scores))


def new_speech(syncnet: StableSyncNet, output: str | os.PathLike, wav: np.ndarray, resolution: int) -> NewSpeech:
    """How the output's mouth follows `wav` (16 kHz, the driving speech) by `syncnet` (see the docstring)."""
    crops = face_crops(output, resolution)
    late = np.concatenate([np.zeros(LATE_SAMPLES, wav.dtype), wav[:-LATE_SAMPLES]])
    # Offset 0 against the late copy pairs each window with the audio half a second before it was heard.
    driving, delayed = (window_scores(syncnet, crops, w, stride=STRIDE) for w in (wav, late))
    shared = sorted(set(driving) & set(delayed))
    wins = float(np.mean([driving[s] > delayed[s] for s in shared]))
    _, offset, _ = stable_syncnet_offset(syncnet, crops, wav, stride=STRIDE)
    return NewSpeech(wins, float(np.mean([driving[s] for s in shared])), float(np.mean([delayed[s] for s in shared])),
                     offset, len(shared))
