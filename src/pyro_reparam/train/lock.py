"""One run per checkpoint folder: an exclusive ``fcntl.flock`` on ``<checkpoint_dir>/.fit.lock``,
held for the whole run.

Two runs writing one ``checkpoint.pt`` would overwrite each other's progress (and each resume
the other's state), so the second one fails at once, naming the folder and the pid of the run
that holds it. The lock is the kernel's: it goes with the process, so a run killed with
SIGKILL leaves no stale lock behind (the file stays; it is never deleted, since deleting a lock
file lets two later runs lock two different files).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from pyro_reparam.train.checkpoint import CheckpointError

LOCK_NAME = ".fit.lock"


class FolderLock:
    """An exclusive, non-blocking lock on a checkpoint folder (a context manager)."""

    def __init__(self, folder: Path):
        self.path = folder / LOCK_NAME
        self.fd: int | None = None

    def __enter__(self) -> FolderLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise CheckpointError(
                f"fit: checkpoint_dir {self.path.parent} is in use by another run (pid "
                f"{holder}); wait for it to finish, stop it, or pass another checkpoint_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
