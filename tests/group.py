"""A group of three pmon servers ("a", "b", "c") on loopback sharing one real etcd
(tests/etcd.py): their projects, and how to read what each says."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psutil

from support import child, write_project

KEY = "/pmon/test/group"
MEMBERS = ("a", "b", "c")


def write_group(tmp_path: Path, etcd_url: str, ttl: int = 4, **redundancy: Any) -> dict[str, Path]:
    """Each member's project: a manager "w" and a run_on = "active" driver "drv" that stamps
    its start and stop into tmp_path/stamp-SERVER. Short settings keep tests fast."""
    paths = {}
    for server in MEMBERS:
        directory = tmp_path / server
        directory.mkdir()
        section = {"name": server, "group": list(MEMBERS), "first_active_change_interval": 0,
                   "witness": {"etcd": [etcd_url], "ttl": ttl, "key": KEY}, **redundancy}
        managers = [{"name": "w", "command": child()},
                    {"name": "drv", "command": child("--stamp", str(tmp_path / f"stamp-{server}")),
                     "run_on": "active", "seconds_to_kill": 2}]
        paths[server] = write_project(directory, managers, redundancy=section)
    return paths


def stamp_path(tmp_path: Path, server: str) -> Path:
    return tmp_path / f"stamp-{server}"


def driver_runs(path: Path) -> bool:
    """The driver whose stamps are in `path` runs: started, not stopped since, its process
    alive and not frozen (a SIGKILL leaves no stop stamp; a SIGSTOP freezes it)."""
    if not path.exists():
        return False
    lines = [line.split() for line in path.read_text().splitlines()]
    if not lines or lines[-1][0] != "start":
        return False
    try:
        status = psutil.Process(int(lines[-1][2])).status()
    except psutil.NoSuchProcess:
        return False
    return status not in (psutil.STATUS_ZOMBIE, psutil.STATUS_STOPPED, psutil.STATUS_DEAD)
