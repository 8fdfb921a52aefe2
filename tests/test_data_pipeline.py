"""`latentsync data run` end to end on inputs made here: a talking-head clip with two hard cuts, a 2 s clip, a
clip without audio, a truncated mp4, a text file, a 30 fps clip, a variable-frame-rate clip and a clip whose face
goes away. Runs once locally (module fixture), then checks resume after SIGKILL and the Ray backend against it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from latentsync.audio.load import load_audio
from latentsync.data.dataset import read_filelist
from latentsync.data.manifest import Manifest
from latentsync.data.runner import LocalBackend, PipelineReport, run_pipeline, run_single
from latentsync.data.steps import STEP_NAMES, build_steps
from latentsync.data.steps.broken import BrokenStep
from latentsync.video.reader import VideoFrames, probe
from media.clips import truncate, write_clip
from media.faces import astronaut_frames
from media.speech import speech

SIZE = (320, 180)
RES = 128
RATE = 16000
SHOTS = (260, 50, 140)  # frames of the three shots of cuts.mp4: 2 segments, too short, 1 segment
SENTENCES = (
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Every morning she walks to the station and reads the news on her phone.",
    "We measured the results twice, and the numbers agreed both times.",
)


def _speech(seconds: float) -> np.ndarray:
    """TTS sentences, repeated to `seconds` of 16 kHz mono audio."""
    wav = np.concatenate([speech(text, RATE, seed=i) for i, text in enumerate(SENTENCES)])
    return np.resize(wav, int(seconds * RATE)).astype(np.float32)


def _faces(num_frames: int, seed: int, fps: float = 25.0, **kwargs) -> list[np.ndarray]:
    return list(astronaut_frames(num_frames, size=SIZE, fps=fps, seed=seed, **kwargs))


def _write_vfr(path: Path, frames: list[np.ndarray], times_ms: list[int], wav: np.ndarray) -> Path:
    """A variable-frame-rate H.264 clip (frame i shown at times_ms[i]) with an AAC track."""
    tb = Fraction(1, 1000)
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=25)
        video.height, video.width = frames[0].shape[:2]
        video.pix_fmt = "yuv420p"
        video.time_base = video.codec_context.time_base = tb
        audio = out.add_stream("aac", rate=RATE, layout="mono")
        for array, t in zip(frames, times_ms):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts, frame.time_base = t, tb
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        chunk = av.AudioFrame.from_ndarray(wav[None, :], format="fltp", layout="mono")
        chunk.sample_rate, chunk.pts = RATE, 0
        out.mux(audio.encode(chunk))
        out.mux(audio.encode(None))
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("inputs")
    shots = _faces(SHOTS[0], 0) + _faces(SHOTS[1], 5, textured=False) + _faces(SHOTS[2], 9)
    write_clip(root / "cuts.mp4", shots, 25, audio=(_speech(sum(SHOTS) / 25), RATE, 1))
    write_clip(root / "short.mp4", _faces(50, 1), 25, audio=(_speech(2.0), RATE, 1))
    (root / "sub").mkdir()
    write_clip(root / "sub" / "noaudio.mp4", _faces(130, 2), 25)
    full = write_clip(root / ".full.mp4", _faces(130, 3), 25, audio=(_speech(5.2), RATE, 1),
                      options={"movflags": "faststart"})  # fmt: skip
    truncate(full, root / "truncated.mp4", keep=0.5)
    full.unlink()
    (root / "notes.txt").write_text("not a video\n" * 50)
    write_clip(root / "talk30.mp4", _faces(162, 4, fps=30.0), 30, audio=(_speech(5.4), RATE, 1))
    times = np.cumsum([0] + [30, 50, 40, 25, 55] * 27)[:135].tolist()  # 40 ms on average, never 2 alike in a row
    _write_vfr(root / "sub" / "vfr.mp4", _faces(135, 6), times, _speech(5.4))
    write_clip(root / "noface.mp4", _faces(130, 7, absent=(0, 130)), 25, audio=(_speech(5.2), RATE, 1))
    return root


def _run(inputs: Path, out: Path, backend) -> tuple[PipelineReport, float]:
    t0 = time.perf_counter()
    report = run_pipeline(inputs, out, build_steps(resolution=RES), backend, quiet=True)
    return report, time.perf_counter() - t0


@pytest.fixture(scope="module")
def local(inputs: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PipelineReport]:
    out = tmp_path_factory.mktemp("local")
    report, seconds = _run(inputs, out, LocalBackend(1))
    print(f"\nlocal run: {seconds:.1f} s\n{report.table()}")
    return out, report


def _records(out: Path, step: str) -> dict[str, dict]:
    """Step records by input name (relative to its folder), as plain fields."""
    manifest = Manifest(out / step / "manifest.jsonl", out)
    return {path.name: record for path, record in manifest.read().items()}


def _decodes(path: Path) -> int:
    frames = VideoFrames(path)
    return sum(1 for _ in frames.iter_range(0, len(frames)))


EXPECTED_CLIPS = [
    "align/cuts-shot000-seg00.mp4", "align/cuts-shot000-seg01.mp4", "align/cuts-shot002.mp4",
    "align/sub/vfr.mp4", "align/talk30.mp4",
]  # fmt: skip


def test_kept_clips_and_filelist(local) -> None:
    out, report = local
    assert sorted((out / "filelist.txt").read_text().split()) == EXPECTED_CLIPS
    clips = read_filelist(out, "filelist.txt")
    assert [c.relative_to(out).as_posix() for c in clips] == sorted(EXPECTED_CLIPS)
    for clip in clips:
        info = probe(clip)
        assert (info.width, info.height, info.source_fps) == (RES, RES, 25) and info.has_audio
        assert 5.0 <= info.duration < 10.0
        with av.open(str(clip)) as container:
            stream = container.streams.audio[0]
            assert (stream.sample_rate, stream.channels) == (16000, 1)
        assert _decodes(clip) == info.num_frames
    assert len(report.clips) == 5
    assert sum(c.seconds for c in report.clips) == pytest.approx((260 + 140 + 135 + 135) / 25, abs=0.2)


def test_drop_reasons(local) -> None:
    out, report = local
    broken = _records(out, "broken")
    assert broken["notes.txt"].reason == "unreadable"
    assert broken["noaudio.mp4"].reason == "no audio"
    assert broken["truncated.mp4"].reason in ("corrupt video", "unreadable")
    assert _records(out, "segments")["short.mp4"].reason == "too short"
    assert _records(out, "segments")["cuts-shot001.mp4"].reason == "too short"
    assert _records(out, "align")["noface.mp4"].reason == "face lost"
    by_step = {s.name: s for s in report.steps}
    assert [s.name for s in report.steps] == list(STEP_NAMES)
    assert sum(by_step["broken"].dropped.values()) == 3 and by_step["broken"].inputs == 8
    assert by_step["segments"].dropped == {"too short": 2}
    table = report.table()
    assert "dropped at broken:" in table and "too short 2" in table and "face lost 1" in table


def test_resample_cuts_and_segments(local) -> None:
    out, _ = local
    resampled = probe(out / "resample" / "talk30.mp4")
    assert resampled.source_fps == 25 and resampled.num_frames == 135
    vfr = probe(out / "resample" / "sub" / "vfr.mp4")
    assert vfr.source_fps == 25 and abs(vfr.num_frames - 135) <= 1
    with av.open(str(out / "resample" / "talk30.mp4")) as container:
        assert (container.streams.audio[0].sample_rate, container.streams.audio[0].channels) == (16000, 1)
    cuts = _records(out, "shots")["cuts.mp4"]
    assert cuts.figures["cuts"] == [SHOTS[0], SHOTS[0] + SHOTS[1]]
    assert [round(s * 25) for s in cuts.seconds] == list(SHOTS)
    assert _records(out, "shots")["talk30.mp4"].output == (out / "resample" / "talk30.mp4",)  # no cut: passed on
    segments = _records(out, "segments")["cuts-shot000.mp4"]
    assert [round(s * 25) for s in segments.seconds] == [130, 130]


def test_audio_stays_in_sync_through_the_cuts(local, inputs) -> None:
    """The second segment of the first shot carries the source audio from 5.2 s on, to the sample."""
    out, _ = local
    source = load_audio(inputs / "cuts.mp4")
    piece = load_audio(out / "segments" / "cuts-shot000-seg01.mp4")
    start = 130 * RATE // 25
    ref = source[start + 1600 : start + 1600 + 32000]
    lags = range(-80, 81)
    corr = [float(np.dot(ref, piece[1600 + lag : 1600 + lag + 32000])) for lag in lags]
    assert lags[int(np.argmax(corr))] == 0


def test_skipped_filters_are_loud(local) -> None:
    out, report = local
    for step in ("sync", "quality"):
        records = _records(out, step)
        assert len(records) == 5 and all(r.status == "unchecked" for r in records.values())
        assert all("NOT applied" in (r.detail or "") for r in records.values())
        assert f"WARNING {step}: 5 files NOT checked" in report.table()


def test_rerun_does_nothing(local, inputs) -> None:
    out, first = local
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.mp4")}
    lines = {s: (out / s / "manifest.jsonl").read_text() for s in STEP_NAMES}
    report, _ = _run(inputs, out, LocalBackend(1))
    assert all(s.processed == 0 for s in report.steps)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.mp4")} == before
    assert {s: (out / s / "manifest.jsonl").read_text() for s in STEP_NAMES} == lines
    assert report.clips == first.clips
    assert [(s.kept, s.dropped) for s in report.steps] == [(s.kept, s.dropped) for s in first.steps]


def test_only_some_steps(inputs, tmp_path) -> None:
    report = run_pipeline(inputs, tmp_path, build_steps(resolution=RES), LocalBackend(1), only=["broken"], quiet=True)
    assert [s.processed for s in report.steps] == [8, 0, 0, 0, 0, 0, 0]
    assert report.steps[1].pending == 5 and report.clips == []
    assert "not done at resample: 5 files" in report.table()


def test_process_pool_gives_the_same_records(local, inputs, tmp_path) -> None:
    backend = LocalBackend(2)
    try:
        report = run_single(BrokenStep(), inputs, tmp_path, backend, quiet=True)
    finally:
        backend.close()
    assert report.steps[0].dropped == local[1].steps[0].dropped
    ours = Manifest(tmp_path / "manifest.jsonl", tmp_path).read()
    theirs = Manifest(local[0] / "broken" / "manifest.jsonl", local[0]).read()
    assert {p: (r.status, r.reason) for p, r in ours.items()} == {p: (r.status, r.reason) for p, r in theirs.items()}
    for path, record in ours.items():  # run alone, the step links the files it passes on into its folder
        assert record.output == ((tmp_path / path.relative_to(inputs),) if record.passes else ())


def test_kill_and_resume(local, inputs, tmp_path) -> None:
    """SIGKILL the CLI once the align step has written a clip; the rerun finishes without redoing it."""
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "latentsync.cli", "data", "run", str(inputs), str(out), f"--resolution={RES}"]
    command.append("-q")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not any(p.suffix == ".mp4" and not p.name.startswith(".") for p in (out / "align").rglob("*")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no aligned clip in 300 s"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = {path: record for path, record in Manifest(out / "align" / "manifest.jsonl", out).read().items()}
    assert len(done) < 6, "the run was not killed in the middle of the align step"
    mtimes = {p: p.stat().st_mtime_ns for r in done.values() for p in r.output}

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert "kept 5 clips" in rerun.stdout and "WARNING sync" in rerun.stdout
    assert not [p for p in out.rglob("*.part")], "partial files left behind"
    for path, record in done.items():  # finished before the kill: neither redone nor recorded twice
        assert all(p.stat().st_mtime_ns == mtimes[p] for p in record.output)
        text = (out / "align" / "manifest.jsonl").read_text()
        assert text.count(f'"input": "{path.relative_to(out).as_posix()}"') == 1
    for step in STEP_NAMES[1:]:
        for record in Manifest(out / step / "manifest.jsonl", out).read().values():
            for output in record.output:
                assert _decodes(output) == probe(output).num_frames
    assert (out / "filelist.txt").read_text() == (local[0] / "filelist.txt").read_text()


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_backend_keeps_the_same_clips(local, inputs, ray_instance, tmp_path) -> None:
    from latentsync.data.runner import RayBackend

    backend = RayBackend()
    report, seconds = _run(inputs, tmp_path / "ray", backend)
    backend.close()
    print(f"\nray run: {seconds:.1f} s")
    assert (tmp_path / "ray" / "filelist.txt").read_text() == (local[0] / "filelist.txt").read_text()
    assert [(s.name, s.dropped, s.kept) for s in report.steps] == [(s.name, s.dropped, s.kept) for s in local[1].steps]
