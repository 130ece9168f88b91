"""The systemd unit of a project: written by `pmon service install`, removed by `uninstall`.

Choices, and why:
- Type=notify: systemd counts pmon as started only when the start sequence is done
  (sdnotify.py sends READY=1), so units ordered after it find the project running.
- KillMode=process (default): on `systemctl stop` systemd sends SIGTERM to pmon alone;
  pmon stops its managers in reverse order itself, each with its seconds_to_kill. And when
  pmon dies or is killed, systemd leaves the managers alone, so the pmon that Restart=
  starts adopts them (hot restart). With KillMode=mixed or control-group, systemd would
  kill every manager whenever pmon ends. `--kill-mode mixed` is offered for sites that
  prefer systemd to SIGKILL leftovers after a stop (it gives up hot restart after a crash).
- Delegate=yes: the unit's cgroup subtree is pmon's, so that each manager runs in a cgroup
  of its own that holds every descendant (runtime/cgroups.py); pmon sits in the leaf
  pmon-supervisor. (memory_max & co. would also need DelegateSubgroup=, systemd 254+, so
  that a restarted pmon may start in a unit whose subtree has controllers: not written.)
- TimeoutStopSec covers the longest ordered stop (the sum of the managers' seconds_to_kill).
- WatchdogSec (optional): pmon's loop sends WATCHDOG=1 at half of it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pmon.runtime.statefile import write_atomically
from pmon.service import pmon_command, service_name, start_timeout, stop_timeout

if TYPE_CHECKING:
    from pmon.config import Config

KILL_MODES = ("process", "mixed")


@dataclass(frozen=True)
class UnitOptions:
    user: bool = False  # a user unit (systemctl --user) instead of a system one
    watchdog_sec: float | None = None
    kill_mode: str = "process"
    python: str | None = None  # default: the Python running pmon now


def unit_name(config: "Config") -> str:
    return f"{service_name(config)}.service"


def unit_dir(user: bool) -> Path:
    if user:
        base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        return Path(base) / "systemd" / "user"
    return Path("/etc/systemd/system")


def quote(arg: str) -> str:
    """One word of a systemd command line: `%` and `$` are specifiers there, not text."""
    text = arg.replace("%", "%%").replace("$", "$$")
    if text and not any(c.isspace() or c in "\"'\\;" for c in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unit_text(config: "Config", options: UnitOptions = UnitOptions()) -> str:
    if options.kill_mode not in KILL_MODES:
        raise ValueError(f"kill mode must be one of {', '.join(KILL_MODES)}")
    command = " ".join(quote(arg) for arg in pmon_command(config, options.python))
    lines = [
        "# Written by `pmon service install`; remove with `pmon service uninstall`.",
        "[Unit]",
        f"Description=pmon process monitor, project {config.project.name}",
        "After=network-online.target",
        "Wants=network-online.target",
        "StartLimitIntervalSec=0",
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={command}",
        "ExecReload=/bin/kill -HUP $MAINPID",
        f"WorkingDirectory={quote(str(config.path.parent))}",
        "Environment=PYTHONUNBUFFERED=1",
        f"KillMode={options.kill_mode}",
        "Delegate=yes",
        "KillSignal=SIGTERM",
        f"TimeoutStartSec={start_timeout(config):g}",
        f"TimeoutStopSec={stop_timeout(config):g}",
        "Restart=always",
        "RestartSec=1",
    ]
    if options.watchdog_sec:
        lines.append(f"WatchdogSec={options.watchdog_sec:g}")
    target = "default.target" if options.user else "multi-user.target"
    lines += ["", "[Install]", f"WantedBy={target}", ""]
    return "\n".join(lines)


def install(config: "Config", options: UnitOptions, directory: Path | None = None) -> Path:
    """Write the unit file; returns its path. Raises OSError when it cannot be written."""
    target = (directory or unit_dir(options.user)) / unit_name(config)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(target, unit_text(config, options).encode())
    os.chmod(target, 0o644)
    return target


def uninstall(config: "Config", user: bool, directory: Path | None = None) -> Path | None:
    """Remove the unit file; returns its path, or None when there was none."""
    target = (directory or unit_dir(user)) / unit_name(config)
    if not target.exists():
        return None
    target.unlink()
    return target


def next_steps(config: "Config", user: bool, installed: bool) -> list[str]:
    ctl = "systemctl --user" if user else "systemctl"
    name = unit_name(config)
    if installed:
        return [f"{ctl} daemon-reload", f"{ctl} enable --now {name}", f"{ctl} status {name}"]
    return [f"{ctl} disable --now {name}   (if it was enabled)", f"{ctl} daemon-reload"]
