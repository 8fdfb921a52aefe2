"""Tiny synthetic "talking" clips whose mouth follows the speech, so audio-visual sync is learnable in seconds.

The "speech" is broadband noise switched on and off in random syllables; the mouth (a dark bar in the lower half)
opens with the loudness of the same frame. Only the timing pattern tells a matching mel window from another
window of the same clip, which is exactly what SyncNet has to learn. Two choices make it learnable in tens of
steps: noise lights up all 80 mel bins (a harmonic buzz lights a few), and syllables and gaps of 3-8 frames
give a 16-frame window one or two clear edges (with 1-6 frame syllables a tiny SyncNet stayed at chance).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from media.clips import write_clip

RATE = 16000
FPS = 25


def syllables(rng: np.random.Generator, n_frames: int) -> np.ndarray:
    """Per-frame loudness in [0, 1]: bursts of 3-8 frames, separated by 3-8 silent frames."""
    env = np.zeros(n_frames)
    k = int(rng.integers(0, 8))
    while k < n_frames:
        on = int(rng.integers(3, 9))
        env[k : k + on] = rng.uniform(0.7, 1.0)
        k += on + int(rng.integers(3, 9))
    return env


def talking_clip(path: str | Path, n_frames: int, size: int = 64, seed: int = 0) -> Path:
    """Write a size x size, 25 fps clip of `n_frames` frames with a 16 kHz mono AAC track of the same length."""
    rng = np.random.default_rng(seed)
    env = syllables(rng, n_frames)
    t = np.arange(n_frames * RATE // FPS) / RATE
    hiss = rng.standard_normal(t.size)
    wav = (0.2 * env[(t * FPS).astype(int)] * hiss + 0.002 * rng.standard_normal(t.size)).astype(np.float32)

    skin = rng.integers(120, 220, size=3)
    frames = np.empty((n_frames, size, size, 3), np.uint8)
    frames[:] = skin
    eye_y, mouth_y, half_w = size // 4, size * 11 // 16, size // 4
    frames[:, eye_y : eye_y + size // 16, size // 4 : size // 4 + size // 8] = 40
    frames[:, eye_y : eye_y + size // 16, size * 5 // 8 : size * 3 // 4] = 40
    for i, level in enumerate(env):
        opening = max(1, int(round(level * size / 4)))
        frames[i, mouth_y - opening // 2 : mouth_y + (opening + 1) // 2, size // 2 - half_w : size // 2 + half_w] = 30
    return write_clip(path, frames, FPS, audio=(wav, RATE, 1), codec_options={"g": "8"})


def talking_folder(root: str | Path, n_clips: int, n_frames: int = 75, size: int = 64, seed: int = 0,
                   filelist: str = "filelist.txt") -> Path:
    """A training-data folder: `n_clips` talking clips under clips/ and a filelist naming them."""
    root = Path(root)
    (root / "clips").mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n_clips):
        name = f"clips/{filelist.split('.')[0]}_{i:03d}.mp4"
        talking_clip(root / name, n_frames, size, seed=seed * 1000 + i)
        names.append(name)
    (root / filelist).write_text("\n".join(names) + "\n")
    return root
