"""What several steps share: output names, scratch space, cutting a clip into pieces with their audio, and the
skeleton of the two model-based filters (sync, quality) with their per-process model cache."""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from scipy.io import wavfile

from latentsync.data.runner import Item, Result, Step
from latentsync.errors import ConfigError
from latentsync.video.reader import FPS, VideoFrames, probe
from latentsync.video.writer import VideoWriter

SAMPLE_RATE = 16000
HOP = SAMPLE_RATE // FPS  # audio samples per video frame

Evaluator = Callable[[Path], dict[str, float]]
"""A model-based judge of one clip: `evaluator(clip) -> figures` (e.g. {"conf": 7.1, "offset": 0})."""
Loader = Callable[[Path, str], Evaluator]
"""Builds an Evaluator from a weights file on a device ("cpu", "cuda"); raises a LatentSyncError if it cannot."""


def output_path(out_dir: Path, name: str, tag: str = "") -> Path:
    """Where the output for input `name` goes: out_dir/name as .mp4, `tag` before the suffix (a.mp4 -> a-seg01.mp4).

    A name not ending in .mp4 keeps its suffix inside the new name (a.mov -> a.mov.mp4), so a.mp4 and a.mov
    in one folder do not collide.
    """
    base = name[:-4] if name.endswith(".mp4") else name
    return out_dir / f"{base}{tag}.mp4"


@contextmanager
def scratch(folder: Path) -> Iterator[Path]:
    """A private temporary folder inside `folder`, named like a partial file so a killed run's is cleaned up."""
    path = folder / f".scratch.{secrets.token_hex(4)}.part"
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class Piece:
    """Frames [start, stop) of a 25 fps clip, paired with its 16 kHz audio from sample `audio_start` on."""

    start: int
    stop: int
    audio_start: int

    @property
    def seconds(self) -> float:
        return (self.stop - self.start) / FPS


def write_pieces(frames: VideoFrames, audio: np.ndarray, pieces: Sequence[Piece], outs: Sequence[Path]) -> None:
    """Encode each piece (sorted, not overlapping) to its output, decoding the source once.

    Every output gets H.264 at 25 fps and its own slice of `audio` as 16 kHz mono AAC, cut or silence-padded
    to exactly its frame count; the writer makes each file appear only when it is complete, and if the source
    fails half-way the pieces already written are removed again.
    """
    if any(a.stop > b.start for a, b in zip(pieces, pieces[1:])) or any(p.start >= p.stop for p in pieces):
        raise ValueError("pieces must be non-empty, sorted and not overlapping")
    info = frames.info
    outs[0].parent.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with scratch(outs[0].parent) as tmp:
        source = frames.iter_range(pieces[0].start, pieces[-1].stop)
        position = pieces[0].start
        try:
            for index, (piece, out) in enumerate(zip(pieces, outs)):
                wav = tmp / f"{index}.wav"
                clip = audio[piece.audio_start : piece.audio_start + (piece.stop - piece.start) * HOP]
                wavfile.write(wav, SAMPLE_RATE, (np.clip(clip, -1, 1) * 32767).astype(np.int16))
                out.parent.mkdir(parents=True, exist_ok=True)
                with VideoWriter(out, info.width, info.height, FPS, audio_path=wav, colour=info.colour) as writer:
                    for frame in source:
                        position += 1
                        if position > piece.start:
                            writer.write(frame)
                        if position == piece.stop:
                            break
                written.append(out)
        except BaseException:  # a source that fails half-way: no pieces without a record
            for out in written:
                out.unlink(missing_ok=True)
            raise


def clip_seconds(path: Path) -> float:
    """Length of a 25 fps clip (raises VideoError for a file that is not one)."""
    return probe(path).num_frames / FPS


_evaluators: dict[tuple[Loader, Path, str], Evaluator] = {}


def cached_evaluator(loader: Loader, weights: Path, device: str) -> Evaluator:
    """Load a model once per process (worker), not once per clip."""
    key = (loader, weights, device)
    if key not in _evaluators:
        _evaluators[key] = loader(weights, device)
    return _evaluators[key]


def worker_device() -> str:
    """The GPU this worker was given (the runner pins one per worker as cuda:0), else the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class FilterStep(Step):
    """A filter run by a model from a user-supplied weights file: keeps, drops or (sync) fixes each clip.

    Without weights it cannot judge anything, so it passes every clip on as `unchecked` with a loud warning
    in the log, in every manifest record and in the final table. The weight files' names, sizes and mtimes are
    part of the resume key: supplying weights later checks the clips that went through unchecked, and replacing
    them checks every clip again.
    """

    weights: Path | None = None
    loader: Loader | None = None
    clips = True
    what: ClassVar[str]  # the model, for messages
    option: ClassVar[str]  # the CLI option that supplies its weights

    def weight_files(self) -> list[Path]:
        """The files the weights option stands for (itself, unless a step accepts e.g. a model folder); raises a
        ConfigError when they are not there."""
        assert self.weights is not None
        if not self.weights.is_file():
            raise ConfigError(f"{self.option}: weights file not found: {self.weights}")
        return [self.weights]

    def settings(self) -> str:
        if self.weights is None:
            return "unchecked"
        stamps = [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in self.weight_files()]
        return f"weights={','.join(stamps)}"

    @property
    def uses_gpu(self) -> bool:
        return self.weights is not None

    @property
    def warning(self) -> str | None:
        if self.weights is not None:
            return None
        what = f"no {self.what} weights ({self.option} FILE)"
        return f"{what}: the {self.name} filter is NOT applied, clips pass unchecked"

    def check(self) -> None:
        """Fail before any work if the weights are missing or no evaluator can read them (loaded once, on CPU)."""
        if self.weights is None:
            return
        self.weight_files()
        assert self.loader is not None
        cached_evaluator(self.loader, self.weights, "cpu")

    def process(self, item: Item, out_dir: Path) -> Result:
        seconds = item.seconds or clip_seconds(item.path)
        if self.weights is None:
            return Result([item.path], [seconds], status="unchecked", reason="not checked", detail=self.warning)
        assert self.loader is not None
        figures = cached_evaluator(self.loader, self.weights, worker_device())(item.path)
        return self.judge(item, out_dir, dict(figures), seconds)

    def judge(self, item: Item, out_dir: Path, figures: dict[str, float], seconds: float) -> Result:
        """Keep (possibly fixed), or drop, one clip given the evaluator's figures."""
        raise NotImplementedError


def pass_on(item: Item, seconds: float, **figures: object) -> Result:
    """Keep an input as it is: its path is the output (no copy), under its own name."""
    return Result([item.path], [seconds], figures=dict(figures))

