"""The one change path's plan: pure. Every change of the manager list comes here first.

`pmon add`, `remove`, `edit` (CLI and PMON TCP's PROP_PUT) produce a changed TOML table
(`with_added`, `without`, `with_edited`); `pmon reload` and SIGHUP read the file. Either way
the new table is validated into a Config, and `plan(old, new)` says which managers are
added, removed, changed (a key that shapes the process changed: it must restart), updated
(only limits changed: applied in place, the process keeps running) and unchanged. The
project machine (core/project.py, `Project.change`) applies the plan, the same way for
every door the change came through.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from pmon.config import Config, ManagerSpec
from pmon.errors import CommandError

# Keys a running process cannot pick up: a manager whose one of these changed restarts.
RESTART_KEYS = frozenset(
    {"command", "env", "cwd", "start", "core", "redundancy", "ready", "ready_seconds", "num",
     "run_on",  # run_on: the start gate may now refuse (or allow) it
     "user", "group", "umask", "rlimits", "env_file",  # execution settings; a stop's
     "memory_max", "cpu_max", "pids_max"}  # apply in place; cgroup limits: at the next start
)
# Position is not a property of the manager: reordering the file restarts nothing.
IGNORED_KEYS = frozenset({"index"})
# Project keys that name another project: refused, they need `pmon run` on the new file.
IDENTITY_KEYS = ("name", "state_dir")
# Project keys that are limits: applied in place (every log takes the new size and backups).
PROJECT_LIMITS = ("log_max_bytes", "log_backups", "stop_on_write_error")
OWN_SECTIONS = frozenset({"project", "defaults", "managers"})


@dataclass(frozen=True)
class Plan:
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    updated: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    unchanged: tuple[str, ...] = ()
    not_applied: tuple[str, ...] = ()  # what takes effect only when pmon restarts
    project: tuple[str, ...] = ()  # [project] limits changed: applied in place

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.updated or self.project)

    def as_dict(self) -> dict[str, Any]:
        return {
            "added": list(self.added),
            "removed": list(self.removed),
            "changed": {k: list(v) for k, v in self.changed.items()},
            "updated": {k: list(v) for k, v in self.updated.items()},
            "unchanged": list(self.unchanged),
            "not_applied": list(self.not_applied),
            "project": list(self.project),
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
        project=tuple(
            key for key in PROJECT_LIMITS
            if getattr(old.project, key) != getattr(new.project, key)
        ),
    )


# --- the changed tables of add / remove / edit ---------------------------------------------
def with_added(raw: Mapping[str, Any], table: Mapping[str, Any], position: int | None) -> dict[str, Any]:
    """The project table with a [[managers]] table inserted at `position` (1-based; None:
    appended)."""
    new = copy.deepcopy(dict(raw))
    tables = new.setdefault("managers", [])
    if position is None:
        position = len(tables) + 1
    if not 1 <= position <= len(tables) + 1:
        raise CommandError(f"position {position} is outside 1..{len(tables) + 1}")
    tables.insert(position - 1, dict(table))
    return new


def without(raw: Mapping[str, Any], name: str) -> dict[str, Any]:
    new = copy.deepcopy(dict(raw))
    new["managers"] = [m for m in new.get("managers", []) if m.get("name") != name]
    return new


def with_edited(
    raw: Mapping[str, Any], name: str, changes: Mapping[str, Any], path: object
) -> dict[str, Any]:
    """The project table with keys of one manager's table changed (None: removed)."""
    if "name" in changes:
        raise CommandError(f"{name} cannot be renamed; remove it and add it again")
    new = copy.deepcopy(dict(raw))
    table = next((t for t in new.get("managers", []) if t.get("name") == name), None)
    if table is None:
        raise CommandError(
            f"{name} is not in {path}: pmon adds it for [redundancy]; change it "
            "there, or list it under [[managers]] with redundancy = true to set its keys"
        )
    for key, value in changes.items():
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value
    return new
