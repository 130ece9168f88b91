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

from .manager import Snapshot


class Severity(str, enum.Enum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    def __str__(self) -> str:
        return self.value


ACTIONS = frozenset({"restart"})


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
    if isinstance(result, Verdict):
        result = [result]
    if isinstance(result, (str, bytes, Mapping)) or not isinstance(result, Iterable):
        raise ValueError(f"a monitor check must return a list of Verdict, got {_kind(result)}")
    names = set(managers)
    out = []
    for item in result:
        if not isinstance(item, Verdict):
            raise ValueError(f"a monitor check returned {_kind(item)} where a Verdict belongs")
        try:
            severity = Severity(item.severity)
        except ValueError:
            raise ValueError(f"unknown severity {item.severity!r}; use info, warning or error") from None
        if item.target is not None and item.target not in names:
            raise ValueError(f"verdict names no manager of this project: {item.target!r}")
        if not isinstance(item.message, str):
            raise ValueError(f"verdict message must be a string, got {_kind(item.message)}")
        contribution = item.error_state
        if (
            isinstance(contribution, bool)
            or not isinstance(contribution, (int, float))
            or not math.isfinite(contribution)
            or contribution < 0
        ):
            raise ValueError(f"verdict error_state must be a number >= 0, got {contribution!r}")
        if item.action is not None and item.action not in ACTIONS:
            raise ValueError(f"unknown verdict action {item.action!r}; allowed: restart or none")
        if item.action == "restart" and item.target is None:
            raise ValueError("a restart verdict must name a manager")
        if not isinstance(item.key, str):
            raise ValueError(f"verdict key must be a string, got {_kind(item.key)}")
        out.append(Verdict(item.target, severity, item.message, float(contribution), item.action, item.key))
    return out


def check_setup(result: Any) -> PluginSetup:
    if result is None:
        return PluginSetup()
    if not isinstance(result, PluginSetup):
        raise ValueError(f"pmon_configure must return a PluginSetup or None, got {_kind(result)}")
    interval = result.interval
    if interval is not None and (
        isinstance(interval, bool) or not isinstance(interval, (int, float)) or not interval > 0
    ):
        raise ValueError(f"PluginSetup.interval must be a number > 0 or None, got {interval!r}")
    if not all(isinstance(t, str) for t in result.tables):
        raise ValueError("PluginSetup.tables must be names (strings)")
    return result


def _kind(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}"
