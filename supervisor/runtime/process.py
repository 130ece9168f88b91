"""One OS process of a manager: spawn it in its own process group (and its cgroup, see
containment.py) with its output going to its log file, signal it, stop-then-kill it, reap it.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Mapping

from pmon.runtime import execution, platform
from pmon.config import ManagerSpec
from pmon.runtime.containment import Containment
from pmon.runtime.output import ManagerLog


class ManagedProcess:
    """A manager's OS process: spawned by this pmon, or adopted from a pmon before it."""

    def __init__(
        self, popen: subprocess.Popen[bytes] | None, pid: int, name: str, containment: Containment
    ) -> None:
        self.popen = popen  # None for a process pmon adopted instead of spawning
        self.pid = pid
        self.name = name
        self.containment = containment  # its cgroup, or its process group

    @classmethod
    def spawn(
        cls, spec: ManagerSpec, env: Mapping[str, str], log: ManagerLog, containment: Containment
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
            execution.own_log(spec, log.path)
            with containment.spawning(spec.name, execution.cgroup_limits(spec)):  # born in it
                popen = subprocess.Popen(
                    list(spec.command),
                    cwd=spec.cwd,
                    env=dict(env),
                    stdin=subprocess.DEVNULL,
                    stdout=fd,
                    stderr=subprocess.STDOUT,
                    **platform.popen_kwargs(),
                    **execution.popen_settings(spec),  # user, group, umask, rlimits
                )
        except subprocess.SubprocessError as exc:  # only a preexec_fn raises this
            raise OSError(f"cannot apply rlimits {dict(spec.rlimits)}: {exc}") from None
        finally:
            os.close(fd)
        platform.contain(popen.pid, env)  # Windows: its Job object
        containment.spawned(spec.name, popen.pid)  # its cgroup names its main process
        return cls(popen, popen.pid, spec.name, containment)

    def reap(self) -> int | None:
        """The exit code of a dead child (negative: the signal). None if not ours to reap."""
        if self.popen is None:
            return None
        code = self.popen.poll()
        if code is None:  # the pidfd fired, so it is dead: collect it
            code = self.popen.wait()
        return code

    def terminate(self, sig: int = signal.SIGTERM) -> None:
        """The polite stop: `sig` (the manager's stop_signal) to it and what it started."""
        self.containment.terminate(self.name, self.pid, sig)

    def kill(self) -> None:
        """Kill it and everything it started (its cgroup, or its group and orphans)."""
        self.containment.kill(self.name, self.pid)


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
    env.update(execution.account_env(spec))  # USER, LOGNAME, HOME of its user, if set
    env.update({**spec.env, **extra})
    env.setdefault("PYTHONUNBUFFERED", "1")  # Python managers' lines reach the log at once
    return env


def log_path(state_dir: Path, name: str) -> Path:
    return state_dir / "log" / f"{name}.log"
