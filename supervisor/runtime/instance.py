"""One project, one pmon: the single-instance lock.

The project's identity is the canonical path of its file and state directory (config.py
resolves both), so every spelling of the path reaches the same lock. On POSIX the lock is
an flock on the state directory itself: a second pmon must open that directory to run at
all, and deleting a file in it (pmon.lock only says who holds the lock) frees nothing.
Before taking the project, the control socket is tried too: a pmon that still answers there
(say, one whose state directory was deleted and made again under it) keeps the project.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from pmon.errors import PmonError
from pmon.runtime import platform

# The control server's socket (control/protocol.py names it; runtime does not import control).
CONTROL_SOCKET = "pmon.sock"


class ProjectLock:
    """Held for as long as pmon runs; released when the process ends (by the kernel)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._dir_fd: int | None = None
        self._handle: Any = None

    def acquire(self) -> None:
        """Take the project, or raise PmonError naming the pmon that has it."""
        info = self.state_dir / "pmon.lock"
        if platform.IS_WINDOWS:  # no flock on a directory: lock the file (msvcrt)
            self._handle = open(info, "a+")
            if not platform.lock_exclusively(self._handle):
                raise self._refusal(_read_pid(info))
        else:
            fd = os.open(self.state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            if not platform.lock_exclusively(fd):
                os.close(fd)
                raise self._refusal(_read_pid(info))
            self._dir_fd = fd
            answering = self.state_dir / CONTROL_SOCKET
            if _answers(answering):
                raise self._refusal(_read_pid(info), f"it answers on {answering}")
            self._handle = open(info, "a+")
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.write(str(os.getpid()))
        self._handle.flush()

    def _refusal(self, pid: str, how: str = "") -> PmonError:
        return PmonError(
            f"another pmon (pid {pid}) already runs the project in {self.state_dir}"
            + (f" ({how})" if how else "")
            + "; talk to it with `pmon status`, or stop it first"
        )


def _read_pid(path: Path) -> str:
    try:
        return path.read_text().strip() or "?"
    except OSError:
        return "?"


def _answers(path: Path) -> bool:
    """Whether a process listens on the Unix socket `path` (a stale file does not)."""
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True
