"""Where a result goes: the checks on OUT before a run, the temporary file it is built in, the move into place.

A run builds its result in `.{OUT's name}.{8 hex digits}.part` next to OUT, so an interrupted run never leaves a
half-written OUT, and holds an exclusive `flock` on that file for as long as it exists. A run killed outright
(SIGKILL, power loss) cannot delete its part, but the kernel drops its lock: the next run to the same OUT deletes
every part of OUT's naming that it can lock, and so never one that a concurrent run is still writing. Where
there is no `flock` (Windows, or a filesystem that refuses locks) a part counts as stale only once nothing has
been written to it for a day.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Iterable
from pathlib import Path

from latentsync.errors import VideoError

try:
    import fcntl
except ImportError:  # Windows: no flock, stale parts are told by their age alone
    fcntl = None  # type: ignore[assignment]

UNLOCKED_STALE_AFTER = 24 * 3600.0  # seconds since its last write after which an unlockable part counts as stale
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
# A name of our pattern that is a symlink or a FIFO is not ours: opened without following or blocking, then skipped.
_INSPECT = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
_ATTEMPTS = 5


def check_writable(out_path: str | os.PathLike, sources: Iterable[str | os.PathLike | None] = ()) -> Path:
    """Fail fast, before hours of inference, if OUT cannot be written where the user asked; return its path.

    OUT must name a file: a trailing slash, a folder, or an existing device, FIFO or socket (`/dev/null`) is
    refused rather than replaced by a file. A symlink is followed: the result replaces what the link points to
    and the link stays valid. OUT may not be one of `sources` (the inputs), by any name, symlink or hard link.
    `os.access` is not trusted (it says yes to root, and knows nothing of name lengths, ACLs or immutable
    folders): a file of the run's temporary naming is really created and removed, and an existing OUT is opened
    for writing (without truncating, so it is left as it is).
    """
    text = os.fspath(out_path)
    out = Path(out_path)
    if out.is_symlink():
        out = Path(os.path.realpath(out))
    if out.is_dir():
        raise VideoError(f"output {out} is a directory, not a file")
    if text.endswith(tuple(sep for sep in (os.sep, os.altsep) if sep)):
        raise VideoError(f"output {text} ends with a path separator: give a file name, e.g. {text}out.mp4")
    if out.exists() and not out.is_file():
        raise VideoError(f"output {out} is not a regular file (a device, FIFO or socket): give a file path")
    folder = out.parent
    if not folder.is_dir():
        raise VideoError(f"output folder does not exist: {folder}")
    for source in sources:
        if source is not None and _same_file(source, out):
            raise VideoError(f"output {out} is the input {source}: writing it would overwrite the source")
    probe = _part_path(out)
    try:
        fd = os.open(probe, _CREATE, 0o644)
    except OSError as exc:
        raise VideoError(f"output folder is not writable: {folder} ({_reason(exc)})") from None
    try:
        os.close(fd)
    finally:
        with contextlib.suppress(OSError):  # never locked: should it stay, the next run's cleanup deletes it
            probe.unlink()
    if out.exists():
        try:
            os.close(os.open(out, os.O_WRONLY))
        except OSError as exc:
            raise VideoError(f"output {out} exists and cannot be written ({_reason(exc)})") from None
    return out


class PartFile:
    """The temporary file a result is built in, next to OUT; locked (where `flock` exists) until committed or
    discarded. Creating one first deletes the stale parts of the same OUT."""

    def __init__(self, out: Path) -> None:
        remove_stale_parts(out)
        self.out = out
        for _ in range(_ATTEMPTS):
            self.path = _part_path(out)
            self._fd = os.open(self.path, _CREATE, 0o644)
            try:
                # Between the create and the lock a cleaner may have taken the new file for a stale one: check that
                # it is still ours and still in place, or start again under a new name.
                if _lock(self._fd) is not False and _names(self.path, self._fd):
                    return
            except BaseException:  # Ctrl-C or SIGTERM right now: the file just made goes too
                self.discard()
                raise
            self._release()
        raise OSError(errno.EAGAIN, f"no temporary file could be claimed in {_ATTEMPTS} attempts")

    def commit(self) -> None:
        """Move the finished file to OUT. A rename where possible; where OUT cannot be replaced (EBUSY for a file
        bind-mounted into a container, EXDEV, EPERM) its bytes are copied into OUT in place, which, unlike the
        rename, is not atomic. OSError if both fail: the caller then discards the part."""
        try:
            os.replace(self.path, self.out)
        except OSError:
            shutil.copyfile(self.path, self.out)
            self.path.unlink()
        self._release()

    def discard(self) -> None:
        """Delete the part (still locked, so no cleaner can mistake it for a stale one meanwhile) and unlock it.
        Safe to call after `commit`, or twice."""
        try:
            if self._fd >= 0:
                self.path.unlink(missing_ok=True)
        finally:
            self._release()

    def _release(self) -> None:
        """Close the file (which drops the lock), once: a closed descriptor's number may already be reused."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


def remove_stale_parts(out: str | os.PathLike) -> list[Path]:
    """Delete the parts of OUT that no live run holds (see the module's docstring); return those deleted.

    Only names of exactly our pattern for this OUT are considered, so nothing else in the folder is touched.
    """
    out = Path(out)
    pattern = re.compile(rf"\.{re.escape(out.name)}\.[0-9a-f]{{8}}\.part")
    try:
        names = os.listdir(out.parent)
    except OSError:
        return []
    removed = []
    for name in names:
        path = out.parent / name
        if pattern.fullmatch(name) and _remove_if_stale(path):
            removed.append(path)
    return removed


def _remove_if_stale(path: Path) -> bool:
    try:
        fd = os.open(path, _INSPECT)
    except OSError:
        return False
    try:
        info = os.fstat(fd)
        locked = _lock(fd) if stat.S_ISREG(info.st_mode) else False
        if locked:
            path.unlink(missing_ok=True)  # while locked: a run that created it just now then sees it gone, not ours
            return True
    except OSError:
        return False
    finally:
        os.close(fd)
    # No locks here: a part not written to for a day is taken as stale (a live run writes it all the time).
    if locked is None and time.time() - info.st_mtime >= UNLOCKED_STALE_AFTER:
        try:
            path.unlink()  # after the close: Windows cannot delete an open file
        except OSError:
            return False
        return True
    return False


def _lock(fd: int) -> bool | None:
    """Take an exclusive lock without waiting: True if taken, False if someone holds it, None if there are no
    locks here (no fcntl, or a filesystem that refuses them)."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return None
    return True


def _names(path: Path, fd: int) -> bool:
    """Whether `path` still names the file open as `fd`."""
    try:
        return os.path.samestat(os.stat(path), os.fstat(fd))
    except OSError:
        return False


def _part_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.{secrets.token_hex(4)}.part")


def _same_file(a: str | os.PathLike, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist: a missing input is reported where it is opened
        return False


def _reason(exc: OSError) -> str:
    """The OS's words without the path, which the message gives already."""
    return exc.strerror or type(exc).__name__
