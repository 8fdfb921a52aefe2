"""What a data-pipeline step did to each file: one JSON line per finished input, appended as it finishes.

A step folder's `manifest.jsonl` is both the user's record (why was this clip dropped?) and the resume state
(which inputs are finished?). One line per input:

    {"input": "segments/a-seg00.mp4", "output": ["align/a-seg00.mp4"], "seconds": [5.2], "status": "kept",
     "reason": null, "detail": null, "figures": {"frames": 130, "face_lost": 0}, "key": "align/1 res=256 ...",
     "stamp": [123456, 1732461234000000000], "elapsed": 1.31}

- `status`: `kept` (outputs written), `dropped` (`reason` says why, in a few fixed words per step, so the final
  table can count reasons; `detail` has the particulars), `unchecked` (a filter that could not run passed the
  input on; `detail` is the warning), `error` (an unexpected failure: a bug, retried by the next run).
- `seconds`: the length of each output, in order; `figures`: the step's own measurements.
- `key`: the step's settings; `stamp`: the input's (size, mtime_ns). A record counts as done only while both
  still match and every output exists, so changing a setting, replacing an input or deleting an output redoes
  exactly the files concerned.
- Paths inside the run's root folder are stored relative to it (the folder can move), others absolute.

Only the main process writes a manifest (workers return results), one record per `os.write` on an O_APPEND
descriptor, so a record is either complete or, if the process is killed mid-write, a torn last line. Reading
skips lines that do not parse, and the next append first ends a torn line, so one kill costs at most the record
being written (its file is redone). The last record for an input wins.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STATUSES = ("kept", "dropped", "unchecked", "error")


@dataclass(frozen=True)
class Record:
    """One input's outcome in one step (see the module docstring for the fields)."""

    input: Path
    output: tuple[Path, ...] = ()
    seconds: tuple[float, ...] = ()
    status: str = "kept"
    reason: str | None = None
    detail: str | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    key: str = ""
    stamp: tuple[int, int] | None = None
    elapsed: float = 0.0

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}")
        if len(self.output) != len(self.seconds):
            raise ValueError("a record needs one duration per output")

    @property
    def passes(self) -> bool:
        """Whether the outputs go on to the next step."""
        return self.status in ("kept", "unchecked")

    def is_done(self, key: str) -> bool:
        """Finished with these settings, on this very input, and its outputs are still there."""
        return (
            self.status != "error"
            and self.key == key
            and self.stamp == file_stamp(self.input)
            and all(path.is_file() for path in self.output)
        )


def file_stamp(path: Path) -> tuple[int, int] | None:
    """(size, mtime_ns) of a file, None if it is gone: a rewritten input gets a new stamp."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


class Manifest:
    """The JSON-lines file of one step folder; paths are resolved against `root` (the run's OUTPUT_DIR)."""

    def __init__(self, path: str | os.PathLike, root: str | os.PathLike) -> None:
        self.path = Path(path)
        self.root = Path(root).absolute()

    def read(self) -> dict[Path, Record]:
        """The last record of every input (keyed by absolute input path); torn or foreign lines are skipped."""
        records: dict[Path, Record] = {}
        if not self.path.is_file():
            return records
        for number, line in enumerate(self.path.read_text(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = self._decode(json.loads(line))
            except (ValueError, TypeError, KeyError) as exc:
                log.warning("%s:%d: skipping an unreadable record (%s)", self.path, number, exc)
                continue
            records[record.input] = record
        return records

    def append(self, record: Record) -> None:
        """Add one record with a single write; a torn last line (killed writer) is ended first."""
        line = json.dumps(self._encode(record), separators=(", ", ": ")) + "\n"
        data = line.encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data
            while data:
                data = data[os.write(fd, data) :]
        finally:
            os.close(fd)

    def _relative(self, path: Path) -> str:
        absolute = path.absolute()
        try:
            return absolute.relative_to(self.root).as_posix()
        except ValueError:
            return str(absolute)

    def _absolute(self, text: str) -> Path:
        path = Path(text)
        return path if path.is_absolute() else self.root / path

    def _encode(self, record: Record) -> dict[str, Any]:
        data = asdict(record)
        data["input"] = self._relative(record.input)
        data["output"] = [self._relative(p) for p in record.output]
        data["seconds"] = [round(s, 3) for s in record.seconds]
        data["elapsed"] = round(record.elapsed, 3)
        return data

    def _decode(self, data: dict[str, Any]) -> Record:
        stamp = data.get("stamp")
        return Record(
            input=self._absolute(data["input"]),
            output=tuple(self._absolute(p) for p in data["output"]),
            seconds=tuple(float(s) for s in data["seconds"]),
            status=data["status"],
            reason=data.get("reason"),
            detail=data.get("detail"),
            figures=dict(data.get("figures") or {}),
            key=data.get("key", ""),
            stamp=(int(stamp[0]), int(stamp[1])) if stamp else None,
            elapsed=float(data.get("elapsed", 0.0)),
        )
