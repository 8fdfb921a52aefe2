"""Live sessions (`latentsync.live`): streamed features and frames against the offline run, and the bounds that keep
a session live (a slow reader, a machine that falls behind, bad audio, close).

The tiny random model is enough: these tests are about equality and timing, not about what the mouth looks like.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from media.clips import write_clip
from media.faces import astronaut_frames
from media.recording import record_written_frames
from media.speech import speech, write_audio

from latentsync.audio.features import audio_features, frame_windows
from latentsync.errors import AudioError, ConfigError, NoFaceError
from latentsync.live import Avatar, LiveOptions, LiveSession
from latentsync.live.audio import StreamingFeatures
from latentsync.pipeline.denoise import ChunkDenoiser
from latentsync.pipeline.lipsync import LipSyncPipeline, RunOptions

STEPS = 2
RATE = 16000


@pytest.fixture(scope="module")
def pipeline(tiny_model) -> LipSyncPipeline:
    return LipSyncPipeline.from_model(tiny_model, device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("live")
    wav = speech("Hello there, how are you today?", rate=RATE)[: int(1.7 * RATE)]  # 43 frames: 2 chunks + 11
    return {
        "avatar": write_clip(d / "face.mp4", astronaut_frames(25, size=(320, 240), fps=25), fps=25),
        "speech": write_audio(d / "speech.wav", wav, RATE),
        "long": write_clip(d / "long.mp4", astronaut_frames(30, size=(96, 64), fps=2), fps=2),
        "noface": write_clip(d / "noface.mp4", astronaut_frames(5, size=(320, 240), fps=25, absent=(0, 5)), fps=25),
    }


@pytest.fixture(scope="module")
def wav(media) -> np.ndarray:
    from latentsync.audio.load import load_audio

    return load_audio(media["speech"], RATE)


@pytest.fixture(scope="module")
def avatar(pipeline, media) -> Avatar:
    return Avatar.open(media["avatar"], pipeline.models.resolution)


def test_a_whole_push_gives_the_offline_frames(pipeline, avatar, media, wav, monkeypatch, tmp_path):
    recorded = record_written_frames(monkeypatch)
    pipeline.run(media["avatar"], media["speech"], tmp_path / "offline.mp4", RunOptions(steps=STEPS))
    with LiveSession(pipeline, avatar, RunOptions(steps=STEPS), LiveOptions(max_lag_seconds=None)) as session:
        session.push(wav, final=True)
        frames = list(session.frames())
    assert len(frames) == len(recorded) == math.ceil(len(wav) / 640)  # the audio's frames, a ping-pong loop of 25
    assert [f.index for f in frames] == list(range(len(frames)))
    assert [f.pts for f in frames] == [i / 25 for i in range(len(frames))]
    for f, expected in zip(frames, recorded):
        assert np.array_equal(f.image, expected), f"frame {f.index} differs from the offline run"
    assert session.stats.made == len(frames) and session.stats.skipped == session.stats.dropped == 0


def test_streamed_features_equal_the_offline_ones_across_windows(pipeline):
    """45 s (two 30 s Whisper windows and their cross-fade, as offline) pushed in uneven pieces: once the stream
    has ended every frame's tokens are the offline ones; while it streams, more lookahead brings them closer."""
    encoder = pipeline.models.audio_encoder
    rng = np.random.default_rng(0)
    wav = (0.1 * rng.standard_normal(45 * RATE) * np.sin(np.arange(45 * RATE) / 900.0)).astype(np.float32)
    offline = frame_windows(audio_features(wav, encoder), num_frames=math.ceil(len(wav) / 640))

    stream = StreamingFeatures(encoder)
    sizes = rng.integers(1, 5000, size=2000)
    at = 0
    for size in sizes:
        if at >= len(wav):
            break
        stream.push(wav[at : at + size])
        at += size
    stream.push(wav[at:])
    stream.end()
    assert stream.ready() == len(offline)
    first = 0
    for stop in (300, 700, 1100, len(offline)):  # in order, as a session asks: audio behind is forgotten
        assert torch.equal(stream.windows(first, stop), offline[first:stop]), (first, stop)
        first = stop
    assert stream._origin > 0  # memory is bounded: the first window's audio is gone

    def error_while_streaming(lookahead: int) -> float:
        live = StreamingFeatures(encoder, lookahead_frames=lookahead)
        errors = []
        first = 0
        for at in range(0, 5 * RATE, 320):
            live.push(wav[at : at + 320])
            if live.ready() >= first + 16:
                got = live.windows(first, first + 16)
                errors.append(float((got - offline[first : first + 16]).norm() / offline[first : first + 16].norm()))
                first += 16
        return float(np.mean(errors))

    near, far = error_while_streaming(0), error_while_streaming(16)
    assert 0 < far < near, (near, far)


def test_streaming_in_pieces_keeps_order_time_and_count(pipeline, avatar, wav):
    pushed = threading.Event()

    def feed(session: LiveSession) -> None:
        for at in range(0, len(wav), 320):
            session.push(wav[at : at + 320].copy())
        session.end()
        pushed.set()

    options = LiveOptions(chunk_frames=4, lookahead_frames=2, max_lag_seconds=None)
    with LiveSession(pipeline, avatar, RunOptions(steps=STEPS), options) as session:
        threading.Thread(target=feed, args=(session,), daemon=True).start()
        frames = list(session.frames())
    assert pushed.is_set()
    assert [f.index for f in frames] == list(range(math.ceil(len(wav) / 640)))
    assert all(f.latency >= 0 for f in frames)
    assert session.stats.first_frame_seconds is not None and session.stats.first_frame_seconds > 0


def test_a_slow_reader_loses_the_oldest_frames_not_memory(pipeline, avatar, wav):
    total = math.ceil(len(wav) / 640)
    options = LiveOptions(queue_frames=5, max_lag_seconds=None)
    with LiveSession(pipeline, avatar, RunOptions(steps=1), options) as session:
        session.push(wav, final=True)
        deadline = time.monotonic() + 120
        while session.stats.made < total:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        frames = list(session.frames())
    assert [f.index for f in frames] == list(range(total - 5, total))
    assert session.stats.dropped == total - 5


def test_a_machine_that_falls_behind_skips_whole_chunks(pipeline, avatar, wav, monkeypatch):
    """The denoiser takes 0.3 s for 4 frames (0.16 s of speech): the session skips chunks instead of lagging, and
    every frame it makes keeps its own time."""
    def slow(self, chunks):
        time.sleep(0.3)
        return [crops for crops, _ in chunks]

    monkeypatch.setattr(ChunkDenoiser, "batch", slow)
    total = math.ceil(len(wav) / 640)
    options = LiveOptions(chunk_frames=4, max_lag_seconds=0.2)
    with LiveSession(pipeline, avatar, RunOptions(steps=STEPS), options) as session:
        start = time.perf_counter()
        for at in range(0, len(wav), 640):  # in real time
            session.push(wav[at : at + 640])
            time.sleep(max(0.0, start + (at + 640) / RATE - time.perf_counter()))
        session.end()
        frames = list(session.frames())
    made = [f.index for f in frames]
    assert session.stats.skipped > 0 and len(made) + session.stats.skipped == total
    assert made == sorted(made) and all(f.pts == f.index / 25 for f in frames)
    runs = np.split(np.array(made), np.nonzero(np.diff(made) > 1)[0] + 1)
    assert all(run[0] % 4 == 0 for run in runs)  # whole chunks are skipped, never parts of one
    assert max(f.latency for f in frames) < 0.2 + 0.3 + 1.0  # lag bound + one chunk + context and slack


def test_bad_audio_and_settings_are_refused_in_one_line(pipeline, avatar, media):
    with LiveSession(pipeline, avatar, RunOptions(steps=1)) as session:
        with pytest.raises(AudioError, match="odd count"):
            session.push(b"\x00\x01\x02")
        with pytest.raises(AudioError, match="NaN"):
            session.push(np.array([0.0, np.nan], dtype=np.float32))
        with pytest.raises(AudioError, match="mono"):
            session.push(np.zeros((2, 320), dtype=np.float32))
        session.push(np.zeros(320, dtype=np.int16), final=True)
        with pytest.raises(AudioError, match="after the end"):
            session.push(np.zeros(320, dtype=np.int16))
    for bad in ({"chunk_frames": 0}, {"chunk_frames": 17}, {"lookahead_frames": -1}, {"queue_frames": 0},
                {"max_lag_seconds": 0}):
        with pytest.raises(ConfigError):
            LiveOptions(**bad)
    with pytest.raises(ConfigError, match="at most 10 s"):
        Avatar.open(media["long"], pipeline.models.resolution)
    with pytest.raises(NoFaceError):
        Avatar.open(media["noface"], pipeline.models.resolution)


def test_close_stops_the_session_at_once(pipeline, avatar, wav):
    session = LiveSession(pipeline, avatar, RunOptions(steps=1), LiveOptions(chunk_frames=16, max_lag_seconds=None))
    session.push(wav[: RATE // 2])  # not enough for a chunk: the worker waits
    t0 = time.perf_counter()
    session.close()
    assert time.perf_counter() - t0 < 1.0 and not session._worker.is_alive()
    assert session.get(timeout=0.1) is None and session.finished


def test_lockstep_streaming_is_close_to_offline_and_lookahead_brings_it_closer(media, wav):
    """Each 20 ms piece pushed once the session has made all it can: the frames a machine that keeps up makes.
    With the demo model, whose mouth follows the audio (the tiny random one's hardly does)."""
    pipeline = LipSyncPipeline.from_model("demo", device="cpu", dtype="fp32")
    avatar = Avatar.open(media["avatar"], pipeline.models.resolution)
    wav = wav[: RATE + 320]  # 26 frames: a chunk of 16 and the last 10
    def run(live: LiveOptions, lockstep: bool) -> dict[int, np.ndarray]:
        with LiveSession(pipeline, avatar, RunOptions(steps=1), live) as session:
            if not lockstep:
                session.push(wav, final=True)
                return {f.index: f.image for f in session.frames()}
            frames = []
            for at in range(0, len(wav), 320):
                session.push(wav[at : at + 320])
                assert session.wait_idle(timeout=60)
                while (frame := session.get(timeout=0)) is not None:
                    frames.append(frame)
            session.end()
            return {f.index: f.image for f in frames + list(session.frames())}

    offline = run(LiveOptions(max_lag_seconds=None), lockstep=False)

    def mse(live: LiveOptions) -> float:
        got = run(live, lockstep=True)
        assert sorted(got) == sorted(offline)
        return float(np.mean([np.mean((got[i].astype(float) - offline[i]) ** 2) for i in offline]))

    near = mse(LiveOptions(lookahead_frames=0, max_lag_seconds=None))
    far = mse(LiveOptions(lookahead_frames=6, max_lag_seconds=None))  # chunk 0 still made before the end
    assert 0 < far < near, (near, far)
