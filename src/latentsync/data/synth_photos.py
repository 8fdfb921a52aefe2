"""Who the synthetic clips show: one photo, or many faces (photos and frames of videos), each clip a variant.

A U-Net trained on a few dozen people can memorise their faces instead of taking the identity from the reference
frame, as the real LatentSync does from thousands of people. `data synth --photo` therefore accepts a list: an
image, a video, a folder of them, or a text file naming them (one per line, relative to the file). Clip i animates
entry i mod n; a video entry gives a frame drawn at random from its middle 80 %, so each clip of it shows another
pose and expression. With `augment`, each clip's face is also flipped (half the time), colour-shifted (per-channel
gains 0.85-1.15, gamma 0.8-1.25) and re-lit (a brightness ramp of up to +-25 % across the photo in a random
direction): new-looking people the U-Net has not seen, from the ones it has. Every draw comes from (seed, clip,
attempt), so a clip is reproducible.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from latentsync.data.synth_face import load_photo
from latentsync.errors import ConfigError
from latentsync.video.reader import VideoFrames, probe

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".mpg", ".mpeg"}
LIST_SUFFIX = ".txt"


def photo_entries(photo: str | os.PathLike | None) -> tuple[str | None, ...]:
    """The faces `photo` names, in order; (None,) is the default astronaut. A bad entry is a one-line error."""
    if photo is None:
        return (None,)
    path = Path(photo)
    if path.is_dir():
        found = [p for p in sorted(path.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES]
        if not found:
            raise ConfigError(f"--photo folder {path} holds no images or videos")
        entries = found
    elif path.suffix.lower() == LIST_SUFFIX:
        if not path.is_file():
            raise ConfigError(f"--photo list not found: {path}")
        lines = [line.strip() for line in path.read_text().splitlines()]
        entries = [path.parent / line for line in lines if line and not line.startswith("#")]
        if not entries:
            raise ConfigError(f"--photo list {path} names no faces")
    else:
        entries = [path]
    for entry in entries:
        if not entry.is_file():
            raise ConfigError(f"photo not found: {entry}")
        if entry.suffix.lower() in VIDEO_SUFFIXES:
            probe(entry)  # unreadable videos fail now, not in a worker
    return tuple(str(entry) for entry in entries)


def clip_photo(entries: tuple[str | None, ...], seed: int, index: int, attempt: int, augment: bool
               ) -> tuple[np.ndarray, str]:
    """The RGB face photo of clip `index` (its entry, its frame if a video, its variant) and a name for messages."""
    entry = entries[index % len(entries)]
    rng = np.random.default_rng([seed, index, attempt, 7])
    if entry is not None and Path(entry).suffix.lower() in VIDEO_SUFFIXES:
        frames = VideoFrames(entry)
        k = int(rng.uniform(0.1, 0.9) * max(len(frames) - 1, 0))
        image, name = next(iter(frames.iter_range(k, k + 1))), f"{entry} frame {k}"
    else:
        image, name = load_photo(entry)
    if augment:
        image, name = vary(image, rng), f"{name} (varied)"
    return image, name


def vary(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A flipped, colour-shifted and re-lit copy of an RGB uint8 image (see the module docstring)."""
    out = image[:, ::-1] if rng.random() < 0.5 else image
    h, w = out.shape[:2]
    pixels = out.astype(np.float32) / 255.0
    pixels = pixels ** rng.uniform(0.8, 1.25) * rng.uniform(0.85, 1.15, size=3).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = (np.cos(angle) * (xx / max(w - 1, 1) - 0.5) + np.sin(angle) * (yy / max(h - 1, 1) - 0.5)) * 2
    pixels *= (1 + rng.uniform(0, 0.25) * ramp)[:, :, None]
    return np.ascontiguousarray(np.clip(pixels * 255 + 0.5, 0, 255).astype(np.uint8))

