"""Running pmon as an operating-system service: a systemd unit on Linux, a Windows service
through pywin32. What both share (the name, the command, how long a stop may take) is here;
the rest sits in systemd.py and windows.py, each importable on every platform.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from pmon.runtime.process import SYSTEMD_UNIT_ENV

if TYPE_CHECKING:
    from pmon.config import Config

# Beyond the managers' own seconds_to_kill: pmon's start-up, the pidfd wake-ups, slack.
STOP_MARGIN_SECONDS = 10.0

# Under a systemd unit (the unit sets PMON_SYSTEMD_UNIT), `pmon run` ends a final stop
# (`pmon shutdown`, `systemctl stop`, SIGTERM) with this status, which the unit lists in
# SuccessExitStatus= (a clean stop) and RestartPreventExitStatus= (Restart=always does not
# bring the project back). A detach (the hot restart) still exits 0: systemd starts the
# next pmon, which adopts the managers. Outside systemd every clean end is 0.
EXIT_STOPPED = 40
UNIT_ENV = SYSTEMD_UNIT_ENV


def service_name(config: "Config") -> str:
    """One service per project: `pmon-<project>` (project names are already safe for both)."""
    return f"pmon-{config.project.name}"


def pmon_command(config: "Config", python: str | None = None) -> list[str]:
    """The command the service runs: this Python, pmon in the foreground, the project file."""
    return [python or sys.executable, "-m", "pmon.cli", "run", "-c", str(config.path)]


def stop_timeout(config: "Config") -> float:
    """The longest an ordered stop can take: each manager in turn may use its seconds_to_kill
    before it is killed. The service manager must wait that long before it kills pmon."""
    return sum(spec.seconds_to_kill + 1.0 for spec in config.managers) + STOP_MARGIN_SECONDS


def start_timeout(config: "Config") -> float:
    """The longest a start sequence can take (every manager waits for its readiness)."""
    return sum(spec.start_timeout for spec in config.managers) + STOP_MARGIN_SECONDS
