"""A terminal progress bar (frames, fps, ETA) behind the one `Progress` callback type."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator

from tqdm import tqdm

from latentsync.pipeline.report import Progress


@contextmanager
def progress_bar(desc: str, unit: str = "frame", quiet: bool = False) -> Iterator[Progress]:
    """Yield a `Progress` callback drawing a tqdm bar on stderr; silent when quiet or stderr is not a TTY."""
    bar = tqdm(desc=desc, unit=unit, disable=quiet or not sys.stderr.isatty(), dynamic_ncols=True)

    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        bar.close()
