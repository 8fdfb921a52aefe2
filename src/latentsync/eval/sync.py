"""StableSyncNet sync score of a talking-face video against speech: the mean cosine over 16-frame windows.

The video's speaker is found and aligned exactly as inference does it (`face.track` + `face.align`, at the
SyncNet's resolution), each window of 16 consecutive face frames is paired with the mel window of the same
instant, and the score is the mean cosine of the two embeddings (0..1; upstream's SyncNets are trained to put in-
sync pairs near 1). `offset` pairs frame t with the audio of frame t - offset, i.e. the audio played `offset`
frames late: scoring a lip-synced output against shifted copies of its own audio shows whether the mouth follows
the speech.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from latentsync.audio.load import load_audio
from latentsync.audio.mel import mel_window, mel_window_start, melspectrogram
from latentsync.errors import NoFaceError
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


def face_crops(video: str | os.PathLike, resolution: int, selector: str = "largest") -> list[np.ndarray | None]:
    """The speaker's aligned uint8 [res, res, 3] crop per frame (None where no face is found), as inference."""
    aligner = Aligner(resolution)
    crops: list[np.ndarray | None] = []
    track_id = -1
    frames = VideoFrames(video)
    with FaceTracker(selector) as tracker:
        for image in frames.iter_range(0, len(frames)):
            face = tracker(image)
            if face is None:
                crops.append(None)
                continue
            if tracker.track_id != track_id:
                aligner.reset()
                track_id = tracker.track_id
            crops.append(aligner.warp(image, aligner.fit(face.points3)))
    return crops


@torch.no_grad()
def sync_score(
    syncnet: StableSyncNet,
    crops: list[np.ndarray | None],
    wav: np.ndarray,
    offset: int = 0,
    stride: int = WINDOW,
    batch: int = 16,
) -> SyncScore:
    """Score face crops (from `face_crops`) against 16 kHz speech; see the module docstring for `offset`."""
    mel = melspectrogram(wav)
    starts = [
        s for s in range(0, len(crops) - WINDOW + 1, stride)
        if all(c is not None for c in crops[s : s + WINDOW])
        and s - offset >= 0 and mel_window_start(s - offset) < mel.shape[1]
    ]
    face_frames = sum(c is not None for c in crops)
    if not starts:
        raise NoFaceError(f"no window of {WINDOW} consecutive face frames with audio to score "
                          f"({face_frames} of {len(crops)} frames have a face)")
    device = next(syncnet.parameters()).device
    dtype = next(syncnet.parameters()).dtype
    sims = []
    for i in range(0, len(starts), batch):
        group = starts[i : i + batch]
        frames = torch.stack([torch.from_numpy(np.stack(crops[s : s + WINDOW])) for s in group])  # type: ignore[arg-type]
        frames = frames.permute(0, 1, 4, 2, 3).float() / 127.5 - 1.0
        mels = torch.stack([torch.from_numpy(mel_window(mel, s - offset, WINDOW)) for s in group]).unsqueeze(1)
        vision, audio = syncnet(visual_input(frames).to(device, dtype), mels.to(device, dtype))
        sims.append(sync_probability(vision, audio).float().cpu())
    return SyncScore(float(torch.cat(sims).mean()), len(starts), face_frames, len(crops))


def video_sync_score(
    syncnet: StableSyncNet,
    resolution: int,
    video: str | os.PathLike,
    audio: str | os.PathLike | None = None,
    offset: int = 0,
) -> SyncScore:
    """`sync_score` of a video file against its own audio track (or `audio`)."""
    return sync_score(syncnet, face_crops(video, resolution), load_audio(Path(audio or video)), offset)
