"""Live reload: apply a changed project file to the running project, touching only what changed.

`plan(old, new)` is pure: it compares two validated configurations and says which managers
are added, removed, changed (a key that shapes the process changed: it must restart),
updated (only limits changed: applied in place, the process keeps running) and unchanged.
`apply` carries a plan out on the supervisor. `pmon reload` and SIGHUP both go through the
`reload` command; an invalid file is refused before anything is touched.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from pmon import config as config_module
from pmon.runtime import platform
from pmon.commands import command
from pmon.config import Config, ManagerSpec
from pmon.errors import CommandError, ConfigError, PmonError
from pmon.core.states import ManagerState, StartType

if TYPE_CHECKING:
    from pmon.runtime.supervisor import Supervisor

S = ManagerState
# Keys a running process cannot pick up: a manager whose one of these changed restarts.
RESTART_KEYS = frozenset(
    {"command", "env", "cwd", "start", "core", "redundancy", "ready", "ready_seconds", "num",
     "run_on"}  # run_on: the start gate may now refuse (or allow) it
)
# Position is not a property of the manager: reordering the file restarts nothing.
IGNORED_KEYS = frozenset({"index"})
# Project keys that name another project: refused, they need `pmon run` on the new file.
IDENTITY_KEYS = ("name", "state_dir")
OWN_SECTIONS = frozenset({"project", "defaults", "managers"})


@dataclass(frozen=True)
class Plan:
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    updated: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    unchanged: tuple[str, ...] = ()
    not_applied: tuple[str, ...] = ()  # what takes effect only when pmon restarts

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.updated)

    def as_dict(self) -> dict[str, Any]:
        return {
            "added": list(self.added),
            "removed": list(self.removed),
            "changed": {k: list(v) for k, v in self.changed.items()},
            "updated": {k: list(v) for k, v in self.updated.items()},
            "unchanged": list(self.unchanged),
            "not_applied": list(self.not_applied),
        }


def differing_keys(old: ManagerSpec, new: ManagerSpec) -> tuple[str, ...]:
    return tuple(
        f.name
        for f in dataclasses.fields(ManagerSpec)
        if f.name not in IGNORED_KEYS and getattr(old, f.name) != getattr(new, f.name)
    )


def plan(old: Config, new: Config) -> Plan:
    """What a reload from `old` to `new` does. Raises CommandError when it cannot be done
    live at all (the file now names another project)."""
    for key in IDENTITY_KEYS:
        if getattr(old.project, key) != getattr(new.project, key):
            raise CommandError(
                f"{new.path}: [project] {key} changed ({getattr(old.project, key)} -> "
                f"{getattr(new.project, key)}): that is another project; nothing changed. "
                "Stop this one and run the new file"
            )
    if (old.redundancy is None) != (new.redundancy is None):
        # It brings or takes the redundancy manager and the service that works with it:
        # half of that live would start or stop the manager without the service.
        word = "added" if new.redundancy is not None else "removed"
        raise CommandError(
            f"{new.path}: the [redundancy] section was {word}; nothing changed. "
            "Restart pmon to add or remove [redundancy] (`pmon detach` then `pmon run` "
            "keeps the managers running)"
        )
    before = {s.name: s for s in old.managers}
    after = {s.name: s for s in new.managers}
    changed: dict[str, tuple[str, ...]] = {}
    updated: dict[str, tuple[str, ...]] = {}
    unchanged: list[str] = []
    for name in after.keys() & before.keys():
        keys = differing_keys(before[name], after[name])
        if RESTART_KEYS.intersection(keys):
            changed[name] = keys
        elif keys:
            updated[name] = keys
        else:
            unchanged.append(name)
    not_applied = []
    if old.project.control != new.project.control:
        not_applied.append("[control]")
    sections = (set(old.raw) | set(new.raw)) - OWN_SECTIONS - {"control"}
    not_applied += [f"[{s}]" for s in sorted(sections) if old.raw.get(s) != new.raw.get(s)]
    order = [s.name for s in new.managers]
    return Plan(
        added=tuple(n for n in order if n not in before),
        removed=tuple(s.name for s in old.managers if s.name not in after),
        changed={n: changed[n] for n in order if n in changed},
        updated={n: updated[n] for n in order if n in updated},
        unchanged=tuple(n for n in order if n in unchanged),
        not_applied=tuple(not_applied),
    )


def describe(result: Mapping[str, Any]) -> list[str]:
    """A plan (as the reload command returns it) in lines for people."""
    lines = []
    for word, key in (("add", "added"), ("remove", "removed")):
        lines += [f"  {word:8} {name}" for name in result[key]]
    for name, keys in result["changed"].items():
        lines.append(f"  restart  {name} ({', '.join(keys)} changed)")
    for name, keys in result["updated"].items():
        lines.append(f"  update   {name} ({', '.join(keys)}; keeps running)")
    if result["unchanged"]:
        lines.append(f"  keep     {', '.join(result['unchanged'])}")
    for section in result["not_applied"]:
        lines.append(
            f"  not applied: {section} changed; it takes effect when pmon starts again "
            "(`pmon detach` then `pmon run` keeps the managers running)"
        )
    return lines or ["  nothing to do"]


# --- carrying a plan out --------------------------------------------------------------------

async def apply(sup: "Supervisor", new: Config, todo: Plan) -> None:
    """Stop the removed managers, take the new configuration, restart the changed ones,
    start the added ones. Unchanged and updated managers keep their process, unless a
    changed manager is core: then the whole project restarts."""
    now = sup.now
    running = sup.project_state.value in ("starting", "running")
    removed = [sup.managers[name] for name in todo.removed]
    for manager in removed:
        sup._apply(manager, manager.stop(now(), operator=False))
    await sup.wait_for(
        lambda: not any(m.alive for m in removed),
        timeout=max((m.spec.seconds_to_kill for m in removed), default=0) + 10,
    )
    for manager in removed:
        handle = sup.timers.pop(manager.spec.name, None)
        if handle is not None:
            handle.cancel()
        sup.logs.pop(manager.spec.name, None)
    was_wanted = {name: sup.managers[name].wanted for name in todo.changed}
    old_start = {name: sup.managers[name].spec.start for name in todo.changed}
    sup.reconfigure(new)
    for name in todo.changed:
        manager = sup.managers[name]
        manager.wanted = manager.spec.start is not StartType.MANUAL or (
            old_start[name] is StartType.MANUAL and was_wanted[name]
        )
    core = [name for name in todo.changed if sup.managers[name].spec.core]
    if core and running:
        # pmon's rule: a core manager restarts with the whole project, never alone. The
        # project restart also restarts the other changed ones and starts the added ones.
        task = sup.restart_project(f"reload changed core manager {', '.join(core)}")
        await asyncio.wait({task})  # another project command may cancel it: not an error
        return
    touched = []
    for name in todo.changed:
        manager = sup.managers[name]
        spec = manager.spec
        if sup.refusal(spec):  # a gate (run_on = "active" on the passive) refuses it now
            if manager.alive or manager.state is S.BACKOFF:
                sup._apply(manager, manager.stop(now(), operator=False))
        elif manager.alive:
            if manager.wanted:
                sup._apply(manager, manager.restart(now()))
            else:
                sup._apply(manager, manager.stop(now(), operator=False))
        elif manager.state in (S.BACKOFF, S.BLOCKED) and manager.wanted and running:
            sup._apply(manager, manager.start(now(), operator=True))  # a fixed command
        elif manager.state is S.STOPPED and "run_on" in todo.changed[name] and (
            manager.wanted and running
        ):
            sup._apply(manager, manager.start(now()))  # the gate held it back, no longer
        touched.append(manager)
    for name in todo.added:
        manager = sup.managers[name]
        if manager.wanted and running and not sup.refusal(manager.spec):
            sup._apply(manager, manager.start(now()))
        touched.append(manager)
    await sup.wait_for(
        lambda: all(m.state not in (S.STARTING, S.STOPPING) or m.ready_failed for m in touched),
        timeout=max((m.spec.seconds_to_kill + m.spec.start_timeout for m in touched), default=0)
        + 5,
    )


@command("reload")
async def reload(sup: "Supervisor", dry_run: bool = False) -> dict[str, Any]:
    """Re-read the project file: start added managers, stop removed ones, restart changed
    ones, keep the others running. An invalid file changes nothing. dry_run: only say so."""
    lock = sup.__dict__.setdefault("_reload_lock", asyncio.Lock())  # one reload at a time
    async with lock:
        try:
            new = config_module.load(sup.config.path)
        except ConfigError as exc:
            raise ConfigError(f"reload refused, nothing changed:\n{exc}") from None
        todo = plan(sup.config, new)
        result = {**todo.as_dict(), "dry_run": dry_run, "config": str(new.path)}
        if dry_run:
            return result
        if sup.project_state.value in ("starting", "stopping", "restarting"):
            raise CommandError(
                f"the project is {sup.project_state.value}; nothing changed: reload once it "
                "runs (`pmon status` shows when)"
            )
        sup.events.write(
            "reload",
            f"reloading {new.path}: {len(todo.added)} added, {len(todo.removed)} removed, "
            f"{len(todo.changed)} changed, {len(todo.updated)} updated, "
            f"{len(todo.unchanged)} unchanged",
            **todo.as_dict(),
        )
        await apply(sup, new, todo)
        return result


class ReloadOnHangup:
    """A service: SIGHUP reloads the project file, as `pmon reload` does."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._armed = False

    async def start(self, sup: "Supervisor") -> None:
        self._armed = hasattr(signal, "SIGHUP") and platform.add_signal_handler(
            sup.loop, signal.SIGHUP, self._hangup, sup
        )

    async def stop(self, sup: "Supervisor") -> None:
        if self._armed:
            sup.loop.remove_signal_handler(signal.SIGHUP)
        for task in list(self._tasks):
            task.cancel()

    def _hangup(self, sup: "Supervisor") -> None:
        task = sup.loop.create_task(self._reload(sup))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reload(self, sup: "Supervisor") -> None:
        try:
            await reload(sup)
        except PmonError as exc:  # nobody to answer: the event log says why
            sup.events.write("reload-failed", f"SIGHUP reload: {exc}", error=str(exc))
