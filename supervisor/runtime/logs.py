"""Files pmon writes: managers' output with size-based rotation, and the event log."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable


def backup_path(path: Path, n: int) -> Path:
    return path.with_name(f"{path.name}.{n}")


def shift_backups(path: Path, backups: int) -> None:
    """name.1 -> name.2 ... up to name.N (the oldest falls off), freeing name.1."""
    for n in range(backups - 1, 0, -1):
        older = backup_path(path, n)
        if older.exists():
            os.replace(older, backup_path(path, n + 1))


class RotatingFile:
    """Append-only bytes file that rotates at `max_bytes` into name.1 .. name.N."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "ab", buffering=0)
        self._size = self._file.tell()

    def write(self, data: bytes) -> None:
        if self.max_bytes and self._size + len(data) > self.max_bytes and self._size:
            self._rotate()
        self._file.write(data)
        self._size += len(data)

    def _rotate(self) -> None:
        self._file.close()
        if self.backups:
            shift_backups(self.path, self.backups)
            os.replace(self.path, backup_path(self.path, 1))
        else:
            self.path.unlink(missing_ok=True)
        self._file = open(self.path, "ab", buffering=0)
        self._size = 0

    def close(self) -> None:
        self._file.close()


def describe_exit(code: int | None) -> str:
    """'exit code 3', 'signal SIGKILL', or 'could not start' for people."""
    if code is None:
        return "could not start"
    if code < 0:
        import signal

        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


class EventLog:
    """pmon's own log: one JSON object a line in a file, and a readable line on stderr
    (under systemd, when stderr is the journal: a priority prefix instead of a timestamp,
    see journal.py)."""

    def __init__(
        self, path: Path, max_bytes: int, backups: int, echo: bool = True,
        on_error: Callable[[OSError], None] | None = None,
    ) -> None:
        self._file = RotatingFile(path, max_bytes, backups)
        self.echo = echo
        self.on_error = on_error  # told when a record cannot be written (disk full, ...)
        from pmon.runtime import journal

        self._journal = journal if echo and journal.connected() else None
        self.listeners: list[Callable[[dict[str, Any]], None]] = []  # told of every record

    def write(self, event: str, message: str, **fields: Any) -> None:
        now = time.time()
        record = {"ts": round(now, 3), "event": event, "message": message, **fields}
        try:
            self._file.write((json.dumps(record, default=str) + "\n").encode())
        except OSError as exc:  # a full disk must not take the supervisor down
            print(f"pmon: cannot write the event log: {exc}", file=sys.stderr)
            if self.on_error is not None:
                self.on_error(exc)
        for listener in self.listeners:  # the feed, the explainer: they never block
            try:
                listener(record)
            except Exception as exc:  # a listener's bug must not reach the code that decided
                print(f"pmon: an event listener failed: {exc!r}", file=sys.stderr)
        if self._journal is not None:
            level = self._journal.priority(event, fields)
            print(self._journal.prefixed(level, message), file=sys.stderr, flush=True)
        elif self.echo:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
            print(f"{stamp} {message}", file=sys.stderr, flush=True)

    def limit(self, max_bytes: int, backups: int) -> None:
        """New rotation limits, from the next write on."""
        self._file.max_bytes, self._file.backups = max_bytes, backups

    def close(self) -> None:
        self._file.close()
