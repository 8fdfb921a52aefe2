"""LSE-C / LSE-D and the AV offset with SyncNet v2, as syncnet_python computes them (and Wav2Lip and LatentSync
report them), plus the data pipeline's sync filter and audio shift.

Every video frame i starts a 5-frame lip window and a 20-step MFCC window (MFCC steps 4i..4i+19, the same 0.2 s).
Each lip embedding is compared, by Euclidean distance, with the audio embeddings of offsets -15..+15 frames; the
distances are averaged over windows per offset, giving a distance curve. LSE-D is its minimum, LSE-C its median
minus its minimum (how far the best offset stands out), and the AV offset is where the minimum lies.

Sign convention (the original's, and `eval.sync`'s `offset`): offset k pairs lip window i with audio window i - k.
A positive offset means the speech in the file comes k frames *before* the mouth movement (audio leads); the
clip is synced by delaying its audio by k / 25 s, which is what upstream's pipeline does with
`ffmpeg -itsoffset k/25` on the audio input. syncnet_python's own test (audio delayed 0.25 s: offset 4 -> -2)
agrees: delaying the audio lowers the offset.

The maths (`shifted_distances`, `summarise_offsets`, `lse_from_embeddings`) take embeddings and a distance
callback, so they can be checked on crafted embeddings and reused for other sync networks (`eval.sync`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from latentsync.errors import VideoError
from latentsync.models.syncnet_v2 import (
    FPS,
    SAMPLE_RATE,
    SAMPLES_PER_FRAME,
    VIDEO_WINDOW,
    SyncNetV2,
    embed_audio,
    embed_video,
    mfcc,
)

MAX_OFFSET = 15  # upstream's vshift: offsets searched in -15..+15 frames
MIN_CONFIDENCE = 3.0  # upstream's sync filter keeps clips with confidence >= 3 ...
MAX_ABS_OFFSET = 6  # ... and |offset| <= 6 frames

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class LSEResult:
    confidence: float  # LSE-C: median - min of the distance curve (higher is better)
    distance: float  # LSE-D: min of the distance curve (lower is better)
    offset: int  # AV offset in frames at the minimum; see the module docstring for the sign
    per_offset_distances: np.ndarray  # [2 * max_offset + 1]; entry j is the mean distance at offset j - max_offset
    windows: int  # lip/audio window pairs averaged


def euclidean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise ||a - b + 1e-6||: torch's `pairwise_distance`, which the original uses (eps included)."""
    return F.pairwise_distance(a, b)


def shifted_distances(
    video_emb: torch.Tensor, audio_emb: torch.Tensor, max_offset: int = MAX_OFFSET, distance: Distance = euclidean
) -> torch.Tensor:
    """[W, 2 * max_offset + 1]: column j holds distance(video i, audio i - (j - max_offset)) for each window i.

    Audio windows before the first or after the last are zero vectors, as in the original (it zero-pads the audio
    embeddings), so every offset averages over the same W windows and the numbers match published LSE figures.
    """
    if video_emb.ndim != 2 or video_emb.shape != audio_emb.shape:
        raise ValueError(f"expected equal [W, D] embeddings, got {list(video_emb.shape)} and {list(audio_emb.shape)}")
    windows = video_emb.shape[0]
    padded = F.pad(audio_emb, (0, 0, max_offset, max_offset))  # row r + max_offset is audio window r
    first_rows = [2 * max_offset - j for j in range(2 * max_offset + 1)]  # audio row of window 0, per column
    return torch.stack([distance(video_emb, padded[r : r + windows]) for r in first_rows], dim=1)


def summarise_offsets(per_offset: torch.Tensor, max_offset: int = MAX_OFFSET) -> tuple[float, float, int]:
    """Distance curve over offsets -max_offset..max_offset -> (confidence = median - min, min, offset of the min).

    An exact tie goes to the larger offset, as in the original, whose curve runs from +max_offset down.
    """
    if per_offset.shape != (2 * max_offset + 1,):
        raise ValueError(f"expected {2 * max_offset + 1} per-offset values, got shape {list(per_offset.shape)}")
    minimum, index = torch.min(per_offset.flip(0), 0)
    return float(torch.median(per_offset) - minimum), float(minimum), max_offset - int(index)


def lse_from_embeddings(
    video_emb: torch.Tensor, audio_emb: torch.Tensor, max_offset: int = MAX_OFFSET, distance: Distance = euclidean
) -> LSEResult:
    """LSE-C, LSE-D and offset of per-window lip and audio embeddings ([W, D] each, window i = frame i)."""
    curve = shifted_distances(video_emb.float(), audio_emb.float(), max_offset, distance).mean(0)
    confidence, minimum, offset = summarise_offsets(curve, max_offset)
    return LSEResult(confidence, minimum, offset, curve.numpy(), video_emb.shape[0])


def lse(
    video_crops_224: np.ndarray, wav16k: np.ndarray, net: SyncNetV2, max_offset: int = MAX_OFFSET, batch: int = 20
) -> LSEResult:
    """LSE of one face track: RGB uint8 crops [N, 224, 224, 3] at 25 fps against 16 kHz mono speech.

    The crops are what syncnet_python's pipeline writes (S3FD track, box scaled by 0.4, resized to 224); they
    are used as given, without its JPEG round trip. As in the original, min(N, len(wav) // 640) - 5 windows are
    scored (one fewer than would fit), so the numbers match it exactly.
    """
    usable = min(len(video_crops_224), len(wav16k) // SAMPLES_PER_FRAME)
    count = usable - VIDEO_WINDOW
    if count < 1:
        raise VideoError(
            f"LSE needs at least {VIDEO_WINDOW + 1} frames with audio under them, got {len(video_crops_224)} "
            f"frames and {len(wav16k) / SAMPLE_RATE:.2f} s of audio"
        )
    video_emb = embed_video(net, video_crops_224, count, batch)
    audio_emb = embed_audio(net, mfcc(wav16k), count, batch)
    return lse_from_embeddings(video_emb, audio_emb, max_offset)


def average_tracks(results: Sequence[LSEResult]) -> tuple[float, int]:
    """(mean confidence, mean offset truncated toward zero) over a video's face tracks, as upstream's
    `syncnet_eval` combines them before the sync filter."""
    if not results:
        raise ValueError("no face tracks to average")
    confidence = float(np.mean([r.confidence for r in results]))
    return confidence, int(np.mean([r.offset for r in results]))


def passes_sync_filter(confidence: float, offset: int) -> bool:
    """Upstream's data-pipeline rule: keep a clip when confidence >= 3 and |offset| <= 6 frames."""
    return confidence >= MIN_CONFIDENCE and abs(offset) <= MAX_ABS_OFFSET


def audio_delay_seconds(offset: int, fps: int = FPS) -> float:
    """How long to delay the audio to sync a clip with this AV offset (negative: advance it); upstream's
    `-itsoffset offset / 25` on the audio input."""
    return offset / fps


def shift_audio(wav: np.ndarray, offset: int, sample_rate: int = SAMPLE_RATE, fps: int = FPS) -> np.ndarray:
    """Delay `wav` by offset / fps s (advance it when negative), keeping its length: the gap is filled with
    silence and the overhang is cut, so the audio still spans the clip's frames. Re-measuring the shifted clip
    gives an offset of 0."""
    shift = round(offset * sample_rate / fps)
    if shift == 0:
        return wav.copy()
    out = np.zeros_like(wav)
    if abs(shift) >= len(wav):
        return out
    if shift > 0:
        out[shift:] = wav[:-shift]
    else:
        out[:shift] = wav[-shift:]
    return out


__all__: Sequence[str] = (
    "LSEResult",
    "euclidean",
    "shifted_distances",
    "summarise_offsets",
    "lse_from_embeddings",
    "lse",
    "average_tracks",
    "passes_sync_filter",
    "audio_delay_seconds",
    "shift_audio",
)
