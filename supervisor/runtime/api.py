"""The one extension interface, and the small API of the supervisor that extensions see.

Everything that runs beside the supervisor (the redundancy service, the plugin host, PMON
TCP, the systemd notifier, log rotation, the write probe, reload on SIGHUP, the hot restart
on SIGUSR2) is an
`Extension`: one declared interface, every method with a do-nothing default, so an extension
implements only what it needs and nothing is probed with getattr. Extensions are built from
an explicit list (app.py), started in that order before the project starts,
and stopped in reverse order after the final stop; the tasks they start run in the
supervisor's one `asyncio.TaskGroup` and are cancelled with their extension.

An extension sees the supervisor only through `Api`: read the project, ask for a project
restart, flip a condition, ask for a manager to be recycled, write an event, start a task.
It never changes a manager itself.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Coroutine, Mapping, Protocol

if TYPE_CHECKING:
    from pmon.config import Config
    from pmon.core.manager import Manager
    from pmon.core.project import ProjectState
    from pmon.states import ManagerState
    from pmon.plugin_types import RestartAdvice
    from pmon.runtime.logs import EventLog


class Api(Protocol):
    """What an extension may use of the supervisor."""

    loop: asyncio.AbstractEventLoop
    events: "EventLog"
    project_ready: asyncio.Event

    @property
    def config(self) -> "Config": ...
    @property
    def managers(self) -> Mapping[str, "Manager"]: ...
    @property
    def project_state(self) -> "ProjectState": ...
    @property
    def state_dir(self) -> Path: ...

    def now(self) -> float: ...
    def pid_of(self, pid: int) -> str | None: ...
    def take_notifications(self) -> None:
        """Handle the notify datagrams already queued, now (a watchdog about to judge a
        silence: after a stall of pmon its timer may run before the reader)."""
    def background(self, owner: "Extension", coro: Coroutine[Any, Any, None]) -> None: ...
    def restart_project(self, reason: str) -> int: ...
    def set_condition(
        self, condition: str, holds: bool, why: str, *, enforce: bool = True,
        kill_in: float | None = None,
    ) -> None: ...
    def recycle(self, name: str, reason: str) -> bool: ...
    def switchover(self, active: str, previous: str | None, reason: str) -> None: ...
    def plugin_error_state(self) -> float: ...
    def changed(self) -> None: ...
    def save_state(self) -> None: ...
    def rotate_logs(self) -> None: ...
    def write_failed(self, what: str, exc: OSError) -> None: ...
    def request_shutdown(self, reason: str = "request") -> None: ...
    def cgroups(self) -> tuple[Callable[[str], Path], Path] | None:
        """With cgroup containment: a manager's cgroup (by name) and pmon's home cgroup."""


class Extension(Protocol):
    """Something that runs beside the supervisor for as long as pmon runs.

    Subclass it: every method has a default that does nothing. The calls that hear about
    the project (`on_*`) run on the event loop and must return at once; one that raises is
    reported in the event log and supervision goes on.
    """

    name: str = "extension"

    async def start(self, api: Api) -> None:
        """Set up, before the start sequence. Long-running work goes to api.background."""
        return None

    async def stop(self) -> None:
        """Tear down, after the final stop (reverse order of start)."""
        return None

    def on_manager(self, manager: "Manager", old: "ManagerState | None") -> None:
        """A manager changed state (once per change)."""
        return None

    def on_project(self, state: "ProjectState") -> None:
        """The project changed state."""
        return None

    def on_notify(self, manager: "Manager", fields: Mapping[str, str]) -> None:
        """A manager sent a notify datagram (READY=1, WATCHDOG=1, ...)."""
        return None

    def on_switchover(self, active: str, previous: str | None, reason: str) -> None:
        """The pair switched: `active` is the active server now."""
        return None

    def on_shutdown(self, reason: str, managers_run_on: bool) -> None:
        """pmon itself begins to go down: the final stop, or a detach (its managers run on)."""
        return None

    def spawn_env(self, manager: "Manager") -> Mapping[str, str]:
        """Extra environment for a manager about to start; raise SpawnRefused to refuse."""
        return {}

    def restart_advice(
        self, manager: "Manager", code: int | None, delay: float
    ) -> "RestartAdvice | None":
        """Veto or delay an automatic restart just decided (None: no opinion)."""
        return None

    def stop_refusal(self) -> str | None:
        """Why stopping this server's project now would be unsafe, or None."""
        return None

    def error_state(self) -> float:
        """What this extension adds to this server's error state (0: nothing)."""
        return 0.0

    def status(self) -> Mapping[str, Any]:
        """Keys this extension adds to `pmon status`."""
        return {}

    def row(self, manager: "Manager") -> Mapping[str, Any]:
        """Keys this extension adds to one manager's row (status, start, stop, ... replies)."""
        return {}
