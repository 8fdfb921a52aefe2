"""`latentsync serve` with a small random model: the job life cycle, limits, hostile input, a restart, and the
OpenAPI schema fuzzed by schemathesis.

Most tests drive the FastAPI app in-process; a `Gate` holds runs at their start so queue states can be set up
without racing the workers. The restart test runs the real command and kills it with SIGKILL.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from media.clips import write_clip
from schemathesis.specs.openapi.checks import positive_data_acceptance
from media.faces import astronaut_frames
from media.speech import speech, write_audio

from latentsync.app.pipelines import PipelineCache
from latentsync.app.serve.api import create_app
from latentsync.app.serve.service import JobManager, ServeConfig
from latentsync.pipeline.lipsync import RunOptions
from latentsync.video.reader import VideoFrames

STEPS = 2


@pytest.fixture(scope="module")
def model(tiny_model) -> str:
    return str(tiny_model)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    wav = speech("Hello there, how are you.", rate=16000)
    frames = list(astronaut_frames(25, size=(320, 240), fps=25))
    files = {
        "video": write_clip(d / "face.mp4", frames, fps=25),
        "audio": write_audio(d / "speech.wav", wav, 16000),
        "long_audio": write_audio(d / "long.wav", np.tile(wav, 3), 16000),
        "noface": write_clip(d / "noface.mp4", astronaut_frames(10, size=(320, 240), fps=25, absent=(0, 10)), fps=25),
        "text": d / "notes.txt",
    }
    files["text"].write_text("not a video")
    return files


class Gate:
    """Holds every run at its start until opened, so a test can line jobs up in known states."""

    def __init__(self, inner: PipelineCache) -> None:
        self.inner = inner
        self.open = threading.Event()
        self.open.set()

    def get(self, model: str) -> Any:
        pipeline = self.inner.get(model)
        gate = self.open

        class Gated:
            def run(self, *args: Any, **kwargs: Any) -> Any:
                gate.wait(60)
                return pipeline.run(*args, **kwargs)

        return Gated()


@pytest.fixture(scope="module")
def pipelines() -> PipelineCache:
    return PipelineCache("cpu", "fp32")  # shared by the module's services: the model loads once


@contextmanager
def service(root: Path, model: str, pipelines: PipelineCache, **overrides: Any) -> Iterator[tuple[TestClient, Gate]]:
    config = ServeConfig(models=[model], root=root, **overrides)
    gate = Gate(pipelines)
    manager = JobManager(config, gate)  # type: ignore[arg-type]
    with TestClient(create_app(manager)) as client:
        try:
            yield client, gate
        finally:
            gate.open.set()  # before the service stops: a held run would keep the stop waiting


def submit(client: TestClient, media: dict[str, Path], video: str = "video", audio: str | None = "audio",
           **form: Any) -> Any:
    files = {"video": ("face.mp4", media[video].read_bytes())}
    if audio is not None:
        files["audio"] = ("speech.wav", media[audio].read_bytes())
    return client.post("/jobs", files=files, data={"steps": STEPS, **form})


def wait(client: TestClient, job_id: str, states: tuple[str, ...] = ("done", "failed", "cancelled"),
         timeout: float = 120) -> dict[str, Any]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = client.get(f"/jobs/{job_id}").json()
        if status["status"] in states:
            return status
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {status['status']} after {timeout} s")


def test_job_result_equals_a_direct_run(tmp_path, model, pipelines, media):
    with service(tmp_path / "svc", model, pipelines, fetched_ttl=5.0) as (client, _):
        answer = submit(client, media, seed=3)
        assert answer.status_code == 202, answer.text
        job = answer.json()
        assert answer.headers["location"] == f"/jobs/{job['id']}"
        done = wait(client, job["id"])
        assert done["status"] == "done", done
        assert done["progress"]["frames_done"] == done["progress"]["frames_total"] == done["report"]["frames"] > 0
        result = client.get(f"/jobs/{job['id']}/result")
        assert result.status_code == 200 and result.headers["content-type"] == "video/mp4"
        folder = tmp_path / "svc" / "jobs" / job["id"]
        assert sorted(p.name for p in folder.iterdir()) == ["job.json", "result.mp4"]  # uploads freed
        assert client.get(f"/jobs/{job['id']}").json()["expires"] <= time.time() + 5.0  # fetched: kept briefly
    served = tmp_path / "served.mp4"
    served.write_bytes(result.content)
    direct = tmp_path / "direct.mp4"
    pipelines.get(model).run(media["video"], media["audio"], direct, RunOptions(steps=STEPS, seed=3))
    a, b = (np.stack(list(VideoFrames(p).iter_range(0, len(VideoFrames(p))))) for p in (served, direct))
    assert a.shape == b.shape
    # The same run, up to float reduction order (a worker thread's OpenMP team can differ from the main
    # thread's on a many-core machine) and encoder rounding; another seed measures about 26 dB here.
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    assert mse == 0 or 10 * np.log10(255**2 / mse) >= 40


def frames(path: Path) -> np.ndarray:
    return np.stack(list(VideoFrames(path).iter_range(0, len(VideoFrames(path))))).astype(float)


def test_speed_options_reach_the_run(tmp_path, model, pipelines, media):
    with service(tmp_path / "svc", model, pipelines) as (client, _):
        answer = submit(client, media, seed=3, sampler="dpm++", cache_interval=2)
        assert answer.status_code == 202, answer.text
        done = wait(client, answer.json()["id"])
        assert done["status"] == "done", done
        served = tmp_path / "served.mp4"
        served.write_bytes(client.get(f"/jobs/{done['id']}/result").content)
    runs = {}
    for name, options in {"same": {"sampler": "dpm++", "cache_interval": 2}, "ddim": {}}.items():
        runs[name] = tmp_path / f"{name}.mp4"
        pipelines.get(model).run(media["video"], media["audio"], runs[name], RunOptions(steps=STEPS, seed=3, **options))
    mse = {name: np.mean((frames(served) - frames(path)) ** 2) for name, path in runs.items()}
    assert mse["same"] < mse["ddim"] / 10  # the job ran with its own sampler settings, not the defaults


def test_concurrent_submissions_all_complete(tmp_path, model, pipelines, media):
    with service(tmp_path, model, pipelines, workers=2) as (client, _):
        answers: list[Any] = [None] * 4
        threads = [threading.Thread(target=lambda i=i: answers.__setitem__(i, submit(client, media, seed=i)))
                   for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [a.status_code for a in answers] == [202] * 4
        ids = [a.json()["id"] for a in answers]
        assert len(set(ids)) == 4
        finals = [wait(client, i) for i in ids]
        assert [f["status"] for f in finals] == ["done"] * 4
        sizes = {len(client.get(f"/jobs/{i}/result").content) for i in ids}
        assert min(sizes) > 1000
        assert client.get("/health").json()["jobs"]["done"] == 4


def test_cancel_queued_and_running_jobs(tmp_path, model, pipelines, media):
    with service(tmp_path, model, pipelines) as (client, gate):
        gate.open.clear()
        first = submit(client, media).json()["id"]
        wait(client, first, ("running",))
        second = submit(client, media).json()
        assert second["status"] == "queued" and second["position"] == 0
        cancelled = client.delete(f"/jobs/{second['id']}").json()
        assert cancelled["status"] == "cancelled"
        assert client.delete(f"/jobs/{first}").json()["status"] == "running"  # stops at its next chunk
        gate.open.set()
        assert wait(client, first)["status"] == "cancelled"
        assert client.get(f"/jobs/{first}/result").status_code == 409
        assert not (tmp_path / "jobs" / first / "result.mp4").exists()
        third = submit(client, media).json()["id"]
        assert wait(client, third)["status"] == "done"  # the worker is unharmed
        gone = client.delete(f"/jobs/{third}").json()  # deleting a finished job removes it and its result
        assert gone["deleted"] and client.get(f"/jobs/{third}").status_code == 404
        assert not (tmp_path / "jobs" / third).exists()


def test_failed_job_is_reported_and_the_next_one_runs(tmp_path, model, pipelines, media):
    with service(tmp_path, model, pipelines) as (client, _):
        bad = submit(client, media, video="noface").json()["id"]
        good = submit(client, media).json()["id"]
        failed = wait(client, bad)
        assert failed["status"] == "failed"
        assert failed["error"] == "no face found in any frame of video.mp4"  # no server folder in the message
        assert wait(client, good)["status"] == "done"


def test_queue_full_answers_503(tmp_path, model, pipelines, media):
    with service(tmp_path, model, pipelines, queue_size=1) as (client, gate):
        gate.open.clear()
        running = submit(client, media).json()["id"]
        wait(client, running, ("running",))
        assert submit(client, media).status_code == 202
        full = submit(client, media)
        assert full.status_code == 503 and "queue is full" in full.json()["detail"]
        assert len(list((tmp_path / "jobs").iterdir())) == 2  # the refused upload left nothing behind


def test_oversize_uploads_get_413(tmp_path, model, pipelines, media):
    with service(tmp_path, model, pipelines, max_upload_mb=0.01) as (client, _):
        big = client.post("/jobs", files={"video": ("face.mp4", b"\0" * 50_000)})
        assert big.status_code == 413 and "limit" in big.json()["detail"]
        chunks = (b"x" * 4096 for _ in range(20))  # no Content-Length: counted as it arrives
        streamed = client.post("/jobs", content=chunks, headers={"content-type": "multipart/form-data; boundary=b"})
        assert streamed.status_code == 413
        assert list((tmp_path / "jobs").iterdir()) == []


@pytest.mark.parametrize(
    ("form", "files", "message"),
    [
        ({}, {"video": "text"}, "cannot open video.txt as a video or image"),
        ({}, {"video": "video"}, "has no audio stream"),  # no audio upload, and the video is silent
        ({"steps": 0}, {"video": "video", "audio": "audio"}, "steps"),
        ({"face": "bogus"}, {"video": "video", "audio": "audio"}, "--face 'bogus'"),
        ({"sampler": "euler"}, {"video": "video", "audio": "audio"}, "sampler"),
        ({"cache_interval": 0}, {"video": "video", "audio": "audio"}, "cache_interval"),
        ({"model": "1.6"}, {"video": "video", "audio": "audio"}, "is not served here"),
        ({}, {"audio": "audio"}, "exactly one of a `video` upload or a `video_path`"),
        ({}, {"video": "video", "audio": "long_audio"}, "this service takes at most 3 s"),
    ],
)
def test_bad_requests_get_422_with_one_line(tmp_path, model, pipelines, media, form, files, message):
    with service(tmp_path, model, pipelines, max_seconds=3.0) as (client, _):
        upload = {role: (media[name].name, media[name].read_bytes()) for role, name in files.items()}
        answer = client.post("/jobs", files=upload, data=form)
        assert answer.status_code == 422, answer.text
        detail = answer.json()["detail"]
        assert message in detail and "\n" not in detail and str(tmp_path) not in detail
        assert list((tmp_path / "jobs").iterdir()) == []


def test_hostile_names_and_paths(tmp_path, model, pipelines, media):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "face.mp4").write_bytes(media["video"].read_bytes())
    (allowed / "escape.mp4").symlink_to(media["video"])  # inside by name, outside in fact
    secret = tmp_path / "secret.mp4"
    secret.write_bytes(media["video"].read_bytes())
    with service(tmp_path / "svc", model, pipelines, allowed_dirs=[allowed]) as (client, _):
        files = {"video": ("../../../../evil.mp4", media["video"].read_bytes()),
                 "audio": ("/etc/passwd", media["audio"].read_bytes())}
        job = client.post("/jobs", files=files, data={"steps": STEPS}).json()
        assert sorted(p.name for p in (tmp_path / "svc" / "jobs" / job["id"]).iterdir()) == [
            "audio", "job.json", "video.mp4"]
        assert wait(client, job["id"])["status"] == "done"
        assert not any(tmp_path.rglob("evil.mp4"))
        for path in [str(secret), f"{allowed}/../secret.mp4", str(allowed / "escape.mp4"), "/etc/passwd"]:
            answer = client.post("/jobs", data={"video_path": path, "audio_path": str(media["audio"])})
            assert answer.status_code == 403, path
        too_long = client.post("/jobs", data={"video_path": str(allowed / ("a" * 5000))})
        assert too_long.status_code == 422 and "no such file" in too_long.json()["detail"]
        ok = client.post("/jobs", data={"video_path": str(allowed / "face.mp4"), "steps": STEPS})
        assert ok.status_code == 422 and "no audio stream" in ok.json()["detail"]  # reached the media check
        for bad_id in ["..", "..%2F..%2Fetc", "0" * 31 + "g", "%2e%2e"]:
            assert client.get(f"/jobs/{bad_id}").status_code == 404
            assert client.delete(f"/jobs/{bad_id}").status_code == 404
    assert (allowed / "face.mp4").exists()  # server-side inputs are never deleted
    with service(tmp_path / "svc2", model, pipelines) as (client, _):
        denied = client.post("/jobs", data={"video_path": str(allowed / "face.mp4")})
        assert denied.status_code == 403 and "disabled" in denied.json()["detail"]


def test_finished_jobs_expire(tmp_path, model, pipelines, media):
    with service(tmp_path, model, pipelines, result_ttl=0.5, fetched_ttl=0.5) as (client, _):
        job = submit(client, media).json()["id"]
        assert wait(client, job)["status"] == "done"
        deadline = time.time() + 10
        while client.get(f"/jobs/{job}").status_code != 404 and time.time() < deadline:
            time.sleep(0.1)
        assert client.get(f"/jobs/{job}/result").status_code == 404
        assert not (tmp_path / "jobs" / job).exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _server(model: str, root: Path, port: int) -> Iterator[subprocess.Popen]:
    cmd = [sys.executable, "-m", "latentsync.cli", "serve", "--model", model, "--root", str(root),
           "--port", str(port), "--device", "cpu", "--dtype", "fp32"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise AssertionError(f"serve did not start: {proc.stderr.read() if proc.stderr else ''}")
                time.sleep(0.2)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_jobs_survive_a_killed_service(tmp_path, model, media):
    import httpx

    port = _free_port()
    root = tmp_path / "svc"
    files = {"video": ("face.mp4", media["video"].read_bytes()), "audio": ("a.wav", media["long_audio"].read_bytes())}
    with _server(model, root, port) as proc:
        base = f"http://127.0.0.1:{port}"
        ids = [httpx.post(f"{base}/jobs", files=files, data={"steps": STEPS}).json()["id"] for _ in range(3)]
        proc.send_signal(signal.SIGKILL)
    on_disk = [json.loads((root / "jobs" / i / "job.json").read_text())["status"] for i in ids]
    assert "queued" in on_disk  # the kill really caught jobs waiting
    with _server(model, root, port):
        with httpx.Client(base_url=base, timeout=30) as client:
            finals = [wait(client, i) for i in ids]  # type: ignore[arg-type]
            assert [f["status"] for f in finals] == ["done"] * 3
            assert all(client.get(f"/jobs/{i}/result").status_code == 200 for i in ids)


# Built at import: schemathesis's lazy fixture loader does not work with this pytest. Only the schema and
# request validation are exercised (no generated request carries usable media), so no model is loaded.
_FUZZ_ROOT = tempfile.TemporaryDirectory(prefix="latentsync-fuzz-")
schema = schemathesis.openapi.from_asgi(
    "/openapi.json",
    create_app(JobManager(ServeConfig(models=["demo"], root=Path(_FUZZ_ROOT.name), max_upload_mb=1.0))),
)


@schema.parametrize()
@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_matches_its_openapi_schema(case):
    """Every operation, with generated input: no 5xx, and every answer is one the schema declares.

    Not checked: that schema-valid submissions are accepted. Whether bytes are a usable video is beyond what
    OpenAPI can say, so generated uploads are rightly refused with 422.
    """
    case.call_and_validate(excluded_checks=[positive_data_acceptance])
