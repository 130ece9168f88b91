"""The control commands: one registry, used by the control server (and so by the CLI) and by
the PMON TCP face. Every command module is listed here; a new command is a function marked
`@command(name)` in one of them (or a new module added to this list).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pmon.commands import changes, describe, managers, project, redundancy
from pmon.commands.registry import Command, collect, execute as _execute

if TYPE_CHECKING:
    from pmon.runtime.supervisor import Supervisor

MODULES = (managers, project, changes, redundancy, describe)
REGISTRY: dict[str, Command] = collect(MODULES)
READS = frozenset({"status", "describe", "plugins", "redu-status"})  # they change nothing


async def execute(sup: "Supervisor", name: Any, args: Any) -> Any:
    """Run one command of the registry (see registry.execute). What it changed is on disk
    before it is acknowledged (Supervisor.commit: nothing to write for a command that changed
    nothing)."""
    before = sup.changes
    result = await _execute(REGISTRY, sup, name, args)
    # A read waits for no disk, also when a death changed the state meanwhile (that change
    # is saved by the state writer as any other): with a slow disk, status still answers.
    if sup.changes != before and name not in READS:
        await sup.commit()
    return result
