"""The SyncNet mel feature: shapes, range, frequency placement and the video-frame -> mel-window arithmetic."""

from __future__ import annotations

import math

import librosa
import numpy as np
import pytest

from latentsync.audio.mel import (
    FMAX,
    FMIN,
    NUM_MELS,
    SAMPLE_RATE,
    mel_basis,
    mel_window,
    mel_window_length,
    mel_window_start,
    melspectrogram,
)
from latentsync.errors import AudioError


def _tone(freq: float, seconds: float = 1.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(SAMPLE_RATE * seconds)) / SAMPLE_RATE
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_one_second_gives_80_frames_per_second():
    mel = melspectrogram(_tone(440.0))
    # Centered STFT: 1 + N // hop frames, i.e. 80 per second plus one.
    assert mel.shape == (NUM_MELS, 1 + SAMPLE_RATE // 200) == (80, 81)
    assert mel.dtype == np.float32
    assert melspectrogram(_tone(440.0, seconds=2.5)).shape == (80, 201)


def test_values_stay_in_symmetric_range():
    loud = np.random.default_rng(0).uniform(-1, 1, SAMPLE_RATE).astype(np.float32)
    for wav in (loud, _tone(1000.0, amplitude=1.0), _tone(200.0, amplitude=1e-4)):
        mel = melspectrogram(wav)
        assert mel.min() >= -4.0 and mel.max() <= 4.0, (mel.min(), mel.max())


def test_silence_is_the_floor():
    mel = melspectrogram(np.zeros(SAMPLE_RATE, dtype=np.float32))
    np.testing.assert_array_equal(mel, np.full_like(mel, -4.0))


@pytest.mark.parametrize("bin_index", [10, 25, 40, 60, 75])
def test_pure_tone_lands_in_its_mel_bin(bin_index: int):
    # Filter i of the mel basis peaks at the (i+1)-th of n_mels + 2 mel-spaced frequencies over [fmin, fmax].
    centers = librosa.mel_frequencies(n_mels=NUM_MELS + 2, fmin=FMIN, fmax=FMAX)[1:-1]
    mel = melspectrogram(_tone(float(centers[bin_index])))
    energy = mel[:, 5:-5].mean(axis=1)  # skip the zero-padded edge frames
    assert int(energy.argmax()) == bin_index, f"tone at {centers[bin_index]:.1f} Hz peaked in bin {energy.argmax()}"
    others = np.delete(energy, bin_index)
    assert energy[bin_index] - others.max() > 0.5


def test_tone_between_centers_goes_to_nearest_bin():
    centers = librosa.mel_frequencies(n_mels=NUM_MELS + 2, fmin=FMIN, fmax=FMAX)[1:-1]
    for freq in (1000.0, 3000.0):
        energy = melspectrogram(_tone(freq))[:, 5:-5].mean(axis=1)
        assert int(energy.argmax()) == int(np.abs(centers - freq).argmin())


def test_mel_basis_is_cached_and_read_only():
    assert mel_basis() is mel_basis()
    assert mel_basis().shape == (80, 401)
    assert not mel_basis().flags.writeable


def test_bad_waveforms_raise():
    with pytest.raises(AudioError):
        melspectrogram(np.zeros(0, dtype=np.float32))
    with pytest.raises(AudioError):
        melspectrogram(np.array([0.0, np.nan], dtype=np.float32))
    with pytest.raises(ValueError):
        melspectrogram(np.zeros((2, 100), dtype=np.float32))


def test_window_length_matches_upstream_formula():
    for frames in range(1, 60):
        assert mel_window_length(frames) == math.ceil(frames / 5 * 16)
    assert mel_window_length(16) == 52
    assert mel_window_length(25) == 80


def test_window_start_matches_upstream_formula():
    for frame in range(0, 5000):
        assert mel_window_start(frame) == int(80.0 * (frame / 25.0))


def test_window_at_frame_zero_and_later():
    # Column c of this fake mel holds the value c, so the window's first value is its start index.
    mel = np.tile(np.arange(300, dtype=np.float32), (80, 1))
    first = mel_window(mel, 0)
    assert first.shape == (80, 52)
    np.testing.assert_array_equal(first[0], np.arange(0, 52))
    later = mel_window(mel, 7)  # int(80 * 7 / 25) = int(22.4) = 22
    np.testing.assert_array_equal(later[0], np.arange(22, 74))
    assert mel_window(mel, 25)[0, 0] == 80  # one second in
    assert mel_window(mel, 0, num_frames=25).shape == (80, 80)


def test_window_past_end_repeats_last_frame():
    mel = np.tile(np.arange(100, dtype=np.float32), (80, 1))
    window = mel_window(mel, 20)  # starts at mel frame 64, 36 real frames then 16 repeats of frame 99
    assert window.shape == (80, 52)
    np.testing.assert_array_equal(window[0, :36], np.arange(64, 100))
    np.testing.assert_array_equal(window[:, 36:], np.full((80, 16), 99.0))


def test_window_with_no_audio_raises():
    mel = np.zeros((80, 100), dtype=np.float32)
    with pytest.raises(ValueError, match="past the end"):
        mel_window(mel, 32)  # starts at mel frame 102
    with pytest.raises(ValueError):
        mel_window(mel, -1)
