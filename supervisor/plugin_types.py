"""What plugins receive and return: frozen views of the project, verdicts, advice.

Plugins never get live objects: a view is a copy taken on the supervisor's loop, so a plugin
running in its own thread can read it at leisure and cannot corrupt pmon's state. What a
plugin returns is checked (`check_verdicts`) before pmon uses it: a plugin's garbage is the
plugin's failure, never the supervisor's.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping

from pmon.states import Snapshot


class Severity(str, enum.Enum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    def __str__(self) -> str:
        return self.value


ACTIONS = frozenset({"restart"})
SEVERITIES = frozenset(s.value for s in Severity)


@dataclass(frozen=True)
class Verdict:
    """One finding of a monitor check. A check returns the findings that hold *now*: an
    empty list clears the plugin's earlier verdicts, None keeps them (nothing checked).

    target:      a manager's name, or None for the project / the whole server
    severity:    Severity.INFO | WARNING | ERROR (or its string)
    message:     for people: what is wrong, with the figures
    error_state: what this finding adds to the server's error state (>= 0); the redundancy
                 manager makes the server with the lower error state the active one
    action:      None, or "restart": pmon restarts the target manager (once per onset)
    key:         tells apart several findings of one plugin on one target ("rss", "cpu")
    """

    target: str | None
    severity: Severity | str
    message: str
    error_state: float = 0.0
    action: str | None = None
    key: str = ""


@dataclass(frozen=True)
class ManagerView(Snapshot):
    """A manager's snapshot plus what monitors need: its `monitor` settings from the TOML
    and when it last sent WATCHDOG=1 (loop-monotonic seconds, for its current pid)."""

    monitor: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: MappingProxyType({}))
    last_watchdog: float | None = None


@dataclass(frozen=True)
class ProjectView:
    """The project at one moment. `now` is on the same monotonic clock as `last_watchdog`."""

    name: str
    state: str
    config_path: Path
    now: float
    managers: tuple[ManagerView, ...]

    def manager(self, name: str) -> ManagerView | None:
        return next((m for m in self.managers if m.name == name), None)


@dataclass(frozen=True)
class PluginSettings:
    """The settings every plugin may read at start-up.

    tables:   every `[plugins.NAME]` table of the TOML, by NAME
    managers: manager name -> that manager's `monitor` table (plugin key -> table)
    config_path: the project file (relative paths in settings are relative to its folder)
    """

    tables: Mapping[str, Mapping[str, Any]]
    managers: Mapping[str, Mapping[str, Mapping[str, Any]]]
    config_path: Path


@dataclass(frozen=True)
class PluginSetup:
    """A plugin's answer to `pmon_configure`.

    tables:   the `[plugins.NAME]` tables and manager `monitor.NAME` keys it reads; a table
              no loaded plugin claims is reported as a configuration error (a typo)
    interval: seconds between its monitor checks; None: do not check (nothing configured)
    """

    tables: tuple[str, ...] = ()
    interval: float | None = None


@dataclass(frozen=True)
class StartAdvice:
    """A plugin's answer before a manager starts: extra environment, or a refusal."""

    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    refuse: str | None = None  # the reason; the start then counts as a failed start


@dataclass(frozen=True)
class RestartAdvice:
    """A plugin's answer to an automatic restart: veto it (the manager is blocked until an
    operator starts it) or delay it by `delay` seconds."""

    veto: bool = False
    delay: float = 0.0
    reason: str = ""


# --- checks of what plugins return ------------------------------------------------------


def check_verdicts(result: Any, managers: Iterable[str]) -> list[Verdict]:
    """The verdicts of one monitor check, normalised; raises ValueError on garbage."""
    if type(result) is Verdict:
        result = [result]
    if type(result) not in (list, tuple):  # the host has already turned iterables into lists
        raise ValueError(f"a monitor check must return a list of Verdict, got {kind_of(result)}")
    names = set(managers)
    out = []
    for item in result:
        if type(item) is not Verdict:
            raise ValueError(f"a monitor check returned {kind_of(item)} where a Verdict belongs")
        # exact types, not isinstance: a plugin's own str subclass could run its code in ==,
        # hash() or format() here, on the supervisor's loop
        severity = item.severity
        if type(severity) is str and severity in SEVERITIES:
            severity = Severity(severity)
        elif type(severity) is not Severity:
            raise ValueError(f"unknown severity {kind_of(severity)}; use info, warning or error")
        if item.target is not None and (type(item.target) is not str or item.target not in names):
            raise ValueError(f"verdict names no manager of this project: {kind_of(item.target)}")
        if type(item.message) is not str or type(item.key) is not str:
            raise ValueError("verdict message and key must be strings")
        contribution = item.error_state
        if type(contribution) not in (int, float) or not math.isfinite(contribution) or contribution < 0:
            raise ValueError(f"verdict error_state must be a number >= 0, got {kind_of(contribution)}")
        if item.action is not None and (type(item.action) is not str or item.action not in ACTIONS):
            raise ValueError(f"unknown verdict action {kind_of(item.action)}; allowed: restart or none")
        if item.action == "restart" and item.target is None:
            raise ValueError("a restart verdict must name a manager")
        out.append(Verdict(item.target, severity, item.message, float(contribution), item.action, item.key))
    return out


def check_setup(result: Any) -> PluginSetup:
    if result is None:
        return PluginSetup()
    if not isinstance(result, PluginSetup):
        raise ValueError(f"pmon_configure must return a PluginSetup or None, got {kind_of(result)}")
    interval = result.interval
    if interval is not None and (
        isinstance(interval, bool) or not isinstance(interval, (int, float)) or not interval > 0
    ):
        raise ValueError(f"PluginSetup.interval must be a number > 0 or None, got {interval!r}")
    if not all(isinstance(t, str) for t in result.tables):
        raise ValueError("PluginSetup.tables must be names (strings)")
    return result


def kind_of(value: Any) -> str:
    """What a value is, for messages; never runs a plugin's __repr__."""
    if type(value) in (str, int, float, bool, type(None), list, dict, tuple):
        return f"{type(value).__name__} {repr(value)[:60]}"
    return f"a {type(value).__name__}"  # never repr() a plugin's object on the loop
