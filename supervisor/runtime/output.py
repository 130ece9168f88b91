"""A manager's output file, written by the manager itself so that it outlives pmon.

Why not a pipe that pmon reads: a pipe's read end dies with pmon. A manager writing to it
then gets SIGPIPE (or EPIPE), or blocks once the pipe is full, and its output is lost until
something reads again. So the manager's stdout and stderr are the log file itself, opened
with O_APPEND: every write lands at the current end, whoever else touches the file, and it
keeps working while pmon is dead, restarting or being upgraded.

pmon rotates the file by copy-truncate (logrotate's `copytruncate`): copy it to name.1,
then cut it to zero length; thanks to O_APPEND the manager's next write goes to offset 0
instead of leaving a hole. Lines written between the copy and the cut are lost; the copy
is repeated for bytes that arrived meanwhile, so the window is a few microseconds. pmon
checks sizes every CHECK_SECONDS and whenever a manager starts or ends.

On Windows the child's handle has no append mode of its own: after a cut its next write
lands at its old offset (the gap reads as zero bytes). Rotation there is best effort.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from pmon.runtime.logs import backup_path, shift_backups

CHECK_SECONDS = 5.0
COPY_CHUNK = 1 << 20


class ManagerLog:
    """The output file of one manager: opened for the child, rotated by pmon."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        path.parent.mkdir(parents=True, exist_ok=True)

    def open_for_child(self) -> int:
        """A write-only, append-mode descriptor to hand to the child (the caller closes it)."""
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def rotate_if_needed(self) -> bool:
        """Rotate when the file is over `max_bytes`. Raises OSError (disk full, ...)."""
        if not self.max_bytes or self.size() <= self.max_bytes:
            return False
        self.rotate()
        return True

    def rotate(self) -> None:
        import shutil  # here: at module level it maps libbz2 and liblzma into the daemon

        if not self.backups:
            os.truncate(self.path, 0)
            return
        shift_backups(self.path, self.backups)
        with open(self.path, "rb") as source, open(backup_path(self.path, 1), "wb") as copy:
            while True:  # copy until nothing new arrived, then cut at once
                shutil.copyfileobj(source, copy, COPY_CHUNK)
                if os.fstat(source.fileno()).st_size <= source.tell():
                    break
            os.truncate(self.path, 0)

    def close(self) -> None:
        """Nothing to close: pmon holds no descriptor of a manager's output."""


def note(path: Path, text: str, at: float) -> None:
    """Append one of pmon's own lines about the manager to its output file
    (`-- pmon 2026-12-02 03:01:12.345: exited with signal SIGKILL: restarted`), so that the
    log shows what happened between its lines, a SIGKILL included. One O_APPEND write: it
    lands between the manager's lines, never inside a line the manager wrote whole. A
    failure (disk full) is ignored: the event log has the same facts."""
    import time

    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) + f".{int(at * 1000) % 1000:03d}"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, f"{NOTE_PREFIX}{stamp}: {text}\n".encode())
        finally:
            os.close(fd)
    except OSError:
        pass


NOTE_PREFIX = "-- pmon "  # how `pmon logs` tells pmon's lines from the manager's
