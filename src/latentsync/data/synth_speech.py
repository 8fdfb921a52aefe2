"""Speech for synthetic clips, and the mouth movement it implies.

Sentences come from a small built-in grammar (templates over word lists, drawn from a seeded generator), so
clips say different, natural-sounding English without any corpus download, and hibari-tts speaks them offline.
Sentences are separated by random pauses, some long, so the mouth also has to close and stay closed.

The mouth follows the loudness of the clean speech, frame by frame, because loudness is what a listener (and
SyncNet) can most directly tie to jaw opening. Frame k of a 25 fps video is on screen from k/25 to (k+1)/25,
so its opening is measured in a Hann window centred on that interval (60 ms, 1.5 frames). The smoothing that
gives the movement its inertia is a centred Gaussian: it opens the mouth slightly before a syllable and closes
it slightly after, symmetrically, which reads as natural anticipation without shifting the motion in time —
an attack/release follower would lag the sound, and lag is exactly what this data must not teach.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.signal import resample_poly

SAMPLE_RATE = 16000
FPS = 25
TTS_RATE = 24000
RANGE_DB = 24.0  # loudness range mapped to opening 0..1, below the clip's loudest frame
HEADROOM_DB = 2.0  # frames within this of the loudest are fully open
CURVE = 1.5  # opening = relative loudness ** CURVE: vowels open wide, consonants and transitions much less
ROUND_CENTROID = (600.0, 1400.0)  # spectral centroid (Hz) of fully rounded .. unrounded voiced frames
SMOOTH_FRAMES = 0.7  # sigma of the centred smoothing, in frames

_SUBJECTS = (
    "the old farmer", "my sister", "a small dog", "the teacher", "our neighbour", "the pilot", "a young painter",
    "the baker", "his brother", "the children", "the captain", "a tired doctor", "the little girl", "my friend Sam",
    "the new manager", "her grandmother", "a quiet student", "the mayor",
)  # fmt: skip
_VERBS = (
    "found", "painted", "carried", "opened", "watched", "bought", "cleaned", "fixed", "followed", "borrowed",
    "dropped", "moved", "visited", "ordered", "remembered", "wrapped", "measured", "sold",
)  # fmt: skip
_OBJECTS = (
    "a heavy wooden box", "the blue umbrella", "three ripe apples", "an old map", "the broken window",
    "a basket of bread", "the yellow kite", "my favourite book", "a bottle of water", "the garden gate",
    "a pair of boots", "the morning paper", "a tiny silver key", "the kitchen table", "a bunch of flowers",
    "the noisy radio",
)  # fmt: skip
_PLACES = (
    "near the river", "at the market", "in the garden", "behind the station", "on the hill", "by the harbour",
    "inside the library", "across the street", "at the old mill", "under the bridge", "in the attic",
)  # fmt: skip
_TIMES = (
    "this morning", "last night", "on Monday", "after lunch", "before the storm", "at noon", "in the evening",
    "yesterday",
)  # fmt: skip
_OPENERS = ("Well,", "Honestly,", "Look,", "You know,", "Oh,", "So,", "Actually,", "Listen,")
_EXCLAIMS = (
    "What a lovely day it is!", "Wow, that was fast!", "Oh no, the bus is late again!", "That is wonderful news!",
    "Nobody saw that coming.", "Thank you so much for your help.", "Please wait here for a moment.",
)  # fmt: skip
_TEMPLATES = (
    "{subject} {verb} {object} {place}.",
    "{time}, {subject} {verb} {object}.",
    "{opener} {subject} {verb} {object} {time}.",
    "{subject} {verb} {object}, and then {subject2} {verb2} {object2}.",
    "Have you seen {object} {place}?",
    "Why did {subject} leave {object} {place}?",
    "Could you bring {object} {time}?",
    "I think {subject} {verb} {object} {place}.",
    "{exclaim}",
)


def random_sentence(rng: np.random.Generator) -> str:
    """One English sentence from the built-in grammar."""

    def pick(words: tuple[str, ...]) -> str:
        return words[int(rng.integers(len(words)))]

    text = pick(_TEMPLATES).format(
        subject=pick(_SUBJECTS), verb=pick(_VERBS), object=pick(_OBJECTS), place=pick(_PLACES), time=pick(_TIMES),
        opener=pick(_OPENERS), subject2=pick(_SUBJECTS), verb2=pick(_VERBS), object2=pick(_OBJECTS),
        exclaim=pick(_EXCLAIMS),
    )  # fmt: skip
    return text[0].upper() + text[1:]


@lru_cache(maxsize=1)
def _tts() -> Any:
    """hibari-tts, loaded once per process (its voice ships in the wheel, so this works offline)."""
    from hibari import Hibari

    return Hibari()


def speak(text: str, speed: float = 1.0, seed: int = 0) -> np.ndarray:
    """float32 mono speech at 16 kHz (hibari renders 24 kHz; 16 kHz is what the models listen to)."""
    wav = np.asarray(_tts()(text, speed=speed, seed=seed), dtype=np.float32)
    common = math.gcd(SAMPLE_RATE, TTS_RATE)
    return resample_poly(wav, SAMPLE_RATE // common, TTS_RATE // common).astype(np.float32)


def make_speech(rng: np.random.Generator, num_samples: int) -> np.ndarray:
    """Exactly `num_samples` of 16 kHz speech: random sentences, speeds and levels, with pauses between them.

    The last sentence is cut where the clip ends (with a 20 ms fade so the cut does not click).
    """
    out = np.zeros(num_samples, np.float32)
    position = int(rng.uniform(0.05, 0.6) * SAMPLE_RATE)
    while position < num_samples:
        wav = speak(random_sentence(rng), speed=float(rng.uniform(0.85, 1.15)), seed=int(rng.integers(2**31)))
        wav *= rng.uniform(0.5, 0.9) / max(float(np.abs(wav).max()), 1e-6)
        fits = min(len(wav), num_samples - position)
        piece = wav[:fits].copy()
        if fits < len(wav):
            fade = min(fits, SAMPLE_RATE // 50)
            piece[fits - fade :] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
        out[position : position + fits] = piece
        pause = rng.uniform(0.7, 1.4) if rng.random() < 0.3 else rng.uniform(0.15, 0.6)
        position += len(wav) + int(pause * SAMPLE_RATE)
    return out


def _frames(speech: np.ndarray, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """[num_frames, window] slices centred on each video frame's interval, and the Hann window."""
    hop = SAMPLE_RATE // FPS
    window = 3 * hop // 2
    lead = (window - hop) // 2
    padded = np.pad(speech.astype(np.float64), (lead, max(num_frames * hop + window - lead - len(speech), 0)))
    slices = np.lib.stride_tricks.sliding_window_view(padded, window)[: num_frames * hop : hop]
    return slices, np.hanning(window)


def mouth_track(speech: np.ndarray, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame (opening, roundness) in [0, 1] for 16 kHz speech shown at 25 fps (see the module docstring).

    Roundness is high for voiced frames with a low spectral centroid (o/u-like vowels) and rounds the lips.
    """
    slices, window = _frames(speech, num_frames)
    weighted = slices * window
    rms = np.sqrt((weighted * slices).sum(axis=1) / window.sum())
    level = 20 * np.log10(rms + 1e-7)
    top = float(level.max()) if len(level) else 0.0
    opening = np.clip((level - (top - RANGE_DB)) / (RANGE_DB - HEADROOM_DB), 0.0, 1.0) ** CURVE
    opening = np.clip(gaussian_filter1d(opening, SMOOTH_FRAMES, mode="nearest"), 0.0, 1.0)
    spectrum = np.abs(np.fft.rfft(weighted, axis=1))
    freqs = np.fft.rfftfreq(slices.shape[1], 1 / SAMPLE_RATE)
    band = (freqs >= 100) & (freqs <= 5000)
    centroid = (spectrum[:, band] * freqs[band]).sum(axis=1) / np.maximum(spectrum[:, band].sum(axis=1), 1e-9)
    low, high = ROUND_CENTROID
    roundness = np.clip((high - centroid) / (high - low), 0.0, 1.0) * (opening > 0.1)
    roundness = np.clip(gaussian_filter1d(roundness, 1.0, mode="nearest"), 0.0, 1.0)
    return opening.astype(np.float32), roundness.astype(np.float32)
