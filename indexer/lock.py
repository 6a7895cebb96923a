"""One builder at a time per index directory, and one compaction (fcntl locks, released by the OS if we die).

The builder lock covers every change to the catalog of record and the active pointer, so it
is held briefly by live edits and for the whole of a catalog build. A compaction holds its own
lock throughout but the builder lock only at its start and its publish, so live edits go on
while it writes the new snapshot; a catalog build takes both.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from catalens.errors import BuildLockedError

BUILD_LOCK = ".build.lock"
COMPACT_LOCK = ".compact.lock"


@contextmanager
def _flock(path: Path, busy: str) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            raise BuildLockedError(busy.format(holder=holder)) from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


@contextmanager
def builder_lock(index_dir: Path) -> Iterator[None]:
    with _flock(index_dir / BUILD_LOCK, f"another build is running on {index_dir} (pid {{holder}}); "
                                        "wait for it to finish"):
        yield


@contextmanager
def compaction_lock(index_dir: Path) -> Iterator[None]:
    with _flock(index_dir / COMPACT_LOCK, f"a compaction is running on {index_dir} (pid {{holder}}); "
                                          "wait for it to finish"):
        yield


def compaction_running(index_dir: Path) -> bool:
    """Whether a live process holds the compaction lock."""
    try:
        with compaction_lock(index_dir):
            return False
    except BuildLockedError:
        return True
