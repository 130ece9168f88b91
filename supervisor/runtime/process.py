"""One OS process of a manager: spawn it in its own process group with its output going to
its log file, signal it, stop-then-kill it, reap it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Mapping

from pmon.runtime import platform
from pmon.config import ManagerSpec
from pmon.runtime.output import ManagerLog


class ManagedProcess:
    """A manager's OS process: spawned by this pmon, or adopted from a pmon before it."""

    def __init__(self, popen: subprocess.Popen[bytes] | None, pid: int) -> None:
        self.popen = popen  # None for a process pmon adopted instead of spawning
        self.pid = pid

    @classmethod
    def spawn(
        cls, spec: ManagerSpec, env: Mapping[str, str], log: ManagerLog
    ) -> "ManagedProcess":
        """Start the manager. Raises OSError when the program cannot be executed.

        Its stdout and stderr are its log file itself (see output.py), not a pipe to pmon:
        the manager must outlive pmon without SIGPIPE and without losing output. Its own
        session and process group keep pmon's signals (a terminal's Ctrl-C, a kill of
        pmon's group) away from it.
        """
        env = {**env, **platform.spawn_env(env)}
        fd = log.open_for_child()
        try:
            popen = subprocess.Popen(
                list(spec.command),
                cwd=spec.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=subprocess.STDOUT,
                **platform.popen_kwargs(),
            )
        finally:
            os.close(fd)
        platform.contain(popen.pid, env)
        return cls(popen, popen.pid)

    def reap(self) -> int | None:
        """The exit code of a dead child (negative: the signal). None if not ours to reap."""
        if self.popen is None:
            return None
        code = self.popen.poll()
        if code is None:  # the pidfd fired, so it is dead: collect it
            code = self.popen.wait()
        return code

    def terminate(self) -> None:
        platform.terminate_group(self.pid)

    def kill(self) -> None:
        platform.kill_group(self.pid)


# What systemd hands to pmon's own service: meant for pmon, never for its managers (their
# output goes to a file, not to pmon's journal stream; the unit's invocation is pmon's).
SYSTEMD_UNIT_ENV = "PMON_SYSTEMD_UNIT"  # set by pmon's own unit (service/systemd.py)
SYSTEMD_OWN = frozenset({
    "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES",
    "INVOCATION_ID", "JOURNAL_STREAM", "SYSTEMD_EXEC_PID", SYSTEMD_UNIT_ENV,
})


def manager_env(spec: ManagerSpec, base: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """The environment of a manager: pmon's own, the spec's, then pmon's variables."""
    env = {k: v for k, v in base.items() if k not in SYSTEMD_OWN}
    env.update({**spec.env, **extra})
    env.setdefault("PYTHONUNBUFFERED", "1")  # Python managers' lines reach the log at once
    return env


def log_path(state_dir: Path, name: str) -> Path:
    return state_dir / "log" / f"{name}.log"
