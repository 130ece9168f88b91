"""The control commands: one registry, used by the control server (and so by the CLI) and by
the PMON TCP face. Each command is an async function of the supervisor and keyword
arguments; its docstring is its help; its parameters are checked before it runs.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import tomli_w

from pmon import config as config_module
from pmon.errors import CommandError, ConfigError, ProtocolError
from pmon.core.states import ManagerState, StartType
from pmon.runtime.statefile import write_atomically

if TYPE_CHECKING:
    from pmon.runtime.supervisor import Supervisor

Handler = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Command:
    name: str
    handler: Handler
    params: dict[str, inspect.Parameter]

    @property
    def help(self) -> str:
        return inspect.getdoc(self.handler) or ""


REGISTRY: dict[str, Command] = {}
_TYPES: dict[str, Any] = {
    "str": str, "int": int, "bool": bool, "list": list, "dict": dict, "str | int": (str, int),
    "int | None": (int, type(None)),
}


def command(name: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        params = dict(list(inspect.signature(handler).parameters.items())[1:])
        REGISTRY[name] = Command(name, handler, params)
        return handler

    return register


async def execute(sup: "Supervisor", name: Any, args: Any) -> Any:
    """Run one command. Raises ProtocolError for a malformed call, PmonError when refused."""
    if not isinstance(name, str) or name not in REGISTRY:
        known = ", ".join(sorted(REGISTRY))
        raise ProtocolError(f"unknown command {name!r}; known commands: {known}")
    if not isinstance(args, dict):
        raise ProtocolError(f"arguments of '{name}' must be an object, got {type(args).__name__}")
    cmd = REGISTRY[name]
    for key, value in args.items():
        if key not in cmd.params:
            raise ProtocolError(f"'{name}' takes no argument '{key}'; it takes: {', '.join(cmd.params) or 'none'}")
        expected = _TYPES.get(str(cmd.params[key].annotation))
        types = expected if isinstance(expected, tuple) else (expected,)
        if expected is not None and (
            not isinstance(value, types) or (isinstance(value, bool) and bool not in types)
        ):
            raise ProtocolError(f"argument '{key}' of '{name}' has the wrong type")
    missing = [k for k, p in cmd.params.items() if p.default is inspect.Parameter.empty and k not in args]
    if missing:
        raise ProtocolError(f"'{name}' needs the argument(s): {', '.join(missing)}")
    return await cmd.handler(sup, **args)


@command("status")
async def status(sup: "Supervisor") -> dict[str, Any]:
    """Every manager's index, name, state, pid, start type, core flag, restarts, since."""
    return sup.status()


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


@command("start-all")
async def start_all(sup: "Supervisor", wait: bool = True) -> dict[str, Any]:
    """Start the project (the normal start sequence)."""
    task = sup.start_project()
    if wait:
        await sup.finish(task)
    return sup.status()


def refuse_unsafe_stop(sup: "Supervisor", what: str, force: bool) -> None:
    """Refuse to stop a server whose services say it is unsafe (the active of a pair whose
    partner is not available), unless forced."""
    for service in [] if force else sup.services:
        check = getattr(service, "stop_refusal", None)
        reason = check() if check is not None else None
        if reason:
            raise CommandError(f"{what} refused: {reason}; add --force to {what} anyway")


@command("stop-all")
async def stop_all(sup: "Supervisor", wait: bool = True, force: bool = False) -> dict[str, Any]:
    """Stop every manager in reverse order; pmon keeps running."""
    refuse_unsafe_stop(sup, "stop --all", force)
    task = sup.stop_project()
    if wait:
        await sup.finish(task)
    return sup.status()


@command("restart-all")
async def restart_all(sup: "Supervisor", wait: bool = True, force: bool = False) -> dict[str, Any]:
    """Restart the project: stop everything in reverse order, then start in order."""
    refuse_unsafe_stop(sup, "restart --all", force)
    for manager in sup.managers.values():
        manager.recent.clear()  # an operator's project restart is a fresh start
    task = sup.restart_project("operator request")
    if wait:
        await sup.finish(task)
    return sup.status()


@command("shutdown")
async def shutdown(sup: "Supervisor", force: bool = False) -> dict[str, Any]:
    """Stop every manager in reverse order, then pmon itself."""
    refuse_unsafe_stop(sup, "shutdown", force)
    sup.request_shutdown("pmon shutdown")
    return {"shutting_down": True}


@command("add")
async def add(
    sup: "Supervisor", manager: dict, position: int | None = None, wait: bool = True
) -> dict[str, Any]:
    """Add a manager (a [[managers]] table) to the running project and to the TOML file.

    `position` (1-based) inserts it there, moving the managers from there on one index up;
    without it the manager is appended. The file is rewritten with tomli-w: comments in it
    are not kept.
    """
    raw = copy.deepcopy(dict(sup.config.raw))
    tables = raw.setdefault("managers", [])
    if position is None:
        position = len(tables) + 1
    if not 1 <= position <= len(tables) + 1:
        raise CommandError(f"position {position} is outside 1..{len(tables) + 1}")
    tables.insert(position - 1, manager)
    _commit(sup, raw)
    added = sup.managers[manager["name"]]
    if added.wanted:
        await sup.start_manager(added.spec.name, wait=wait)
    return sup.row(added)


@command("remove")
async def remove(sup: "Supervisor", target: str | int) -> dict[str, Any]:
    """Remove a stopped, non-core manager from the project and from the TOML file."""
    manager = sup.find(target)
    name = manager.spec.name
    if manager.spec.core:
        raise CommandError(f"{name} is a core manager; the project cannot run without it")
    if manager.alive or manager.state is ManagerState.BACKOFF:
        raise CommandError(f"{name} is {manager.state.value}; stop it first: pmon stop {name}")
    raw = copy.deepcopy(dict(sup.config.raw))
    raw["managers"] = [m for m in raw.get("managers", []) if m.get("name") != name]
    _commit(sup, raw)
    return {"removed": name}


@command("edit")
async def edit(sup: "Supervisor", target: str | int, changes: dict) -> dict[str, Any]:
    """Change keys of a manager's [[managers]] table in the running project and the TOML file.

    `changes` maps keys to new values; null removes a key (back to the default). A new
    command or environment applies at the manager's next start. Comments are not kept.
    """
    manager = sup.find(target)
    name = manager.spec.name
    if "name" in changes:
        raise CommandError(f"{name} cannot be renamed; remove it and add it again")
    raw = copy.deepcopy(dict(sup.config.raw))
    table = next((t for t in raw.get("managers", []) if t.get("name") == name), None)
    if table is None:
        raise CommandError(
            f"{name} is not in {sup.config.path}: pmon adds it for [redundancy]; change it "
            "there, or list it under [[managers]] with redundancy = true to set its keys"
        )
    for key, value in changes.items():
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value
    _commit(sup, raw)
    edited = sup.managers[name]
    # A manual manager starts only on command; one an operator started stays kept.
    edited.wanted = edited.spec.start is not StartType.MANUAL or edited.alive
    return sup.row(edited)


def _commit(sup: "Supervisor", raw: dict[str, Any]) -> None:
    """Validate a changed project, write it to its file, then apply it. All or nothing."""
    try:
        new = config_module.parse(raw, sup.config.path)
    except ConfigError as exc:
        raise CommandError(f"the change would make the project invalid:\n{exc}") from None
    kept = {spec.name for spec in new.managers}
    for name, manager in sup.managers.items():
        if name not in kept and (manager.alive or manager.state is ManagerState.BACKOFF):
            raise CommandError(
                f"{name} is {manager.state.value} and would drop out of the project unsupervised; "
                f"stop it first: pmon stop {name}"
            )
    try:
        write_atomically(sup.config.path, tomli_w.dumps(raw).encode())
    except OSError as exc:
        raise CommandError(f"cannot write {sup.config.path}: {exc}") from None
    sup.reconfigure(new)


from pmon.commands import redundancy as _redundancy_commands  # noqa: E402,F401  (registers redu-*)
