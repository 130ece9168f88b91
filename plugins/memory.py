"""Memory and CPU limits per manager, measured over its whole process tree.

    [plugins.memory]            # on for every manager, with these defaults
    interval = 1                # seconds between checks
    max_rss_mb = 500            # resident memory of the tree
    max_cpu_percent = 90        # CPU of the tree, % of one core, over the last interval
    checks = 3                  # consecutive checks over a limit before the verdict
    restart = false             # true: stop the manager; the restart policy restarts it
    severity = "warning"
    error_state = 1             # added to the server's error state while over the limit

    [[managers]]                # per manager: override any key but interval,
    monitor.memory = { max_rss_mb = 2000, restart = true }   # or enabled = false
"""

from __future__ import annotations

from typing import Any

from pmon.hookspecs import PluginSetup, Severity, Verdict, hookimpl

from ._settings import COMMON, ManagerSettings, _boolean, _count, positive
from ._trees import TreeSampler

MB = 1024 * 1024
SCHEMA = {
    **COMMON, "enabled": _boolean, "max_rss_mb": positive, "max_cpu_percent": positive,
    "checks": _count, "restart": _boolean,
}
DEFAULTS = {
    "interval": 1.0, "checks": 3, "restart": False, "severity": Severity.WARNING,
    "error_state": 1.0, "enabled": True,
}
LIMITS = (("rss", "max_rss_mb", "MB"), ("cpu", "max_cpu_percent", "% CPU"))


class MemoryMonitor:
    def __init__(self) -> None:
        self.settings = ManagerSettings("memory", SCHEMA, DEFAULTS, applies_to_all=True)
        self.sampler = TreeSampler()
        self.over: dict[tuple[str, str], tuple[int, int]] = {}  # (manager, key) -> (pid, count)

    @hookimpl
    def pmon_configure(self, settings: Any) -> PluginSetup:
        on, base = self.settings.configure(settings)
        tables = [settings.tables.get("memory", {})] + [
            m["memory"] for m in settings.managers.values() if "memory" in m
        ]
        if on and not any(k in t for t in tables for k in ("max_rss_mb", "max_cpu_percent")):
            raise ValueError("[plugins.memory]: set max_rss_mb or max_cpu_percent (or both)")
        return PluginSetup(tables=("memory",), interval=base["interval"] if on else None)

    @hookimpl
    def pmon_monitor_check(self, project: Any) -> list[Verdict]:
        watched = {}
        for view in project.managers:
            config = self.settings.of(view) if view.pid else None
            if config is not None and view.state in ("running", "starting"):
                watched[view.name] = (view, config)
        samples = self.sampler.sample({name: view.pid for name, (view, _) in watched.items()})
        verdicts, over = [], {}
        for name, (view, config) in watched.items():
            if name not in samples:
                continue
            rss, cpu = samples[name]
            values = {"rss": rss / MB, "cpu": cpu}
            for key, limit_key, unit in LIMITS:
                limit, value = config.get(limit_key), values[key]
                if limit is None or value is None or value <= limit:
                    continue
                pid, count = self.over.get((name, key), (view.pid, 0))
                count = count + 1 if pid == view.pid else 1
                over[(name, key)] = (view.pid, count)
                if count >= max(config["checks"], 1):
                    verdicts.append(Verdict(
                        name, config["severity"],
                        f"{key} {value:.0f} {unit} over the limit of {limit:g} {unit} "
                        f"({count} checks in a row)",
                        error_state=config["error_state"],
                        action="restart" if config["restart"] else None, key=key,
                    ))
        self.over = over
        return verdicts


plugin = MemoryMonitor()
