"""The supervisor: the project machine's hands on one asyncio loop.

One asyncio loop owns all state. Deaths (pidfd), notify datagrams, timers and control
commands arrive as callbacks on that loop; each is handed to the project machine
(core/project.py), which decides, and whose effects (spawn, terminate, kill, forget, record,
job ended) are performed here. Nothing here decides what happens to a manager or to the
project: this module only feeds events in and carries effects out, and waits for the
project to settle where a command asked to wait.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Coroutine, Mapping, TypeVar

from pmon.config import Config, ManagerSpec
from pmon.core.change import Plan
from pmon.core.manager import Manager
from pmon.core.project import (
    Forget,
    JobEnded,
    JobKind,
    Kill,
    Project,
    ProjectChanged,
    ProjectState,
    Record,
    Spawn,
    Terminate,
)
from pmon.states import ManagerState
from pmon.errors import NotSaved, PmonError, SpawnRefused
from pmon.runtime import adopt, containment, execution, fdbudget, platform, statefile
from pmon.runtime.statewriter import StateWriter
from pmon.runtime.api import Extension
from pmon.runtime.instance import ProjectLock
from pmon.runtime.logs import EventLog, describe_exit
from pmon.runtime.notify import NotifyListener
from pmon.runtime.output import ManagerLog
from pmon.runtime.process import ManagedProcess, log_path, manager_env

S = ManagerState
E = TypeVar("E", bound=Extension)
T = TypeVar("T")
STATE_RETRY_SECONDS = 1.0  # a state file that could not be written is tried again this often
FINAL_WRITE_ATTEMPTS, FINAL_WRITE_PAUSE = 5, 0.2  # pmon's last write: tried this often, then
EXIT_NOT_SAVED = 1  # pmon's exit status: the next pmon would start from a stale state file
WATCHDOG_ONLY = {"WATCHDOG": "1"}  # a keepalive, nothing else (_on_notify's short path)
SETTLED_PROJECT = (ProjectState.RUNNING, ProjectState.STOPPED, ProjectState.BLOCKED)


class Supervisor:
    def __init__(self, config: Config, extensions: list[Extension], *, echo: bool = True) -> None:
        self.echo = echo
        self.project = Project(config)
        self.procs: dict[str, ManagedProcess] = {}
        self.by_pid: dict[int, str] = {}
        self.logs: dict[str, ManagerLog] = {}
        self.timers: dict[str, asyncio.TimerHandle] = {}
        self._job_timer: asyncio.TimerHandle | None = None
        self._job_waiters: dict[int, list[asyncio.Future[None]]] = {}
        self._waiters: list[asyncio.Future[None]] = []
        self._start_times: dict[int, float | None] = {}
        self._identities: dict[int, dict[str, Any]] = {}  # uid, exe (containment.identity)
        self._state_write_pending = False
        self._state_dirty = False  # changed since the state file was last written
        self.changes = 0  # counts changes: a command that made none has nothing to commit
        self._state_error: OSError | None = None  # why the last write failed
        self._state_writer = StateWriter(lambda: self.state_file, self._state_written)
        self._reported: dict[str, ManagerState] = {}
        self._performing = False
        self.started_at = time.time()
        self.leave_running = False  # exit without stopping the managers (for an upgrade)
        self._stopped_cleanly = False
        self._write_failing = False
        self._change_lock = asyncio.Lock()  # one change of the manager list at a time
        self._tasks: dict[int, set[asyncio.Task[None]]] = {}  # by id() of the owning extension
        self.project_ready = asyncio.Event()  # the first start sequence is done (or skipped)
        self._listening = False  # the extensions hear of changes once they have started
        self.extensions = extensions  # started in this order, stopped in reverse

    # --- what extensions and commands read ------------------------------------------
    @property
    def config(self) -> Config:
        return self.project.config

    @property
    def managers(self) -> Mapping[str, Manager]:
        return self.project.managers

    @property
    def project_state(self) -> ProjectState:
        return self.project.state

    @property
    def state_dir(self) -> Path:
        return self.config.project.state_dir

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    def extension(self, kind: type[E]) -> E | None:
        """The running extension of this kind, or None (not configured)."""
        return next((e for e in self.extensions if isinstance(e, kind)), None)

    # --- lifecycle -------------------------------------------------------------------
    async def run(self) -> int:
        """Run the project until SIGTERM / SIGINT / `pmon shutdown`; stop it; return 0."""
        self.loop = asyncio.get_running_loop()
        self.now = self.loop.time
        self._shutdown = asyncio.Event()
        platform.raise_fd_limit()
        project = self.config.project
        try:
            tightened = _prepare_state_dir(self.state_dir)
            self._lock = ProjectLock(self.state_dir)
            self._lock.acquire()  # a second pmon on the same project is refused
            self.events = EventLog(
                self.state_dir / "log" / "events.jsonl", project.log_max_bytes,
                project.log_backups, echo=self.echo,
                on_error=lambda exc: self.write_failed("the event log", exc),
            )
        except OSError as exc:  # read-only, not ours, ...: one line, not a traceback
            raise PmonError(
                f"cannot use the state directory {self.state_dir}: {exc.strerror or exc}; "
                "make it writable for this user (or set [project] state_dir)"
            ) from None
        self.watcher = platform.ExitWatcher(self.loop, self._on_exit)
        self.notify = NotifyListener(self.state_dir / "notify.sock", self._on_notify)
        self.notify.open(self.loop)
        # cgroups where writable, else process groups and the subreaper (containment.py)
        self.containment = containment.choose(project.name, self.state_dir, self.notify.address)
        self.containment.managers = lambda: self.by_pid
        if self.containment.kind == "process-group":
            self.watcher.on_sigchld(self._sweep)
        for sig in (signal.SIGTERM, signal.SIGINT):
            platform.add_signal_handler(self.loop, sig, self.request_shutdown, sig.name)
        self.events.write(
            "pmon-started", f"pmon {os.getpid()} runs project '{project.name}' from {self.config.path}",
            pid=os.getpid(), config=str(self.config.path),
        )
        fds = fdbudget.shortfall(self.config, fdbudget.limit(after_raise=False))
        if fds:
            self.events.write("fd-limit", f"warning: {fds}", needed=fdbudget.needed(self.config))
        if tightened is not None:
            self.events.write(
                "state-dir", f"{self.state_dir} was mode {tightened:o}: tightened to 700 "
                "(events, lock and sockets are the owner's only)", mode=f"{tightened:o}",
            )
        try:
            await self._lifetime()
        except BaseExceptionGroup as failed:
            # The extensions' tasks are guarded (_guarded): an error here is the lifetime's
            # own (a plugin refusing its settings, say), the one the caller must see.
            raise failed.exceptions[0] from None
        self.notify.close(self.loop)
        self.watcher.close()
        if not self.leave_running:
            self._sweep()  # every manager is down: nothing of theirs outlives pmon
            self.containment.release()
        await self._state_writer.idle()  # then the last word is this one
        self._write_state(final=True)
        if self.leave_running:
            self.events.write("pmon-stopped", "pmon stopped; its managers run on (adopted at the next start)")
        else:
            self.events.write("pmon-stopped", "pmon stopped: every manager is down")
        for log in self.logs.values():
            log.close()
        self.events.close()
        return 0 if self._state_error is None else EXIT_NOT_SAVED

    async def _lifetime(self) -> None:
        """Adopt, start the extensions and the project, run until told to stop, stop.

        Every task of every extension has one owner: this group. Shutdown order is written
        here: the final stop, then the extensions in reverse order, each with its tasks
        (the control server, first in the list, last)."""
        async with asyncio.TaskGroup() as group:
            self._group = group
            # A pmon started again takes over the managers still running (hot restart).
            taken = adopt.take_over(self)
            for extension in self.extensions:
                await extension.start(self)
            self._listening = True
            if self._shutdown.is_set():
                pass  # told to stop before the project started: straight to the stop below
            elif (job := adopt.resumable(taken)) is not None:
                # a start leaves down what it left down after any hot restart; a restart
                # starts everything again, as it would have
                skip = taken.skip if job.kind is JobKind.START else frozenset()
                new = bool(taken.resume and taken.resume.get("new"))  # begun here, not resumed
                self._perform(self.project.resume(job, self.now(), skip, new))
            elif taken.start_project:
                self._perform(self.project.start(self.now(), skip=taken.skip))
            else:
                self.project.settle(ProjectState(taken.project_state), "as pmon left it")
                self._perform(None)
                self.project_ready.set()
            await self._shutdown.wait()
            if not self.leave_running:  # detach touches no manager (refused while a job runs)
                await self.finish(self._perform(self.project.stop(self.now(), "shutdown", final=True)))
                self._stopped_cleanly = True
            for extension in reversed(self.extensions):
                await self._stop_extension(extension)

    def request_shutdown(self, reason: str = "request") -> None:
        self.project.close()
        if not self._shutdown.is_set():
            self._shutdown.set()
            what = "pmon stops, its managers run on" if self.leave_running else "stopping the project and pmon"
            self.events.write("shutdown", f"{what} ({reason})", reason=reason)
            self._tell("on_shutdown", reason, self.leave_running)  # systemd's STOPPING=1

    def background(self, owner: Extension, coro: Coroutine[Any, Any, None]) -> None:
        """Run an extension's task in the supervisor's task group, until its owner stops."""
        task = self._group.create_task(self._guarded(owner, coro))
        tasks = self._tasks.setdefault(id(owner), set())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _guarded(self, owner: Extension, coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # an extension's bug must not end the task group (and pmon)
            self.events.write("extension-error", f"{owner.name} failed: {exc!r}")

    async def _stop_extension(self, extension: Extension) -> None:
        try:
            await extension.stop()
        except Exception as exc:
            self.events.write("extension-error", f"{extension.name} failed to stop: {exc!r}")
        tasks = self._tasks.pop(id(extension), set())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- the project's jobs, for commands and extensions -------------------------------
    def start_project(self) -> int:
        return self._perform(self.project.start(self.now()))

    def stop_project(self, reason: str = "operator request") -> int:
        return self._perform(self.project.stop(self.now(), reason))

    def restart_project(self, reason: str) -> int:
        return self._perform(self.project.restart(self.now(), reason))

    def restart_all(self, reason: str = "operator request") -> int:
        return self._perform(self.project.restart_all(self.now(), reason))

    def set_condition(self, condition: str, holds: bool, why: str, *, enforce: bool = True,
                      kill_in: float | None = None) -> None:
        self.project.set_condition(condition, holds, why, self.now(), enforce=enforce,
                                   kill_in=kill_in)
        self._perform(None)

    def switchover(self, active: str, previous: str | None, reason: str) -> None:
        """Tell every extension that the pair switched (the plugins' pmon_switchover)."""
        self._tell("on_switchover", active, previous, reason)

    def recycle(self, name: str, reason: str) -> bool:
        done = self.project.recycle(name, self.now(), reason)
        self._perform(None)
        return done

    async def finish(self, job: int | None) -> None:
        """Wait for a project job to end, also when a newer one replaced it: the caller then
        reports the state reached."""
        current = self.project.job
        if job is None or current is None or current.id != job:
            return
        waiter = self.loop.create_future()
        self._job_waiters.setdefault(job, []).append(waiter)
        await waiter

    # --- performing the machine's effects ------------------------------------------------
    def _perform(self, result: T) -> T:
        """Carry out everything the project machine queued; returns `result` (what the
        call into the machine returned), for chaining. Not re-entrant: an extension that
        calls back into the supervisor from one of its on_* hooks queues more effects, and
        the loop under way carries them out after it has told everyone of the first ones,
        in order."""
        if self._performing:
            return result
        self._performing = True
        try:
            self._drain()
        finally:
            self._performing = False
            self.containment.settle()  # pmon leaves the last manager cgroup it spawned in
        self._arm_job_timer()
        if self._listening and self.project.state in SETTLED_PROJECT:
            self.project_ready.set()  # settled, however the first job ended (systemd READY=1)
        self.changed()
        return result

    def _drain(self) -> None:
        while True:
            effects, touched = self.project.drain()
            if not effects and not touched:
                return
            entered: list[ProjectState] = []
            for effect in effects:
                if isinstance(effect, Spawn):
                    manager = self.project.get(effect.name)
                    # stale when a plugin's advice held the restart, or a stop came first
                    if manager is not None and manager.state is S.STARTING and manager.pid is None:
                        self._spawn_guarded(manager)
                elif isinstance(effect, Terminate):
                    if effect.name in self.procs:
                        self._terminate(effect.name, effect.resumed)
                elif isinstance(effect, Kill):
                    proc = self.procs.get(effect.name)
                    if proc is not None:
                        self.events.write("kill", effect.reason, manager=effect.name, pid=proc.pid)
                        proc.kill()
                elif isinstance(effect, Record):
                    self.events.write(effect.kind, effect.message, **effect.fields)
                elif isinstance(effect, ProjectChanged):
                    entered.append(effect.state)  # told after the managers' changes
                elif isinstance(effect, Forget):
                    self._report(effect.name, effect.manager)  # its last state, then gone
                    self._forget(effect.name)
                    self.containment.forget(effect.name)
                elif isinstance(effect, JobEnded):
                    for waiter in self._job_waiters.pop(effect.job, []):
                        _wake(waiter)
            # Home before the hooks: pmon's own pages, and the forks of its other threads
            # (plugins, to_thread), must not land in the last manager's cgroup.
            self.containment.settle()
            for name in touched:  # after the spawns: a start reports None -> running at once
                self._arm_timer(name)
                self._report(name)
            for state in entered:
                self._tell("on_project", state)

    def _report(self, name: str, manager: Manager | None = None) -> None:
        """Tell the extensions about a state change (once per change)."""
        manager = manager or self.project.get(name)
        if manager is None:
            return
        old = self._reported.get(name)
        if old is manager.state:
            return
        self._reported[name] = manager.state
        self._tell("on_manager", manager, old)

    def _tell(self, hook: str, *args: Any) -> None:
        if not self._listening:
            return
        for extension in self.extensions:
            try:
                getattr(extension, hook)(*args)
            except Exception as exc:  # an extension's bug must not stop supervision
                self.events.write("listener-error", f"{extension.name}: {hook} failed: {exc!r}")

    def _forget(self, name: str) -> None:
        handle = self.timers.pop(name, None)
        if handle is not None:
            handle.cancel()
        log = self.logs.pop(name, None)
        if log is not None:
            log.close()
        self._reported.pop(name, None)

    def _spawn_guarded(self, manager: Manager) -> None:
        """_spawn, and whatever goes wrong in it is a start that failed, with its reason:
        never a manager left `starting` with no pid, never the next ones not started."""
        try:
            self._spawn(manager)
        except Exception as exc:
            name = manager.spec.name
            self.events.write(
                "spawn-failed", f"{name} could not start: {exc!r}", manager=name, error=repr(exc)
            )
            if manager.pid is None:
                self.loop.call_soon(self._spawn_failed, name)

    def _spawn(self, manager: Manager) -> None:
        spec = manager.spec
        try:
            wished: dict[str, str] = {}
            for extension in self.extensions:
                wished.update(extension.spawn_env(manager))
        except Exception as exc:  # SpawnRefused: a plugin said no; anything else: its bug
            why = str(exc) if isinstance(exc, SpawnRefused) else f"an extension failed: {exc!r}"
            self.events.write(
                "start-refused", f"{spec.name} not started: {why}", manager=spec.name,
                reason=why,
            )
            self.loop.call_soon(self._spawn_failed, spec.name)  # counts as a failed start
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
            proc = ManagedProcess.spawn(
                spec, manager_env(spec, os.environ, extra), log, self.containment
            )
        except Exception as exc:  # OSError, or ValueError (a NUL an extension put in the
            # environment): never a manager left `starting` with no pid
            self.events.write(
                "spawn-failed", f"{spec.name} could not start: {exc}", manager=spec.name,
                error=str(exc),
            )
            # Later, not now: a failing spawn must not recurse through restarts.
            self.loop.call_soon(self._spawn_failed, spec.name)
            return
        self.procs[spec.name] = proc
        self.by_pid[proc.pid] = spec.name
        # spawned first: on the SIGCHLD path watch() may report a quick death at once
        self.project.spawned(spec.name, proc.pid, self.now(), time.time())
        self.watcher.watch(proc.pid, proc.popen)
        self.events.write(
            "started", f"{spec.name} started (pid {proc.pid})", manager=spec.name, pid=proc.pid
        )

    def _terminate(self, name: str, resumed: bool = False) -> None:
        """The polite stop: the manager's stop_command first (if it has one), then its
        stop_signal. The kill after seconds_to_kill is the manager machine's, as ever.
        `resumed`: the previous pmon began this stop (and its stop_command): the signal only."""
        proc, manager = self.procs[name], self.project.get(name)
        spec = manager.spec if manager is not None else None
        if spec is None or spec.stop_command is None or resumed:
            proc.terminate(execution.stop_signal(spec) if spec else signal.SIGTERM)
            return
        self._group.create_task(self._stop_command(proc, spec))

    async def _stop_command(self, proc: ManagedProcess, spec: ManagerSpec) -> None:
        name = spec.name
        # The manager's environment and names, but not NOTIFY_SOCKET: it is not the manager.
        env = manager_env(spec, os.environ, {
            "PMON_PROJECT": self.config.project.name, "PMON_MANAGER": name,
            "PMON_INDEX": str(spec.index), "PMON_MANAGER_PID": str(proc.pid),
        })
        env.pop("NOTIFY_SOCKET", None)
        fd = self._log_for(name).open_for_child()
        self.events.write(
            "stop-command", f"{name}: running its stop_command {list(spec.stop_command or ())}",
            manager=name,
        )
        try:
            # Born in the manager's containment (its cgroup), so that the manager's kill
            # takes whatever it leaves behind; a plain Popen, so pmon steps out at once.
            with self.containment.beside(name):
                command: subprocess.Popen[bytes] | None = subprocess.Popen(
                    list(spec.stop_command or ()), cwd=spec.cwd, env=env, stdin=subprocess.DEVNULL,
                    stdout=fd, stderr=subprocess.STDOUT, **execution.popen_settings(spec),
                )
        except (OSError, ValueError) as exc:
            self.events.write("stop-command", f"{name}: stop_command failed to start: {exc}", manager=name)
            command = None
        finally:
            os.close(fd)
        if command is not None:
            try:
                await asyncio.wait_for(asyncio.to_thread(command.wait), spec.seconds_to_kill)
            except asyncio.TimeoutError:
                command.kill()
                await asyncio.to_thread(command.wait)
        if self.procs.get(name) is proc:  # still running after its own stop: the signal
            proc.terminate(execution.stop_signal(spec))

    def _spawn_failed(self, name: str) -> None:
        if self.project.spawn_failed(name, self.now()) is not None:
            manager = self.project.get(name)
            if manager is not None:
                self._log_decision(manager, None)
        self._perform(None)

    def _log_for(self, name: str) -> ManagerLog:
        if name not in self.logs:
            project = self.config.project
            self.logs[name] = ManagerLog(
                log_path(self.state_dir, name), project.log_max_bytes, project.log_backups
            )
        return self.logs[name]

    def _take_log_limits(self) -> None:
        """[project] log_max_bytes / log_backups changed: every log rotates by them now."""
        project = self.config.project
        for log in self.logs.values():
            log.max_bytes, log.backups = project.log_max_bytes, project.log_backups
        self.events.limit(project.log_max_bytes, project.log_backups)

    def rotate_logs(self) -> None:
        """Rotate every manager output file over its size; a failure is reported."""
        for name, log in list(self.logs.items()):
            try:
                log.rotate_if_needed()
            except OSError as exc:
                self.write_failed(f"the output log of {name} ({log.path})", exc)

    def _arm_timer(self, name: str) -> None:
        handle = self.timers.pop(name, None)
        if handle is not None:
            handle.cancel()
        manager = self.project.get(name)
        if manager is not None and manager.deadline is not None:
            self.timers[name] = self.loop.call_at(manager.deadline, self._on_deadline, name)

    def _arm_job_timer(self) -> None:
        deadline = self.project.deadline
        timer = self._job_timer
        if timer is not None and (deadline is None or timer.when() != deadline):
            timer.cancel()
            self._job_timer = timer = None
        if deadline is not None and timer is None:
            self._job_timer = self.loop.call_at(deadline, self._on_job_deadline)

    def _on_deadline(self, name: str) -> None:
        self.timers.pop(name, None)
        self.project.tick(self.now(), name)
        self._perform(None)

    def _on_job_deadline(self) -> None:
        self._job_timer = None
        self.project.tick(self.now())
        self._perform(None)

    # --- events from the OS ----------------------------------------------------------------
    def _on_exit(self, pid: int) -> None:
        name = self.by_pid.pop(pid, None)
        if name is None:
            return
        proc = self.procs.pop(name)
        code = proc.reap()
        proc.kill()  # what is left of it (cgroup, group, orphans): no grandchild outlives it
        self._once_empty(name, lambda: self._exited(name, pid, proc, code))

    def _once_empty(self, name: str, then: Callable[[], None], until: float | None = None) -> None:
        """Run `then` once nothing of manager `name` runs any more: a manager is down only
        when its cgroup is empty (bounded: after 5 s pmon says so and goes on)."""
        if self.containment.empty(name):
            then()
        elif until is not None and self.now() > until:
            self.events.write("kill", f"{name}: processes left in its cgroup after 5 s", manager=name)
            then()
        else:
            self.loop.call_later(0.005, self._once_empty, name, then, until or self.now() + 5)

    def _exited(self, name: str, pid: int, proc: ManagedProcess, code: int | None) -> None:
        self._sweep()
        before = self.project.get(name)
        was = before.state if before is not None else None
        manager = self.project.exited(name, code, self.now())
        if manager is not None:
            if was is not S.STOPPING and name in self.managers:
                self._advise_restart(manager, code)
            # the death first, then what pmon does
            self._log_decision(
                manager, code, pid, adopted=proc.popen is None,
                oom=self.containment.oom_killed(name),
            )
        self._perform(None)

    def _advise_restart(self, manager: Manager, code: int | None) -> None:
        """Let the extensions veto or delay an automatic restart just decided."""
        name = manager.spec.name
        now = self.now()
        delay = self.project.automatic_restart(name, now)
        if delay is None:
            return
        for extension in self.extensions:
            try:
                advice = extension.restart_advice(manager, code, delay)
            except Exception as exc:
                self.events.write("listener-error", f"restart advisor failed: {exc!r}")
                continue
            if advice is not None and (advice.veto or advice.delay > delay):
                self.project.hold_restart(name, now, None if advice.veto else advice.delay, advice.reason)
                return

    def _log_decision(
        self, manager: Manager, code: int | None, pid: int | None = None, adopted: bool = False,
        oom: bool = False,
    ) -> None:
        name = manager.spec.name
        # An adopted manager is not pmon's child: its exit status went to its new parent.
        how = "an exit status pmon cannot know (adopted)" if adopted else describe_exit(code)
        if oom:  # memory.events of its cgroup counted an OOM kill (memory_max)
            how += f", killed by the OOM killer (memory_max = {manager.spec.memory_max})"
        # A spawn that failed had no process: no pid to name (its error was logged just before).
        who = f"{name} (pid {pid}) ended with {how}" if pid is not None else f"{name} {how}"
        self.events.write(
            "exited",
            f"{who}: {manager.last_decision}",
            manager=name, pid=pid, exit_code=code, action=manager.last_decision,
            state=manager.state.value, **({"oom_kill": True} if oom else {}),
        )

    def _on_notify(self, pid: int, fields: dict[str, str]) -> None:
        name = self.pid_of(pid)
        if name is None:
            return
        if fields == WATCHDOG_ONLY:
            # A keepalive changes nothing in the project machine (the redundancy manager
            # beats five times a second): the extensions only, not the effects' path.
            manager = self.project.get(name)
            if manager is not None:
                self._tell("on_notify", manager, fields)
            return
        if fields.get("READY") == "1" and self.project.ready(name, self.now()):
            self.events.write("ready", f"{name} is ready", manager=name)
        self._perform(None)
        manager = self.project.get(name)
        if manager is not None:
            self._tell("on_notify", manager, fields)  # WATCHDOG=1 for the alive monitor

    def take_notifications(self) -> None:
        self.notify.take()

    def pid_of(self, pid: int) -> str | None:
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

    def _sweep(self) -> None:
        """Kill and reap what outlived its manager (the subreaper's orphans; fallback only)."""
        self.containment.sweep(
            {name: (pid, self._start_times.get(pid)) for pid, name in self.by_pid.items()}
        )

    def watch_adopted(self, name: str, pid: int, create_time: float, ready: bool = True) -> None:
        """Supervise a manager's process that a previous pmon started (hot restart);
        `ready` False: it had not reported ready yet."""
        self.procs[name] = ManagedProcess(None, pid, name, self.containment)
        self.by_pid[pid] = name
        self._start_times[pid] = create_time
        self._log_for(name)  # its output file is rotated like any other
        self.watcher.watch(pid)  # dead meanwhile: the watcher reports the exit at once
        self.project.adopted(name, pid, self.now(), create_time, ready)
        self._perform(None)

    # --- waiting on state ------------------------------------------------------------
    def changed(self) -> None:
        """Something commands may wait on changed: wake them; save the state soon."""
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            _wake(waiter)
        self._state_dirty = True
        self.changes += 1
        self._write_soon(0.05)  # coalesce a burst of changes

    def _write_soon(self, delay: float) -> None:
        if not self._state_write_pending:
            self._state_write_pending = True
            self.loop.call_later(delay, self._write_if_dirty)

    def _write_if_dirty(self) -> None:
        self._state_write_pending = False
        if self._state_dirty:
            self._write_state()

    async def commit(self) -> None:
        """Make what the project machine decided durable before a command is acknowledged:
        the state file written, synced, renamed, its directory synced (a few ms; see
        scripts/bench_durable.py). Raises NotSaved when it cannot be written: the change
        stands, and the write is retried until it succeeds."""
        if self._state_dirty:
            self._write_state()
        await self._state_writer.written(self._state_writer.submitted)
        if self._state_error is not None:
            raise NotSaved(
                f"done, but not saved: cannot write the state file {self.state_file} "
                f"({self._state_error}); pmon retries, and until then a restart of pmon "
                "would not know of this change"
            )

    async def wait_for(self, predicate: Callable[[], bool], timeout: float | None = None) -> bool:
        """Wait until `predicate()` holds (re-checked at every change); False on timeout."""
        deadline = None if timeout is None else self.now() + timeout
        while not predicate():
            remaining = None if deadline is None else deadline - self.now()
            if remaining is not None and remaining <= 0:
                return False
            # A plain await on a future woken by a timer, not asyncio.wait_for: on Python 3.11
            # wait_for swallows a cancellation that arrives together with the wake-up.
            waiter = self.loop.create_future()
            self._waiters.append(waiter)
            timer = None if deadline is None else self.loop.call_at(deadline, _wake, waiter)
            try:
                await waiter
            finally:
                if timer is not None:
                    timer.cancel()
        return True

    def save_state(self) -> None:
        """Write the state file now (the write probe: a full disk shows at once)."""
        self._write_state()

    def _write_state(self, final: bool = False) -> None:
        """A snapshot of the state, written by the writer thread (`final`: here, now: the
        loop is ending, nothing else is waiting on it)."""
        self._state_dirty = False
        managers = {}
        for name, manager in self.managers.items():
            pid = manager.pid
            if pid is not None and pid not in self._start_times:
                self._start_times[pid] = statefile.process_start_time(pid)
            if pid is not None and pid not in self._identities:
                self._identities[pid] = self.containment.identity(pid)  # for adoption
            managers[name] = {
                **(self._identities.get(pid, {}) if pid else {}),
                "pid": pid,
                "create_time": self._start_times.get(pid) if pid else None,
                "state": manager.state.value,
                "restarts": manager.restarts,
                "recent_restarts": list(manager.recent),
                "wanted": manager.wanted,
                "exit_code": manager.exit_code,
                "reason": manager.last_decision,
                **statefile.resume_fields(manager, self.now(), time.time()),
            }
        live = {m.pid for m in self.managers.values() if m.pid}
        self._start_times = {p: t for p, t in self._start_times.items() if p in live}
        self._identities = {p: i for p, i in self._identities.items() if p in live}
        job = self.project.job
        state = {
            "project": self.config.project.name,
            "config": str(self.config.path),
            "pmon_pid": os.getpid(),
            "project_state": self.project_state.value,
            "project_reason": self.project.reason,
            "job": job.as_dict() if job else None,
            "stopped_cleanly": self._stopped_cleanly,
            "managers": managers,
        }
        if not final:
            self._state_writer.submit(statefile.encode(state))
            return
        for attempt in range(FINAL_WRITE_ATTEMPTS):  # no loop is left to retry on
            try:
                statefile.save(self.state_file, state)
                self._state_error = None
                return
            except OSError as exc:
                failure = self._state_error = exc
                if attempt + 1 < FINAL_WRITE_ATTEMPTS:
                    time.sleep(FINAL_WRITE_PAUSE)  # a full disk may get room (logs rotate)
        self.write_failed(f"the state file {self.state_file} (pmon's last write)", failure)

    def _state_written(self, error: OSError | None) -> None:
        """The writer thread's answer for one snapshot."""
        if error is not None:
            self._state_dirty = True
            self._write_soon(STATE_RETRY_SECONDS)  # until the disk has room again
            if self._state_error is None:  # reported once per outage, not every retry
                self.write_failed(f"the state file {self.state_file}", error)
            self._state_error = error
            return
        if self._state_error is not None:
            self._state_error = None
            self.events.write("write-recovered", f"the state file {self.state_file} is written again")

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
        return self.project.find(target)

    # `wait=False` returns once the change is under way (PMON TCP answers at once).
    async def start_manager(self, target: str | int, wait: bool = True) -> Manager:
        manager, job = self._perform(self.project.start_manager(target, self.now()))
        await self.commit()  # the decision on disk before the wait: a pmon killed meanwhile keeps it
        if wait:
            await (self.finish(job) if job is not None else self._settle(manager))
        return manager

    async def stop_manager(self, target: str | int, wait: bool = True) -> Manager:
        manager = self._perform(self.project.stop_manager(target, self.now()))
        await self.commit()
        if wait:
            await self._settle(manager)
        return manager

    async def kill_manager(self, target: str | int, wait: bool = True) -> Manager:
        """Stop a manager without the polite signal: kill its process group now."""
        manager = self._perform(self.project.kill_manager(target, self.now()))
        await self.commit()
        if wait:
            await self._settle(manager)
        return manager

    async def restart_manager(self, target: str | int, wait: bool = True) -> Manager:
        manager, job = self._perform(self.project.restart_manager(target, self.now()))
        await self.commit()
        if wait:
            await (self.finish(job) if job is not None else self._settle(manager))
        return manager

    async def _settle(self, manager: Manager) -> None:
        await self.wait_for(lambda: _settled(manager), timeout=_settle_seconds(manager) + 5)

    async def change(
        self, prepare: Callable[[], Awaitable[tuple[Config, Plan]]], source: str,
        write: Callable[[Config], None] | None = None, wait: bool = True,
    ) -> Plan:
        """The one change path, one change at a time: make the change from the project as
        it is now (`prepare` returns the new configuration and its plan; it runs under the
        change lock, so a change that waited for another one is made from that one's result,
        never from the configuration it was asked against), check the plan against the
        project, write the file (for add / remove / edit; a reload read it), apply the plan,
        and wait for what it touched to settle. A refused or unwritable change touches
        nothing. Returns the plan applied."""
        async with self._change_lock:
            new, plan = await prepare()
            self.project.check_change(plan)
            if write is not None:
                write(new)
            touched = self._perform(self.project.change(new, plan, self.now(), source))
            if plan.project:  # applied with the change, saved or not
                self._take_log_limits()
            await self.commit()
            job = self.project.job
            if not wait:
                return plan
            if job is not None and not touched:  # a changed core manager: the project restarts
                await self.finish(job.id)
                return plan
            managers = [m for m in (self.project.get(n) for n in touched) if m is not None]
            removed = list(self.project.leaving.values())
            await self.wait_for(
                lambda: all(_settled(m) for m in managers) and not any(m.alive for m in removed),
                timeout=max(map(_settle_seconds, managers + removed), default=0) + 5,
            )
            return plan

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "project": self.config.project.name,
            "project_state": self.project_state.value,
            "project_reason": self.project.reason,
            "config": str(self.config.path),
            "pmon_pid": os.getpid(),
            "containment": self.containment.describe(),
            "managers": [self.row(m) for m in self.managers.values()],
            "verdicts": [],
            "plugin_error_state": 0.0,
        }
        for extension in self.extensions:
            out.update(extension.status())
        return out

    def cgroups(self) -> tuple[Callable[[str], Path], Path] | None:
        if isinstance(self.containment, containment.CgroupContainment):
            return self.containment.tree.of, self.containment.tree.home
        return None

    def plugin_error_state(self) -> float:
        """What the extensions' current verdicts add to this server's error state (0: none);
        the redundancy manager adds it to its other error sources."""
        return float(sum(extension.error_state() for extension in self.extensions))

    def row(self, manager: Manager) -> dict[str, Any]:
        snap = manager.snapshot()
        held = self.project.refusal(manager.spec) if manager.spec.name in self.project.held else None
        row: dict[str, Any] = {
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
            "reason": snap.reason,
            "held": held,
        }
        for extension in self.extensions:  # the explainer: last exit, usage, why, what to type
            row.update(extension.row(manager))
        return row


def _settled(manager: Manager) -> bool:
    """What a command that changed a manager waits for: no longer starting or stopping (or
    known not to get ready in time)."""
    return manager.state not in (S.STARTING, S.STOPPING) or manager.ready_failed


def _settle_seconds(manager: Manager) -> float:
    return manager.spec.seconds_to_kill + manager.spec.start_timeout


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _prepare_state_dir(state_dir: Path) -> int | None:
    """Create the state directory owner-only, or tighten an existing one to 0700 (its
    events, lock and sockets are nobody else's business). Returns the old mode when it
    was tightened."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if platform.IS_WINDOWS:
        return None
    mode = state_dir.stat().st_mode & 0o777
    if mode & 0o077:
        os.chmod(state_dir, 0o700)
        return mode
    return None
