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
async def stop(sup: "Supervisor", target: str | int, wait: bool = True) -> dict[str, Any]:
    """Stop a manager: SIGTERM to its group, SIGKILL after seconds_to_kill."""
    return sup.row(await sup.stop_manager(target, wait=wait))


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
