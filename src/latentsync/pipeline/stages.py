"""Running pipeline stages concurrently over bounded queues.

CPU stages (decode + face work before the model, paste + encode after it) run in their own threads while the
model denoises, so a GPU does not wait on the CPU. Queues are bounded, so at most a few chunks are in flight
whatever the video's length: memory does not grow with length. An error in any stage stops the others and is
raised in the caller's thread.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Generic, Iterable, Iterator, TypeVar

T = TypeVar("T")
_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def prefetch(source: Iterable[T], maxsize: int = 2) -> Iterator[T]:
    """Iterate `source` in a background thread, keeping at most `maxsize` items ready ahead of the consumer.

    However the consumer stops (closed, an error, Ctrl-C or SIGTERM raised at any point, `thread.start()`
    included), the thread is done with `source` once this generator has ended, so the caller may close `source`.
    """
    q: queue.Queue = queue.Queue(maxsize)
    stop = threading.Event()
    go = threading.Event()  # set once start() has returned: until then the thread may not touch `source`

    def hand_over(item: object) -> bool:
        """Queue `item`, waiting for room, unless the consumer stops meanwhile (then False)."""
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        go.wait()
        if stop.is_set():
            return
        try:
            for item in source:
                if not hand_over(item):
                    return
            hand_over(_DONE)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            hand_over(_Failure(exc))

    thread = threading.Thread(target=produce, name="prefetch", daemon=True)
    try:
        thread.start()
        go.set()
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        if go.is_set():
            thread.join()
        go.set()  # a thread whose start() was interrupted was never let go: it sees `stop` and ends untouched


class Sink(Generic[T]):
    """Consume items with `fn` in a background thread. `put` blocks when `maxsize` items are waiting, and
    re-raises a failure of `fn`; `close` waits for the rest and re-raises too."""

    def __init__(self, fn: Callable[[T], None], maxsize: int = 2) -> None:
        self._fn = fn
        self._q: queue.Queue = queue.Queue(maxsize)
        self._error: BaseException | None = None
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="sink", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is _DONE:
                return
            if self._error is None and not self._stopped:
                try:
                    self._fn(item)
                except BaseException as exc:
                    self._error = exc

    def put(self, item: T) -> None:
        self._raise()
        self._q.put(item)

    def close(self) -> None:
        self._q.put(_DONE)
        self._thread.join()
        self._raise()

    def stop(self) -> None:
        """Shut down after a failure elsewhere: what is still queued is dropped, nothing is raised, and the thread
        ends (a thread left waiting would keep its queued frames alive for the life of a long-running service)."""
        self._stopped = True
        if self._thread.is_alive():
            self._q.put(_DONE)
            self._thread.join()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error
