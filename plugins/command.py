"""A command whose exit status is the verdict, as a Nagios check: 0 OK, 1 warning,
2 (or anything else) error. The first line it prints is the verdict's message.

    [plugins.command]
    interval = 30
    timeout = 10                # a check running longer is killed and counts as an error
    error_state = 1
    checks = [{ name = "database", command = ["./check_db.sh"] }]   # verdicts on the project

    [[managers]]                # a check about one manager (restart = true: stop it on error)
    monitor.command = { command = ["./check_driver.sh", "5020"], restart = false }

Commands run in the project file's folder, one after the other, in the plugin's thread.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from pmon.hookspecs import PluginSetup, Severity, Verdict, hookimpl

from ._settings import COMMON, ManagerSettings, _boolean, _string, positive, read


def _command(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ValueError('a non-empty list of strings, e.g. ["./check_db.sh", "-w", "80"]')
    return tuple(value)


def _checks(value: Any) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise ValueError('a list of tables, e.g. [{ name = "db", command = ["./check_db.sh"] }]')
    out = []
    for n, table in enumerate(value, start=1):
        check = read(f"checks[{n}]", table, {"name": _string, "command": _command})
        if "command" not in check:
            raise ValueError(f"checks[{n}] needs a command")
        check.setdefault("name", Path(check["command"][0]).name)
        out.append(check)
    return tuple(out)


SCHEMA = {
    **COMMON, "enabled": _boolean, "timeout": positive, "restart": _boolean,
    "command": _command, "checks": _checks,
}
DEFAULTS = {
    "interval": 30.0, "timeout": 10.0, "error_state": 1.0, "restart": False, "enabled": True,
}


class CommandMonitor:
    def __init__(self) -> None:
        self.settings = ManagerSettings(
            "command", SCHEMA, DEFAULTS, applies_to_all=False, global_only=("interval", "checks")
        )
        self.cwd = Path(".")

    @hookimpl
    def pmon_configure(self, settings: Any) -> PluginSetup:
        on, base = self.settings.configure(settings)
        for name, monitor in settings.managers.items():
            if "command" in monitor and "command" not in monitor["command"]:
                raise ValueError(f"manager '{name}', monitor.command: needs command = [...]")
        self.cwd = settings.config_path.parent
        on = on or bool(base.get("checks"))
        return PluginSetup(tables=("command",), interval=base["interval"] if on else None)

    def run(self, command: tuple[str, ...], timeout: float) -> tuple[Severity | None, str]:
        try:
            done = subprocess.run(
                command, cwd=self.cwd, capture_output=True, text=True, timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            return Severity.ERROR, f"{command[0]} did not finish within {timeout:g} s"
        except OSError as exc:
            return Severity.ERROR, f"{command[0]} cannot run: {exc}"
        line = (done.stdout.strip().splitlines() or [""])[0] or f"exit status {done.returncode}"
        if done.returncode == 0:
            return None, line
        return (Severity.WARNING if done.returncode == 1 else Severity.ERROR), line

    @hookimpl
    def pmon_monitor_check(self, project: Any) -> list[Verdict]:
        base, verdicts = self.settings.base, []
        for check in base.get("checks", ()):
            severity, message = self.run(check["command"], base["timeout"])
            if severity is not None:
                verdicts.append(Verdict(
                    None, severity, f"{check['name']}: {message}", base["error_state"],
                    key=check["name"],
                ))
        for view in project.managers:
            config = self.settings.of(view)
            if config is None or view.state != "running":
                continue
            severity, message = self.run(config["command"], config["timeout"])
            if severity is not None:
                restart = config["restart"] and severity is Severity.ERROR
                verdicts.append(Verdict(
                    view.name, severity, message, config["error_state"],
                    action="restart" if restart else None, key="command",
                ))
        return verdicts


plugin = CommandMonitor()
