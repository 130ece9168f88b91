"""The commands that change the manager list: add, remove, edit (the CLI and PMON TCP's
PROP_PUT) and reload (the CLI and SIGHUP). All take one path: a changed table (or the file
re-read) -> validated Config -> plan (core/change.py) -> `Supervisor.change`, which checks
the plan against the project, writes the file, and applies it through the project machine.
So a change has the same effect whichever door it came through; the README says which.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, cast

import tomli_w

from pmon.commands.tomlfile import updated_text

from pmon import config as config_module
from pmon.commands.registry import command
from pmon.config import Config
from pmon.core import change
from pmon.states import ManagerState
from pmon.errors import CommandError, ConfigError, NotSaved, PmonError
from pmon.runtime import platform
from pmon.runtime.api import Api, Extension
from pmon.runtime.statefile import write_atomically

if TYPE_CHECKING:
    from pmon.runtime.supervisor import Supervisor


@command("add")
async def add(
    sup: "Supervisor", manager: dict[str, Any], position: int | None = None, wait: bool = True
) -> dict[str, Any]:
    """Add a manager (a [[managers]] table) to the running project and to the TOML file.

    `position` (1-based) inserts it there, moving the managers from there on one index up;
    without it the manager is appended. It starts at once unless its start type is manual
    or a condition holds it back (run_on = "active" on a passive server: it starts when
    this server becomes active). Only the change is written into the file: its comments and
    layout stay (commands/tomlfile.py).
    """
    await _commit(sup, lambda raw: change.with_added(raw, manager, position), "add", wait)
    return sup.row(sup.find(manager["name"]))


@command("remove")
async def remove(sup: "Supervisor", target: str | int) -> dict[str, Any]:
    """Remove a stopped, non-core manager from the project and from the TOML file."""
    name = sup.find(target).spec.name

    def without(raw: Mapping[str, Any]) -> dict[str, Any]:
        manager = sup.find(name)  # as it is now: another change may have come first
        if manager.spec.core:
            raise CommandError(f"{name} is a core manager; the project cannot run without it")
        if manager.alive or manager.state is ManagerState.BACKOFF:
            raise CommandError(f"{name} is {manager.state.value}; stop it first: pmon stop {name}")
        return change.without(raw, name)

    without(sup.config.raw)  # refused at once when it is refused now
    await _commit(sup, without, "remove", wait=True)
    return {"removed": name}


@command("edit")
async def edit(
    sup: "Supervisor", target: str | int, changes: dict[str, Any], wait: bool = True
) -> dict[str, Any]:
    """Change keys of a manager's [[managers]] table in the running project and the TOML file.

    `changes` maps keys to new values; null removes a key (back to the default). As with
    `pmon reload`: a key that shapes the process (command, env, cwd, start, ready, run_on,
    ...) restarts a running manager (a core one: the whole project); a limit
    (restart_count, seconds_to_kill, ...) applies in place. Comments are not kept.
    `wait=False` answers once the change is under way (PMON TCP does).
    """
    name = sup.find(target).spec.name

    def edited(raw: Mapping[str, Any]) -> dict[str, Any]:
        sup.find(name)  # still there: another change may have removed it meanwhile
        return change.with_edited(raw, name, changes, sup.config.path)

    await _commit(sup, edited, "edit", wait)
    return sup.row(sup.find(name))


async def _commit(
    sup: "Supervisor", edit: Callable[[Mapping[str, Any]], Mapping[str, Any]], source: str,
    wait: bool,
) -> None:
    """Validate a changed project, then hand it to the one change path. All or nothing.
    `edit` makes the changed table from the project's table as it is when the change is
    applied (after any change that came first)."""

    async def prepare() -> tuple[Config, change.Plan]:
        _refuse_if_changed_on_disk(sup.config)
        raw = edit(sup.config.raw)
        try:
            new = _served(sup, config_module.parse(raw, sup.config.path))
            await _accepted_by_plugins(sup.config, new)
        except ConfigError as exc:
            raise CommandError(f"the change would make the project invalid:\n{exc}") from None
        return new, change.plan(sup.config, new)

    def write(new: Config) -> None:
        try:
            # through a symlink to the file it names: replacing the link itself would leave
            # the real file unchanged and the link gone
            target = Path(os.path.realpath(sup.config.path))
            text = updated_text(target.read_text(encoding="utf-8"), sup.config.raw, new.raw)
            write_atomically(target, text.encode())
        except OSError as exc:
            raise CommandError(f"cannot write {sup.config.path}: {exc}") from None

    await sup.change(prepare, source, write=write, wait=wait)


def _served(sup: "Supervisor", new: Config) -> Config:
    """`new`, once the running plugins said they can serve it (a manager's monitor.NAME that
    no loaded plugin reads is refused, as `pmon run` refuses such a file). ConfigError."""
    from pmon.extensions.plugin_host import PluginHost

    before = {spec.name: spec for spec in sup.config.managers}
    config_module.check_programs(new, [m.name for m in new.managers if before.get(m.name) != m])
    host = sup.extension(PluginHost)
    if host is not None:
        host.check_change(new)
    return new


CHECK_SECONDS = 30.0  # the longest `pmon validate` may take to check a change's plugin settings


async def _accepted_by_plugins(old: Config, new: Config) -> None:
    """A change of plugin settings (a manager's monitor tables, or [plugins]) must be one
    the plugins accept, as `pmon run` and `pmon validate` check a file. A plugin checks its
    settings only in its pmon_configure, called once per process: so a copy of the changed
    file is checked by `pmon validate` in a process of its own (next to the file, for its
    relative paths). Other changes are not slowed down by it. Raises ConfigError."""
    before = {spec.name: spec.monitor for spec in old.managers}
    if new.raw.get("plugins") == old.raw.get("plugins") and all(
        spec.monitor == before.get(spec.name, {}) for spec in new.managers
    ):
        return
    path = new.path
    try:
        fd, copy = tempfile.mkstemp(prefix=f".{path.name}.check-", suffix=".toml", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            handle.write(tomli_w.dumps(dict(new.raw)).encode())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write a copy to check its plugin settings: {exc}") from None
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pmon.cli", "validate", "-c", copy,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            _, err = await asyncio.wait_for(proc.communicate(), CHECK_SECONDS)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise ConfigError(
                f"{path}: the plugins did not check the changed settings within "
                f"{CHECK_SECONDS:g} s (pmon validate)"
            ) from None
    finally:
        os.unlink(copy)
    if proc.returncode != 0:
        message = err.decode(errors="replace").strip().removeprefix("pmon: ")
        raise ConfigError(message.replace(copy, str(path)))


def _refuse_if_changed_on_disk(config: Config) -> None:
    """add / remove / edit rewrite the whole file from the running project's table: a change
    made to the file since pmon read (or wrote) it, not reloaded yet, would be lost without a
    word. Refuse instead."""
    path = config.path
    advice = (
        "nothing changed: apply that change first with `pmon reload` (`pmon reload "
        "--dry-run` shows it) or undo it, then try again"
    )
    try:
        on_disk = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CommandError(f"{path} was changed since pmon read it ({exc}); {advice}") from None
    if tomli_w.dumps(on_disk) != tomli_w.dumps(dict(config.raw)):  # (also when a value is nan)
        raise CommandError(f"{path} was changed since pmon read it; {advice}")


@command("reload")
async def reload(sup: "Supervisor", dry_run: bool = False) -> dict[str, Any]:
    """Re-read the project file: start added managers, stop removed ones, restart changed
    ones, keep the others running. An invalid file changes nothing. dry_run: only say so."""

    async def prepare() -> tuple[Config, change.Plan]:
        try:
            new: Config = _served(sup, config_module.load(sup.config.path))
            await _accepted_by_plugins(sup.config, new)
        except ConfigError as exc:
            raise ConfigError(f"reload refused, nothing changed:\n{exc}") from None
        return new, change.plan(sup.config, new)

    if dry_run:
        new, todo = await prepare()
        return {**todo.as_dict(), "dry_run": True, "config": str(new.path)}

    async def announced() -> tuple[Config, change.Plan]:
        new, todo = await prepare()
        sup.project.check_change(todo)
        sup.events.write(
            "reload",
            f"reloading {new.path}: {len(todo.added)} added, {len(todo.removed)} removed, "
            f"{len(todo.changed)} changed, {len(todo.updated)} updated, "
            f"{len(todo.unchanged)} unchanged",
            **todo.as_dict(),
        )
        return new, todo

    todo = await sup.change(announced, "reload")
    return {**todo.as_dict(), "dry_run": False, "config": str(sup.config.path)}


class ReloadOnHangup(Extension):
    """SIGHUP reloads the project file, as `pmon reload` does: an extension by its lifetime,
    beside the command it runs."""

    name = "reload on SIGHUP"

    def __init__(self) -> None:
        self._sup: "Supervisor | None" = None
        self._armed = False

    async def start(self, api: Api) -> None:
        self._sup = cast("Supervisor", api)  # commands take the supervisor itself
        self._armed = hasattr(signal, "SIGHUP") and platform.add_signal_handler(
            api.loop, signal.SIGHUP, self._hangup
        )

    async def stop(self) -> None:
        if self._armed and self._sup is not None:
            self._sup.loop.remove_signal_handler(signal.SIGHUP)

    def _hangup(self) -> None:
        if self._sup is not None:
            self._sup.background(self, self._reload(self._sup))

    async def _reload(self, sup: "Supervisor") -> None:
        try:
            await reload(sup)
        except NotSaved as exc:  # applied: only the disk is behind (retried; logged once)
            sup.events.write("reload", f"SIGHUP reload applied, but not saved yet: {exc}",
                             error=str(exc), saved=False)
        except PmonError as exc:  # nobody to answer: the event log says why
            sup.events.write("reload-failed", f"SIGHUP reload: {exc}", error=str(exc))
