"""Run data-pipeline steps over folders of files: per-file tasks, a manifest per step, resume, local or Ray workers.

A step is a per-file function (`Step.process`: one input -> its outputs and figures, or a drop reason). The runner
owns everything around it, the same for every step:

- Inputs: the step's inputs are the previous step's outputs, in order (the first step's: every file under
  INPUT_DIR, hidden files and OUTPUT_DIR excluded). Outputs are named after their input's name relative to
  INPUT_DIR, so a tree of inputs gives the same tree of outputs.
- Resume: an input whose manifest record is done (same settings, same input file, outputs present; see
  `manifest.Record.is_done`) is not processed again. Outputs are written under a temporary name and renamed
  into place (the video writer does this), so a killed run leaves finished files, `.part` leftovers, which the
  next run deletes before it starts, and nothing half-written under a real name.
- Workers: `LocalBackend` runs tasks in the main process (`workers=1`) or a spawn process pool (mediapipe's
  graphs do not survive a fork); `RayBackend` runs the same function as Ray tasks. Steps that use a GPU get one
  per task when there are GPUs (a pinned pool locally, `num_gpus=1` on Ray).
- Only the main process writes manifests, one record per finished file: no record describes an unfinished file.
"""

from __future__ import annotations

import fcntl
import logging
import multiprocessing
import os
import shutil
import time
import traceback
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from latentsync.data.manifest import Manifest, Record, file_stamp
from latentsync.errors import ConfigError, LatentSyncError
from latentsync.pipeline.progress import progress_bar

log = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
FILELIST = "filelist.txt"
LOCK = ".lock"
_OWN_FILES = {MANIFEST, FILELIST}  # a step folder used as another step's INPUT_DIR holds these: not inputs


@dataclass(frozen=True)
class Item:
    """One input of a step: where it is, the name its outputs are derived from, its length (0 if unknown)."""

    path: Path
    name: str
    seconds: float = 0.0


@dataclass
class Result:
    """What `Step.process` returns for one input (the runner adds key, stamp and timing to make a Record)."""

    outputs: list[Path] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    status: str = "kept"
    reason: str | None = None
    detail: str | None = None
    figures: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def drop(cls, reason: str, detail: str, **figures: Any) -> Result:
        return cls(status="dropped", reason=reason, detail=detail, figures=figures)


class Step:
    """Base of the pipeline steps: a picklable description of a per-file function and its settings.

    A base class rather than a bare Protocol, so that the simple steps inherit the defaults (no GPU, no
    warning, nothing to check) and every step builds its resume key the same way. Subclasses are frozen
    dataclasses: they travel to pool and Ray workers by pickling.

    `version` is part of the resume key: bump it when a step's outputs change meaning, so old ones are redone.
    `clips`: the outputs are training clips (a run ending with such a step writes a filelist).
    """

    name: ClassVar[str]
    version: ClassVar[int] = 1
    clips: ClassVar[bool] = False

    def settings(self) -> str:
        """The settings that change the outputs, as text (part of the resume key)."""
        return ""

    def key(self) -> str:
        return f"{self.name}/{self.version} {self.settings()}".strip()

    @property
    def uses_gpu(self) -> bool:
        return False

    @property
    def warning(self) -> str | None:
        """Set when the step will not do its job (a filter without weights): logged and put in the table."""
        return None

    def check(self) -> None:
        """Validate settings in the main process before any work; raise a LatentSyncError if they are unusable."""

    def process(self, item: Item, out_dir: Path) -> Result:
        raise NotImplementedError


# Expected per-file failures, as drop reasons; anything else that is a LatentSyncError keeps its class name.
_ERROR_REASONS = {"VideoError": "unreadable video", "AudioError": "unreadable audio", "NoFaceError": "no face"}


def run_task(step: Step, item: Item, out_dir: Path) -> tuple[Result, float]:
    """Process one input anywhere (main process, pool worker, Ray worker); never raises for a bad file.

    A LatentSyncError is the file's fault and drops it; any other exception is a bug: the file gets status
    `error` (retried next run) and the traceback goes to the log.
    """
    t0 = time.perf_counter()
    try:
        result = step.process(item, out_dir)
    except LatentSyncError as exc:
        name = type(exc).__name__
        result = Result.drop(_ERROR_REASONS.get(name, name), str(exc))
    except Exception as exc:  # a bug must not stop a run over thousands of files; the record keeps it
        log.error("%s failed on %s:\n%s", step.name, item.path, traceback.format_exc())
        result = Result(status="error", reason="error", detail=f"{type(exc).__name__}: {exc}")
    return result, time.perf_counter() - t0


class Backend(Protocol):
    """Runs `run_task` over items and yields (item, result, seconds) as tasks finish, in any order."""

    def map(self, step: Step, items: Sequence[Item], out_dir: Path) -> Iterator[tuple[Item, Result, float]]: ...

    def close(self) -> None: ...


def _pin_gpu(queue: Any) -> None:
    """Pool initializer: this worker sees one GPU (taken from the queue) as cuda:0."""
    os.environ["CUDA_VISIBLE_DEVICES"] = str(queue.get())


def _share_cpus(threads: int) -> None:
    """Pool initializer: cores/N torch and OpenCV threads per worker (all cores each halved 2 workers' speed)."""
    import cv2
    import torch

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


class LocalBackend:
    """`workers` processes on this machine (1: in the main process, no pool). A GPU step runs in a second pool
    of min(workers, GPUs) processes, each pinned to its own GPU."""

    def __init__(self, workers: int = 1) -> None:
        if workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {workers}")
        self.workers = workers
        self._pools: dict[bool, ProcessPoolExecutor] = {}

    def _pool(self, gpu: bool) -> ProcessPoolExecutor:
        if gpu not in self._pools:
            context = multiprocessing.get_context("spawn")
            if gpu:
                count = min(self.workers, _gpu_count())
                queue = context.Queue()
                for index in range(count):
                    queue.put(index)
                self._pools[gpu] = ProcessPoolExecutor(count, context, _pin_gpu, (queue,))
            else:
                threads = max(1, (os.cpu_count() or 1) // self.workers)
                self._pools[gpu] = ProcessPoolExecutor(self.workers, context, _share_cpus, (threads,))
        return self._pools[gpu]

    def map(self, step: Step, items: Sequence[Item], out_dir: Path) -> Iterator[tuple[Item, Result, float]]:
        if self.workers == 1 or len(items) <= 1:
            for item in items:
                yield item, *run_task(step, item, out_dir)
            return
        pool = self._pool(step.uses_gpu and _gpu_count() > 0)
        futures: dict[Future, Item] = {pool.submit(run_task, step, item, out_dir): item for item in items}
        try:
            for future in as_completed(futures):
                yield futures[future], *future.result()
        finally:
            for future in futures:
                future.cancel()

    def close(self) -> None:
        for pool in self._pools.values():
            pool.shutdown(cancel_futures=True)
        self._pools.clear()


class RayBackend:
    """The same tasks on Ray: a running cluster (`address`), the instance this process already joined, or a
    new local one, connected at the first task (a resumed run with nothing left to do starts nothing).

    Paths must mean the same on every node (a shared file system) and every node needs this package. At most
    twice the cluster's CPU count of tasks are in flight, so results (and manifest records) stream back.
    """

    def __init__(self, address: str | None = None) -> None:
        self.address = address
        self._owned = False
        self._task: Any = None

    def _connect(self) -> Any:
        import ray

        if not ray.is_initialized():
            try:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
            except (ConnectionError, ValueError) as exc:
                where = self.address or "a new local instance"
                raise ConfigError(f"cannot start or join Ray at {where} ({exc})") from None
            self._owned = True
        if self._task is None:
            self._task = ray.remote(run_task)
        return ray

    def map(self, step: Step, items: Sequence[Item], out_dir: Path) -> Iterator[tuple[Item, Result, float]]:
        ray = self._connect()
        resources = ray.cluster_resources()
        gpus = 1 if step.uses_gpu and resources.get("GPU", 0) > 0 else 0
        task = self._task.options(num_cpus=1, num_gpus=gpus)
        window = max(2, int(2 * resources.get("CPU", 1)))
        waiting, running = list(reversed(items)), {}
        try:
            while waiting or running:
                while waiting and len(running) < window:
                    item = waiting.pop()
                    running[task.remote(step, item, out_dir)] = item
                done, _ = ray.wait(list(running), num_returns=1)
                for ref in done:
                    yield running.pop(ref), *ray.get(ref)
        finally:
            for ref in running:
                ray.cancel(ref)

    def close(self) -> None:
        if self._owned:
            import ray

            ray.shutdown()
            self._owned = False


def make_backend(kind: str, workers: int = 1, address: str | None = None) -> Backend:
    if kind == "local":
        return LocalBackend(workers)
    if kind == "ray":
        return RayBackend(address)
    raise ConfigError(f"unknown backend {kind!r} (local or ray)")


@dataclass
class StepReport:
    """One step of one run: counts over all its current inputs (done earlier or now) and this run's timing."""

    name: str
    inputs: int = 0
    kept: int = 0
    unchecked: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> files
    errors: int = 0
    pending: int = 0  # not processed: the step was left out with --only
    outputs: int = 0
    seconds_out: float = 0.0
    processed: int = 0  # by this run
    seconds_processed: float = 0.0  # input video processed by this run
    wall: float = 0.0
    warning: str | None = None

    @property
    def speed(self) -> float | None:
        """Seconds of input video per wall-clock second in this run (None if nothing was processed)."""
        return self.seconds_processed / self.wall if self.processed and self.wall > 0 else None


@dataclass
class PipelineReport:
    steps: list[StepReport]
    clips: list[Item]  # what the last step passed on
    filelist: Path | None

    @property
    def errors(self) -> int:
        return sum(s.errors for s in self.steps)

    def table(self) -> str:
        """The final table: files in, kept, dropped (by reason), outputs, video out, speed; then notes."""
        columns = ("files", "kept", "dropped", "errors", "outputs")
        lines = [f"{'step':<9} " + " ".join(f"{c:>7}" for c in columns) + f" {'video out':>10}  speed"]
        for s in self.steps:
            speed = "-" if s.speed is None else f"{s.speed:.1f} s/s" if s.speed < 1000 else "> 1000 s/s"
            hours = f"{s.seconds_out / 3600:.3f} h"
            kept = f"{s.kept + s.unchecked}"
            values = (s.inputs, kept, sum(s.dropped.values()), s.errors, s.outputs)
            lines.append(f"{s.name:<9} " + " ".join(f"{v:>7}" for v in values) + f" {hours:>10}  {speed}")
        total = sum(c.seconds for c in self.clips)
        where = f" -> {self.filelist}" if self.filelist else ""
        lines.append(f"kept {len(self.clips)} clips, {total / 3600:.3f} h of video ({total:.1f} s){where}")
        for s in self.steps:
            if s.dropped:
                reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(s.dropped.items()))
                lines.append(f"dropped at {s.name}: {reasons}")
        for s in self.steps:
            if s.pending:
                lines.append(f"not done at {s.name}: {s.pending} files (step not run; rerun without --only)")
            if s.errors:
                lines.append(f"ERRORS at {s.name}: {s.errors} files failed (see its manifest); a rerun retries them")
            if s.warning and s.unchecked:
                lines.append(f"WARNING {s.name}: {s.unchecked} files NOT checked: {s.warning}")
        return "\n".join(lines)


def discover(input_dir: Path, exclude: Path | None = None) -> list[Item]:
    """Every file under `input_dir` (sorted), except hidden ones, pipeline files and the `exclude` tree."""
    items = []
    for path in sorted(input_dir.rglob("*")):
        rel = path.relative_to(input_dir)
        if any(part.startswith(".") for part in rel.parts) or path.name in _OWN_FILES or not path.is_file():
            continue
        if exclude is not None and path.is_relative_to(exclude):
            continue
        items.append(Item(path.absolute(), rel.as_posix()))
    return items


def remove_partials(folder: Path) -> None:
    """Delete what a killed run left half-written (`.NAME.*.part` files and scratch folders)."""
    for path in list(folder.rglob(".*.part")):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One run per output folder: two would delete each other's temporary files. The OS drops it on a kill."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"another `latentsync data` run is writing to {folder}") from None
        yield


def _next_items(record: Record, item: Item, folder: Path) -> list[Item]:
    """The outputs of `record` as the next step's inputs; a passed-through input keeps its name."""
    items = []
    for path, seconds in zip(record.output, record.seconds):
        name = path.relative_to(folder).as_posix() if path.is_relative_to(folder) else item.name
        items.append(Item(path, name, seconds))
    return items


def _link_into(folder: Path, item: Item) -> Path:
    """A passed-on input, hard-linked (copied across file systems) into `folder` under its name, atomically."""
    target = folder / item.name
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.link.part"
    tmp.unlink(missing_ok=True)
    try:
        os.link(item.path, tmp)
    except OSError:
        shutil.copy2(item.path, tmp)
    os.replace(tmp, target)
    return target


def process_step(
    step: Step,
    items: Sequence[Item],
    folder: Path,
    root: Path,
    backend: Backend | None,
    quiet: bool = False,
    link_inputs: bool = False,
) -> tuple[StepReport, list[Item]]:
    """Bring `step` up to date for `items` (backend None: only report what is recorded) -> report, outputs.

    `link_inputs` (a step run alone) puts the inputs the step passes on into `folder` as well, so that the
    folder holds everything that goes on to the next step."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(folder / MANIFEST, root)
    report = StepReport(step.name, inputs=len(items), warning=step.warning)
    key = step.key()
    records = manifest.read()
    current = {i.path: records[i.path] for i in items if i.path in records and records[i.path].is_done(key)}
    todo = [item for item in items if item.path not in current]
    if backend is None:
        report.pending = len(todo)
    else:
        remove_partials(folder)
    if backend is not None and todo:
        if report.warning:
            log.warning("%s: %s", step.name, report.warning)
        t0 = time.perf_counter()
        with progress_bar(step.name, unit="file", quiet=quiet) as progress:
            progress(len(current), len(items))
            for item, result, elapsed in backend.map(step, todo, folder):
                if link_inputs:  # an output outside `folder` is the input, passed on
                    result.outputs = [_link_into(folder, item) if not o.is_relative_to(folder) else o
                                      for o in result.outputs]  # fmt: skip
                record = Record(item.path, tuple(result.outputs), tuple(result.seconds), result.status, result.reason,
                                result.detail, result.figures, key, file_stamp(item.path), elapsed)  # fmt: skip
                manifest.append(record)
                current[item.path] = record
                report.processed += 1
                report.seconds_processed += item.seconds or sum(result.seconds)
                progress(len(current), len(items))
        report.wall = time.perf_counter() - t0
    outputs: list[Item] = []
    for item in items:
        record = current.get(item.path)
        if record is None:
            continue
        if record.status == "error":
            report.errors += 1
        elif record.status == "dropped":
            report.dropped[record.reason or "unknown"] += 1
        else:
            report.kept += record.status == "kept"
            report.unchecked += record.status == "unchecked"
            outputs += _next_items(record, item, folder)
    report.outputs = len(outputs)
    report.seconds_out = sum(o.seconds for o in outputs)
    return report, outputs


def write_filelist(folder: Path, clips: Sequence[Item]) -> Path:
    """`folder/filelist.txt` naming the clips relative to the list's folder (what `read_filelist` expects)."""
    path = folder / FILELIST
    tmp = folder / f".{FILELIST}.part"
    tmp.write_text("".join(f"{Path(os.path.relpath(c.path, folder)).as_posix()}\n" for c in clips))
    os.replace(tmp, path)
    return path


def _checked(steps: Sequence[Step], input_dir: Path, output_dir: Path) -> tuple[Path, Path]:
    input_dir, output_dir = input_dir.absolute(), output_dir.absolute()
    if not input_dir.is_dir():
        raise ConfigError(f"input folder not found: {input_dir}")
    if input_dir == output_dir or input_dir.is_relative_to(output_dir):
        raise ConfigError(f"OUTPUT_DIR {output_dir} must not be INPUT_DIR or contain it")
    for step in steps:
        step.check()
    return input_dir, output_dir


def run_pipeline(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    steps: Sequence[Step],
    backend: Backend,
    only: Sequence[str] | None = None,
    quiet: bool = False,
) -> PipelineReport:
    """Run `steps` in order from INPUT_DIR, each in OUTPUT_DIR/<step name>/; `only` runs just those steps
    (the others contribute what their manifests record). Ends with OUTPUT_DIR/filelist.txt when the last step
    makes training clips."""
    inp, out = _checked(steps, Path(input_dir), Path(output_dir))
    unknown = set(only or ()) - {s.name for s in steps}
    if unknown:
        raise ConfigError(f"--only: unknown steps {sorted(unknown)}; steps are {[s.name for s in steps]}")
    with _locked(out):
        items = discover(inp, exclude=out)
        reports = []
        for step in steps:
            runs = only is None or step.name in only
            report, items = process_step(step, items, out / step.name, out, backend if runs else None, quiet)
            reports.append(report)
        filelist = write_filelist(out, items) if steps and steps[-1].clips else None
    return PipelineReport(reports, items, filelist)


def run_single(
    step: Step, input_dir: str | os.PathLike, output_dir: str | os.PathLike, backend: Backend, quiet: bool = False
) -> PipelineReport:
    """One step alone: every file under INPUT_DIR in; outputs, the inputs it passes on (hard links) and the
    manifest in OUTPUT_DIR, plus a filelist when the step makes training clips."""
    inp, out = _checked([step], Path(input_dir), Path(output_dir))
    with _locked(out):
        report, items = process_step(step, discover(inp, exclude=out), out, out, backend, quiet, link_inputs=True)
        filelist = write_filelist(out, items) if step.clips else None
    return PipelineReport([report], items, filelist)
