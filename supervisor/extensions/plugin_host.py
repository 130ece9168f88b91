"""Running plugins beside the supervisor, isolated: an extension (see app.py).

Each plugin gets one worker thread of its own, so a plugin that hangs stalls nothing but
itself, and the event loop that notices deaths never runs plugin code. Every call has a time
limit; a plugin whose call is still running past its limit is skipped until that call ends
(a hung plugin costs one timeout, not one per call). An exception, a timeout or a malformed
answer starts a failure streak: reported once in the event log, shown in `pmon plugins`,
closed by the next call that works.

Monitor checks run on a per-plugin timer; their verdicts replace the plugin's earlier ones,
are logged when they appear, change severity or clear, show in `pmon status`, and add up to
the plugin part of the server's error state (`error_state`). A verdict with
`action = "restart"` asks the project machine to recycle its manager once per onset; the
death then goes through the normal restart policy (so a manager that keeps failing its
monitor ends blocked, like one that keeps dying).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import queue
import threading
import time
from types import MappingProxyType
from dataclasses import fields
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from pmon import plugins
from pmon.config import Config
from pmon.errors import SpawnRefused
from pmon.core.manager import Manager
from pmon.states import Snapshot
from pmon.plugin_types import (
    ManagerView,
    ProjectView,
    RestartAdvice,
    StartAdvice,
    Verdict,
    check_verdicts,
    kind_of,
)
from pmon.states import ManagerState
from pmon.runtime.api import Api, Extension

if TYPE_CHECKING:
    from pmon.core.project import ProjectState

MAX_QUEUED = 1000  # calls waiting for one plugin's thread; past that they are dropped
SNAPSHOT_FIELDS = [f.name for f in fields(Snapshot)]  # copied into each ManagerView


class Worker:
    """One plugin's thread. Calls run there one at a time, in the order they were given.

    A daemon thread of its own rather than a ThreadPoolExecutor: the interpreter joins
    executor threads at exit, so one plugin stuck in a call would keep pmon from exiting.
    """

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]] | None]
        self._jobs = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.queued = 0
        self.running_since: float | None = None  # time.monotonic() when the current call began
        threading.Thread(target=self._loop, name=f"pmon-plugin-{name}", daemon=True).start()

    def busy_for(self) -> float:
        started = self.running_since
        return 0.0 if started is None else time.monotonic() - started

    def submit(self, fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            self.queued += 1
        self._jobs.put((fn, future))
        return future

    def close(self) -> None:
        self._jobs.put(None)

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, future = job
            self.running_since = time.monotonic()
            try:
                if future.set_running_or_notify_cancel():
                    future.set_result(fn())
            except BaseException as exc:  # a plugin's SystemExit is its failure, not ours
                future.set_exception(exc)
            finally:
                self.running_since = None
                with self._lock:
                    self.queued -= 1


class Record:
    """What pmon knows about one running plugin."""

    def __init__(self, info: plugins.PluginInfo, impls: Mapping[str, Any]) -> None:
        self.info = info
        self.impls = impls  # hook name -> this plugin's implementation
        self.worker = Worker(info.name)
        self.calls = 0
        self.failures = 0
        self.streak = 0  # consecutive failed (or skipped) calls
        self.last_error: str | None = None
        self.check_seconds: float | None = None  # how long its last monitor check took
        self.verdicts: dict[tuple[str | None, str], Verdict] = {}

    def row(self) -> dict[str, Any]:
        return {
            "name": self.info.name,
            "source": self.info.source,
            "hooks": list(self.info.hooks),
            "interval": self.info.setup.interval,
            "calls": self.calls,
            "failures": self.failures,
            "failure_streak": self.streak,
            "last_error": self.last_error,
            "verdicts": len(self.verdicts),
            "check_seconds": self.check_seconds,
        }


class PluginHost(Extension):
    """Loads the plugins when built (bad plugins stop pmon before anything starts) and runs
    them from `start` to `stop`."""

    name = "plugin host"

    def __init__(self, config: Config) -> None:
        self.loaded = plugins.load(config)
        self.plugins_table = config.raw.get("plugins")  # what the plugins were loaded for
        self.spec = self.loaded.spec
        self.records: dict[str, Record] = {}
        for name, info in self.loaded.plugins.items():
            impls = {
                hook: impl
                for hook in info.hooks
                for impl in getattr(self.loaded.pm.hook, hook).get_hookimpls()
                if impl.plugin_name == name and not (impl.hookwrapper or impl.wrapper)
            }
            self.records[name] = Record(info, impls)
        self._pending: set[asyncio.Future[Any]] = set()
        self._watchdog: dict[str, tuple[int | None, float]] = {}  # name -> (pid, loop time)

    def check_change(self, new: Config) -> None:
        """A changed project (add / edit / reload) must be one these plugins can serve, as
        `pmon run` checks a file: every manager's monitor.NAME read by a loaded plugin.
        Raises ConfigError. A changed [plugins] section loads other plugins only when pmon
        starts again, so it is checked then."""
        if new.raw.get("plugins") == self.plugins_table:
            plugins.check_read(new, {}, self.loaded.plugins, self.loaded.idle)

    def implementers(self, hook: str) -> list[Record]:
        return [r for r in self.records.values() if hook in r.impls]

    # --- the service ----------------------------------------------------------------------
    async def start(self, api: Api) -> None:
        self.sup = sup = api
        self.loop = asyncio.get_running_loop()
        for record in self.implementers("pmon_monitor_check"):
            if record.info.setup.interval is not None:
                api.background(self, self._monitor(record))
        names = ", ".join(f"{r.info.name}" for r in self.records.values()) or "none"
        sup.events.write("plugins-loaded", f"plugins: {names}", plugins=list(self.records))

    async def stop(self) -> None:
        if self._pending:  # the last notifications (project stopped) get a moment to finish
            await asyncio.wait(self._pending, timeout=min(self.spec.timeout, 2.0))
        for record in self.records.values():
            record.worker.close()

    # --- views ----------------------------------------------------------------------------
    def manager_view(self, manager: Manager) -> ManagerView:
        snap = manager.snapshot()
        pid, at = self._watchdog.get(manager.spec.name, (None, None))
        return ManagerView(
            **{name: getattr(snap, name) for name in SNAPSHOT_FIELDS},
            monitor=manager.spec.monitor,
            last_watchdog=at if pid is not None and pid == manager.pid else None,
        )

    def project_view(self) -> ProjectView:
        sup = self.sup
        return ProjectView(
            name=sup.config.project.name,
            state=sup.project_state.value,
            config_path=sup.config.path,
            now=self.loop.time(),
            managers=tuple(self.manager_view(m) for m in sup.managers.values()),
        )

    # --- calling plugins ------------------------------------------------------------------
    def _call(self, record: Record, hook: str, kwargs: Mapping[str, Any]) -> concurrent.futures.Future[Any] | None:
        """Hand a call to the plugin's thread; None (and a failure) if the plugin is stuck."""
        busy, queued = record.worker.busy_for(), record.worker.queued
        if busy > self.spec.timeout or queued >= MAX_QUEUED:
            why = f"its previous call has been running {busy:.1f} s" if busy > self.spec.timeout \
                else f"{queued} calls are already waiting for it"
            self._failed(record, hook, f"skipped: {why}")
            return None
        record.calls += 1
        impl = record.impls[hook]
        return record.worker.submit(functools.partial(_run_impl, impl, kwargs))

    def _notify(self, hook: str, **kwargs: Any) -> None:
        """Tell every plugin that implements `hook`; do not wait for them."""
        for record in self.implementers(hook):
            future = self._call(record, hook, kwargs)
            if future is None:
                continue
            wrapped = asyncio.wrap_future(future, loop=self.loop)
            self._pending.add(wrapped)
            timer = self.loop.call_later(self.spec.timeout, self._late, record, hook, wrapped)
            wrapped.add_done_callback(functools.partial(self._notified, record, hook, timer=timer))

    def _late(self, record: Record, hook: str, future: asyncio.Future[Any]) -> None:
        if not future.done():
            self._failed(record, hook, f"timed out after {self.spec.timeout:g} s")

    def _notified(
        self, record: Record, hook: str, future: asyncio.Future[Any], *, timer: asyncio.TimerHandle
    ) -> None:
        self._pending.discard(future)
        timer.cancel()
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            self._failed(record, hook, str(exc))
        else:
            self._ok(record)

    def _ask(self, hook: str, kwargs: Mapping[str, Any]) -> list[tuple[Record, Any]]:
        """Ask every implementer at once and wait (blocking the loop) at most hook_timeout.

        Only the before-start and restart hooks do this: their answer is needed before pmon
        can act. A plugin stuck from an earlier call is skipped at once.
        """
        asked = [(r, self._call(r, hook, kwargs)) for r in self.implementers(hook)]
        futures = [f for _, f in asked if f is not None]
        concurrent.futures.wait(futures, timeout=self.spec.hook_timeout)
        answers = []
        for record, future in asked:
            if future is None:
                continue
            if not future.done():
                self._failed(record, hook, f"no answer within {self.spec.hook_timeout:g} s")
            elif future.exception() is not None:
                self._failed(record, hook, str(future.exception()))
            else:
                answers.append((record, future.result()))
        return answers

    def _failed(self, record: Record, hook: str, message: str) -> None:
        record.failures += 1
        record.streak += 1
        record.last_error = f"{hook}: {message}"
        if record.streak == 1:  # once per streak: a broken plugin must not flood the log
            self.sup.events.write(
                "plugin-failed",
                f"plugin {record.info.name} failed in {hook}: {message}; pmon goes on without it",
                plugin=record.info.name, hook=hook, error=message,
            )

    def _ok(self, record: Record) -> None:
        if record.streak:
            self.sup.events.write(
                "plugin-recovered",
                f"plugin {record.info.name} works again after {record.streak} failed calls",
                plugin=record.info.name, failed_calls=record.streak,
            )
            record.streak = 0

    # --- the extension interface ----------------------------------------------------------
    def on_manager(self, manager: Manager, old: ManagerState | None) -> None:
        if self.implementers("pmon_manager_state"):
            self._notify(
                "pmon_manager_state", manager=self.manager_view(manager),
                old=None if old is None else old.value, new=manager.state.value,
                exit_code=manager.exit_code,
            )

    def on_project(self, state: "ProjectState") -> None:
        if state.value == "running":
            self._notify("pmon_project_started", project=self.project_view())
        elif state.value in ("stopped", "blocked"):
            self._notify("pmon_project_stopped", project=self.project_view())

    def on_notify(self, manager: Manager, message: Mapping[str, str]) -> None:
        if message.get("WATCHDOG") == "1":
            self._watchdog[manager.spec.name] = (manager.pid, self.loop.time())

    def on_switchover(self, active: str, previous: str | None, reason: str) -> None:
        """Tell the plugins which server is active now."""
        self._notify("pmon_switchover", active=active, previous=previous, reason=reason)

    def spawn_env(self, manager: Manager) -> Mapping[str, str]:
        if not self.implementers("pmon_before_start"):
            return {}
        env: dict[str, str] = {}
        for record, advice in self._ask("pmon_before_start", {"manager": self.manager_view(manager)}):
            if advice is None:
                self._ok(record)
                continue
            if type(advice) is not StartAdvice or not _is_env(advice.env) or not (
                advice.refuse is None or type(advice.refuse) is str
            ):
                self._failed(record, "pmon_before_start", f"returned garbage: {kind_of(advice)}")
                continue
            self._ok(record)
            if advice.refuse:
                raise SpawnRefused(f"plugin {record.info.name} refused: {advice.refuse}")
            env.update(advice.env)
        return env

    def restart_advice(self, manager: Manager, code: int | None, delay: float) -> RestartAdvice | None:
        if not self.implementers("pmon_restart_decision"):
            return None
        kwargs = {"manager": self.manager_view(manager), "exit_code": code, "delay": delay}
        veto, longest, reasons = False, 0.0, []
        for record, advice in self._ask("pmon_restart_decision", kwargs):
            if advice is None:
                self._ok(record)
                continue
            if (
                type(advice) is not RestartAdvice
                or type(advice.veto) is not bool
                or type(advice.delay) not in (int, float)
                or not 0 <= advice.delay < float("inf")
                or type(advice.reason) is not str
            ):
                self._failed(record, "pmon_restart_decision", f"returned garbage: {kind_of(advice)}")
                continue
            self._ok(record)
            veto = veto or bool(advice.veto)
            longest = max(longest, float(advice.delay))
            reasons.append(f"{record.info.name}: {advice.reason}" if advice.reason else record.info.name)
        if not veto and not longest:
            return None
        return RestartAdvice(veto=veto, delay=longest, reason="; ".join(reasons))

    # --- monitors -------------------------------------------------------------------------
    async def _monitor(self, record: Record) -> None:
        interval = record.info.setup.interval or 1.0
        hook = "pmon_monitor_check"
        while True:
            began = self.loop.time()
            future = self._call(record, hook, {"project": self.project_view()})
            if future is not None:
                try:
                    result = await asyncio.wait_for(
                        asyncio.shield(asyncio.wrap_future(future)), self.spec.timeout
                    )
                except asyncio.TimeoutError:
                    self._failed(record, hook, f"timed out after {self.spec.timeout:g} s")
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._failed(record, hook, str(exc))
                else:
                    record.check_seconds = round(self.loop.time() - began, 4)
                    self._take(record, result)
            await asyncio.sleep(max(0.0, interval - (self.loop.time() - began)))

    def _take(self, record: Record, result: Any) -> None:
        if result is None:
            self._ok(record)
            return
        try:
            verdicts = check_verdicts(result, self.sup.managers)
        except ValueError as exc:
            self._failed(record, "pmon_monitor_check", f"returned garbage: {exc}")
            return
        self._ok(record)
        new = {(v.target, v.key): v for v in verdicts}
        name = record.info.name
        for key, verdict in new.items():
            before = record.verdicts.get(key)
            if before is None or before.severity != verdict.severity:
                self.sup.events.write(
                    "verdict",
                    f"{name}: {verdict.target or 'project'}: {verdict.severity}: {verdict.message}",
                    plugin=name, target=verdict.target, severity=str(verdict.severity),
                    detail=verdict.message, key=verdict.key, error_state=verdict.error_state,
                    action=verdict.action,
                )
            if verdict.action == "restart" and (before is None or before.action != "restart"):
                self._restart(name, verdict)
        for key in record.verdicts.keys() - new.keys():
            gone = record.verdicts[key]
            self.sup.events.write(
                "verdict-cleared", f"{name}: {gone.target or 'project'}: cleared ({gone.message})",
                plugin=name, target=gone.target, key=gone.key,
            )
        record.verdicts = new

    def _restart(self, plugin: str, verdict: Verdict) -> None:
        """Recycle the manager; its death goes through the restart policy like any other."""
        assert verdict.target is not None
        manager = self.sup.managers.get(verdict.target)
        if manager is None or manager.pid is None or manager.state not in (
            ManagerState.STARTING, ManagerState.RUNNING
        ):
            return
        self.sup.events.write(
            "plugin-restart",
            f"{plugin} stops {verdict.target} (pid {manager.pid}) to restart it: {verdict.message}",
            plugin=plugin, manager=verdict.target, pid=manager.pid,
        )
        self.sup.recycle(verdict.target, f"{plugin}: {verdict.message}")

    # --- what status and `pmon plugins` show -----------------------------------------------
    def verdict_rows(self) -> list[dict[str, Any]]:
        return [
            {
                "plugin": record.info.name, "target": v.target, "severity": str(v.severity),
                "message": v.message, "error_state": v.error_state, "action": v.action,
                "key": v.key,
            }
            for record in self.records.values()
            for v in record.verdicts.values()
        ]

    def error_state(self) -> float:
        return float(sum(v.error_state for r in self.records.values() for v in r.verdicts.values()))

    def status(self) -> Mapping[str, Any]:
        return {"verdicts": self.verdict_rows(), "plugin_error_state": self.error_state()}


class PluginFailure(Exception):
    """A plugin's exception, described in the plugin's thread (its __str__ is plugin code)."""


def _run_impl(impl: Any, kwargs: Mapping[str, Any]) -> Any:
    """One call of a plugin's hook, in its thread: the answer settled, an error described."""
    try:
        return _settled(plugins.call_impl(impl, kwargs))
    except BaseException as exc:  # a plugin's SystemExit is its failure, not ours
        raise PluginFailure(plugins.describe_error(exc)) from None


def _settled(result: Any) -> Any:
    """Iterating a plugin's generator (or its own iterable class) runs plugin code: do it
    here, in the plugin's thread, never later on the loop while its verdicts are read."""
    if type(result) in (list, tuple) or isinstance(result, (str, bytes, Mapping)):
        return result
    return list(result) if isinstance(result, Iterable) else result


def _is_env(env: Any) -> bool:
    # exact types: what a plugin returns is read on the loop and must run none of its code
    return type(env) in (dict, MappingProxyType) and all(
        type(k) is str and type(v) is str and k and "=" not in k for k, v in env.items()
    )
