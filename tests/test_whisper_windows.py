"""Per-frame audio windows (upstream's layout and count) and the long-audio windowing of `audio_features`.

The index layout is checked on synthetic features whose values encode (step, layer); the window blending on a
stub encoder whose output encodes the window; the 30 s boundary on real Whisper tiny.en states of TTS speech.
"""

from __future__ import annotations

import wave
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from latentsync.audio.features import FADE_STEPS, AudioEncoderPipeline, audio_features, frame_windows
from latentsync.models.whisper import WhisperDims, load_whisper_encoder, log_mel_spectrogram
from latentsync.models.whisper_ct2 import tiny_en_path

L, D = 5, 3


def coded_features(n_steps: int) -> torch.Tensor:
    """features[t, layer, d] = 100 * t + 10 * layer + d, so every value names its source."""
    t = torch.arange(n_steps)[:, None, None]
    return (100 * t + 10 * torch.arange(L)[None, :, None] + torch.arange(D)[None, None, :]).float()


def expected_window(n_steps: int, i: int) -> torch.Tensor:
    """Upstream's feature2chunks for one frame, written as the plain loop (the test oracle)."""
    rows = []
    for t in range(2 * i - 4, 2 * i + 6):
        tc = min(max(t, 0), n_steps - 1)
        for layer in range(L):
            rows.append([100 * tc + 10 * layer + d for d in range(D)])
    return torch.tensor(rows, dtype=torch.float32)


@pytest.mark.parametrize("n_steps", [1, 7, 50, 51, 1500])
def test_frame_count_is_upstream_quirk(n_steps: int) -> None:
    win = frame_windows(coded_features(n_steps))
    assert win.shape == (n_steps // 2 + 2, 10 * L, D)


def test_first_frame_clamps_at_zero() -> None:
    win = frame_windows(coded_features(40))
    steps = win[0, ::L, 0] // 100  # layer 0, channel 0 of each of the 10 time slots
    assert steps.tolist() == [0, 0, 0, 0, 0, 1, 2, 3, 4, 5]
    torch.testing.assert_close(win[0], expected_window(40, 0), rtol=0, atol=0)


def test_last_frame_clamps_at_end() -> None:
    n_steps = 41
    win = frame_windows(coded_features(n_steps))
    last = n_steps // 2 + 1  # frame 21 wants steps 38 .. 47
    assert (win[last, ::L, 0] // 100).tolist() == [38, 39, 40] + [40] * 7
    torch.testing.assert_close(win[last], expected_window(n_steps, last), rtol=0, atol=0)


def test_row_order_time_major_layer_minor() -> None:
    n_steps = 64
    win = frame_windows(coded_features(n_steps))
    for i in range(win.shape[0]):
        torch.testing.assert_close(win[i], expected_window(n_steps, i), rtol=0, atol=0)
    # row r = 5 * (t - (2i - 4)) + layer: frame 10, row 23 is time slot 4 (t = 20), layer 3
    assert win[10, 23].tolist() == [2030.0, 2031.0, 2032.0]


def test_num_frames_override_clamps() -> None:
    win = frame_windows(coded_features(10), num_frames=12)
    assert win.shape[0] == 12
    assert (win[11, :, 0] // 100 == 9).all()


class StubEncoder(nn.Module):
    """Encoder stand-in: every state of window w equals `w + 1` (w = number of prior calls' windows)."""

    def __init__(self) -> None:
        super().__init__()
        self.dims = WhisperDims(80, 1500, 2, 1, 1, 10, 4, 2, 1, 1)
        self.conv1 = nn.Conv1d(80, 2, 3)
        self.calls = 0

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        ids = torch.arange(self.calls, self.calls + mel.shape[0], dtype=torch.float32) + 1
        self.calls += mel.shape[0]
        return ids[:, None, None, None].expand(-1, 1500, 2, 2).clone()


def test_continuous_blend_weights() -> None:
    audio = np.zeros(16000 * 55, np.float32)  # 5500 mel frames: windows at 0, 2000, 4000 (mel), T = 2750
    feats = audio_features(audio, StubEncoder(), batch_size=2)[:, 0, 0]
    assert feats.shape == (2750,)
    fade1 = torch.arange(1200, 1200 + FADE_STEPS)  # centre of the first overlap, steps 1000..1500
    assert (feats[:1200] == 1).all() and (feats[1300:2200] == 2).all() and (feats[2300:] == 3).all()
    ramp = feats[fade1] - 1
    torch.testing.assert_close(ramp, (torch.arange(FADE_STEPS) + 0.5) / FADE_STEPS)
    up = audio_features(audio, StubEncoder(), mode="upstream")[:, 0, 0]
    assert (up[:1500] == 1).all() and (up[1500:] == 2).all()  # segments at 0 and 3000 mel frames


@pytest.fixture(scope="session")
def encoder() -> nn.Module:
    torch.set_num_threads(2)
    return load_whisper_encoder(tiny_en_path())


@pytest.fixture(scope="session")
def speech_33s() -> np.ndarray:
    """33 s of TTS speech at 16 kHz, talking straight through the 30 s mark."""
    from hibari import Hibari
    from scipy.signal import resample_poly

    tts = Hibari()
    sentences = [
        "The quick brown fox jumps over the lazy dog near the river bank.",
        "She sells sea shells by the sea shore every summer morning.",
        "A journey of a thousand miles begins with a single step forward.",
        "Please remember to bring your umbrella because it might rain later today.",
        "Our meeting has been moved to Thursday afternoon at three o'clock.",
    ]
    parts, n = [], 0
    while n < 24000 * 34:
        parts.append(tts(sentences[len(parts) % len(sentences)], seed=len(parts)))
        n += len(parts[-1])
    return resample_poly(np.concatenate(parts), 2, 3).astype(np.float32)[: 16000 * 33]


def step_change(f: torch.Tensor) -> torch.Tensor:
    """change[t - 1] = ||f[t] - f[t - 1]|| over all layers and channels."""
    return (f[1:] - f[:-1]).flatten(1).norm(dim=1)


def test_short_audio_ours_equals_upstream(encoder: nn.Module, speech_33s: np.ndarray) -> None:
    for seconds in (12.34, 30.0):
        audio = speech_33s[: int(16000 * seconds)]
        ours = audio_features(audio, encoder)
        assert ours.shape == (int(16000 * seconds) // 320, 5, 384)
        assert torch.equal(ours, audio_features(audio, encoder, mode="upstream")), f"{seconds} s differs"


def test_just_over_30s_is_continuous(encoder: nn.Module, speech_33s: np.ndarray) -> None:
    ours = audio_features(speech_33s, encoder)
    up = audio_features(speech_33s, encoder, mode="upstream")
    assert ours.shape == up.shape == (1650, 5, 384)
    assert frame_windows(ours).shape == (1650 // 2 + 2, 50, 384)
    torch.testing.assert_close(ours[:1200], up[:1200], rtol=0, atol=0)  # first window only, before the fade

    d_ours, d_up = step_change(ours), step_change(up)
    typical = torch.cat([d_up[1000:1499], d_up[1500:1640]]).median()  # natural change, boundary excluded
    up_ratio = float(d_up[1499] / typical)
    ours_ratio = float(d_ours[1499] / typical)
    # measured: upstream 4.80x, ours 1.12x the typical step-to-step change at step 1500
    assert up_ratio > 3.0, f"upstream should jump at the 30 s boundary: {up_ratio:.2f}x typical"
    assert ours_ratio < 1.6, f"ours should not jump at the 30 s boundary: {ours_ratio:.2f}x typical"

    # Through the fade (steps 1200..1300) the blend never moves much more than either window alone does at the
    # same step (measured max 1.17x), i.e. the takeover from window 0 to window 1 adds no seam of its own.
    mel = log_mel_spectrogram(speech_33s)
    with torch.no_grad():
        second = encoder(F.pad(mel[:, 2000:], (0, 5000 - mel.shape[1]))[None])[0]  # window 1: steps 1000..2499
    alone = torch.maximum(d_up[1199:1300], step_change(second)[199:300])
    excess = float((d_ours[1199:1300] / alone).max())
    assert excess < 1.5, f"cross-fade adds {excess:.2f}x the windows' own step change"


def test_pipeline_from_file_and_waveform(encoder: nn.Module, speech_33s: np.ndarray, tmp_path) -> None:
    pcm = np.round(speech_33s[: 16000 * 4] * 32767).astype(np.int16)
    path = tmp_path / "speech.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm.tobytes())
    pipe = AudioEncoderPipeline(encoder)
    from_file = pipe(path)
    assert from_file.shape == (200 // 2 + 2, 50, 384)
    from_wave = pipe(pcm.astype(np.float32) / 32768.0)
    torch.testing.assert_close(from_file, from_wave, rtol=0, atol=1e-4)
    assert pipe(path, num_frames=30).shape == (30, 50, 384)
