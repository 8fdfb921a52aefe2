"""A live lip-sync session: speech is pushed in as it arrives, lip-synced frames come out as soon as they exist.

    with LiveSession(pipeline, avatar) as session:       # a LipSyncPipeline (models loaded once) and an Avatar
        session.push(pcm)                                 # 16 kHz mono: int16 bytes/array or float array, any size
        ...
        session.end()                                     # the last frames are made from what is there
        for frame in session.frames():                    # LiveFrame: index, pts (s), image, latency (s)
            show(frame)

One worker thread makes chunks of `chunk_frames` frames in order. For each it waits until the chunk's audio (plus
Whisper's context and the lookahead) has arrived, takes the chunk's audio tokens (`StreamingFeatures`), denoises the
avatar's crops with them (the offline pipeline's `ChunkDenoiser`, one per session, so the random draws are the
offline run's) and pastes them back (`Paster`). So the frames of a session equal the offline run's for the same
avatar and audio whenever the features do: see `live/audio.py`.

Frame i's presentation time is i / 25 s on the audio's own clock, whatever happens to the session, so audio and video
never drift apart. Two bounds keep it live:
- a consumer that reads too slowly loses the oldest waiting frames (`LiveStats.dropped`): at most `queue_frames`
  wait, and memory stays flat;
- a machine that cannot keep up skips whole chunks (`LiveStats.skipped`): when the next chunk is due more than
  `max_lag_seconds` ago (its audio arrived, or would have at real-time pace, before that), it is not made and the
  consumer holds its last frame.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from latentsync.errors import ConfigError
from latentsync.live.audio import SAMPLES_PER_FRAME, StreamingFeatures, pcm_samples
from latentsync.live.avatar import Avatar
from latentsync.models.whisper import SAMPLE_RATE
from latentsync.pipeline.denoise import ChunkDenoiser
from latentsync.pipeline.faces import FaceFrame, Paster
from latentsync.pipeline.lipsync import FPS, LipSyncPipeline, RunOptions, denoise_settings

MAX_CHUNK = 16  # the motion modules attend over at most the 16 frames they were trained on


@dataclass(frozen=True)
class LiveOptions:
    """How a session trades latency, quality and robustness. The defaults suit a client streaming in real time."""

    chunk_frames: int = 16  # frames denoised together: 16 as trained; fewer cut latency (40 ms a frame)
    lookahead_frames: int = 4  # audio waited for beyond a frame's own, so Whisper sees what follows (live/audio.py)
    max_lag_seconds: float | None = 2.0  # skip chunks whose audio is older than this; None: never (a whole file)
    queue_frames: int = 50  # frames waiting for the consumer at most; more drop the oldest

    def __post_init__(self) -> None:
        if not 1 <= self.chunk_frames <= MAX_CHUNK:
            raise ConfigError(f"chunk frames must be between 1 and {MAX_CHUNK}, got {self.chunk_frames}")
        if self.lookahead_frames < 0:
            raise ConfigError(f"lookahead frames must be at least 0, got {self.lookahead_frames}")
        if self.max_lag_seconds is not None and self.max_lag_seconds <= 0:
            raise ConfigError(f"max lag must be positive seconds, got {self.max_lag_seconds}")
        if self.queue_frames < 1:
            raise ConfigError(f"queue frames must be at least 1, got {self.queue_frames}")


@dataclass
class LiveFrame:
    index: int
    pts: float  # seconds on the audio's clock: index / 25
    image: np.ndarray  # uint8 [H, W, 3] RGB, the avatar's frame with the lip-synced face
    latency: float  # seconds from the arrival of the frame's last audio sample to the frame


@dataclass
class LiveStats:
    made: int = 0  # frames made
    dropped: int = 0  # made, then dropped because the consumer read too slowly
    skipped: int = 0  # never made: the machine was behind by more than max_lag_seconds
    first_frame_seconds: float | None = None  # from the first pushed sample to the first frame
    latencies: collections.deque = field(default_factory=lambda: collections.deque(maxlen=10_000))


class LiveSession:
    """See the module docstring. Thread-safe: one thread may push while another reads frames."""

    def __init__(self, pipeline: LipSyncPipeline, avatar: Avatar, options: RunOptions = RunOptions(),
                 live: LiveOptions = LiveOptions()) -> None:
        models = pipeline.models
        if avatar.cycle[0].crop is not None and avatar.cycle[0].crop.shape[0] != models.resolution:
            raise ConfigError(f"avatar {avatar.name} was prepared at {avatar.cycle[0].crop.shape[0]} px; "
                              f"the model works at {models.resolution} px")
        settings, paste_mode = denoise_settings(models, options)
        self.avatar = avatar
        self.live = live
        self.sampling = settings.describe()
        self.stats = LiveStats()
        self._features = StreamingFeatures(models.audio_encoder, models.dtype, live.lookahead_frames)
        # The avatar's crops repeat in every session: their VAE moments are kept with the avatar, for all of them.
        moments = avatar.moments.setdefault((id(models), id(pipeline.mask)), collections.OrderedDict())
        self._denoiser = ChunkDenoiser(models, pipeline.mask, settings, moments, keep=max(256, len(avatar.cycle)))
        self._paste = Paster(models.resolution, pipeline.mask, paste_mode)
        self._out: collections.deque[LiveFrame] = collections.deque()
        self._arrivals: collections.deque[tuple[int, float]] = collections.deque()  # (samples so far, push time)
        self._first_push: float | None = None
        self._done = False  # the worker has put out its last frame (or failed)
        self._waiting = False  # the worker waits for audio: everything the audio so far allows is made
        self._error: BaseException | None = None
        self._closed = False
        self._changed = threading.Condition()
        self._worker = threading.Thread(target=self._run, name="live-session", daemon=True)
        self._worker.start()

    def push(self, audio: bytes | np.ndarray, final: bool = False) -> None:
        """Append 16 kHz mono audio (int16 PCM bytes or array, or float samples); `final` ends the stream.
        Raises AudioError (one line) on malformed audio, and the worker's error if it failed."""
        samples = pcm_samples(audio)
        now = time.perf_counter()
        with self._changed:
            self._raise()
            if self._first_push is None and len(samples):
                self._first_push = now
            self._features.push(samples, final)
            self._arrivals.append((self._features.received, now))
            self._waiting = False  # until the worker has looked at the new audio
            self._changed.notify_all()

    def end(self) -> None:
        """No more audio; the remaining frames are made and `frames()` then ends."""
        with self._changed:
            self._features.end()
            self._waiting = False
            self._changed.notify_all()

    def get(self, timeout: float | None = None) -> LiveFrame | None:
        """The next frame, waiting up to `timeout` seconds (None: until one exists). None when the stream is over
        (or on timeout: check `finished`). Re-raises the worker's error."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while not self._out:
                self._raise()
                if self._done or self._closed:
                    return None
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._changed.wait(left)
            return self._out.popleft()

    def frames(self) -> Iterator[LiveFrame]:
        """Iterate frames until the stream is over."""
        while (frame := self.get()) is not None:
            yield frame

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every frame the audio so far allows is made (the worker waits for more audio), or the
        session is over. False on timeout. For tests and benchmarks that step a stream in lockstep."""
        with self._changed:
            return self._changed.wait_for(lambda: self._waiting or self._done or self._closed, timeout)

    @property
    def finished(self) -> bool:
        """Every frame was made and read (or the session was closed)."""
        with self._changed:
            return self._closed or (self._done and not self._out)

    def close(self) -> None:
        """Stop now: the worker ends after the chunk in hand, queued frames are freed."""
        with self._changed:
            self._closed = True
            self._out.clear()
            self._changed.notify_all()
        if threading.current_thread() is not self._worker:
            self._worker.join()

    def __enter__(self) -> "LiveSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # handed to the reader, which re-raises it
            with self._changed:
                self._error = exc
        with self._changed:
            self._done = True
            self._changed.notify_all()

    def _loop(self) -> None:
        chunk = self.live.chunk_frames
        first = 0
        while True:
            with self._changed:
                while not self._closed:
                    ready = self._features.ready()
                    if ready >= first + chunk or self._features.ended:
                        break
                    self._waiting = True
                    self._changed.notify_all()
                    self._changed.wait()
                    self._waiting = False
                if self._closed:
                    return
                stop = min(first + chunk, ready)
                if stop <= first:
                    return  # ended, and every frame the audio needs is out
                behind = self._behind(first)
            if behind:
                self.stats.skipped += stop - first
                first = stop
                continue
            self._emit(self._make(first, stop))
            first = stop

    def _behind(self, first: int) -> bool:
        """Whether chunk `first` is due more than max_lag_seconds ago (caller holds the lock). A frame is due when
        the audio it needs arrived, or would have in a stream at real-time pace, whichever is later: a client that
        sends speech faster than it plays (TTS) is not behind."""
        if self.live.max_lag_seconds is None or self._first_push is None:
            return False
        needed = min(self._features.arrived(first), self._features.received)  # less once the stream ended
        arrived = self._arrival(needed)
        if arrived is None:
            return False
        due = max(arrived, self._first_push + needed / SAMPLE_RATE)
        return time.perf_counter() - due > self.live.max_lag_seconds

    def _arrival(self, samples: int) -> float | None:
        """When the push that brought sample `samples` in arrived (caller holds the lock)."""
        for received, when in self._arrivals:
            if received >= samples:
                return when
        return None

    def _make(self, first: int, stop: int) -> list[FaceFrame]:
        frames = [self.avatar.frame(i) for i in range(first, stop)]
        faces = [f for f in frames if f.crop is not None]
        if faces:
            tokens = self._features.windows(first, stop)[[f.index - first for f in faces]]
            crops = torch.from_numpy(np.stack([f.crop for f in faces]))
            (generated,) = self._denoiser.batch([(crops, tokens)])
            for f, crop in zip(faces, generated.numpy()):
                f.generated = crop
                self._paste(f)
        return frames

    def _emit(self, frames: list[FaceFrame]) -> None:
        now = time.perf_counter()
        with self._changed:
            for f in frames:
                arrived = self._arrival(min(self._features.received, (f.index + 1) * SAMPLES_PER_FRAME))
                latency = now - arrived if arrived is not None else 0.0
                if self.stats.first_frame_seconds is None and self._first_push is not None:
                    self.stats.first_frame_seconds = now - self._first_push
                self.stats.made += 1
                self.stats.latencies.append(latency)
                if len(self._out) == self.live.queue_frames:
                    self._out.popleft()
                    self.stats.dropped += 1
                self._out.append(LiveFrame(f.index, f.index / FPS, f.image, latency))
            # Pushes before the next frame's audio are not asked about again.
            while len(self._arrivals) > 1 and self._arrivals[1][0] < (frames[-1].index + 2) * SAMPLES_PER_FRAME:
                self._arrivals.popleft()
            self._changed.notify_all()
