"""`LipSyncPipeline`: video + speech -> lip-synced video, streamed chunk by chunk.

Five stages run concurrently over bounded queues (see `stages.py`):
  decode   (thread): frames at 25 fps, ping-pong looped to the audio's length
  prepare  (thread): track the speaker's face, align and crop it; group frames into chunks of 16 face frames
           (face-less frames ride along untouched)
  denoise  (caller): the model side (`denoise.py`) on each chunk's crops with that chunk's audio windows
  paste    (thread): paste each edited crop back with a feathered mask (or only its lower face, `face/blend.py`)
  encode   (thread): encode the frames
Each CPU stage has a thread of its own, so on a machine with cores to spare the CPU side keeps up with the
slowest single stage rather than with their sum. Nothing holds more than a few chunks, so memory does not depend
on the video's length. The output is encoded once and written to a temporary file that is renamed into place
only when the run succeeds.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

import numpy as np
import torch

from latentsync.audio.features import audio_features, frame_windows
from latentsync.audio.load import load_audio, read_audio
from latentsync.errors import ConfigError, NoFaceError
from latentsync.face.blend import PASTE_MODES
from latentsync.face.mask import load_mask
from latentsync.face.track import FaceSelector, FaceStats, FaceTracker, parse_face_selector
from latentsync.models.modeldir import ModelDir, Models
from latentsync.models.optimize import optimize_models
from latentsync.models.scheduler import SAMPLERS
from latentsync.models.whisper import SAMPLE_RATE
from latentsync.pipeline.denoise import ChunkDenoiser, DenoiseSettings
from latentsync.pipeline.faces import FaceFrame, Paster, aligned_frames
from latentsync.pipeline.report import Progress, RunReport, StageClock, peak_rss_mb, peak_vram_mb
from latentsync.pipeline.runtime import resolve_device, resolve_dtype
from latentsync.pipeline.stages import Sink, prefetch
from latentsync.video.reader import VideoFrames, VideoInfo, probe
from latentsync.video.output import check_writable
from latentsync.video.writer import VideoWriter

FPS = 25
FRAMES_AHEAD = 16  # decoded frames queued for face tracking (16 x 2.7 MB at 720p)
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS
T = TypeVar("T")


@dataclass(frozen=True)
class RunOptions:
    """Per-run settings. Steps, guidance and sampler left at None come from the model's `model.yaml` (`inference:`),
    which for the official models holds upstream's 20 steps and guidance 1.5 (sampler: ddim when it names none); a
    distilled student's names its own few steps. The seed default is upstream's."""

    steps: int | None = None
    guidance: float | None = None
    seed: int = 1247
    face: str = "largest"
    crf: int = 18
    sampler: str | None = None
    cache_interval: int = 1
    cache_depth: int = 1
    batch: int = 1  # chunks of 16 frames denoised together
    paste: str | None = None  # upstream or seamless (face/blend.py); None: the model's `inference.paste`, else upstream

    def __post_init__(self) -> None:
        """Reject bad settings before any work, with the CLI's option names (the app and service reuse them)."""
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"--steps must be at least 1, got {self.steps}")
        if self.sampler is not None and self.sampler not in SAMPLERS:
            raise ConfigError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        for name, value in (("cache-interval", self.cache_interval), ("cache-depth", self.cache_depth),
                            ("batch", self.batch)):
            if value < 1:
                raise ConfigError(f"--{name} must be at least 1, got {value}")
        if self.paste is not None and self.paste not in PASTE_MODES:
            raise ConfigError(f"--paste must be one of {', '.join(PASTE_MODES)}, got {self.paste!r}")
        if self.guidance is not None and self.guidance < 1.0:
            raise ConfigError(f"--guidance must be at least 1.0 (1.0 = no guidance), got {self.guidance}")
        if not 0 <= self.crf <= 51:
            raise ConfigError(f"--crf must be between 0 and 51, got {self.crf}")
        parse_face_selector(self.face)


@dataclass
class _Chunk:
    frames: list[FaceFrame] = field(default_factory=list)

    @property
    def faces(self) -> list[FaceFrame]:
        return [f for f in self.frames if f.crop is not None]


def preflight(video: str | Path, audio: str | Path | None, out: str | Path, face: str = "largest") -> VideoInfo:
    """Check the inputs, the output location and the face selector cheaply, so bad input fails before a long
    model load."""
    check_writable(out, sources=(video, audio))
    info = probe(video)
    parse_face_selector(face).check_frame(info.width, info.height)
    load_audio(Path(audio) if audio is not None else Path(video), SAMPLE_RATE)
    return info


class LipSyncPipeline:
    """Models are loaded once; `run` may be called any number of times (CLI, app, service)."""

    def __init__(self, models: Models) -> None:
        self.models = models
        self.mask = load_mask(models.resolution, models.spec.mask)

    @classmethod
    def from_model(
        cls, model: str | Path = "1.6", device: str = "auto", dtype: str = "auto", compile_mode: str = "off",
        channels_last: bool = False,
    ) -> "LipSyncPipeline":
        """Load a model (`--model` value). `compile_mode` and `channels_last`: see `models.optimize`."""
        dev = resolve_device(device)
        models = ModelDir.resolve(model).load(device=dev, dtype=resolve_dtype(dtype, dev))
        return cls(optimize_models(models, compile_mode, channels_last))

    def run(
        self,
        video: str | Path,
        audio: str | Path | None,
        out: str | Path,
        options: RunOptions = RunOptions(),
        progress: Progress | None = None,
    ) -> RunReport:
        """Lip-sync `video` to `audio` (default: the video's own soundtrack) and write `out` (an .mp4)."""
        t_start = time.perf_counter()
        check_writable(out, sources=(video, audio))  # before any work; the inputs are checked as they are opened
        out = Path(out)
        selector = parse_face_selector(options.face)
        clock = StageClock()
        audio_src = Path(audio) if audio is not None else Path(video)
        source = VideoFrames(video)
        selector.check_frame(source.info.width, source.info.height)
        seen = FaceStats()

        with clock("audio"):
            decoded = read_audio(audio_src, SAMPLE_RATE)
            wav = decoded.samples
            features = audio_features(wav, self.models.audio_encoder, dtype=self.models.dtype)
        total = math.ceil(len(wav) / SAMPLES_PER_FRAME)  # the frames the audio needs: no rounding to chunks
        settings, paste_mode = denoise_settings(self.models, options)
        denoiser = ChunkDenoiser(self.models, self.mask, settings)
        put_back = Paster(self.models.resolution, self.mask, paste_mode)
        sampling = settings.describe() + (", seamless paste" if paste_mode == "seamless" else "")
        report = RunReport(output=out, sampling=sampling, audio_damage=decoded.describe_damage())

        def encode(chunk: _Chunk) -> None:
            with clock("encode"):
                for f in chunk.frames:
                    writer.write(f.image)
            report.frames += len(chunk.frames)
            report.frames_without_face += len(chunk.frames) - len(chunk.faces)
            if progress is not None:
                progress(report.frames, total)

        def paste(chunk: _Chunk) -> None:
            with clock("paste"):
                for f in chunk.faces:  # here, in the paste thread, not in the caller's, which drives the model
                    put_back(f)
            encoder.put(chunk)

        pending: list[_Chunk] = []

        def denoise_pending() -> None:
            """Denoise the face chunks waiting in `pending` as one batch, then pass all of them on in order."""
            group = [c for c in pending if c.faces]
            if group:
                with clock("denoise"):
                    inputs = [
                        (torch.from_numpy(np.stack([f.crop for f in c.faces])),
                         frame_windows(features, frames=torch.tensor([f.index for f in c.faces])))
                        for c in group
                    ]
                    for chunk, crops in zip(group, denoiser.batch(inputs)):
                        for f, crop in zip(chunk.faces, crops.numpy()):
                            f.generated = crop
            for chunk in pending:
                paster.put(chunk)
            pending.clear()

        frames = prefetch(_timed(source.looped(total), clock, "decode"), maxsize=FRAMES_AHEAD)
        prepared = self._prepare(frames, selector, clock, settings.num_frames, seen, still=source.info.is_image)
        chunks = prefetch(prepared, maxsize=options.batch + 1)
        # The sink threads and the writer come last, right before the `try`: a failure, Ctrl-C or SIGTERM from here
        # on goes through its cleanup, and one before leaves neither a temporary file nor a waiting thread.
        encoder: Sink[_Chunk] = Sink(encode)
        paster: Sink[_Chunk] = Sink(paste)
        try:
            writer = VideoWriter(out, source.info.width, source.info.height, fps=FPS, crf=options.crf,
                                 audio_path=audio_src, colour=source.info.colour)
        except BaseException:
            paster.stop()
            encoder.stop()
            raise
        try:
            for chunk in chunks:
                pending.append(chunk)
                if sum(1 for c in pending if c.faces) == options.batch:
                    denoise_pending()
            denoise_pending()
            paster.close()
            encoder.close()
            if report.frames_without_face == report.frames:
                raise NoFaceError(seen.explain(video, selector, FaceTracker.MIN_SIZE))
            writer.close()
        except BaseException:
            # Stop every stage thread now, outermost first: a traceback kept by the caller would otherwise keep
            # the generators, their threads and their queued frames alive.
            for generator in (chunks, prepared, frames):
                generator.close()
            paster.stop()
            encoder.stop()
            writer.abort()
            raise
        report.seconds = time.perf_counter() - t_start
        report.stage_seconds = clock.seconds
        report.peak_rss_mb = peak_rss_mb()
        report.peak_vram_mb = peak_vram_mb(self.models.device)
        return report

    def _prepare(
        self, frames: Iterable[tuple[int, np.ndarray]], selector: FaceSelector, clock: StageClock, chunk_faces: int,
        seen: FaceStats, still: bool = False,
    ) -> Iterator[_Chunk]:
        """Track and crop the speaker's face in every frame (`faces.aligned_frames`); cut chunks of `chunk_faces`
        face frames, face-less frames riding along."""
        chunk = _Chunk()
        for item in aligned_frames(frames, selector, self.models.resolution, clock, seen, still):
            chunk.frames.append(item)
            if item.crop is not None and len(chunk.faces) == chunk_faces:
                yield chunk
                chunk = _Chunk()
        if chunk.frames:
            yield chunk


def _timed(items: Iterable[T], clock: StageClock, stage: str) -> Iterator[T]:
    """Charge the time spent producing each item (e.g. decoding) to `stage`."""
    iterator = iter(items)
    while True:
        with clock(stage):
            try:
                item = next(iterator)
            except StopIteration:
                return
        yield item


def lipsync(
    video: str | Path,
    audio: str | Path | None,
    out: str | Path,
    model: str | Path = "1.6",
    device: str = "auto",
    dtype: str = "auto",
    progress: Progress | None = None,
    **options: object,
) -> RunReport:
    """One-call API: load `model`, lip-sync once. Reuse a `LipSyncPipeline` to run many times."""
    return LipSyncPipeline.from_model(model, device, dtype).run(video, audio, out, RunOptions(**options), progress)


def denoise_settings(models: Models, options: RunOptions) -> tuple[DenoiseSettings, str]:
    """The run's denoising settings and paste mode: `options`, else the model's `model.yaml` (`inference:`), else
    upstream's. Refused in one line when a setting does not fit the model."""
    defaults = models.spec.inference
    settings = DenoiseSettings(
        steps=options.steps or int(defaults.get("steps", 20)),
        guidance=options.guidance or float(defaults.get("guidance_scale", 1.5)),
        seed=options.seed,
        sampler=_model_sampler(options.sampler or str(defaults.get("sampler", "ddim")), models.spec.root),
        cache_interval=options.cache_interval,
        cache_depth=options.cache_depth,
    )
    levels = len(models.unet.config.block_out_channels)
    if options.cache_depth > levels:
        raise ConfigError(f"--cache-depth must be at most {levels} (this U-Net's levels), got {options.cache_depth}")
    paste_mode = options.paste or str(defaults.get("paste", "upstream"))
    if paste_mode not in PASTE_MODES:
        raise ConfigError(f"{models.spec.root}: inference.paste must be one of {', '.join(PASTE_MODES)}, "
                          f"got {paste_mode!r}")
    return settings, paste_mode


def _model_sampler(sampler: str, root: object) -> str:
    """The run's sampler, refused in one line when a model.yaml names one that does not exist."""
    if sampler not in SAMPLERS:
        raise ConfigError(f"{root}: inference.sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    return sampler
