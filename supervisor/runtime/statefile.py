"""What the supervisor knows about its children, kept on disk so that a restarted pmon can
find its running managers again (pid + process start time) instead of starting second copies.

Written atomically: a temporary file in the same directory, fsync, rename. A reader sees the
old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

VERSION = 2  # 2: project_state and stopped_cleanly (a file without them is not trusted)


def write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def process_start_time(pid: int) -> float | None:
    """The OS's start time of `pid` (with the pid, it names one process for good)."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def save(path: Path, state: dict[str, Any]) -> None:
    # Compact: json.dumps with an indent runs the pure-Python encoder, ~10x slower, and
    # with 2000 managers the state is written up to 20 times a second.
    write_atomically(path, json.dumps({"version": VERSION, **state}, separators=(",", ":")).encode())


def load(path: Path) -> dict[str, Any]:
    """The saved state. Raises ValueError with a readable reason when it cannot be used."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable state file ({exc})") from None
    if not isinstance(data, dict) or data.get("version") != VERSION:
        raise ValueError(f"{path}: not a pmon state file of version {VERSION}")
    return data
