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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pmon.core.manager import Manager

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
    _sync_directory(path.parent)


def _sync_directory(directory: Path) -> None:
    """fsync the directory: the rename itself survives a crash of the machine."""
    if os.name != "posix":
        return  # Windows: MoveFileEx is durable on NTFS, and a directory cannot be opened
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# The type of every field of a manager's record that a reader uses (None: may be null).
RECORD_TYPES: dict[str, tuple[type, ...]] = {
    "pid": (int, type(None)), "create_time": (int, float, type(None)), "state": (str,),
    "restarts": (int,), "recent_restarts": (list,), "wanted": (bool,),
    "exit_code": (int, type(None)), "reason": (str, type(None)),
    "kill_at": (int, float, type(None)), "then_start": (bool,), "ready_failed": (bool,),
    "uid": (int,), "exe": (str,),
}
TOP_TYPES: dict[str, tuple[type, ...]] = {
    "project": (str,), "project_state": (str,), "project_reason": (str, type(None)),
    "stopped_cleanly": (bool,), "job": (dict, type(None)), "managers": (dict,),
}


def wrong_fields(record: Any, types: dict[str, tuple[type, ...]]) -> list[str]:
    """The fields of a record that have the wrong type (a hand-edited or corrupt file);
    a missing field is fine (an older file)."""
    if not isinstance(record, dict):
        return ["(not a table)"]
    wrong = []
    for key, allowed in types.items():
        value = record.get(key)
        if key in record and (
            not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed)
        ):
            wrong.append(f"{key} = {json.dumps(value)[:40]}")
    return wrong


def resume_fields(manager: "Manager", now: float, wall: float) -> dict[str, Any]:
    """What a manager's record holds beyond its counters so that the next pmon can carry on
    what this one had under way (core/adoption.py reads them; older files lack them):
    the wall-clock time a stop kills at, and whether it starts again after the stop."""
    from pmon.core.manager import Deadline

    kill_at = None
    if manager.deadline_kind is Deadline.KILL and manager.deadline is not None:
        kill_at = wall + (manager.deadline - now)
    return {
        "kill_at": kill_at, "then_start": manager.restart_pending,
        "ready_failed": manager.ready_failed,
    }


def process_start_time(pid: int) -> float | None:
    """The OS's start time of `pid` (with the pid, it names one process for good)."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def encode(state: dict[str, Any]) -> bytes:
    # Compact: json.dumps with an indent runs the pure-Python encoder, ~10x slower, and
    # with 2000 managers the state is written up to 20 times a second.
    return json.dumps({"version": VERSION, **state}, separators=(",", ":")).encode()


def save(path: Path, state: dict[str, Any]) -> None:
    write_atomically(path, encode(state))


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
