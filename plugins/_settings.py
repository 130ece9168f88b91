"""Reading a plugin's settings tables with the messages pmon's own configuration gives."""

from __future__ import annotations

import difflib
from typing import Any, Callable, Mapping

from pmon.config import _boolean, _count, _positive_number, _string  # the same checks
from pmon.plugin_types import Severity

Schema = Mapping[str, Callable[[Any], Any]]


def severity(value: Any) -> Severity:
    try:
        return Severity(value)
    except ValueError:
        raise ValueError("one of 'info' | 'warning' | 'error'") from None


def positive(value: Any) -> float:
    number = _positive_number(value)
    if number <= 0:
        raise ValueError("a number > 0")
    return number


def string_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError('a list of strings, e.g. ["/", "/var"]')
    return tuple(value)


def read(where: str, table: Mapping[str, Any], schema: Schema) -> dict[str, Any]:
    """Check a table against `schema` (key -> converter raising ValueError("expected"))."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key not in schema:
            close = difflib.get_close_matches(key, list(schema), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(f"{where}, key '{key}': unknown key{hint}; allowed: {', '.join(schema)}")
        try:
            out[key] = schema[key](value)
        except ValueError as exc:
            raise ValueError(f"{where}, key '{key}': expected {exc}, got {value!r}") from None
    return out


def per_manager(
    name: str, settings: Any, schema: Schema, defaults: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The global table `[plugins.NAME]` and each manager's `monitor.NAME` table merged over
    it (checked; `enabled = false` in a manager's table switches the monitor off for it)."""
    base = {**defaults, **read(f"[plugins.{name}]", settings.tables.get(name, {}), schema)}
    managers = {}
    for manager, monitor in settings.managers.items():
        if name in monitor:
            where = f"manager '{manager}', monitor.{name}"
            managers[manager] = {**base, **read(where, monitor[name], schema)}
    return base, managers


COMMON: dict[str, Callable[[Any], Any]] = {
    "interval": positive,
    "severity": severity,
    "error_state": _positive_number,
}
__all__ = [
    "read", "per_manager", "COMMON", "_boolean", "_count", "_positive_number", "_string",
    "string_list",
]


class ManagerSettings:
    """The settings of a per-manager monitor: `[plugins.NAME]` gives defaults (and, when
    `applies_to_all`, switches the monitor on for every manager); `monitor.NAME` in a
    manager's table overrides them. Read again from the manager's view at each check, so a
    manager added with `pmon add` is watched too."""

    def __init__(
        self, name: str, schema: Schema, defaults: Mapping[str, Any], *, applies_to_all: bool,
        global_only: tuple[str, ...] = ("interval",),
    ) -> None:
        self.name = name
        self.schema = schema
        self.manager_schema = {k: v for k, v in schema.items() if k not in global_only}
        self.defaults = dict(defaults)
        self.applies_to_all = applies_to_all
        self.base: dict[str, Any] = dict(defaults)
        self.on_for_all = False
        self._cache: dict[str, tuple[Any, dict[str, Any]]] = {}

    def configure(self, settings: Any) -> tuple[bool, dict[str, Any]]:
        """Check every table now (a typo stops pmon at start); True if anything is on."""
        table = settings.tables.get(self.name)
        self.base = {**self.defaults, **read(f"[plugins.{self.name}]", table or {}, self.schema)}
        self.on_for_all = self.applies_to_all and table is not None
        self._cache.clear()
        on = self.on_for_all
        for manager, monitor in settings.managers.items():
            if self.name in monitor:
                on |= self._merge(manager, monitor[self.name]).get("enabled", True)
        return on, self.base

    def _merge(self, manager: str, table: Any) -> dict[str, Any]:
        cached = self._cache.get(manager)
        if cached is not None and cached[0] is table:
            return cached[1]
        where = f"manager '{manager}', monitor.{self.name}"
        merged = {**self.base, **read(where, table, self.manager_schema)}
        self._cache[manager] = (table, merged)
        return merged

    def of(self, view: Any) -> dict[str, Any] | None:
        """This manager's settings, or None when the monitor is off for it."""
        table = view.monitor.get(self.name)
        if table is None:
            return self.base if self.on_for_all else None
        merged = self._merge(view.name, table)
        return merged if merged.get("enabled", True) else None
