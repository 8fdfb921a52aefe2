"""The job queue behind `latentsync serve`: a bounded FIFO worked by threads that share the loaded models.

Life of a job: queued -> running -> done | failed | cancelled. A failure is recorded on its job and the worker
moves on, so one bad job never affects the next. Finished jobs expire `result_ttl` seconds after they end, or
`fetched_ttl` seconds after their result was downloaded, whichever is first; expired jobs are deleted.
On start, jobs found on disk in `queued` or `running` (a run cut off by a stop or crash) are queued again in
their original order, and the temporary result files of runs a crash cut off are deleted from the job folders.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from latentsync.app.pipelines import PipelineCache
from latentsync.app.serve.jobs import CANCELLED, DONE, FAILED, FINISHED, QUEUED, RUNNING, Job, JobStore
from latentsync.errors import LatentSyncError
from latentsync.paths import cache_home
from latentsync.pipeline.lipsync import RunOptions
from latentsync.video.output import remove_stale_parts

log = logging.getLogger(__name__)


@dataclass
class ServeConfig:
    """`latentsync serve` settings. Limits protect the service: uploads over `max_upload_mb` get 413, inputs
    longer than `max_seconds` get 422; `allowed_dirs` lists the server folders that jobs may name by path."""

    models: list[str] = field(default_factory=lambda: ["1.6"])
    root: Path = field(default_factory=lambda: cache_home() / "service")
    workers: int = 1
    queue_size: int = 32
    max_upload_mb: float = 500.0
    max_seconds: float = 600.0
    allowed_dirs: list[Path] = field(default_factory=list)
    result_ttl: float = 24 * 3600.0
    fetched_ttl: float = 600.0
    device: str = "auto"
    dtype: str = "auto"
    live_avatars: list[Path] = field(default_factory=list)  # live mode (app/serve/live.py) is on when not empty
    live_sessions: int = 2


class QueueFullError(Exception):
    """The queue holds `queue_size` jobs already; the client should retry later (503)."""


class _Stop(Exception):
    """Raised inside a run (through its progress callback) to stop it: cancelled, or the service is stopping."""


class JobManager:
    """Owns the jobs in memory (mirrored to disk by JobStore), the queue and the worker threads."""

    def __init__(self, config: ServeConfig, pipelines: PipelineCache | None = None) -> None:
        self.config = config
        self.store = JobStore(config.root)
        self.pipelines = pipelines or PipelineCache(config.device, config.dtype)
        self._jobs: dict[str, Job] = {}
        self._queue: collections.deque[str] = collections.deque()
        self._cancel: dict[str, threading.Event] = {}
        self._lock = threading.Condition()
        self._stopping = False
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        self.started = False

    def start(self) -> None:
        """Load the models, recover jobs from disk and start the workers and the expiry sweeper."""
        for model in self.config.models:
            self.pipelines.get(model)
        with self._lock:
            for job in self.store.load_all():
                # A killed run's `.result.mp4.*.part`; one that another live service on this root writes is locked.
                remove_stale_parts(self.store.result(job.id))
                if job.status in (QUEUED, RUNNING):
                    job.status, job.frames_done, job.started = QUEUED, 0, None
                    self.store.save(job)
                    self._queue.append(job.id)
                self._jobs[job.id] = job
            self._expire()
        names = [f"worker-{i}" for i in range(self.config.workers)]
        self._threads = [threading.Thread(target=self._work, name=n, daemon=True) for n in names]
        self._threads.append(threading.Thread(target=self._sweep, name="expiry", daemon=True))
        for thread in self._threads:
            thread.start()
        self.started = True

    def stop(self) -> None:
        """Stop the workers. Runs in progress are interrupted and stay queued, to run again after a restart."""
        with self._lock:
            self._stopping = True
            self._stopped.set()
            for event in self._cancel.values():
                event.set()
            self._lock.notify_all()
        for thread in self._threads:
            thread.join()

    # -- the API's side ---------------------------------------------------------------------------------

    def has_room(self) -> bool:
        with self._lock:
            return len(self._queue) < self.config.queue_size

    def submit(self, job: Job, incoming: Path) -> dict[str, Any]:
        """Accept a job whose files are in `incoming`; QueueFullError when the queue is full."""
        with self._lock:
            if len(self._queue) >= self.config.queue_size:
                raise QueueFullError(f"the queue is full ({self.config.queue_size} jobs); retry later")
            self.store.commit(job, incoming)
            self._jobs[job.id] = job
            self._queue.append(job.id)
            self._lock.notify()
            return self._view(job)

    def status(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return None if job is None else self._view(job)

    def result_path(self, job_id: str) -> Path:
        return self.store.result(job_id)

    def fetched(self, job_id: str) -> None:
        """A result was downloaded in full: keep it only `fetched_ttl` longer (a retry may still need it)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None and job.expires is not None:
                job.expires = min(job.expires, time.time() + self.config.fetched_ttl)
                self.store.save(job)

    def cancel(self, job_id: str) -> dict[str, Any] | None:
        """Cancel a queued or running job (a running one stops at its next chunk); delete a finished one."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            if job.status == QUEUED:
                self._queue.remove(job_id)
                self._finish(job, CANCELLED)
            elif job.status == RUNNING:
                self._cancel[job_id].set()
            else:
                del self._jobs[job_id]
                self.store.delete(job_id)
                return {**self._view(job), "deleted": True}
            return self._view(job)

    def counts(self) -> dict[str, int]:
        with self._lock:
            counts = collections.Counter(job.status for job in self._jobs.values())
            return {state: counts.get(state, 0) for state in (QUEUED, RUNNING, DONE, FAILED, CANCELLED)}

    # -- the workers' side ------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stopping:
                    self._lock.wait()
                if self._stopping:
                    return
                job = self._jobs[self._queue.popleft()]
                job.status, job.started, job.attempts = RUNNING, time.time(), job.attempts + 1
                self._cancel[job.id] = stop = threading.Event()
                self.store.save(job)
            outcome, error, report = self._run(job, stop)
            with self._lock:
                del self._cancel[job.id]
                if outcome == CANCELLED and self._stopping and job.status == RUNNING:
                    job.status, job.frames_done, job.started = QUEUED, 0, None  # picked up again after a restart
                    self.store.save(job)
                else:
                    job.error, job.report = error, report
                    self._finish(job, outcome)

    def _run(self, job: Job, stop: threading.Event) -> tuple[str, str | None, dict[str, Any] | None]:
        def progress(done: int, total: int) -> None:
            job.frames_done, job.frames_total = done, total
            if stop.is_set():
                raise _Stop

        try:
            pipeline = self.pipelines.get(job.model)
            audio = None if job.audio is None else self.store.input_path(job, job.audio)
            report = pipeline.run(
                self.store.input_path(job, job.video), audio, self.store.result(job.id), RunOptions(**job.options),
                progress,
            )
        except _Stop:
            return CANCELLED, None, None
        except LatentSyncError as exc:  # the message names the job's files: keep the service's folders private
            return FAILED, str(exc).replace(f"{self.store.folder(job.id)}/", ""), None
        except Exception as exc:  # a bug or an exhausted device: recorded on this job, the next one runs
            log.exception("job %s failed", job.id)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return FAILED, f"internal error: {type(exc).__name__}: {exc}".splitlines()[0], None
        summary = {
            "frames": report.frames,
            "frames_without_face": report.frames_without_face,
            "seconds": round(report.seconds, 3),
            "stage_seconds": {k: round(v, 3) for k, v in report.stage_seconds.items()},
            "peak_rss_mb": round(report.peak_rss_mb, 1),
            "peak_vram_mb": report.peak_vram_mb,
        }
        return DONE, None, summary

    def _finish(self, job: Job, status: str) -> None:
        """Move `job` to a final state (caller holds the lock); its uploads are no longer needed."""
        job.status, job.finished = status, time.time()
        job.expires = job.finished + self.config.result_ttl
        self.store.drop_uploads(job)
        self.store.save(job)

    def _sweep(self, every: float = 30.0) -> None:
        """Expire jobs now and then. It waits on its own event: a wait on the queue's condition could swallow
        the `notify` meant for a worker."""
        while not self._stopped.wait(min(every, self.config.fetched_ttl, self.config.result_ttl)):
            with self._lock:
                self._expire()

    def _expire(self) -> None:
        """Delete finished jobs past their expiry time (caller holds the lock)."""
        now = time.time()
        for job in [j for j in self._jobs.values() if j.status in FINISHED and (j.expires or 0) <= now]:
            del self._jobs[job.id]
            self.store.delete(job.id)

    def _view(self, job: Job) -> dict[str, Any]:
        """The API's picture of a job (caller holds the lock)."""
        view: dict[str, Any] = {
            "id": job.id,
            "status": job.status,
            "model": job.model,
            "position": self._queue.index(job.id) if job.status == QUEUED else None,
            "progress": {
                "frames_done": job.frames_done,
                "frames_total": job.frames_total,
                "fraction": round(job.frames_done / job.frames_total, 4) if job.frames_total else 0.0,
            },
            "created": job.created,
            "started": job.started,
            "finished": job.finished,
            "expires": job.expires,
            "error": job.error,
            "report": job.report,
            "deleted": False,
        }
        return view
