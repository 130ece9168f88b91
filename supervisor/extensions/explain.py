"""Why each manager is where it is, and what to type to get it out: the extension behind
the explaining columns of `pmon status` (and of every reply that carries a manager's row).

It remembers what the manager machine does not keep (the last exit with its time, the
error of a failed spawn, the last events of each manager) by listening to the event log,
samples CPU and RSS of the managers' process trees (one scan of the process table per
status, however many managers), and turns a row's state, the machine's `last_decision`, the
conditions that hold a manager back and the alive monitor's verdict into one short reason
and one command. It decides nothing: it only reads.
"""

from __future__ import annotations

import re
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Mapping, cast

from pmon.runtime.api import Api, Extension
from pmon.runtime.logs import describe_exit
from pmon.runtime.output import note
from pmon.runtime.process import log_path
from pmon.states import ManagerState

if TYPE_CHECKING:
    from pmon.core.manager import Manager
    from pmon.runtime.supervisor import Supervisor

S = ManagerState
RECENT_EVENTS = 20  # per manager, for `pmon describe`
SAMPLE_AGE = 0.5  # seconds one scan of the process table serves (one status = one scan)
_ERRNO = re.compile(r"^\[Errno \d+\] ")


class Explainer(Extension):
    name = "explainer"

    def __init__(self) -> None:
        self.last_exit: dict[str, dict[str, Any]] = {}
        self.spawn_error: dict[str, str] = {}
        self.recent: dict[str, deque[dict[str, Any]]] = {}
        self._usage: dict[str, tuple[int, float | None]] = {}
        self._totals: dict[str, tuple[int, float, float]] = {}  # name -> (pid, cpu s, when)
        self._sampled_at = 0.0

    async def start(self, api: Api) -> None:
        # Like the control server, it reads more than the Api offers (the project machine's
        # conditions and held set, the plugin host's verdicts); it changes nothing.
        self.api = self.sup = cast("Supervisor", api)
        api.events.listeners.append(self._heard)

    def _heard(self, record: dict[str, Any]) -> None:
        name = record.get("manager")
        if not isinstance(name, str):
            return
        self.recent.setdefault(name, deque(maxlen=RECENT_EVENTS)).append(record)
        kind = record.get("event")
        line = _log_line(record)
        if line and name in self.api.managers:
            note(log_path(self.api.state_dir, name), line, float(record.get("ts") or time.time()))
        if kind == "exited":
            code = record.get("exit_code")
            failed = code is None and name in self.spawn_error
            text = f"could not start: {self.spawn_error[name]}" if failed else describe_exit(code)
            self.last_exit[name] = {"code": code, "text": text, "at": record.get("ts"), "pid": record.get("pid")}
        elif kind == "spawn-failed":
            self.spawn_error[name] = _ERRNO.sub("", str(record.get("error", "")))
        elif kind == "start-refused":
            self.spawn_error[name] = f"refused by a plugin: {record.get('reason', '')}"
        elif kind == "started":
            self.spawn_error.pop(name, None)

    # --- the row --------------------------------------------------------------------------
    def row(self, manager: "Manager") -> Mapping[str, Any]:
        name = manager.spec.name
        last = self.last_exit.get(name)
        if last is None and manager.exit_code is not None:  # restored from the state file
            last = {"code": manager.exit_code, "text": describe_exit(manager.exit_code), "at": None, "pid": None}
        rss, cpu = self._usage_of(manager)
        why, hint, ok = self.explain(manager, last)
        return {
            "last_exit": _with_signal(last) if last else None,
            "uptime": round(time.time() - manager.started_at, 1) if manager.alive and manager.started_at else None,
            "cpu_percent": None if cpu is None else round(cpu, 1),
            "rss": rss,
            "recent_restarts": len(manager.recent),
            "restart_limit": manager.spec.restart_count,
            "why": why,
            "hint": hint,
            "ok": ok,
        }

    def explain(self, manager: "Manager", last: Mapping[str, Any] | None) -> tuple[str, str, bool]:
        """(reason, the command that gets out of it, whether this is as it should be)."""
        sup = self.sup
        spec, state, name = manager.spec, manager.state, manager.spec.name
        exit_text = _last_exit_text(last)
        project = sup.project
        if name in project.held:
            from pmon.core.project import condition_of

            cond = condition_of(spec)
            why = project.conditions.get(cond, (True, ""))[1] if cond else ""
            return (f"not started: {why or 'passive server'} (run_on = {spec.run_on})",
                    "pmon redu set-active  (makes this server active)", True)
        hung = self._hung(manager)
        if hung:
            return f"hung: {hung}", f"pmon restart {name}", False
        error = self.spawn_error.get(name)
        if error and manager.pid is None and state in (S.BACKOFF, S.BLOCKED, S.STARTING):
            return (f"could not start: {error}",
                    f"fix `command`/`cwd` of {name} in {sup.config.path}, then `pmon reload`", False)
        if state is S.BLOCKED:
            core = spec.core and project.state.value == "blocked"
            hint = "pmon restart --all" if core else f"pmon start {name}"
            if manager.last_decision.startswith("blocked:"):
                why = f"blocked: {spec.restart_count} restarts in {spec.reset_after:g} s"
                return (why + (f", {exit_text}" if exit_text else ""), hint, False)
            return manager.last_decision or "blocked", hint, False
        if state is S.BACKOFF:
            left = max(0.0, (manager.deadline or sup.now()) - sup.now())
            why = f"backoff: retry in {left:.1f} s" + (f", {exit_text}" if exit_text else "")
            return why, f"pmon start {name}  (now, and resets the restart counter)", False
        if state is S.EXITED:
            fine = bool(last and last.get("code") == 0)
            return f"exited: {exit_text or 'no exit known'} (start = {spec.start})", f"pmon start {name}", fine
        if state is S.STARTING:
            if manager.ready_failed:
                return (f"not ready: no READY=1 within {spec.start_timeout:g} s",
                        f"pmon restart {name}", False)
            return "starting", "", False
        if state is S.STOPPING:
            return "stopping", "", False
        if state is S.STOPPED:
            if not manager.wanted:
                return "", f"pmon start {name}", True  # manual, not asked for
            if project.state.value in ("stopped", "stopping"):
                return f"project {project.state.value}", "pmon start --all", False
            return manager.last_decision or "stopped", f"pmon start {name}", False
        return "", "", True  # running

    def _hung(self, manager: "Manager") -> str:
        """The alive monitor's verdict on this manager ('no WATCHDOG=1 for 13 s'), or ''."""
        from pmon.extensions.plugin_host import PluginHost

        host = self.sup.extension(PluginHost)
        if host is None or manager.state is not S.RUNNING:
            return ""
        for verdict in host.verdict_rows():
            if verdict["target"] == manager.spec.name and verdict["key"] == "alive":
                last = host.manager_view(manager).last_watchdog  # loop time; None: never sent
                if last is not None:
                    return f"no WATCHDOG=1 for {self.sup.loop.time() - last:.0f} s"
                return str(verdict["message"]).removeprefix("hung: ")
        return ""

    def _usage_of(self, manager: "Manager") -> tuple[int | None, float | None]:
        """RSS (bytes) and CPU % of one core of the manager's whole process tree: since the
        previous status if that was a while ago, else over the manager's lifetime."""
        if manager.pid is None:
            return None, None
        now = time.monotonic()
        if now - self._sampled_at > SAMPLE_AGE:
            self._sample(now)
        return self._usage.get(manager.spec.name, (None, None))

    def _sample(self, now: float) -> None:
        from pmon_plugins._trees import scan  # the memory monitor's one-pass table

        table = scan()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _cpu, _rss) in table.items():
            children.setdefault(ppid, []).append(pid)
        usage: dict[str, tuple[int, float | None]] = {}
        totals: dict[str, tuple[int, float, float]] = {}
        for manager in self.api.managers.values():
            root = manager.pid
            if root is None or root not in table:
                continue
            rss, cpu = _tree(table, children, root)
            name = manager.spec.name
            before = self._totals.get(name)
            if before and before[0] == root and now > before[2]:
                percent: float | None = 100.0 * max(0.0, cpu - before[1]) / (now - before[2])
            else:
                lived = time.time() - manager.started_at if manager.started_at else 0.0
                percent = 100.0 * cpu / lived if lived > 0 else None
            usage[name] = (rss, percent)
            totals[name] = (root, cpu, now)
        self._usage, self._totals, self._sampled_at = usage, totals, now


def _tree(table: Mapping[int, tuple[int, float, int]], children: Mapping[int, list[int]], root: int) -> tuple[int, float]:
    rss, cpu, stack = 0, 0.0, [root]
    while stack:
        pid = stack.pop()
        _ppid, used, size = table[pid]
        rss, cpu = rss + size, cpu + used
        stack.extend(children.get(pid, ()))
    return rss, cpu


def _log_line(record: Mapping[str, Any]) -> str:
    """What pmon writes into the manager's own log about this event ('' for nothing)."""
    kind = record.get("event")
    if kind == "started":
        return f"started as pid {record.get('pid')}"
    if kind == "exited":
        code, pid = record.get("exit_code"), record.get("pid")
        if pid is None:
            return f"not started: {record.get('action', '')}"
        if code is None:
            return f"pid {pid} ended (exit status unknown: adopted): {record.get('action', '')}"
        how = describe_exit(code).replace("signal ", "with signal ").replace("exit code", "with exit code")
        return f"pid {pid} exited {how}: {record.get('action', '')}"
    if kind in ("spawn-failed", "start-refused", "signalled", "plugin-restart", "adopt", "ready"):
        return str(record.get("message", ""))
    return ""


def _last_exit_text(last: Mapping[str, Any] | None) -> str:
    """'last exit SIGKILL', 'last exit code 3', 'last start failed' (or '')."""
    if not last:
        return ""
    code = last.get("code")
    if code is None:
        return "last start failed"
    return f"last exit {_with_signal(last)['signal']}" if code < 0 else f"last exit code {code}"


def _with_signal(last: Mapping[str, Any]) -> dict[str, Any]:
    code = last.get("code")
    signal_name = last["text"].removeprefix("signal ") if isinstance(code, int) and code < 0 else None
    return {**last, "signal": signal_name}
