"""Jobs on disk: one folder per job with `job.json`, its uploaded inputs and its result.

```
ROOT/jobs/<id>/job.json      the Job below; rewritten atomically at every change of state
ROOT/jobs/<id>/video.mp4     an upload, named by the service (never by the client)
ROOT/jobs/<id>/result.mp4    the output, renamed into place only when the run succeeds (built in
                             .result.mp4.<8 hex>.part; one a crash left is deleted when the service starts)
ROOT/jobs/.incoming-<id>/    a submission being received; renamed to <id>/ once complete and valid
```

Because a job exists only once its folder is complete, a crash mid-upload leaves no half-made job, and a
restarted service finds every accepted job where it was.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)
RESULT_FILE = "result.mp4"
_ID = re.compile(r"[0-9a-f]{32}")
_EXTENSION = re.compile(r"\.[A-Za-z0-9]{1,8}")
_INCOMING = ".incoming-"


@dataclass
class Job:
    """Everything about one job that must survive a restart. `video`/`audio` are names inside the job folder
    for uploads, or absolute paths for server-side files (which the service never deletes)."""

    id: str
    model: str
    options: dict[str, Any]
    video: str
    audio: str | None = None
    uploaded: list[str] = field(default_factory=list)
    status: str = QUEUED
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    expires: float | None = None
    frames_done: int = 0
    frames_total: int = 0
    attempts: int = 0
    error: str | None = None
    report: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Job:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def new_job_id() -> str:
    return uuid.uuid4().hex


def is_job_id(text: str) -> bool:
    """Only ids the service made can name a folder: anything else (`..`, slashes, ...) is simply unknown."""
    return _ID.fullmatch(text) is not None


def upload_name(role: str, client_name: str | None) -> str:
    """The file name a `role` upload gets: the role plus the client's extension when it is a plain one (FFmpeg
    uses it to tell image formats apart); the client's name itself is never part of a path."""
    suffix = Path(client_name or "").suffix
    return role + (suffix.lower() if _EXTENSION.fullmatch(suffix) else "")


class JobStore:
    """The job folders under `root/jobs`. Not thread-safe by itself: the JobManager serialises access."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root) / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
        for leftover in self.root.glob(_INCOMING + "*"):  # submissions cut off by a crash or restart
            shutil.rmtree(leftover, ignore_errors=True)

    def incoming(self, job_id: str) -> Path:
        """A fresh folder to receive a submission's files in."""
        path = self.root / f"{_INCOMING}{job_id}"
        path.mkdir()
        return path

    def commit(self, job: Job, incoming: Path) -> None:
        """Make a received submission a job: write its record, then move the folder into place."""
        _write_json(incoming / "job.json", asdict(job))
        incoming.rename(self.folder(job.id))

    def save(self, job: Job) -> None:
        _write_json(self.folder(job.id) / "job.json", asdict(job))

    def load_all(self) -> list[Job]:
        """Every job on disk, oldest first; unreadable records are skipped (and left for a human to inspect)."""
        jobs = []
        for path in self.root.glob("*/job.json"):
            if not is_job_id(path.parent.name):
                continue
            try:
                jobs.append(Job.from_json(json.loads(path.read_text())))
            except (OSError, ValueError, TypeError):
                continue
        return sorted(jobs, key=lambda j: j.created)

    def folder(self, job_id: str) -> Path:
        return self.root / job_id

    def input_path(self, job: Job, name: str) -> Path:
        return Path(name) if Path(name).is_absolute() else self.folder(job.id) / name

    def result(self, job_id: str) -> Path:
        return self.folder(job_id) / RESULT_FILE

    def drop_uploads(self, job: Job) -> None:
        """Free an ended job's uploads; server-side inputs are the user's and are left alone."""
        for name in job.uploaded:
            (self.folder(job.id) / name).unlink(missing_ok=True)

    def delete(self, job_id: str) -> None:
        shutil.rmtree(self.folder(job_id), ignore_errors=True)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)
