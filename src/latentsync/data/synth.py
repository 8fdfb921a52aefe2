"""`latentsync data synth`: synthetic talking-face clips to train the small demo model (and its SyncNet) on.

Each clip is a face photo whose mouth moves with TTS speech (`synth_speech`, `synth_face`) in a randomised
scene (`synth_scene`), written in two forms:

- `OUT/raw/clip_XXXX.mp4`: the full frame (default 640x360), H.264 + 16 kHz mono AAC, for the data pipeline;
- `OUT/aligned/clip_XXXX.mp4`: the speaker's face at RESxRES, cut by the same FaceTracker + Aligner path that
  inference uses (so training crops are what the model will see), with the same audio; listed in
  `OUT/aligned/filelist.txt` (paths relative to OUT/aligned).

The aligned form is made from the frames in memory while they are generated, not by decoding the raw file.
Every frame must be aligned on the speaker: if the tracker loses the face, or takes another face for the
speaker, the clip is thrown away and made again from the next seed attempt (`MAX_ATTEMPTS`), and the report
says so; a clip that fails every attempt is dropped and left out of the file list.

Clip i is a pure function of (seed, i, attempt): the result does not depend on `workers` or on which clips
already exist. Both files of a clip are written atomically, and a clip counts as present only when both are,
so an interrupted run is continued by running the same command again.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.io import wavfile

from latentsync.data.synth_face import MouthAnimator
from latentsync.data.synth_photos import VIDEO_SUFFIXES, clip_photo, photo_entries
from latentsync.data.synth_scene import Scene
from latentsync.data.synth_speech import FPS, SAMPLE_RATE, make_speech, mouth_track
from latentsync.errors import ConfigError, NoFaceError
from latentsync.face.align import Aligner
from latentsync.face.track import FaceTracker
from latentsync.pipeline.report import Progress
from latentsync.video.writer import VideoWriter

MAX_ATTEMPTS = 3
FILELIST = "filelist.txt"
MIN_FRAME_SIDE = 144  # below this the face gets too small for the detector and the tracker's 50 px minimum
_SPEAKER_TOLERANCE = 0.25  # tracked face centre vs the speaker's true centre, in face widths


def clip_name(index: int) -> str:
    return f"clip_{index:04d}.mp4"


@dataclass
class SynthReport:
    """What a `synthesize` run did; `seconds` counts the video written by this run only."""

    out_dir: Path
    clips: int
    written: int = 0
    skipped: int = 0
    regenerated: int = 0  # clips written, but only after an attempt lost the face
    dropped: list[int] = field(default_factory=list)  # clips that lost the face in every attempt
    seconds: float = 0.0
    wall_seconds: float = 0.0

    def summary(self) -> str:
        text = (
            f"wrote {self.written} clips ({self.seconds:.1f} s of video) to {self.out_dir} "
            f"in {self.wall_seconds:.1f} s; {self.skipped} already there"
        )
        if self.regenerated:
            text += f"; {self.regenerated} regenerated after the tracker lost the face"
        if self.dropped:
            names = ", ".join(clip_name(i) for i in self.dropped)
            text += f"; dropped (face lost in all {MAX_ATTEMPTS} attempts): {names}"
        return text


@dataclass(frozen=True)
class _Job:
    out_dir: Path
    index: int
    seed: int
    seconds: tuple[float, float]
    resolution: int
    size: tuple[int, int]
    other_faces: bool
    photos: tuple[str | None, ...] = (None,)
    augment: bool = False

    @property
    def one_face(self) -> bool:
        """Every clip animates the same still: one animator (one landmark search) serves them all."""
        entry = self.photos[0]
        still = entry is None or Path(entry).suffix.lower() not in VIDEO_SUFFIXES
        return len(self.photos) == 1 and still and not self.augment


@dataclass(frozen=True)
class _Outcome:
    index: int
    attempts: int  # attempts used; MAX_ATTEMPTS and not written means dropped
    written: bool
    seconds: float


def _is_complete(out_dir: Path, index: int) -> bool:
    return (out_dir / "raw" / clip_name(index)).is_file() and (out_dir / "aligned" / clip_name(index)).is_file()


def _make_clip(job: _Job, animator: MouthAnimator | None) -> _Outcome:
    """Generate clip `job.index`, trying the next seed attempt whenever alignment fails (or, with many faces, the
    clip's photo has no face the landmarker finds). `animator` serves every clip of a one-face run."""
    for attempt in range(MAX_ATTEMPTS):
        if not job.one_face:
            try:
                animator = MouthAnimator(*clip_photo(job.photos, job.seed, job.index, attempt, job.augment))
            except NoFaceError:
                continue
        assert animator is not None
        rng = np.random.default_rng([job.seed, job.index, attempt])
        num_frames = max(int(round(rng.uniform(*job.seconds) * FPS)), 1)
        speech = make_speech(rng, num_frames * SAMPLE_RATE // FPS)
        opening, roundness = mouth_track(speech, num_frames)
        # A faint noise floor, as in any recording; the mouth follows the clean speech.
        noise_rms = 10 ** (rng.uniform(-65, -50) / 20)
        audio = speech + rng.normal(0, noise_rms, speech.shape).astype(np.float32)
        scene = Scene(animator, rng, job.size, num_frames, job.other_faces, FPS)
        if _write_clip(job, scene, audio, opening, roundness):
            return _Outcome(job.index, attempt + 1, True, num_frames / FPS)
    return _Outcome(job.index, MAX_ATTEMPTS, False, 0.0)


def _write_clip(job: _Job, scene: Scene, audio: np.ndarray, opening: np.ndarray, roundness: np.ndarray) -> bool:
    """Render, track, align and encode both forms; False (and no files) as soon as a frame cannot be aligned."""
    name = clip_name(job.index)
    width, height = job.size
    res = job.resolution
    aligner = Aligner(res)
    with tempfile.TemporaryDirectory(prefix="latentsync-synth-") as tmp, ExitStack() as stack:
        wav = Path(tmp) / "speech.wav"
        wavfile.write(wav, SAMPLE_RATE, (np.clip(audio, -1, 1) * 32767).astype(np.int16))
        tracker = stack.enter_context(FaceTracker("largest"))
        raw = stack.enter_context(VideoWriter(job.out_dir / "raw" / name, width, height, FPS, audio_path=wav))
        aligned = stack.enter_context(VideoWriter(job.out_dir / "aligned" / name, res, res, FPS, audio_path=wav))
        for k in range(len(opening)):
            frame = scene.frame(k, float(opening[k]), float(roundness[k]))
            face = tracker(frame)
            (cx, cy), face_width = scene.speaker_face(k)
            if face is None or np.hypot(face.center[0] - cx, face.center[1] - cy) > _SPEAKER_TOLERANCE * face_width:
                raw.abort()
                aligned.abort()
                return False
            raw.write(frame)
            aligned.write(aligner.warp(frame, aligner.fit(face.points3)))
    return True


_worker_animator: MouthAnimator | None = None


def _init_worker(job: _Job) -> None:
    """Runs once in each worker process: a one-face run's landmarks are found once per process, not per clip."""
    global _worker_animator
    if job.one_face:
        _worker_animator = MouthAnimator(*clip_photo(job.photos, job.seed, 0, 0, False))


def _work(job: _Job) -> _Outcome:
    return _make_clip(job, _worker_animator)


def _check(num_clips: int, seconds: tuple[float, float], resolution: int, size: tuple[int, int], workers: int) -> None:
    if num_clips < 1:
        raise ConfigError(f"--clips must be at least 1, got {num_clips}")
    if not 0.2 <= seconds[0] <= seconds[1]:
        raise ConfigError(f"--seconds needs 0.2 <= MIN <= MAX, got {seconds[0]:g} {seconds[1]:g}")
    if resolution < 64 or resolution % 8:
        raise ConfigError(f"--resolution must be a multiple of 8 and at least 64, got {resolution}")
    if min(size) < MIN_FRAME_SIDE:
        raise ConfigError(f"--size must be at least {MIN_FRAME_SIDE}x{MIN_FRAME_SIDE}, got {size[0]}x{size[1]}")
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")


def _remove_partial_files(out_dir: Path) -> None:
    """Temporary files a killed run left behind (an interrupted VideoWriter normally removes its own)."""
    for folder in ("raw", "aligned"):
        for part in (out_dir / folder).glob(".clip_*.part"):
            part.unlink(missing_ok=True)


def _write_filelist(out_dir: Path, num_clips: int) -> None:
    aligned = out_dir / "aligned"
    names = [clip_name(i) for i in range(num_clips) if _is_complete(out_dir, i)]
    tmp = aligned / f".{FILELIST}.part"
    tmp.write_text("".join(f"{name}\n" for name in names))
    os.replace(tmp, aligned / FILELIST)


def synthesize(
    out_dir: str | os.PathLike,
    num_clips: int,
    seconds: tuple[float, float] = (4.0, 8.0),
    resolution: int = 128,
    size: tuple[int, int] = (640, 360),
    photo: str | os.PathLike | None = None,
    other_faces: bool = False,
    seed: int = 0,
    workers: int = 1,
    progress: Progress | None = None,
    augment: bool = False,
) -> SynthReport:
    """Write clips 0..num_clips-1 to `out_dir` (see the module docstring); existing complete clips are kept.

    `seconds` is the (min, max) clip length, `size` the raw frame (width, height), `photo` the face(s) to animate:
    an image, a video, a folder or a list of them (`synth_photos`; default: scikit-image's astronaut); `augment`
    gives each clip a varied copy. `progress(done, total)` counts clips, skipped ones included.
    """
    t0 = time.perf_counter()
    seconds = (float(seconds[0]), float(seconds[1]))
    size = (int(size[0]), int(size[1]))
    _check(num_clips, seconds, resolution, size, workers)
    out = Path(out_dir)
    for folder in ("raw", "aligned"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    photos = photo_entries(photo)  # a missing or unreadable entry fails here, before any work
    first = _Job(out, 0, seed, seconds, resolution, size, other_faces, photos, augment)
    # A one-face run's photo must have a face: fail now, with its name, rather than drop every clip.
    animator = MouthAnimator(*clip_photo(photos, seed, 0, 0, False)) if first.one_face else None
    _remove_partial_files(out)
    report = SynthReport(out, num_clips)
    jobs = [
        _Job(out, i, seed, seconds, resolution, size, other_faces, photos, augment)
        for i in range(num_clips) if not _is_complete(out, i)
    ]
    report.skipped = num_clips - len(jobs)

    def record(outcome: _Outcome) -> None:
        if outcome.written:
            report.written += 1
            report.seconds += outcome.seconds
            report.regenerated += outcome.attempts > 1
        else:
            report.dropped.append(outcome.index)
        if progress is not None:
            progress(report.skipped + report.written + len(report.dropped), num_clips)

    if progress is not None:
        progress(report.skipped, num_clips)
    if workers == 1 or len(jobs) <= 1:
        for job in jobs:
            record(_make_clip(job, animator))
    else:
        context = multiprocessing.get_context("spawn")  # mediapipe's graphs do not survive a fork
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(first,)) as pool:
            futures = [pool.submit(_work, job) for job in jobs]
            try:
                for future in as_completed(futures):
                    record(future.result())
            finally:
                for future in futures:
                    future.cancel()
    report.dropped.sort()
    _write_filelist(out, num_clips)
    report.wall_seconds = time.perf_counter() - t0
    return report


def parse_size(text: str) -> tuple[int, int]:
    """'640x360' -> (640, 360); a one-line ConfigError otherwise."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ConfigError(f"--size expects WIDTHxHEIGHT, e.g. 640x360, got {text!r}")
    return int(parts[0]), int(parts[1])
