"""The commands on the whole project and on pmon itself, and the hot-restart signal."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Any, cast

from pmon.commands.registry import command
from pmon.core.project import BUSY
from pmon.errors import CommandError
from pmon.runtime import platform
from pmon.runtime.api import Api, Extension

# The signal that means "hot restart": pmon detaches (the managers run on) and exits; the
# next pmon adopts them. systemd's unit sends it on `systemctl restart` (RestartKillSignal=).
HOT_RESTART_SIGNAL = "SIGUSR2"

if TYPE_CHECKING:
    from pmon.runtime.supervisor import Supervisor


@command("status")
async def status(sup: "Supervisor") -> dict[str, Any]:
    """Every manager's index, name, state, pid, start type, core flag, restarts, since."""
    return sup.status()


@command("start-all")
async def start_all(sup: "Supervisor", wait: bool = True) -> dict[str, Any]:
    """Start the project (the normal start sequence)."""
    job = sup.start_project()
    await sup.commit()  # on disk before the job runs: a pmon killed meanwhile resumes it
    if wait:
        await sup.finish(job)
    return sup.status()


def refuse_unsafe_stop(sup: "Supervisor", what: str, force: bool) -> None:
    """Refuse to stop a server whose extensions say it is unsafe (the active of a pair whose
    partner is not available), unless forced."""
    for extension in [] if force else sup.extensions:
        reason = extension.stop_refusal()
        if reason:
            raise CommandError(f"{what} refused: {reason}; add --force to {what} anyway")


@command("stop-all")
async def stop_all(sup: "Supervisor", wait: bool = True, force: bool = False) -> dict[str, Any]:
    """Stop every manager in reverse order; pmon keeps running."""
    refuse_unsafe_stop(sup, "stop --all", force)
    job = sup.stop_project()
    await sup.commit()  # on disk before the job runs: a pmon killed meanwhile resumes it
    if wait:
        await sup.finish(job)
    return sup.status()


@command("restart-all")
async def restart_all(sup: "Supervisor", wait: bool = True, force: bool = False) -> dict[str, Any]:
    """Restart the project: stop everything in reverse order, then start in order."""
    refuse_unsafe_stop(sup, "restart --all", force)
    job = sup.restart_all("operator request")
    await sup.commit()  # on disk before the job runs: a pmon killed meanwhile resumes it
    if wait:
        await sup.finish(job)
    return sup.status()


@command("shutdown")
async def shutdown(sup: "Supervisor", force: bool = False) -> dict[str, Any]:
    """Stop every manager in reverse order, then pmon itself."""
    if sup.leave_running:
        raise CommandError("pmon is detaching: its managers run on; nothing is stopped")
    refuse_unsafe_stop(sup, "shutdown", force)
    sup.request_shutdown("pmon shutdown")
    return {"shutting_down": True}


@command("detach")
async def detach(sup: "Supervisor") -> dict[str, Any]:
    """Stop pmon but leave every manager running (for an upgrade of pmon); the next
    `pmon run` on this project adopts them. Refused while the project is starting, stopping
    or restarting (the next pmon would not know how far that got) and while pmon shuts down."""
    if sup.project.closing and not sup.leave_running:
        raise CommandError("pmon is shutting down and stopping every manager; nothing detached")
    if not sup.project_ready.is_set():  # still starting up: the project is not decided yet
        raise CommandError(
            "pmon is still starting up (its extensions, then the project); detach once the "
            "project is running or stopped (`pmon status` shows when)"
        )
    if sup.project_state in BUSY:
        raise CommandError(
            f"the project is {sup.project_state.value}; detach once it is running or stopped "
            "(`pmon status` shows when)"
        )
    _detach(sup, "pmon detach: the managers run on")
    return {"detached": True, "managers": sum(1 for m in sup.managers.values() if m.alive)}


def _detach(sup: "Supervisor", reason: str) -> None:
    sup.leave_running = True
    sup.request_shutdown(reason)


class DetachOnSignal(Extension):
    """HOT_RESTART_SIGNAL detaches, as `pmon detach` does. A signal has no one to refuse to:
    while a project job runs it waits for the job to end (the next pmon could not know how
    far it got), then detaches; during pmon's own final stop it is ignored (the stop goes
    on, and the event log says so).

    From its construction (before the config's extensions are even imported) until it is
    armed, and again after it is disarmed, the signal is only noted: Python's default would
    end pmon without its final state write. A signal noted early is honoured once armed,
    and a detach always waits for the first start sequence (the project is not decided
    before it: a detach then would save a project this pmon never stopped as stopped)."""

    name = "hot restart on " + HOT_RESTART_SIGNAL

    def __init__(self) -> None:
        self._sup: "Supervisor | None" = None
        self._armed = False
        self._pending = False
        self._early = False
        self._hold(lambda *_: setattr(self, "_early", True))

    async def start(self, api: Api) -> None:
        self._sup = cast("Supervisor", api)  # commands take the supervisor itself
        number = getattr(signal, HOT_RESTART_SIGNAL, None)
        self._armed = number is not None and platform.add_signal_handler(
            api.loop, number, self._signalled
        )
        if self._early:
            self._signalled()

    async def stop(self) -> None:
        if self._armed and self._sup is not None:
            self._sup.loop.remove_signal_handler(getattr(signal, HOT_RESTART_SIGNAL))
            self._hold(lambda *_: None)  # pmon is ending: its final state write comes first

    @staticmethod
    def _hold(handler: Any) -> None:
        """A plain Python handler (not SIG_IGN: children would inherit that across exec)."""
        number = getattr(signal, HOT_RESTART_SIGNAL, None)
        if number is not None:
            try:
                signal.signal(number, handler)
            except ValueError:  # not the main thread (a Windows service): no such signal
                pass

    def _signalled(self) -> None:
        sup = self._sup
        if sup is None or self._pending or sup.leave_running:
            return
        if sup.project.closing:
            sup.events.write(
                "hot-restart-ignored",
                f"{HOT_RESTART_SIGNAL} ignored: pmon is already stopping every manager",
            )
            return
        self._pending = True
        sup.background(self, self._when_settled(sup))

    async def _when_settled(self, sup: "Supervisor") -> None:
        if not sup.project_ready.is_set():
            sup.events.write(
                "hot-restart-waits",
                f"{HOT_RESTART_SIGNAL}: detaching once pmon has started the project",
            )
            await sup.wait_for(lambda: sup.project_ready.is_set() or sup.project.closing)
        if sup.project_state in BUSY:
            sup.events.write(
                "hot-restart-waits",
                f"{HOT_RESTART_SIGNAL}: detaching once the project is no longer "
                f"{sup.project_state.value}",
            )
            await sup.wait_for(lambda: sup.project_state not in BUSY or sup.project.closing)
        if not sup.project.closing:
            _detach(sup, f"{HOT_RESTART_SIGNAL} (hot restart): the managers run on")


@command("plugins")
async def plugins(sup: "Supervisor") -> dict[str, Any]:
    """The loaded plugins: name, where each comes from, its hooks, failures, verdicts."""
    from pmon.extensions.plugin_host import PluginHost

    host = sup.extension(PluginHost)
    return {
        "plugins": [r.row() for r in host.records.values()] if host else [],
        "error_state": sup.plugin_error_state(),
    }
