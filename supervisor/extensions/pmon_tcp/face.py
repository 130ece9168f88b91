"""Each PMON command as calls of the command registry (commands.py), as the CLI makes them.

Nothing here changes the supervisor by itself: reads come from `status` and the frozen
project configuration, changes go through `start`, `stop`, `kill`, `add`, `remove`, `edit`,
`start-all`, `stop-all`, `restart-all`. Changes answer once they are under way (`wait`
False), as PMON does; clients then poll MGRLIST:STATI.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from pmon import commands
from pmon.runtime import statefile
from pmon.config import ManagerSpec
from pmon.errors import CommandError, PmonError, UnknownManager
from pmon.extensions.pmon_tcp import protocol as p

if TYPE_CHECKING:
    from pmon.runtime.supervisor import Supervisor

Handler = Callable[["Supervisor", str], Awaitable[bytes]]

# pmon's states as PMON's: 0 stopped (and blocked, with pid -2), 1 init, 2 running, 3 hung.
# WinCC OA's numbers: 3 is "no alive sign" (a hung manager, told by the alive monitor); a
# manager pmon gave up restarting (blocked) is 0 with pid -2, as WinCC OA shows one.
STATE_NUMBERS = {"starting": 1, "running": 2}
HUNG = 3
# The project line: mode number, mode name, emergency.
PROJECT_MODES = {
    "stopped": (0, "WAIT_MODE", False),
    "stopping": (0, "WAIT_MODE", False),
    "starting": (1, "START_MODE", False),
    "restarting": (1, "START_MODE", False),
    "running": (2, "MONITOR_MODE", False),
    "blocked": (0, "WAIT_MODE", True),  # a core manager died too often: waits for an operator
}
STOPPABLE = {"starting", "running", "backoff", "blocked"}
PMON_ROW = ("pmon", "manual", 0, 0, 0, "")  # row 0: pmon itself has no start policy


async def answer(sup: "Supervisor", request: p.Request) -> bytes:
    """The reply to one authenticated request."""
    handler = HANDLERS.get(request.command)
    if handler is None:
        return p.ERR_CMD
    return await handler(sup, request.args)


async def _call(sup: "Supervisor", name: str, **args: Any) -> Any:
    return await commands.execute(sup, name, args)


def _no_args(handler: Callable[["Supervisor"], Awaitable[bytes]]) -> Handler:
    async def checked(sup: "Supervisor", args: str) -> bytes:
        if args:
            return p.error("errCmd", f"this command takes no arguments, got {args!r}")
        return await handler(sup)

    return checked


# --- reading -----------------------------------------------------------------------


def _list_fields(spec: ManagerSpec) -> tuple[str, str, int, int, int, str]:
    return (
        spec.command[0], spec.start.value, round(spec.seconds_to_kill), spec.restart_count,
        round(spec.reset_after / 60), p.join_options(spec.command[1:]),
    )


async def _mgrlist_list(sup: "Supervisor") -> bytes:
    rows = [p.list_row(*PMON_ROW)]
    rows += [p.list_row(*_list_fields(spec)) for spec in sup.config.managers]
    return p.list_reply(rows)


def _state_number(row: dict[str, Any]) -> int:
    if row["state"] == "running" and str(row.get("why", "")).startswith("hung:"):
        return HUNG
    return STATE_NUMBERS.get(row["state"], 0)


def _pid(row: dict[str, Any]) -> int:
    """The pid; -1 no process; -2 one that should run but failed (and waits or is blocked)."""
    if row["pid"]:
        return int(row["pid"])
    failed = row["state"] in ("backoff", "blocked") or (
        row["state"] == "exited" and row["start"] != "once"
    )
    return -2 if failed else -1


@functools.lru_cache(maxsize=1)
def _started(pid: int) -> float | None:
    """When this pmon process started (asked of the OS once)."""
    return statefile.process_start_time(pid)


async def _mgrlist_stati(sup: "Supervisor") -> bytes:
    status = await _call(sup, "status")
    pmon_pid = status["pmon_pid"]
    rows = [p.stati_row(2, pmon_pid, "manual", _started(pmon_pid), 1)]
    for row, spec in zip(status["managers"], sup.config.managers):
        rows.append(p.stati_row(
            _state_number(row), _pid(row), row["start"], row["started_at"],
            p.manager_number(spec.command[1:], spec.num),
        ))
    number, name, emergency = PROJECT_MODES[status["project_state"]]
    return p.list_reply(rows, p.mode_line(number, name, emergency))


async def _project(sup: "Supervisor") -> bytes:
    return str((await _call(sup, "status"))["project"]).encode()


async def _prop_get(sup: "Supervisor", args: str) -> bytes:
    index = p.parse_index(args)
    if index is None or index > len(sup.config.managers):
        return p.ERR_INV_IDX
    if index == 0:
        return p.props(*PMON_ROW[1:])
    return p.props(*_list_fields(sup.config.managers[index - 1])[1:])


# --- changing ----------------------------------------------------------------------


def _single(name: str) -> Handler:
    """SINGLE_MGR:START / STOP / KILL n."""

    async def handler(sup: "Supervisor", args: str) -> bytes:
        index = p.parse_index(args)
        status = await _call(sup, "status")
        if index is None or index > len(status["managers"]):
            return p.ERR_INV_IDX
        if index == 0:  # pmon itself: running, and stopped only with the whole of pmon
            return p.OK if name == "start" else p.ERR_STOP
        if name != "start" and status["managers"][index - 1]["state"] not in STOPPABLE:
            return p.ERR_STOP
        try:
            await _call(sup, name, target=index, wait=False)
        except UnknownManager:
            return p.ERR_INV_IDX
        except CommandError as exc:
            return p.ERR_STOP if name != "start" else p.error("errStart", str(exc))
        return p.OK

    return handler


def _new_name(exe: str, taken: Any) -> str:
    """A manager name from its program: `WCCOActrl`, then `WCCOActrl-2`, ..."""
    base = re.sub(r"[^A-Za-z0-9._-]", "_", re.split(r"[\\/]", exe)[-1]) or "manager"
    if base.isdigit():
        base = f"m{base}"
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    return name


def _manager_keys(fields: p.Props) -> dict[str, Any]:
    return {
        "start": fields.mode,
        "seconds_to_kill": fields.sec_kill,
        "restart_count": fields.restart_count,
        "reset_after": fields.reset_min * 60,
    }


async def _ins(sup: "Supervisor", args: str) -> bytes:
    """SINGLE_MGR:INS n <exe> <mode> <secKill> <restartCount> <resetMin> <options...>"""
    position_text, _, rest = args.partition(" ")
    position = p.parse_index(position_text)
    if position is None or not 1 <= position <= len(sup.config.managers) + 1:
        return p.ERR_INS
    exe, _, rest = rest.strip().partition(" ")
    try:
        if not exe:
            raise ValueError("expected <exe> <manual|once|always> <secKill> <restartCount> <resetMin> <options...>")
        fields = p.parse_props(rest)
    except ValueError as exc:
        return p.error("errIns", str(exc))
    table = {
        "name": _new_name(exe, {spec.name for spec in sup.config.managers}),
        "command": [exe, *fields.options],
        **_manager_keys(fields),
    }
    try:
        await _call(sup, "add", manager=table, position=position, wait=False)
    except CommandError as exc:
        return p.error("errIns", str(exc))
    return p.OK


async def _del(sup: "Supervisor", args: str) -> bytes:
    index = p.parse_index(args)
    if index is None or not 1 <= index <= len(sup.config.managers):
        return p.ERR_INV_IDX
    try:
        await _call(sup, "remove", target=index)
    except CommandError as exc:
        return p.error("errDel", str(exc))
    return p.OK


async def _prop_put(sup: "Supervisor", args: str) -> bytes:
    """SINGLE_MGR:PROP_PUT n <mode> <secKill> <restartCount> <resetMin> <options...>"""
    index_text, _, rest = args.partition(" ")
    index = p.parse_index(index_text)
    if index is None or not 1 <= index <= len(sup.config.managers):
        return p.ERR_INV_IDX
    try:
        fields = p.parse_props(rest)
    except ValueError as exc:
        return p.error("errProp", str(exc))
    exe = sup.config.managers[index - 1].command[0]
    changes = {"command": [exe, *fields.options], **_manager_keys(fields)}
    try:
        await _call(sup, "edit", target=index, changes=changes, wait=False)
    except CommandError as exc:
        return p.error("errProp", str(exc))
    return p.OK


async def _start_all(sup: "Supervisor") -> bytes:
    if (await _call(sup, "status"))["project_state"] in ("starting", "running", "restarting"):
        return p.ERR_START_ALL
    await _call(sup, "start-all", wait=False)
    return p.OK


def _project_command(name: str) -> Callable[["Supervisor"], Awaitable[bytes]]:
    async def handler(sup: "Supervisor") -> bytes:
        await _call(sup, name, wait=False)
        return p.OK

    return handler


HANDLERS: dict[str, Handler] = {
    "MGRLIST:LIST": _no_args(_mgrlist_list),
    "MGRLIST:STATI": _no_args(_mgrlist_stati),
    "SINGLE_MGR:START": _single("start"),
    "SINGLE_MGR:STOP": _single("stop"),
    "SINGLE_MGR:KILL": _single("kill"),
    "SINGLE_MGR:INS": _ins,
    "SINGLE_MGR:DEL": _del,
    "SINGLE_MGR:PROP_GET": _prop_get,
    "SINGLE_MGR:PROP_PUT": _prop_put,
    "START_ALL:": _no_args(_start_all),
    "STOP_ALL:": _no_args(_project_command("stop-all")),
    # pmon's wait mode is "pmon runs, the project does not": the same as STOP_ALL.
    "WAIT_MODE:": _no_args(_project_command("stop-all")),
    "RESTART_ALL:": _no_args(_project_command("restart-all")),
    "PROJECT:": _no_args(_project),
}


def refusal(exc: PmonError) -> bytes:
    """A refusal no handler maps (a bug of this face, most likely), as an error reply."""
    return p.error("errCmd", str(exc))
