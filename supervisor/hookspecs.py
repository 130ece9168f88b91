"""The hooks a pmon plugin may implement: one module, every hook documented.

A plugin is a module (or an object) with functions marked `@hookimpl` whose names are hooks
below; it may take only the arguments it needs. Example::

    from supervisor.hookspecs import hookimpl, Verdict

    @hookimpl
    def pmon_monitor_check(project):
        return [Verdict(m.name, "warning", "restarted often", error_state=1)
                for m in project.managers if m.restarts > 5]

How pmon calls plugins: each plugin has its own worker thread, so a plugin that hangs stalls
only itself; every call has a time limit (`[plugins] timeout`, `hook_timeout`); an exception,
a timeout or a malformed answer is that plugin's failure, reported once per failure streak
(event log, `pmon plugins`), and pmon goes on without that answer. Plugins receive frozen
views (`ProjectView`, `ManagerView`), never live objects.
"""

from __future__ import annotations

from typing import Iterable

import pluggy

from pmon.plugin_types import (
    ManagerView,
    PluginSettings,
    PluginSetup,
    ProjectView,
    RestartAdvice,
    Severity,
    StartAdvice,
    Verdict,
)

PROJECT = "pmon"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

__all__ = [
    "hookimpl", "hookspec", "ManagerView", "PluginSettings", "PluginSetup", "ProjectView",
    "RestartAdvice", "Severity", "StartAdvice", "Verdict",
]


@hookspec
def pmon_configure(settings: PluginSettings) -> PluginSetup | None:
    """Read and check the plugin's settings, once, when pmon starts (and on `pmon validate`).

    `settings.tables` holds every `[plugins.NAME]` table, `settings.managers` every manager's
    `monitor` table. Return a `PluginSetup` naming the tables / monitor keys the plugin reads
    (a table nobody claims is reported as a likely typo) and, for a monitor, the interval of
    its checks (None: no checks, e.g. nothing configured). Raise `ValueError("what is wrong,
    how to fix it")` for bad settings: pmon refuses to start and names the plugin.
    Runs on the main thread before anything starts: no time limit, no isolation.
    """


@hookspec
def pmon_project_started(project: ProjectView) -> None:
    """The project has started: every manager of the start sequence was started in order."""


@hookspec
def pmon_project_stopped(project: ProjectView) -> None:
    """The project has stopped (operator stop, shutdown, or blocked after a core manager
    died too often: `project.state` tells which)."""


@hookspec
def pmon_manager_state(
    manager: ManagerView, old: str | None, new: str, exit_code: int | None
) -> None:
    """A manager changed state (`old` is None the first time). `exit_code` is the last exit
    code (negative: killed by that signal; None: none yet or it could not start).
    Called in order for each plugin; the supervisor does not wait for it."""


@hookspec
def pmon_before_start(manager: ManagerView) -> StartAdvice | None:
    """A manager is about to be spawned: return `StartAdvice(env={...})` to add environment
    variables, or `StartAdvice(refuse="why")` to refuse the start (it then counts as a
    start that failed: restart policy and restart count apply). Every plugin is asked; the
    environments are merged; one refusal refuses. Time limit: `[plugins] hook_timeout`."""


@hookspec
def pmon_restart_decision(
    manager: ManagerView, exit_code: int | None, delay: float
) -> RestartAdvice | None:
    """A manager died and pmon is about to restart it by itself after `delay` seconds
    (0: at once). Return `RestartAdvice(veto=True, reason=...)` to keep it down (it is
    blocked until an operator starts it) or `RestartAdvice(delay=s, reason=...)` to wait
    longer. One veto vetoes; the longest delay wins. Not asked for operator restarts, nor
    for core managers (their death restarts the whole project). Time limit: `hook_timeout`."""


@hookspec
def pmon_switchover(active: str, previous: str | None, reason: str) -> None:
    """The redundant pair switched: `active` is the name of the newly active server,
    `previous` the formerly active one (None if unknown), `reason` why (failure, forced,
    error state, preference)."""


@hookspec
def pmon_monitor_check(project: ProjectView) -> Iterable[Verdict] | None:
    """A periodic monitor check, every `PluginSetup.interval` seconds, in the plugin's own
    thread (time limit `[plugins] timeout`). Return the verdicts that hold now: an empty
    list means all clear (earlier verdicts of this plugin are cleared), None means nothing
    was checked this time (earlier verdicts stay). A verdict's `error_state` adds to the
    server's error state; `action="restart"` restarts its manager once per onset."""
