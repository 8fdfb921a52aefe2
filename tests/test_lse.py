"""LSE-C / LSE-D maths on known answers, the offset sign convention end to end, and the StableSyncNet offset search."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from latentsync.errors import NoFaceError, VideoError
from latentsync.eval.lse import (
    LSEResult,
    audio_delay_seconds,
    average_tracks,
    lse,
    lse_from_embeddings,
    passes_sync_filter,
    shift_audio,
    shifted_distances,
    summarise_offsets,
)
from latentsync.eval.sync import stable_syncnet_offset


def _leading_audio(video: torch.Tensor, k: int) -> torch.Tensor:
    """Audio embeddings of a clip whose sound comes k frames before the mouth: audio j = video j + k (zeros past the
    end), so video window i matches audio window i - k."""
    audio = torch.zeros_like(video)
    n = len(video)
    src = torch.arange(n) + k
    ok = (src >= 0) & (src < n)
    audio[ok] = video[src[ok]]
    return audio


@pytest.mark.parametrize("k", [-5, 0, 3])
def test_known_offset_on_crafted_embeddings(k: int):
    video = torch.randn(60, 32, generator=torch.Generator().manual_seed(k + 10))
    result = lse_from_embeddings(video, _leading_audio(video, k))
    assert result.offset == k
    assert result.windows == 60 and result.per_offset_distances.shape == (31,)
    assert result.per_offset_distances.argmin() == k + 15  # entry j is offset j - 15
    # At the true offset every window with audio in range matches exactly; the |k| windows whose partner lies
    # outside the clip meet the original's zero padding, i.e. their own norm.
    column = shifted_distances(video, _leading_audio(video, k))[:, k + 15]
    matched = torch.ones(60, dtype=torch.bool)
    if k > 0:
        matched[:k] = False  # audio i - k < 0
    elif k < 0:
        matched[k:] = False  # audio i - k >= 60
    assert column[matched].max() < 1e-4
    torch.testing.assert_close(column[~matched], video[~matched].norm(dim=1), atol=1e-4, rtol=0)
    assert result.distance == pytest.approx(float(video[~matched].norm(dim=1).sum()) / 60, abs=1e-4)
    assert result.confidence > 4.0  # random 32-d pairs sit ~8 apart; the matched offset stands far out


def test_summary_is_median_minus_min_and_ties_go_to_the_larger_offset():
    curve = torch.tensor([3.0, 1.0, 2.0, 5.0, 4.0])  # offsets -2..2
    assert summarise_offsets(curve, 2) == (2.0, 1.0, -1)
    assert summarise_offsets(torch.tensor([1.0, 2.0, 2.0, 2.0, 1.0]), 2) == (1.0, 1.0, 2)
    with pytest.raises(ValueError):
        summarise_offsets(curve, 3)


@pytest.mark.parametrize("k", [-4, 5])
def test_delaying_audio_by_the_offset_syncs_it(k: int):
    video = torch.randn(80, 16, generator=torch.Generator().manual_seed(3))
    audio = _leading_audio(video, k).numpy()
    assert lse_from_embeddings(video, torch.from_numpy(audio)).offset == k
    assert audio_delay_seconds(k) == pytest.approx(k / 25)
    # One "sample" per frame, so shift_audio moves whole embedding rows exactly as it moves 640 samples at 16 kHz.
    fixed = shift_audio(audio, k, sample_rate=25, fps=25)
    assert lse_from_embeddings(video, torch.from_numpy(fixed)).offset == 0


def test_shift_audio_keeps_length_and_fills_silence():
    wav = np.arange(1, 3201, dtype=np.float32)
    late = shift_audio(wav, 2)  # 2 frames = 1280 samples later
    assert late.shape == wav.shape and np.all(late[:1280] == 0)
    np.testing.assert_array_equal(late[1280:], wav[:-1280])
    early = shift_audio(wav, -1)
    np.testing.assert_array_equal(early[:-640], wav[640:])
    assert np.all(early[-640:] == 0)
    np.testing.assert_array_equal(shift_audio(wav, 0), wav)
    assert not np.any(shift_audio(wav, 9))


def test_sync_filter_and_track_average():
    assert passes_sync_filter(3.0, 6) and passes_sync_filter(8.2, -6)
    assert not passes_sync_filter(2.99, 0) and not passes_sync_filter(9.0, 7)
    tracks = [lse_from_embeddings(torch.zeros(8, 4), torch.zeros(8, 4), 2)] * 2
    assert average_tracks(tracks) == (0.0, 2)  # flat curve: tie -> largest offset

    def r(c: float, o: int) -> LSEResult:
        return LSEResult(c, 0.0, o, np.zeros(31), 1)

    assert average_tracks([r(4.0, -2), r(6.0, -3)]) == (5.0, -2)  # -2.5 truncates toward zero, as upstream
    assert average_tracks([r(1.0, 3), r(2.0, -1), r(3.0, 1)]) == (2.0, 1)


# ---- end to end with a stand-in network: the windowing of frames and MFCCs must put the minimum at the truth ----

def _pattern(frames: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2, frames).astype(bool)


def _speech(loud: np.ndarray, samples_per_frame: int = 640) -> np.ndarray:
    """A 300 Hz tone during loud frames, near-silence otherwise, 16 kHz float in [-1, 1]."""
    t = np.arange(len(loud) * samples_per_frame) / 16000
    gate = np.repeat(loud, samples_per_frame)
    return (np.where(gate, 0.3, 0.001) * np.sin(2 * np.pi * 300 * t)).astype(np.float32)


class _LoudnessSyncNetV2(nn.Module):
    """forward_lip: brightness of each of the 5 frames; forward_aud: c0 (log energy) averaged per 4 MFCC steps;
    both centred and unit-normalised, so the Euclidean distance is small exactly when the two patterns align."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward_lip(self, x: torch.Tensor) -> torch.Tensor:
        return _centred(x.mean(dim=(1, 3, 4)))

    def forward_aud(self, x: torch.Tensor) -> torch.Tensor:
        return _centred(x[:, 0, 0].reshape(-1, 5, 4).mean(-1))


def _centred(v: torch.Tensor) -> torch.Tensor:
    return F.normalize(v - v.mean(dim=1, keepdim=True), dim=1)


@pytest.mark.parametrize("k", [-3, 0, 4])
def test_lse_entry_point_finds_a_known_lead(k: int):
    frames, margin = 100, 10
    events = _pattern(frames + 2 * margin, seed=10 + k)
    video_bright = events[margin : margin + frames]  # event e is on the mouth at frame e ...
    audio_loud = events[margin + k : margin + k + frames]  # ... and in the audio at frame e - k
    crops = np.repeat(np.where(video_bright, 220, 30).astype(np.uint8), 224 * 224 * 3).reshape(frames, 224, 224, 3)
    result = lse(crops, _speech(audio_loud), _LoudnessSyncNetV2())  # type: ignore[arg-type]
    assert result.offset == k
    assert result.windows == frames - 5  # the original scores min(N, samples // 640) - 5 windows
    assert result.confidence > 0.3
    assert result.distance == pytest.approx(result.per_offset_distances.min())


def test_lse_refuses_a_clip_too_short():
    crops = np.zeros((5, 224, 224, 3), np.uint8)
    with pytest.raises(VideoError):
        lse(crops, np.zeros(16000, np.float32), _LoudnessSyncNetV2())  # type: ignore[arg-type]


# ---- StableSyncNet offset search on a stub with the same interface ----

class _LoudnessStableSyncNet(nn.Module):
    """visual_encoder: brightness of each of the 16 stacked frames; audio_encoder: loudest mel band in 16 time bins."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.visual_encoder = _Lambda(lambda x: _centred(x.reshape(x.shape[0], 16, -1).mean(-1))[..., None, None])
        self.audio_encoder = _Lambda(
            lambda m: _centred(F.adaptive_avg_pool1d(m.amax(dim=2), 16).squeeze(1))[..., None, None]
        )


class _Lambda(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


@pytest.mark.parametrize("k", [-4, 0, 3])
def test_stable_syncnet_offset_finds_a_known_lead(k: int):
    frames, margin = 64, 8
    events = _pattern(frames + 2 * margin, seed=20 + k)
    video_bright = events[margin : margin + frames]
    audio_loud = events[margin + k : margin + k + frames]
    crops = [np.full((32, 32, 3), 220 if b else 30, np.uint8) for b in video_bright]
    crops[40] = None  # a frame without a face only removes the windows that contain it
    confidence, offset, curve = stable_syncnet_offset(
        _LoudnessStableSyncNet(), crops, _speech(audio_loud), max_offset=6, stride=2  # type: ignore[arg-type]
    )
    assert offset == k
    assert curve.shape == (13,) and curve.argmin() == k + 6
    assert confidence == pytest.approx(float(np.median(curve) - curve.min()))
    assert confidence > 0.3


def test_stable_syncnet_offset_needs_audio_on_both_sides():
    crops = [np.zeros((32, 32, 3), np.uint8)] * 30
    with pytest.raises(NoFaceError):  # 16 frames + 2 x 15 of audio margin do not fit in 30 frames
        stable_syncnet_offset(_LoudnessStableSyncNet(), crops, _speech(np.ones(30, bool)))  # type: ignore[arg-type]
