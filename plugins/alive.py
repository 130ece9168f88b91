"""Alive heartbeat: a manager must send WATCHDOG=1 on its notify socket at least every
`alive_seconds`, or it is hung (WinCC OA's alive counter, systemd's WatchdogSec).

    [plugins.alive]             # for every manager once it has sent its first WATCHDOG=1
    interval = 1
    alive_seconds = 10
    restart = true              # stop the hung manager; the restart policy restarts it
    severity = "error"
    error_state = 1

    [[managers]]                # this manager must send WATCHDOG=1 from its start on
    monitor.alive = { alive_seconds = 5 }
"""

from __future__ import annotations

from typing import Any

from pmon.hookspecs import PluginSetup, Severity, Verdict, hookimpl

from ._settings import COMMON, ManagerSettings, _boolean, positive

SCHEMA = {**COMMON, "enabled": _boolean, "alive_seconds": positive, "restart": _boolean}
DEFAULTS = {
    "interval": 1.0, "alive_seconds": 10.0, "restart": False, "severity": Severity.ERROR,
    "error_state": 1.0, "enabled": True,
}


class AliveMonitor:
    def __init__(self) -> None:
        self.settings = ManagerSettings("alive", SCHEMA, DEFAULTS, applies_to_all=True)
        self.first_seen: dict[str, tuple[int, float]] = {}  # manager -> (pid, when running seen)

    @hookimpl
    def pmon_configure(self, settings: Any) -> PluginSetup:
        on, base = self.settings.configure(settings)
        return PluginSetup(tables=("alive",), interval=base["interval"] if on else None)

    @hookimpl
    def pmon_monitor_check(self, project: Any) -> list[Verdict]:
        verdicts, seen = [], {}
        for view in project.managers:
            config = self.settings.of(view)
            if config is None or view.pid is None or view.state != "running":
                continue
            pid, since = self.first_seen.get(view.name, (view.pid, project.now))
            if pid != view.pid:
                since = project.now  # restarted: its heartbeat is timed from now on
            seen[view.name] = (view.pid, since)
            explicit = "alive" in view.monitor
            if view.last_watchdog is None and not explicit:
                continue  # the global setting watches only managers that send WATCHDOG=1
            last = view.last_watchdog if view.last_watchdog is not None else since
            silent = project.now - last
            if silent > config["alive_seconds"]:
                verdicts.append(Verdict(
                    view.name, config["severity"],
                    f"hung: no WATCHDOG=1 for {silent:.1f} s "
                    f"(alive_seconds = {config['alive_seconds']:g})",
                    error_state=config["error_state"],
                    action="restart" if config["restart"] else None, key="alive",
                ))
        self.first_seen = seen
        return verdicts


plugin = AliveMonitor()
