"""The redundancy control commands (listed in commands/__init__.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pmon.commands.registry import command
from pmon.errors import CommandError

if TYPE_CHECKING:
    from pmon.extensions.redundancy import RedundancyService
    from pmon.runtime.supervisor import Supervisor


def service_of(sup: "Supervisor") -> "RedundancyService | None":
    if sup.config.redundancy is None:
        return None  # a standalone project: the extension is not even imported
    from pmon.extensions.redundancy import RedundancyService

    return sup.extension(RedundancyService)


def _required(sup: "Supervisor") -> "RedundancyService":
    service = service_of(sup)
    if service is None:
        raise CommandError(
            f"project '{sup.config.project.name}' is standalone: add a [redundancy] section to "
            f"{sup.config.path} to run it as one server of a pair"
        )
    return service


@command("redu-status")
async def redu_status(sup: "Supervisor") -> dict[str, Any]:
    """This server's role (active, passive or standalone), both error states and their
    breakdown, each link, the partner's availability, the preference, the last switchover."""
    service = service_of(sup)
    if service is None:
        return {"server": None, "role": "standalone", "project": sup.config.project.name}
    return service.status()


@command("redu-set-active")
async def redu_set_active(sup: "Supervisor", server: str = "", force: bool = False) -> dict[str, Any]:
    """Make SERVER (default: this one) active now, whatever the error states (priority 2).
    Refused while the server to take over is not available, unless force."""
    service = _required(sup)
    target = server or service.spec.name
    if service.active_server() == target:
        return {**service.status(), "message": f"{target} is already active"}
    service.set_active(target, force)
    interval, timeout = service.pair_timing()
    # the old active's drivers stop first (the release): up to its bound on top
    done = await sup.wait_for(lambda: service.active_server() == target,
                              timeout=5 * interval + 2 * timeout + 2 + service.release_bound())
    if not done:
        raise CommandError(f"{target} did not become active in time; see `pmon redu status`")
    return {**service.status(), "message": f"{target} is active"}


@command("redu-prefer")
async def redu_prefer(sup: "Supervisor", server: str = "") -> dict[str, Any]:
    """Prefer SERVER (default: this one): active when both error states are equal (priority 4)."""
    service = _required(sup)
    target = server or service.spec.name
    service.prefer(target)
    spec = service.spec
    await sup.wait_for(lambda: service.status()["preferred"] == target,
                       timeout=3 * spec.heartbeat_interval + 2)
    return {**service.status(), "message": f"{target} is preferred"}


@command("redu-sync")
async def redu_sync(sup: "Supervisor", report: dict[str, Any]) -> dict[str, Any]:
    """Internal: the redundancy manager reports its view and gets this server's error state,
    availability and the operators' requests."""
    return _required(sup).sync(report)
