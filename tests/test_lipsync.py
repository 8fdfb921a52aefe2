"""End-to-end inference with a small random model on inputs the tests make: a real face photo drifting in a
720p 30 fps clip, TTS speech in stereo 44.1 kHz, a stretch without the face, two faces, a still image."""

from __future__ import annotations

import math
import threading
import wave

import av
import numpy as np
import pytest
from media.clips import write_clip
from media.faces import astronaut, astronaut_frames
from media.recording import record_written_frames
from media.speech import speech, write_audio

from latentsync.audio.load import load_audio
from latentsync.face.align import Aligner
from latentsync.face.track import FaceStats, parse_face_selector
from latentsync.pipeline.lipsync import LipSyncPipeline, RunOptions
from latentsync.pipeline.report import StageClock
from latentsync.video.reader import VideoFrames, probe

STEPS = 2  # the pipeline's mechanics, not image quality, are under test
TEXT = "Hello there. This is a short test of lip sync."


@pytest.fixture(scope="module")
def pipeline(tiny_model) -> LipSyncPipeline:
    return LipSyncPipeline.from_model(tiny_model, "cpu", "fp32")


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("media")
    wav = speech(TEXT, rate=44100)
    files = {"wav": wav, "speech": write_audio(d / "speech.wav", wav, 44100, channels=2)}
    # 2 s at 30 fps; frames 24..35 (0.8-1.2 s) have no face.
    files["clip"] = write_clip(d / "clip.mp4", astronaut_frames(60, size=(1280, 720), fps=30, absent=(24, 36)), fps=30)
    files["two"] = write_clip(d / "two.mp4", astronaut_frames(25, size=(960, 540), fps=25, two_faces=True), fps=25)
    files["talking"] = write_clip(
        d / "talking.mkv", astronaut_frames(40, size=(640, 360), fps=25), fps=25, audio=(wav, 44100, 2)
    )
    still = d / "still.png"
    import cv2

    cv2.imwrite(str(still), cv2.cvtColor(astronaut(), cv2.COLOR_RGB2BGR))
    files["still"] = still
    files["blank"] = write_clip(d / "blank.mp4", (np.full((120, 160, 3), 90, np.uint8) for _ in range(20)), fps=25)
    return files


@pytest.fixture()
def recorded(monkeypatch) -> list[np.ndarray]:
    """Frames exactly as the pipeline hands them to the encoder (the file itself is lossy)."""
    return record_written_frames(monkeypatch)


def expected_frames(audio_path) -> int:
    return math.ceil(len(load_audio(audio_path)) / 640)


def audio_seconds(path) -> float:
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        return sum(f.samples for f in c.decode(stream)) / stream.rate


def test_run_keeps_everything_outside_the_face(pipeline, media, recorded, tmp_path):
    out = tmp_path / "out.mp4"
    calls: list[tuple[int, int]] = []
    report = pipeline.run(media["clip"], media["speech"], out, RunOptions(steps=STEPS), lambda d, t: calls.append((d, t)))

    total = expected_frames(media["speech"])
    info = probe(out)
    assert info.source_fps == 25 and info.num_frames == total == report.frames == len(recorded)
    assert info.has_audio and abs(audio_seconds(out) - total / 25) < 0.03
    assert calls[-1] == (total, total) and all(a[0] < b[0] for a, b in zip(calls, calls[1:]))

    # The same frames the pipeline read (ping-pong looped: the audio is longer than the 2 s clip).
    inputs = [frame for _, frame in VideoFrames(media["clip"]).looped(total)]
    chunks = pipeline._prepare(enumerate(inputs), parse_face_selector("largest"), StageClock(), 16, FaceStats())
    affines = {f.index: f.affine for chunk in chunks for f in chunk.frames}
    faceless = [i for i, m in affines.items() if m is None]
    assert report.frames_without_face == len(faceless) > 0
    # 25 fps frames 21..28 fall inside the clip's face-less 0.8-1.2 s in the first forward pass
    assert set(range(21, 29)) <= set(faceless)
    aligner = Aligner(pipeline.models.resolution)
    for i, (inp, outp) in enumerate(zip(inputs, recorded)):
        if affines[i] is None:
            assert np.array_equal(inp, outp), f"face-less frame {i} was modified"
            continue
        changed = np.any(inp != outp, axis=2)
        inside = aligner.soft_mask(inp.shape, affines[i]) > 0
        assert changed.any() and not (changed & ~inside).any(), f"frame {i}: pixels changed outside the pasted face"


def test_audio_is_muxed_and_aligned(pipeline, media, tmp_path):
    out = tmp_path / "out.mp4"
    pipeline.run(media["still"], media["speech"], out, RunOptions(steps=1))
    ref, got = load_audio(media["speech"]), load_audio(out)
    n = min(len(ref), len(got)) - 4000
    lags = range(-400, 401, 4)  # +-25 ms
    corr = [float(np.dot(ref[2000 : 2000 + n - 800], got[2000 + lag : 2000 + lag + n - 800])) for lag in lags]
    best = lags[int(np.argmax(corr))]
    assert abs(best) <= 160, f"output audio is offset by {best / 16:.1f} ms"
    assert probe(out).num_frames == expected_frames(media["speech"])


def test_audio_taken_from_the_video_or_another_video(pipeline, media, tmp_path):
    own = pipeline.run(media["talking"], None, tmp_path / "own.mp4", RunOptions(steps=1))
    assert own.frames == expected_frames(media["talking"]) and own.frames_without_face == 0
    other = pipeline.run(media["clip"], media["talking"], tmp_path / "other.mp4", RunOptions(steps=1))
    assert other.frames == own.frames


@pytest.mark.parametrize("face, side", [("0", "left"), ("720,270", "right")])
def test_face_option_picks_the_speaker(pipeline, media, recorded, tmp_path, face, side):
    pipeline.run(media["two"], media["speech"], tmp_path / "two.mp4", RunOptions(steps=1, face=face))
    width = recorded[0].shape[1]
    inputs = [f for _, f in VideoFrames(media["two"]).looped(len(recorded))]
    for inp, outp in zip(inputs, recorded):
        cols = np.nonzero(np.any(inp != outp, axis=(0, 2)))[0]
        assert cols.size, "nothing was pasted"
        assert (cols.max() < width // 2) if side == "left" else (cols.min() >= width // 2), (face, cols.min(), cols.max())


def test_no_face_anywhere_is_an_error_and_leaves_no_output(pipeline, media, tmp_path):
    from latentsync.errors import NoFaceError

    out = tmp_path / "out.mp4"
    with pytest.raises(NoFaceError, match="no face"):
        pipeline.run(media["blank"], media["speech"], out, RunOptions(steps=1))
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def bad_inputs(media, tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("bad")
    clip = media["clip"].read_bytes()
    (d / "truncated.mp4").write_bytes(clip[: len(clip) // 2])
    (d / "notes.txt").write_text("not a video")
    with wave.open(str(d / "empty.wav"), "wb") as w:  # a valid WAV header with no samples
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
    return {
        "truncated": d / "truncated.mp4",
        "text": d / "notes.txt",
        "empty_wav": d / "empty.wav",
    }


def cli_error(capsys, *argv: str) -> str:
    from latentsync.cli import main

    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("latentsync: error:"), err
    return err[0]


@pytest.mark.parametrize(
    "case, needle",
    [
        ("missing video", "not found"),
        ("truncated video", "truncated"),
        ("text as video", "notes.txt"),
        ("audio as video", "no video stream"),
        ("video without audio", "no audio stream"),
        ("empty audio", "no audio samples"),
        ("no face", "no face"),
        ("unknown model", "unknown model"),
        ("missing weights", "latentsync_unet.pt is missing"),
        ("out not writable", "folder"),
        ("cuda absent", "no CUDA device"),
        ("bad face", "--face"),
        ("face outside the frame, before the model loads", "--face 5000,10 is outside the 1280x720 frame"),
        ("bad cache interval", "--cache-interval must be at least 1"),
        ("cache deeper than the U-Net", "--cache-depth must be at most"),
    ],
)
def test_cli_errors_are_one_line_and_write_nothing(pipeline, media, bad_inputs, tmp_path, capsys, case, needle):
    import shutil

    model = pipeline.models.spec.root
    out = tmp_path / "out.mp4"
    clip, wav = str(media["clip"]), str(media["speech"])
    argv = {
        "missing video": [str(tmp_path / "nope.mp4"), wav],
        "truncated video": [str(bad_inputs["truncated"]), wav],
        "text as video": [str(bad_inputs["text"]), wav],
        "audio as video": [wav, wav],
        "video without audio": [clip],
        "empty audio": [clip, str(bad_inputs["empty_wav"])],
        "no face": [str(media["blank"]), wav],
        "unknown model": [clip, wav, "--model", "7.0"],
        "missing weights": [clip, wav, "--model", str(tmp_path / "broken")],
        "out not writable": [clip, wav, "-o", str(tmp_path / "no" / "such" / "dir.mp4")],
        "cuda absent": [clip, wav, "--device", "cuda"],
        "bad face": [clip, wav, "--face", "1,2,3"],
        "face outside the frame, before the model loads": [clip, wav, "--face", "5000,10", "--model", "7.0"],
        "bad cache interval": [clip, wav, "--cache-interval", "0"],
        "cache deeper than the U-Net": [clip, wav, "--cache-interval", "2", "--cache-depth", "9"],
    }[case]
    if case == "missing weights":
        shutil.copytree(model, tmp_path / "broken")
        (tmp_path / "broken" / "latentsync_unet.pt").unlink()
    if "--model" not in argv:
        argv += ["--model", str(model)]
    if "-o" not in argv:
        argv += ["-o", str(out)]
    line = cli_error(capsys, "run", *argv, "--steps", "1", "--quiet")
    assert needle in line, line
    assert not out.exists() and not any(p.name.startswith(".out.mp4") for p in tmp_path.iterdir())


def test_a_failed_run_stops_its_stage_threads(pipeline, media, tmp_path, monkeypatch):
    from latentsync.pipeline.denoise import ChunkDenoiser

    real = ChunkDenoiser.batch
    done = []

    def fail_second(self, chunks):
        done.append(1)
        if len(done) == 2:
            raise RuntimeError("denoiser failed")
        return real(self, chunks)

    monkeypatch.setattr(ChunkDenoiser, "batch", fail_second)
    before = set(threading.enumerate())
    with pytest.raises(RuntimeError, match="denoiser failed") as failure:
        pipeline.run(media["clip"], media["speech"], tmp_path / "out.mp4", RunOptions(steps=1))
    assert failure.traceback  # the traceback, and the run's frames with it, are still held here
    assert [t.name for t in set(threading.enumerate()) - before if t.is_alive()] == []
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "face,message",
    [("5", r"--face 5: no frame has 6 faces \(at most 2 found"), ("99999,99999", "outside the 960x540 frame")],
)
def test_a_face_selector_that_names_nobody_says_why(pipeline, media, tmp_path, face, message):
    from latentsync.errors import LatentSyncError

    out = tmp_path / "o.mp4"
    with pytest.raises(LatentSyncError, match=message):
        pipeline.run(media["two"], media["speech"], out, RunOptions(steps=1, face=face))
    assert not out.exists() and not list(tmp_path.iterdir())


def test_faces_below_the_minimum_size_are_named_in_the_error(pipeline, media, tmp_path):
    from latentsync.errors import NoFaceError

    tiny = write_clip(tmp_path / "tiny.mp4", astronaut_frames(10, size=(200, 112), fps=25), fps=25)
    with pytest.raises(NoFaceError, match=r"\d+ detected face\(s\) were smaller than the 50 px minimum \(largest 4\d px\)"):
        pipeline.run(tiny, media["speech"], tmp_path / "o.mp4", RunOptions(steps=1))


def test_a_damaged_audio_packet_is_skipped_and_reported(pipeline, media, tmp_path):
    """One bad AC-3 frame in the speech: the run goes on, says so, and muxes the whole length."""
    from test_audio_load import damage_packet, tone, write_media

    good = write_media(tmp_path / "speech.mka", "ac3", 48000, tone(48000, 1.0, 2))
    bad = damage_packet(good, 10, tmp_path / "bad.mka")
    out = tmp_path / "o.mp4"
    report = pipeline.run(media["clip"], bad, out, RunOptions(steps=1))
    assert "1 damaged audio packet(s) skipped (0.03 s replaced by silence)" in report.summary()
    assert report.frames == 26  # 1.003 s: the AC-3 encoder pads its last frame
    with av.open(str(out)) as container:
        audio = container.streams.audio[0]
        assert float(audio.duration * audio.time_base) == pytest.approx(26 / 25, abs=0.025)
