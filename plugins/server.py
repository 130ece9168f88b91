"""Free disk space and free memory of the server (the data manager's "emergency mode").

    [plugins.server]
    interval = 10
    disk_paths = ["."]          # folders whose file system is checked (relative: to the TOML)
    min_free_disk_mb = 1000
    min_free_disk_percent = 5
    min_free_memory_mb = 200    # available memory (psutil.virtual_memory().available)
    severity = "error"
    error_state = 1             # per finding
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psutil

from pmon.hookspecs import PluginSetup, Severity, Verdict, hookimpl

from ._settings import COMMON, _positive_number, read, string_list

MB = 1024 * 1024
SCHEMA = {
    **COMMON, "disk_paths": string_list, "min_free_disk_mb": _positive_number,
    "min_free_disk_percent": _positive_number, "min_free_memory_mb": _positive_number,
}


class ServerMonitor:
    def __init__(self) -> None:
        self.config: dict[str, Any] = {}
        self.paths: tuple[Path, ...] = ()

    @hookimpl
    def pmon_configure(self, settings: Any) -> PluginSetup:
        table = settings.tables.get("server")
        self.config = {
            "interval": 10.0, "severity": Severity.ERROR, "error_state": 1.0,
            **read("[plugins.server]", table or {}, SCHEMA),
        }
        base = settings.config_path.parent
        self.paths = tuple(base / p for p in self.config.get("disk_paths", (".",)))
        on = table is not None and any(
            k in self.config for k in ("min_free_disk_mb", "min_free_disk_percent", "min_free_memory_mb")
        )
        if table is not None and not on:
            raise ValueError(
                "[plugins.server]: set min_free_disk_mb, min_free_disk_percent or min_free_memory_mb"
            )
        return PluginSetup(tables=("server",), interval=self.config["interval"] if on else None)

    @hookimpl
    def pmon_monitor_check(self) -> list[Verdict]:
        config, found = self.config, []
        if "min_free_disk_mb" in config or "min_free_disk_percent" in config:
            for path in self.paths:
                try:
                    usage = psutil.disk_usage(str(path))
                except OSError as exc:
                    found.append((f"disk:{path}", f"cannot check the disk of {path}: {exc}"))
                    continue
                free_mb, free_pct = usage.free / MB, 100.0 - usage.percent
                if free_mb < config.get("min_free_disk_mb", 0) or free_pct < config.get(
                    "min_free_disk_percent", 0
                ):
                    found.append((
                        f"disk:{path}",
                        f"disk of {path}: {free_mb:.0f} MB ({free_pct:.1f} %) free, below the limit",
                    ))
        if "min_free_memory_mb" in config:
            free = psutil.virtual_memory().available / MB
            if free < config["min_free_memory_mb"]:
                found.append((
                    "memory",
                    f"free memory {free:.0f} MB below the limit of {config['min_free_memory_mb']:g} MB",
                ))
        return [
            Verdict(None, config["severity"], message, config["error_state"], key=key)
            for key, message in found
        ]


plugin = ServerMonitor()
