"""A group of three pmon servers ("a", "b", "c") on loopback sharing one real etcd
(tests/etcd.py): their projects, and how to read what each says."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from support import child, driver_runs, write_project  # noqa: F401 (for the group's tests)

KEY = "/pmon/test/group"
MEMBERS = ("a", "b", "c")


def write_group(tmp_path: Path, etcd_url: str, ttl: int = 4,
                only: Mapping[str, Mapping[str, Any]] | None = None, **redundancy: Any) -> dict[str, Path]:
    """Each member's project: a manager "w" and a run_on = "active" driver "drv" that stamps
    its start and stop into tmp_path/stamp-SERVER. Short settings keep tests fast; any key
    can be overridden, for all or, in `only` ({"a": {...}}), for one member."""
    paths = {}
    for server in MEMBERS:
        directory = tmp_path / server
        directory.mkdir()
        section = {"name": server, "group": list(MEMBERS), "first_active_change_interval": 0,
                   "witness": {"etcd": [etcd_url], "ttl": ttl, "key": KEY}, **redundancy,
                   **(only or {}).get(server, {})}
        managers = [{"name": "w", "command": child()},
                    {"name": "drv", "command": child("--stamp", str(tmp_path / f"stamp-{server}")),
                     "run_on": "active", "seconds_to_kill": 2}]
        paths[server] = write_project(directory, managers, redundancy=section)
    return paths


def stamp_path(tmp_path: Path, server: str) -> Path:
    return tmp_path / f"stamp-{server}"

