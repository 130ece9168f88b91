"""TCP ports that must accept connections: a manager's listening port, or a partner system.

    [plugins.port]              # defaults, and the project's own targets
    interval = 5
    connect_timeout = 1
    checks = 2                  # consecutive failed connects before the verdict
    severity = "error"
    error_state = 1
    targets = [{ name = "partner", host = "192.0.2.7", port = 4999 }]   # verdicts on the project

    [[managers]]                # a manager's port, checked while it is running
    monitor.port = { port = 5020, host = "127.0.0.1", restart = true }
"""

from __future__ import annotations

import socket
from typing import Any

from pmon.hookspecs import PluginSetup, Severity, Verdict, hookimpl

from ._settings import COMMON, ManagerSettings, _boolean, _count, _string, positive, read


def _port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ValueError("a TCP port number 1..65535")
    return value


TARGET = {"name": _string, "host": _string, "port": _port}


def _targets(value: Any) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise ValueError('a list of tables, e.g. [{ name = "partner", host = "10.0.0.2", port = 4999 }]')
    out = []
    for n, table in enumerate(value, start=1):
        target = {"host": "127.0.0.1", **read(f"targets[{n}]", table, TARGET)}
        if "port" not in target:
            raise ValueError(f"targets[{n}] needs a port")
        target.setdefault("name", f"{target['host']}:{target['port']}")
        out.append(target)
    return tuple(out)


SCHEMA = {
    **COMMON, "enabled": _boolean, "connect_timeout": positive, "checks": _count,
    "restart": _boolean, "host": _string, "port": _port, "targets": _targets,
}
DEFAULTS = {
    "interval": 5.0, "connect_timeout": 1.0, "checks": 2, "severity": Severity.ERROR,
    "error_state": 1.0, "restart": False, "host": "127.0.0.1", "enabled": True,
}


def accepts(host: str, port: int, timeout: float) -> str | None:
    """None if the port accepts a connection, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__


class PortMonitor:
    def __init__(self) -> None:
        self.settings = ManagerSettings(
            "port", SCHEMA, DEFAULTS, applies_to_all=False, global_only=("interval", "targets")
        )
        self.failed: dict[str, tuple[int | None, int]] = {}  # target -> (pid, count)

    @hookimpl
    def pmon_configure(self, settings: Any) -> PluginSetup:
        on, base = self.settings.configure(settings)
        for name, monitor in settings.managers.items():
            if "port" in monitor and "port" not in {**base, **monitor["port"]}:
                raise ValueError(f"manager '{name}', monitor.port: needs port = NUMBER")
        on = on or bool(base.get("targets"))
        return PluginSetup(tables=("port",), interval=base["interval"] if on else None)

    def _judge(
        self, key: str, pid: int | None, error: str | None, config: dict[str, Any],
        target: str | None, what: str, failed: dict[str, tuple[int | None, int]],
    ) -> Verdict | None:
        if error is None:
            return None
        last_pid, count = self.failed.get(key, (pid, 0))
        count = count + 1 if last_pid == pid else 1
        failed[key] = (pid, count)
        if count < max(config["checks"], 1):
            return None
        return Verdict(
            target, config["severity"], f"{what} refuses connections: {error} ({count} checks)",
            error_state=config["error_state"],
            action="restart" if config["restart"] and target else None, key=key,
        )

    @hookimpl
    def pmon_monitor_check(self, project: Any) -> list[Verdict]:
        base, verdicts = self.settings.base, []
        failed: dict[str, tuple[int | None, int]] = {}
        for target in base.get("targets", ()):
            error = accepts(target["host"], target["port"], base["connect_timeout"])
            what = f"{target['name']} ({target['host']}:{target['port']})"
            verdict = self._judge(f"target:{target['name']}", None, error, base, None, what, failed)
            verdicts.append(verdict)
        for view in project.managers:
            config = self.settings.of(view)
            if config is None or view.state != "running":
                continue  # a starting manager may not listen yet
            error = accepts(config["host"], config["port"], config["connect_timeout"])
            what = f"port {config['host']}:{config['port']} of {view.name}"
            verdicts.append(self._judge(view.name, view.pid, error, config, view.name, what, failed))
        self.failed = failed
        return [v for v in verdicts if v is not None]


plugin = PortMonitor()
