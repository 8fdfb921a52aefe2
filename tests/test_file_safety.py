"""What `latentsync run -o OUT` may write, and what a run leaves behind: OUT that is not a plain file or is one of
the inputs, OUT naming a folder, a location that only looks writable, a rename that cannot happen, SIGTERM, and
the temporary `.part` files of killed runs (for the CLI and for the HTTP service's job folders).

The CLI cases run `main` in-process with a model that does not exist: the output's error must come first, which
also shows that it comes before any model is loaded.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest
from media.clips import write_clip
from media.faces import astronaut_frames
from media.speech import write_audio

from latentsync.app.serve.jobs import RUNNING, Job, JobStore, new_job_id
from latentsync.app.serve.service import JobManager, ServeConfig
from latentsync.cli import main
from latentsync.errors import LatentSyncError, VideoError
from latentsync.pipeline.lipsync import LipSyncPipeline
from latentsync.video import output
from latentsync.video.output import check_writable, remove_stale_parts
from latentsync.video.writer import VideoWriter

FRAME = np.full((64, 64, 3), 120, np.uint8)
needs_flock = pytest.mark.skipif(output.fcntl is None, reason="no flock on this platform")


def _tone(seconds: float, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 3 * t)).astype(np.float32)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    return {
        "video": write_clip(d / "face.mp4", astronaut_frames(25, size=(320, 240), fps=25), fps=25),
        "audio": write_audio(d / "tone.wav", _tone(4.0), 16000),
    }


@pytest.fixture(scope="module")
def model(tiny_model) -> Path:
    return tiny_model


@pytest.fixture()
def inputs(media, tmp_path) -> dict[str, Path]:
    """Copies of the inputs in this test's folder, which the test may link to."""
    return {k: Path(shutil.copy(v, tmp_path / f"in{v.suffix}")) for k, v in media.items()}


def run_error(capsys, tmp_path: Path, *argv: str) -> str:
    """`latentsync run ARGV` with a model that does not exist: its one-line error."""
    code = main(["run", *argv, "--model", str(tmp_path / "no-such-model"), "--device", "cpu", "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("latentsync: error:"), err
    assert "no-such-model" not in err[0], "the model was looked at before the output"
    return err[0]


def parts(folder: Path, name: str = "out.mp4") -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{name}.") and p.name.endswith(".part"))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def frame_count(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


@pytest.fixture()
def lock_holder(tmp_path) -> Iterator:
    """Start a separate process that holds an exclusive flock on a file, as a live run holds its part."""
    procs: list[subprocess.Popen] = []

    def hold(path: Path) -> subprocess.Popen:
        code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
                "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(120)")
        proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        return proc

    yield hold
    for proc in procs:
        proc.kill()
        proc.wait()


# -- 1. OUT that is not a regular file ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["device", "fifo", "socket", "symlink to a device"])
def test_out_that_is_not_a_regular_file_is_refused(capsys, tmp_path, inputs, kind):
    out = tmp_path / "out.mp4"
    if kind == "device":
        out = Path(os.devnull)
    elif kind == "fifo":
        if not hasattr(os, "mkfifo"):
            pytest.skip("no FIFOs here")
        os.mkfifo(out)
    elif kind == "socket":
        if not hasattr(socket, "AF_UNIX"):
            pytest.skip("no Unix sockets here")
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(out))
    else:
        out.symlink_to(os.devnull)
    before = os.stat(out)
    line = run_error(capsys, tmp_path, str(inputs["video"]), str(inputs["audio"]), "-o", str(out))
    assert "is not a regular file" in line, line
    after = os.stat(out)
    assert stat.S_IFMT(after.st_mode) == stat.S_IFMT(before.st_mode) and not stat.S_ISREG(after.st_mode)
    assert (after.st_ino, after.st_rdev) == (before.st_ino, before.st_rdev)
    assert parts(tmp_path) == []


def test_symlink_to_a_file_is_followed(tmp_path):
    target = tmp_path / "takes" / "real.mp4"
    target.parent.mkdir()
    target.write_bytes(b"an older result")
    link = tmp_path / "latest.mp4"
    link.symlink_to(target)
    with VideoWriter(link, 64, 64) as writer:
        for _ in range(3):
            writer.write(FRAME)
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert frame_count(target) == 3
    assert parts(tmp_path, "latest.mp4") == [] and parts(target.parent, "real.mp4") == []


# -- 2. OUT that is an input --------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["the video", "the audio", "the video as its own audio", "a symlink to the video",
                                 "a hard link to the audio", "a relative path"])
def test_out_that_is_an_input_is_refused(capsys, tmp_path, inputs, monkeypatch, how):
    video, audio = str(inputs["video"]), str(inputs["audio"])
    argv, out = [video, audio], tmp_path / "out.mp4"
    if how == "the video":
        out = inputs["video"]
    elif how == "the audio":
        out = inputs["audio"]
    elif how == "the video as its own audio":
        argv, out = [video], inputs["video"]
    elif how == "a symlink to the video":
        out.symlink_to(inputs["video"])
    elif how == "a hard link to the audio":
        os.link(inputs["audio"], out)
    else:
        monkeypatch.chdir(tmp_path)
        out = Path("in.mp4")
    sums = {k: digest(v) for k, v in inputs.items()}
    line = run_error(capsys, tmp_path, *argv, "-o", str(out))
    assert "would overwrite the source" in line, line
    assert {k: digest(v) for k, v in inputs.items()} == sums
    assert parts(tmp_path, "in.mp4") == parts(tmp_path, "in.wav") == parts(tmp_path) == []


def test_writer_refuses_its_own_audio_as_out(tmp_path, inputs):
    with pytest.raises(VideoError, match="would overwrite the source"):
        VideoWriter(inputs["audio"], 64, 64, audio_path=inputs["audio"])


# -- 3. OUT naming a folder ---------------------------------------------------------------------------------


def test_out_naming_a_folder_is_refused(capsys, tmp_path, inputs):
    new = str(tmp_path / "newdir") + os.sep
    line = run_error(capsys, tmp_path, str(inputs["video"]), str(inputs["audio"]), "-o", new)
    assert "ends with a path separator" in line, line
    assert not (tmp_path / "newdir").exists()
    line = run_error(capsys, tmp_path, str(inputs["video"]), str(inputs["audio"]), "-o", str(tmp_path) + os.sep)
    assert "is a directory" in line, line
    with pytest.raises(VideoError, match="path separator"):
        check_writable(str(tmp_path / "in.mp4") + os.sep)  # an existing file, named as a folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4", "in.wav"]


# -- 4. locations that only look writable, and a rename that cannot happen -----------------------------------


def test_folder_that_passes_access_but_cannot_take_the_file_fails_first(capsys, tmp_path, inputs):
    out = tmp_path / ("x" * 243 + ".mp4")  # a legal name, but `.{name}.{8 hex}.part` is over 255 bytes
    assert os.access(tmp_path, os.W_OK | os.X_OK)
    line = run_error(capsys, tmp_path, str(inputs["video"]), str(inputs["audio"]), "-o", str(out))
    assert "output folder is not writable" in line and "name too long" in line.lower(), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4", "in.wav"]


@pytest.mark.skipif(not Path("/bin/sleep").is_file(), reason="needs /bin/sleep")
def test_existing_out_that_cannot_be_opened_for_writing_fails_first(capsys, tmp_path, inputs):
    """A running program cannot be opened for writing (ETXTBSY), not even by root: OUT is one here."""
    out = Path(shutil.copy("/bin/sleep", tmp_path / "out.mp4"))
    sleeper = subprocess.Popen([str(out), "60"])
    try:
        time.sleep(0.2)
        try:
            os.close(os.open(out, os.O_WRONLY))
            pytest.skip("this system lets a running program be opened for writing")
        except OSError:
            pass
        before, mtime = digest(out), out.stat().st_mtime_ns
        line = run_error(capsys, tmp_path, str(inputs["video"]), str(inputs["audio"]), "-o", str(out))
        assert "exists and cannot be written" in line, line
        assert digest(out) == before and out.stat().st_mtime_ns == mtime
        assert parts(tmp_path) == []
    finally:
        sleeper.kill()
        sleeper.wait()


def _busy(*args: object) -> None:
    raise OSError(errno.EBUSY, "Device or resource busy")


def test_out_that_cannot_be_replaced_gets_the_bytes_copied_in(tmp_path, monkeypatch):
    """As a file bind-mounted into a container: rename onto it fails with EBUSY, writing into it works."""
    out = tmp_path / "out.mp4"
    out.write_bytes(b"placeholder")
    inode = out.stat().st_ino
    monkeypatch.setattr(os, "replace", _busy)
    with VideoWriter(out, 64, 64) as writer:
        for _ in range(4):
            writer.write(FRAME)
    assert out.stat().st_ino == inode and frame_count(out) == 4
    assert parts(tmp_path) == []


def test_when_rename_and_copy_both_fail_nothing_is_left(tmp_path, monkeypatch):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"placeholder")
    monkeypatch.setattr(os, "replace", _busy)

    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copyfile", full)
    writer = VideoWriter(out, 64, 64)
    writer.write(FRAME)
    with pytest.raises(VideoError, match=r"cannot write .*out\.mp4 \(.*No space left on device\)$"):
        writer.close()
    assert out.read_bytes() == b"placeholder" and parts(tmp_path) == []


# -- 5. SIGTERM ---------------------------------------------------------------------------------------------


def test_sigterm_stops_a_run_like_ctrl_c_and_leaves_nothing(tmp_path, media, model):
    """The real command, stopped once it writes its part; the stale part of an earlier killed run goes too."""
    out = tmp_path / "out.mp4"
    stale = tmp_path / ".out.mp4.0badc0de.part"
    stale.write_bytes(b"left by a run killed with SIGKILL")
    cmd = [sys.executable, "-m", "latentsync.cli", "run", str(media["video"]), str(media["audio"]), "-o", str(out),
           "--model", str(model), "--device", "cpu", "--dtype", "fp32", "--steps", "1", "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while stale.exists() or not parts(tmp_path):  # the stale part goes just before the run's own appears
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline, "the run wrote no part"
            time.sleep(0.005)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "latentsync: interrupted (SIGTERM)" and "Traceback" not in err, err
    assert parts(tmp_path) == [] and not out.exists()


@pytest.mark.parametrize("stop, code, message", [
    ("sigterm", 143, "latentsync: interrupted (SIGTERM)"),
    ("ctrl-c", 130, "latentsync: interrupted"),
])
def test_cli_exit_status_and_handler_scope(capsys, tmp_path, media, monkeypatch, stop, code, message):
    """In-process: the handler exists only while `main` runs, and each signal has its status and message."""
    default = signal.getsignal(signal.SIGTERM)

    class Stopping:
        def run(self, *args: object, **kwargs: object) -> None:
            if stop == "ctrl-c":
                raise KeyboardInterrupt
            if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, signal.SIG_IGN, None):
                raise AssertionError("no SIGTERM handler is installed")  # rather than kill the test process
            signal.raise_signal(signal.SIGTERM)
            time.sleep(10)
            raise AssertionError("SIGTERM did not stop the run")

    monkeypatch.setattr(LipSyncPipeline, "from_model", classmethod(lambda cls, *a, **k: Stopping()))
    argv = ["run", str(media["video"]), str(media["audio"]), "-o", str(tmp_path / "out.mp4"), "-q"]
    assert main(argv) == code
    assert capsys.readouterr().err.strip().splitlines() == [message]
    assert signal.getsignal(signal.SIGTERM) == default


# -- 6. stale parts -----------------------------------------------------------------------------------------


_WRITER_CHILD = """
import sys, time
import numpy as np
from latentsync.video.writer import VideoWriter
writer = VideoWriter(sys.argv[1], 64, 64)
writer.write(np.zeros((64, 64, 3), np.uint8))
print("writing", flush=True)
time.sleep(120)
"""


@needs_flock
def test_a_live_runs_part_is_kept_and_a_killed_runs_is_removed_by_the_next_run(tmp_path):
    out = tmp_path / "out.mp4"
    child = subprocess.Popen([sys.executable, "-c", _WRITER_CHILD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "writing"
        (theirs,) = parts(tmp_path)
        assert remove_stale_parts(out) == []
        with VideoWriter(out, 64, 64) as concurrent:  # another run to the same OUT meanwhile
            concurrent.write(FRAME)
        assert parts(tmp_path) == [theirs] and frame_count(out) == 1
    finally:
        child.kill()  # SIGKILL: no cleanup of its own
        child.wait()
    assert parts(tmp_path) == [theirs]
    writer = VideoWriter(out, 64, 64)  # the next run
    assert theirs not in parts(tmp_path) and len(parts(tmp_path)) == 1
    writer.abort()
    assert parts(tmp_path) == []


@needs_flock
def test_only_unlocked_parts_of_exactly_our_naming_are_removed(tmp_path, lock_holder):
    out = tmp_path / "out.mp4"
    stale = tmp_path / ".out.mp4.89abcdef.part"
    stale.write_bytes(b"x")
    held = tmp_path / ".out.mp4.0123abcd.part"
    holder = lock_holder(held)
    (tmp_path / "kept").write_bytes(b"x")
    decoys = [".out.mp4.89abcdef.part.bak", ".other.mp4.89abcdef.part", ".out.mp4.89ABCDEF.part",
              ".out.mp4.89abcde.part", "out.mp4.89abcdef.part", ".out.mp4.part"]
    for name in decoys:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".out.mp4.01234567.part").mkdir()
    (tmp_path / ".out.mp4.fedcba98.part").symlink_to(tmp_path / "kept")
    assert remove_stale_parts(out) == [stale]
    assert not stale.exists() and held.exists()
    assert all((tmp_path / name).exists() for name in [*decoys, ".out.mp4.01234567.part", ".out.mp4.fedcba98.part"])
    assert (tmp_path / "kept").exists()
    holder.kill()
    holder.wait()
    assert remove_stale_parts(out) == [held]


def test_without_flock_only_parts_a_day_old_are_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(output, "fcntl", None)
    out = tmp_path / "out.mp4"
    old, fresh = tmp_path / ".out.mp4.00000001.part", tmp_path / ".out.mp4.00000002.part"
    old.write_bytes(b"x")
    fresh.write_bytes(b"x")
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(old, (two_days_ago, two_days_ago))
    with VideoWriter(out, 64, 64) as writer:
        writer.write(FRAME)
    assert not old.exists() and fresh.exists() and frame_count(out) == 1
    assert parts(tmp_path) == [fresh.name]


class _FailingPipelines:
    """Stands in for the service's PipelineCache: nothing to load, and every run fails at once."""

    def get(self, model: str) -> _FailingPipelines:
        return self

    def run(self, *args: object, **kwargs: object) -> None:
        raise LatentSyncError("this test runs no model")


@needs_flock
def test_service_start_removes_stale_parts_from_job_folders(tmp_path, lock_holder):
    """After a crash the job recorded as running is queued again, and its killed run's part is deleted; a part
    another live service on the same root holds is kept."""
    store = JobStore(tmp_path)
    job = Job(id=new_job_id(), model="fake", options={}, video=str(tmp_path / "video.mp4"), status=RUNNING)
    store.folder(job.id).mkdir()
    store.save(job)
    stale = store.folder(job.id) / ".result.mp4.0123abcd.part"
    stale.write_bytes(b"x")
    held = store.folder(job.id) / ".result.mp4.89abcdef.part"
    lock_holder(held)
    manager = JobManager(ServeConfig(models=["fake"], root=tmp_path), _FailingPipelines())  # type: ignore[arg-type]
    manager.start()
    try:
        assert not stale.exists() and held.exists()
    finally:
        manager.stop()
