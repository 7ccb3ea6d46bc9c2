"""One run directory, one run: an exclusive lock on ``<run_dir>/.lock`` held while a Trainer writes.

The lock is an ``fcntl.flock`` on an open file, so the operating system drops it when the process
ends in any way (SIGKILL included): a killed run never leaves a stale lock behind. A second run on the
same directory is refused with :class:`RunDirInUseError` naming the process that holds it.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not locked there
    fcntl = None  # type: ignore[assignment]

__all__ = ["RunDirInUseError", "RunLock"]


class RunDirInUseError(RuntimeError):
    """Another live process is writing into this run directory."""


class RunLock:
    """Holds ``<run_dir>/.lock`` from construction until :meth:`release` (or process exit)."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self._fd: int | None = None
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / ".lock"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is None:
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(self._fd, 512, 0).decode(errors="replace").strip() or "another process"
            os.close(self._fd)
            self._fd = None
            raise RunDirInUseError(
                f"run directory {self.run_dir} is in use by {holder}; wait for that run to finish, "
                "or choose another --name"
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(
            self._fd,
            f"process {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(),
            0,
        )

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __del__(self) -> None:
        self.release()
