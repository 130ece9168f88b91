"""The commands on one manager: start, stop, kill, restart. The rules (what is refused, what
a core manager means) are the project machine's; these only call it and answer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pmon.commands.project import refuse_unsafe_stop
from pmon.commands.registry import command

if TYPE_CHECKING:
    from pmon.runtime.supervisor import Supervisor

# `wait=False`: reply as soon as the change is under way, not when it is done.


@command("start")
async def start(sup: "Supervisor", target: str | int, wait: bool = True) -> dict[str, Any]:
    """Start a manager (by name or index); unblocks a blocked one and resets its counter."""
    return sup.row(await sup.start_manager(target, wait=wait))


@command("stop")
async def stop(
    sup: "Supervisor", target: str | int, wait: bool = True, force: bool = False
) -> dict[str, Any]:
    """Stop a manager: SIGTERM to its group, SIGKILL after seconds_to_kill. On the active
    server of a pair, a stop that would switch the pair over is refused unless forced."""
    if not force:
        why = switchover_by_stop(sup, target)
        if why:
            from pmon.errors import CommandError

            raise CommandError(f"stop {target} refused: {why}; add --force to stop it anyway")
    return sup.row(await sup.stop_manager(target, wait=wait))


def switchover_by_stop(sup: "Supervisor", target: str | int) -> str | None:
    """Why stopping this manager would switch the pair over, or None: on the active server,
    its weight would raise this server's error state above the partner's, or to the
    partner's when the partner is the preferred server, as the arbitration judges them
    (links left out, `judged_errors`). A manual manager stopped by an operator is not
    wanted any more: it adds nothing."""
    from pmon.extensions.redundancy import RedundancyService
    from pmon.states import StartType

    service = sup.extension(RedundancyService)
    manager = sup.find(target)
    if service is None or service.role != "active" or not manager.alive:
        return None
    spec = manager.spec
    weight = spec.weight if spec.weight is not None else service.spec.manager_weight
    if not weight or not service.should_run(manager) or spec.start is StartType.MANUAL:
        return None
    report = service.status()
    mine = dict(report.get("error_breakdown") or {})
    theirs = report.get("partner_error_breakdown")
    if not report.get("partner_available"):
        return None  # no partner to take over: the pair cannot switch
    if not isinstance(theirs, dict):  # its breakdown not heard yet: judge by its total
        theirs = {"partner": float(report.get("partner_error_state") or 0)}
    if f"manager {spec.name}" in mine:
        return None  # counted already (not ready): its stop changes nothing
    after = stop_would_switch(mine, theirs, spec.name, weight,
                              preferred=report.get("preferred") == service.spec.partner)
    if after is None:
        return None
    before, then, partner = after
    why = "above" if then > partner else "equal to"
    tie = f", and {service.spec.partner} is the preferred server" if then == partner else ""
    return (f"this server ({service.spec.name}) is active; stopping {spec.name} (weight {weight:g}) "
            f"raises its error state from {before:g} to {then:g}, {why} the partner's "
            f"({partner:g}){tie}: the pair would switch over to {service.spec.partner}")


def stop_would_switch(
    mine: dict[str, float], theirs: dict[str, float], name: str, weight: float, preferred: bool
) -> tuple[float, float, float] | None:
    """The arbitration's verdict on the active server's error sources `mine` with manager
    `name` (of `weight`) stopped, against the partner's `theirs` (`preferred`: the partner
    is the preferred server): None when this server stays active, else (its error state
    before, after, the partner's), all without links."""
    from pmon.redundancy.settings import judged_errors

    before, _ = judged_errors(mine, theirs)
    after, partner = judged_errors({**mine, f"manager {name}": weight}, theirs)
    if after < partner or (after == partner and not preferred):
        return None
    return before, after, partner


@command("kill")
async def kill(sup: "Supervisor", target: str | int, wait: bool = True) -> dict[str, Any]:
    """Kill a manager's process group at once (SIGKILL, no SIGTERM first); it stays stopped."""
    return sup.row(await sup.kill_manager(target, wait=wait))


@command("restart")
async def restart(
    sup: "Supervisor", target: str | int, wait: bool = True, force: bool = False
) -> dict[str, Any]:
    """Restart a manager; a core manager restarts the whole project."""
    if sup.find(target).spec.core:
        refuse_unsafe_stop(sup, f"restart {target} (a core manager: the whole project)", force)
    return sup.row(await sup.restart_manager(target, wait=wait))


@command("signal")
async def send_signal(sup: "Supervisor", target: str | int, signal: int) -> dict[str, Any]:
    """Send a signal (a number) to a running manager's process group; pmon's machine then
    sees whatever follows (a death goes through the restart policy like any other)."""
    import signal as signals

    from pmon.errors import CommandError
    from pmon.runtime import platform

    manager = sup.find(target)
    if manager.pid is None:
        raise CommandError(f"{manager.spec.name} is not running ({manager.state}); nothing to signal")
    try:
        name = signals.Signals(signal).name
    except ValueError:
        raise CommandError(f"{signal} is not a signal on this system") from None
    try:
        platform.signal_group(manager.pid, signal)
    except OSError as exc:
        raise CommandError(f"cannot signal {manager.spec.name}: {exc}") from None
    sup.events.write(
        "signalled", f"{manager.spec.name} (pid {manager.pid}) sent {name} by an operator",
        manager=manager.spec.name, pid=manager.pid, signal=name,
    )
    return {"name": manager.spec.name, "pid": manager.pid, "signal": name}
