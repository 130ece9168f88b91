"""The supervisor: start order, restart policy, project restart, the event loop.

One asyncio loop owns all state. Deaths (pidfd), notify datagrams, timers and control
commands arrive as callbacks on that loop; each feeds an event to a manager's state machine
(manager.py) and performs the actions it returns. Project-wide sequences (start, stop,
restart, block) run as one task at a time: a new one replaces the one under way.
"""

from __future__ import annotations

import asyncio
import enum
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable, Coroutine, Mapping, Protocol

from pmon.runtime import adopt, platform, statefile
from pmon.config import Config, ManagerSpec
from pmon.errors import CommandError, PmonError, SpawnRefused, UnknownManager
from pmon.runtime.logs import EventLog, describe_exit
from pmon.core.manager import Action, Manager
from pmon.runtime.notify import NotifyListener
from pmon.runtime.output import LogRotation, ManagerLog
from pmon.plugin_types import RestartAdvice
from pmon.runtime.process import ManagedProcess, log_path, manager_env
from pmon.commands.reload import ReloadOnHangup
from pmon.extensions.sdnotify import SystemdNotifier
from pmon.core.states import ManagerState
from pmon.extensions.write_probe import WriteProbe

S = ManagerState


class Service(Protocol):
    """Something that runs beside the supervisor for as long as pmon runs."""

    async def start(self, sup: "Supervisor") -> None: ...

    async def stop(self, sup: "Supervisor") -> None: ...


class ProjectState(str, enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    RESTARTING = "restarting"
    BLOCKED = "blocked"  # a core manager died too often; waits for an operator


class Supervisor:
    def __init__(self, config: Config, *, echo: bool = True) -> None:
        self.config = config
        self.echo = echo
        self.managers: dict[str, Manager] = {s.name: Manager(s) for s in config.managers}
        self.procs: dict[str, ManagedProcess] = {}
        self.by_pid: dict[int, str] = {}
        self.logs: dict[str, ManagerLog] = {}
        self.timers: dict[str, asyncio.TimerHandle] = {}
        self.project_state = ProjectState.STOPPED
        self._project_task: asyncio.Task[None] | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self._start_times: dict[int, float | None] = {}
        self._state_write_pending = False
        self._reported: dict[str, ManagerState] = {}
        self.started_at = time.time()
        self.leave_running = False  # exit without stopping the managers (for an upgrade)
        self._stopped_cleanly = False
        self._write_failing = False
        self._closing = False  # shutdown requested: no new project sequence may begin
        self.project_ready = asyncio.Event()  # the first start sequence is done (or skipped)
        # Seams for the parts built on top (redundancy, plugins, PMON TCP): services start
        # and stop with pmon; listeners hear every state change of a manager.
        self.services: list[Service] = build_services(config)
        self.listeners: list[Callable[[Manager, ManagerState | None], None]] = []
        # More seams, used by plugin_host.py: notify datagrams, project state changes, extra
        # environment (or SpawnRefused) before a spawn, advice on an automatic restart.
        self.notify_listeners: list[Callable[[Manager, dict[str, str]], None]] = []
        self.project_listeners: list[Callable[[ProjectState], None]] = []
        self.spawn_advisors: list[Callable[[Manager], Mapping[str, str]]] = []
        # One advisor (the plugin host, which merges its plugins' advice) or None.
        self.restart_advisor: Callable[[Manager, int | None, float], RestartAdvice | None] | None = None
        self.plugins: Any = None  # the PluginHost once started (verdicts, error state)
        # Gates say why a manager may not start now (None: it may), e.g. run_on = "active".
        self.start_gates: list[Callable[[ManagerSpec], str | None]] = []

    # --- paths -----------------------------------------------------------------------
    @property
    def state_dir(self) -> Path:
        return self.config.project.state_dir

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    # --- lifecycle -------------------------------------------------------------------
    async def run(self) -> int:
        """Run the project until SIGTERM / SIGINT / `pmon shutdown`; stop it; return 0."""
        from pmon.control.server import ControlServer

        self.loop = asyncio.get_running_loop()
        self.now = self.loop.time
        self._shutdown = asyncio.Event()
        platform.raise_fd_limit()
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = _lock_project(self.state_dir)
        project = self.config.project
        self.events = EventLog(
            self.state_dir / "log" / "events.jsonl", project.log_max_bytes, project.log_backups,
            echo=self.echo, on_error=lambda exc: self.write_failed("the event log", exc),
        )
        self.watcher = platform.ExitWatcher(self.loop, self._on_exit)
        self.notify = NotifyListener(self.state_dir / "notify.sock", self._on_notify)
        self.notify.open(self.loop)
        self.control = ControlServer(self)
        await self.control.start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            platform.add_signal_handler(self.loop, sig, self.request_shutdown, sig.name)
        self.events.write(
            "pmon-started", f"pmon {os.getpid()} runs project '{project.name}' from {self.config.path}",
            pid=os.getpid(), config=str(self.config.path),
        )
        # A pmon started again takes over the managers still running (hot restart).
        taken = adopt.take_over(self)
        for service in self.services:
            await service.start(self)
        if taken.start_project:
            self.start_project(skip=frozenset(taken.down))
        else:
            self._set_project_state(ProjectState(taken.project_state))
            self.project_ready.set()
        await self._shutdown.wait()
        if self.leave_running:  # detach: end a sequence under way, touch no manager
            if self._project_task is not None:
                self._project_task.cancel()
        else:
            await self.finish(self._begin(self._stop_sequence(ProjectState.STOPPED), final=True))
            self._stopped_cleanly = True
        for service in reversed(self.services):
            await service.stop(self)
        await self.control.stop()
        self.notify.close(self.loop)
        self.watcher.close()
        self._write_state()
        if self.leave_running:
            self.events.write("pmon-stopped", "pmon stopped; its managers run on (adopted at the next start)")
        else:
            self.events.write("pmon-stopped", "pmon stopped: every manager is down")
        for log in self.logs.values():
            log.close()
        self.events.close()
        return 0

    def request_shutdown(self, reason: str = "request") -> None:
        self._closing = True
        if not self._shutdown.is_set():
            self._shutdown.set()
            self.events.write("shutdown", f"stopping the project and pmon ({reason})", reason=reason)

    # --- project sequences -----------------------------------------------------------
    def start_project(self, skip: frozenset[str] = frozenset()) -> asyncio.Task[None]:
        return self._begin(self._start_sequence(skip))

    def stop_project(self) -> asyncio.Task[None]:
        return self._begin(self._stop_sequence(ProjectState.STOPPED))

    def restart_project(self, reason: str) -> asyncio.Task[None]:
        return self._begin(self._restart_sequence(reason))

    def _begin(self, sequence: Coroutine[Any, Any, None], final: bool = False) -> asyncio.Task[None]:
        """Run a project sequence, cancelling the one under way (a restart replaces a start).

        Once shutdown is requested only the final stop may begin: anything else would cancel
        it and leave managers half-stopped behind an exiting pmon.
        """
        if self._closing and not final:
            sequence.close()
            raise CommandError("pmon is shutting down; the project is being stopped")
        previous = self._project_task
        if previous is not None and not previous.done():
            previous.cancel()
        task = self.loop.create_task(sequence)
        self._project_task = task
        return task

    @staticmethod
    async def finish(task: asyncio.Task[None]) -> None:
        """Wait for a project sequence to end, also when a newer one replaced (cancelled) it:
        the caller then reports the state reached, instead of dying of the cancellation."""
        await asyncio.wait({task})

    async def _start_sequence(self, skip: frozenset[str] = frozenset()) -> None:
        """Start the managers in order; each must be ready before the next one starts.

        Managers already running (adopted by a restarted pmon) are left as they are;
        `skip` names managers that stay down (stopped or blocked before pmon restarted).
        """
        self._set_project_state(ProjectState.STARTING)
        for spec in self.config.start_order():
            manager = self.managers.get(spec.name)  # a reload may have removed it meanwhile
            if manager is None or not manager.wanted or spec.name in skip or self.refusal(spec):
                continue  # manual: only on an operator's command; or a gate says not here
            self._apply(manager, manager.start(self.now()))
            settled = await self.wait_for(
                lambda: manager.state is not S.STARTING or manager.ready_failed,
                timeout=spec.start_timeout,
            )
            if not settled or manager.ready_failed:
                self.events.write(
                    "start-timeout",
                    f"{spec.name} not ready within {spec.start_timeout:g} s; the start goes on",
                    manager=spec.name,
                )
        self._set_project_state(ProjectState.RUNNING)
        self.events.write("project-started", f"project '{self.config.project.name}' started")
        self.project_ready.set()

    async def _stop_sequence(self, final: ProjectState) -> None:
        """Stop every manager in reverse start order, each fully before the next."""
        going_down = ProjectState.RESTARTING if final is ProjectState.RESTARTING else ProjectState.STOPPING
        self._set_project_state(going_down)
        now = self.now()
        for waiting in self.managers.values():  # no restart may fire while going down
            if waiting.state is S.BACKOFF:
                self._apply(waiting, waiting.stop(now, operator=False))
        for spec in reversed(self.config.start_order()):
            manager = self.managers.get(spec.name)
            if manager is None or not manager.alive:
                continue
            self._apply(manager, manager.stop(self.now(), operator=False))
            await self.wait_for(lambda: not manager.alive, timeout=spec.seconds_to_kill + 10)
        self._set_project_state(final)

    async def _restart_sequence(self, reason: str) -> None:
        self.events.write("project-restart", f"restarting the project: {reason}", reason=reason)
        await self._stop_sequence(ProjectState.RESTARTING)
        await self._start_sequence()

    async def _block_sequence(self, manager: Manager) -> None:
        self.events.write(
            "project-blocked",
            f"core manager {manager.spec.name} died too often: the project is stopped and "
            f"blocked; start it again with `pmon restart --all`",
            manager=manager.spec.name,
        )
        await self._stop_sequence(ProjectState.BLOCKED)

    def _set_project_state(self, state: ProjectState) -> None:
        old, self.project_state = self.project_state, state
        if old is not state:
            self._tell(self.project_listeners, state)
        if state in (ProjectState.RUNNING, ProjectState.STOPPED, ProjectState.BLOCKED):
            self.project_ready.set()  # settled, however the first sequence ended (systemd READY=1)
        self._changed()

    @property
    def restarts_allowed(self) -> bool:
        return self.project_state in (ProjectState.STARTING, ProjectState.RUNNING)

    # --- the state machines' actions -------------------------------------------------
    def _apply(self, manager: Manager, actions: list[Action]) -> None:
        name = manager.spec.name
        for action in actions:
            if action is Action.SPAWN:
                self._spawn(manager)
            elif action is Action.TERMINATE and name in self.procs:
                self.procs[name].terminate()
            elif action is Action.KILL and name in self.procs:
                self.events.write(
                    "kill",
                    f"{name} still alive {manager.spec.seconds_to_kill:g} s after SIGTERM: "
                    "killing its process group",
                    manager=name, pid=self.procs[name].pid,
                )
                self.procs[name].kill()
            elif action is Action.PROJECT_RESTART:
                self.restart_project(f"core manager {name} died")
            elif action is Action.PROJECT_BLOCKED:
                self._begin(self._block_sequence(manager))
        self._arm_timer(manager)
        self._report(manager)
        self._changed()

    def _report(self, manager: Manager) -> None:
        """Tell the listeners about a state change (once per change)."""
        old = self._reported.get(manager.spec.name)
        if old is manager.state:
            return
        self._reported[manager.spec.name] = manager.state
        self._tell(self.listeners, manager, old)

    def _tell(self, listeners: list[Callable[..., None]], *args: Any) -> None:
        for listener in listeners:
            try:
                listener(*args)
            except Exception as exc:  # a listener's bug must not stop supervision
                self.events.write("listener-error", f"listener failed: {exc!r}")

    def _spawn(self, manager: Manager) -> None:
        spec = manager.spec
        try:
            wished: dict[str, str] = {}
            for advisor in self.spawn_advisors:
                wished.update(advisor(manager))
        except SpawnRefused as exc:
            self.events.write(
                "start-refused", f"{spec.name} not started: {exc}", manager=spec.name,
                reason=str(exc),
            )
            self.loop.call_soon(self._spawn_failed, manager)  # counts as a failed start
            return
        extra = {
            **{k: v for k, v in wished.items() if k not in spec.env},  # the TOML wins
            "NOTIFY_SOCKET": self.notify.address,
            "PMON_PROJECT": self.config.project.name,
            "PMON_MANAGER": spec.name,
            "PMON_INDEX": str(spec.index),
        }
        log = self._log_for(spec.name)
        try:
            log.rotate_if_needed()
        except OSError as exc:
            self.write_failed(f"the output log of {spec.name} ({log.path})", exc)
        try:
            proc = ManagedProcess.spawn(spec, manager_env(spec, os.environ, extra), log)
        except OSError as exc:
            self.events.write(
                "spawn-failed", f"{spec.name} could not start: {exc}", manager=spec.name,
                error=str(exc),
            )
            # Later, not now: a failing spawn must not recurse through restarts.
            self.loop.call_soon(self._spawn_failed, manager)
            return
        self.procs[spec.name] = proc
        self.by_pid[proc.pid] = spec.name
        # spawned first: on the SIGCHLD path watch() may report a quick death at once
        manager.spawned(proc.pid, self.now(), time.time())
        self.watcher.watch(proc.pid, proc.popen)
        self.events.write(
            "started", f"{spec.name} started (pid {proc.pid})", manager=spec.name, pid=proc.pid
        )

    def _spawn_failed(self, manager: Manager) -> None:
        if manager.state is S.STARTING and manager.pid is None:
            actions = manager.spawn_failed(self.now())
            self._log_decision(manager, None)
            self._apply(manager, actions)

    def _log_for(self, name: str) -> ManagerLog:
        if name not in self.logs:
            project = self.config.project
            self.logs[name] = ManagerLog(
                log_path(self.state_dir, name), project.log_max_bytes, project.log_backups
            )
        return self.logs[name]

    def _arm_timer(self, manager: Manager) -> None:
        name = manager.spec.name
        handle = self.timers.pop(name, None)
        if handle is not None:
            handle.cancel()
        if manager.deadline is not None:
            self.timers[name] = self.loop.call_at(manager.deadline, self._on_deadline, name)

    def _on_deadline(self, name: str) -> None:
        self.timers.pop(name, None)
        manager = self.managers.get(name)
        if manager is None:
            return
        was_failed = manager.ready_failed
        self._apply(manager, manager.tick(self.now()))
        if manager.ready_failed and not was_failed:
            self.events.write(
                "not-ready",
                f"{name} did not report READY=1 within {manager.spec.start_timeout:g} s",
                manager=name,
            )

    def _on_exit(self, pid: int) -> None:
        name = self.by_pid.pop(pid, None)
        if name is None:
            return
        proc = self.procs.pop(name)
        code = proc.reap()
        proc.kill()  # leftovers of its process group: no grandchild outlives its manager
        manager = self.managers.get(name)
        if manager is None:
            return
        was = manager.state
        actions = manager.exited(code, self.now(), restart=self.restarts_allowed)
        if was is not S.STOPPING:
            actions = self._advise_restart(manager, code, actions)
        # the death first, then what pmon does
        self._log_decision(manager, code, pid, adopted=proc.popen is None)
        self._apply(manager, actions)

    def _advise_restart(self, manager: Manager, code: int | None, actions: list[Action]) -> list[Action]:
        """Let the restart advisor veto or delay an automatic restart just decided."""
        advisor = self.restart_advisor
        if advisor is None or manager.spec.core or manager.state not in (S.STARTING, S.BACKOFF):
            return actions
        now = self.now()
        delay = max(0.0, (manager.deadline or now) - now) if manager.state is S.BACKOFF else 0.0
        try:
            advice = advisor(manager, code, delay)
        except Exception as exc:
            self.events.write("listener-error", f"restart advisor failed: {exc!r}")
            return actions
        if advice is None or (not advice.veto and advice.delay <= delay):
            return actions
        return manager.hold_restart(now, None if advice.veto else advice.delay, advice.reason)

    def _log_decision(
        self, manager: Manager, code: int | None, pid: int | None = None, adopted: bool = False
    ) -> None:
        name = manager.spec.name
        # An adopted manager is not pmon's child: its exit status went to its new parent.
        how = "an exit status pmon cannot know (adopted)" if adopted else describe_exit(code)
        self.events.write(
            "exited",
            f"{name} (pid {pid}) ended with {how}: {manager.last_decision}",
            manager=name, pid=pid, exit_code=code, action=manager.last_decision,
            state=manager.state.value,
        )

    def _on_notify(self, pid: int, fields: dict[str, str]) -> None:
        name = self._manager_of_pid(pid)
        if name is None:
            return
        manager = self.managers[name]
        if fields.get("READY") == "1" and manager.state is S.STARTING:
            self._apply(manager, manager.ready(self.now()))
            self.events.write("ready", f"{name} is ready", manager=name)
        self._tell(self.notify_listeners, manager, fields)  # WATCHDOG=1 for the alive monitor

    def _manager_of_pid(self, pid: int) -> str | None:
        """The manager a pid belongs to: itself, or the nearest managed ancestor."""
        if pid in self.by_pid:
            return self.by_pid[pid]
        import psutil

        try:
            for parent in psutil.Process(pid).parents():
                if parent.pid in self.by_pid:
                    return self.by_pid[parent.pid]
        except psutil.Error:
            pass
        return None

    # --- waiting on state ------------------------------------------------------------
    def _changed(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            _wake(waiter)
        if not self._state_write_pending:
            self._state_write_pending = True
            self.loop.call_later(0.05, self._write_state)  # coalesce a burst of changes

    async def wait_for(self, predicate: Callable[[], bool], timeout: float | None = None) -> bool:
        """Wait until `predicate()` holds (re-checked at every change); False on timeout."""
        deadline = None if timeout is None else self.now() + timeout
        while not predicate():
            remaining = None if deadline is None else deadline - self.now()
            if remaining is not None and remaining <= 0:
                return False
            # A plain await on a future woken by a timer, not asyncio.wait_for: on Python 3.11
            # wait_for swallows a cancellation that arrives together with the wake-up, and a
            # project sequence replaced by a restart then went on running beside it.
            waiter = self.loop.create_future()
            self._waiters.append(waiter)
            timer = None if deadline is None else self.loop.call_at(deadline, _wake, waiter)
            try:
                await waiter
            finally:
                if timer is not None:
                    timer.cancel()
        return True

    def _write_state(self) -> None:
        self._state_write_pending = False
        managers = {}
        for name, manager in self.managers.items():
            pid = manager.pid
            if pid is not None and pid not in self._start_times:
                self._start_times[pid] = statefile.process_start_time(pid)
            managers[name] = {
                "pid": pid,
                "create_time": self._start_times.get(pid) if pid else None,
                "state": manager.state.value,
                "restarts": manager.restarts,
                "recent_restarts": list(manager.recent),
                "wanted": manager.wanted,
            }
        live = {m.pid for m in self.managers.values() if m.pid}
        self._start_times = {p: t for p, t in self._start_times.items() if p in live}
        try:
            statefile.save(
                self.state_file,
                {
                    "project": self.config.project.name,
                    "config": str(self.config.path),
                    "pmon_pid": os.getpid(),
                    "project_state": self.project_state.value,
                    "stopped_cleanly": self._stopped_cleanly,
                    "managers": managers,
                },
            )
        except OSError as exc:
            self.write_failed(f"the state file {self.state_file}", exc)

    def write_failed(self, what: str, exc: OSError) -> None:
        """pmon could not write its state or a log (disk full, ...): report it, and with
        `stop_on_write_error` stop the project cleanly instead of running blind."""
        if self._write_failing:
            return  # the report itself failed (the event log is on the same full disk)
        self._write_failing = True
        try:
            self.events.write(
                "write-failed", f"cannot write {what}: {exc}", what=what, error=str(exc)
            )
            if self.config.project.stop_on_write_error:
                self.request_shutdown(f"watchdog: cannot write {what}: {exc}")
        finally:
            self._write_failing = False

    # --- operations for the control commands -----------------------------------------
    def find(self, target: str | int) -> Manager:
        """A manager by name or by index (1-based; index 0 is pmon itself)."""
        text = str(target)
        if text.isdigit():
            for manager in self.managers.values():
                if manager.spec.index == int(text):
                    return manager
        elif text in self.managers:
            return self.managers[text]
        names = ", ".join(self.managers) or "(none)"
        raise UnknownManager(
            f"no manager '{text}' in project '{self.config.project.name}'; "
            f"managers: {names} (or their index 1..{len(self.managers)})"
        )

    def refusal(self, spec: ManagerSpec) -> str | None:
        """Why this manager may not start now, or None."""
        for gate in self.start_gates:
            reason = gate(spec)
            if reason:
                return reason
        return None

    # `wait=False` returns once the change is under way (PMON TCP answers at once).
    async def start_manager(self, target: str | int, wait: bool = True) -> Manager:
        manager = self.find(target)
        if self._closing:
            raise CommandError("pmon is shutting down; nothing new is started")
        reason = self.refusal(manager.spec)
        if reason:
            raise CommandError(reason)
        if manager.spec.core and self.project_state in (ProjectState.BLOCKED, ProjectState.STOPPED):
            manager.recent.clear()  # the operator resets the core manager's counter
            task = self.restart_project(f"operator started core manager {manager.spec.name}")
            if wait:
                await self.finish(task)
            return manager
        self._apply(manager, manager.start(self.now(), operator=True))
        if wait:
            await self._settle(manager)
        return manager

    async def stop_manager(self, target: str | int, wait: bool = True) -> Manager:
        manager = self._stoppable(target)
        self._apply(manager, manager.stop(self.now(), operator=True))
        if wait:
            await self._settle(manager)
        return manager

    async def kill_manager(self, target: str | int, wait: bool = True) -> Manager:
        """Stop a manager without the polite signal: kill its process group now."""
        manager = self._stoppable(target)
        actions = manager.stop(self.now(), operator=True)
        self._apply(manager, [a for a in actions if a is not Action.TERMINATE])
        proc = self.procs.get(manager.spec.name)
        if proc is not None:
            self.events.write(
                "kill", f"{manager.spec.name} killed by request", manager=manager.spec.name,
                pid=proc.pid,
            )
            proc.kill()
        if wait:
            await self._settle(manager)
        return manager

    def _stoppable(self, target: str | int) -> Manager:
        manager = self.find(target)
        if manager.spec.core and manager.alive:
            raise CommandError(
                f"{manager.spec.name} is a core manager: the project cannot run without it; "
                "stop the whole project with `pmon stop --all`"
            )
        return manager

    async def restart_manager(self, target: str | int, wait: bool = True) -> Manager:
        manager = self.find(target)
        if manager.spec.core:
            task = self.restart_project(f"operator restarted core manager {manager.spec.name}")
            if wait:
                await self.finish(task)
            return manager
        self._apply(manager, manager.restart(self.now()))
        if wait:
            await self._settle(manager)
        return manager

    async def _settle(self, manager: Manager) -> None:
        spec = manager.spec
        await self.wait_for(
            lambda: manager.state not in (S.STARTING, S.STOPPING) or manager.ready_failed,
            timeout=spec.seconds_to_kill + spec.start_timeout + 5,
        )

    def status(self) -> dict[str, Any]:
        return {
            "project": self.config.project.name,
            "project_state": self.project_state.value,
            "config": str(self.config.path),
            "pmon_pid": os.getpid(),
            "managers": [self.row(m) for m in self.managers.values()],
            "verdicts": self.plugins.verdict_rows() if self.plugins else [],
            "plugin_error_state": self.plugin_error_state(),
        }

    def plugin_error_state(self) -> float:
        """What the plugins' current verdicts add to this server's error state (0: none);
        the redundancy manager adds it to its other error sources."""
        return float(self.plugins.error_state()) if self.plugins else 0.0

    @staticmethod
    def row(manager: Manager) -> dict[str, Any]:
        snap = manager.snapshot()
        return {
            "index": snap.index,
            "name": snap.name,
            "state": snap.state,
            "pid": snap.pid,
            "start": snap.start,
            "core": snap.core,
            "restarts": snap.restarts,
            "exit_code": snap.exit_code,
            "started_at": snap.started_at,
            "ready_failed": snap.ready_failed,
        }

    def reconfigure(self, config: Config) -> None:
        """Take a new, validated config: managers added, removed, moved or with changed keys."""
        for spec in config.managers:
            if spec.name in self.managers:
                self.managers[spec.name].spec = spec
        added = {s.name: Manager(s) for s in config.managers if s.name not in self.managers}
        order = [s.name for s in config.managers]
        merged = {**self.managers, **added}
        self.managers = {name: merged[name] for name in order}
        self.config = config
        self._changed()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def build_services(config: Config) -> list[Service]:
    """The services this project's configuration asks for (one line per kind)."""
    from pmon.extensions.plugin_host import PluginHost

    services: list[Service] = []
    if config.redundancy is not None:  # first: its daemon may sync as soon as pmon answers
        from pmon.extensions.redundancy import RedundancyService

        services.append(RedundancyService(config))
    services += [PluginHost(config), LogRotation(), ReloadOnHangup(), SystemdNotifier(), WriteProbe()]
    if config.pmon_tcp is not None:
        from pmon.extensions.pmon_tcp.server import PmonTcpService

        services.append(PmonTcpService(config.pmon_tcp))
    return services


def _lock_project(state_dir: Path) -> Any:
    """Hold a lock for as long as pmon runs: a second pmon on the same project is refused."""
    handle = open(state_dir / "pmon.lock", "a+")
    if not platform.lock_exclusively(handle):
        handle.seek(0)
        other = handle.read().strip() or "?"
        raise PmonError(
            f"another pmon (pid {other}) already runs the project in {state_dir}; "
            "talk to it with `pmon status`, or stop it first"
        )
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def run(config: Config, *, echo: bool = True) -> int:
    return asyncio.run(Supervisor(config, echo=echo).run())
