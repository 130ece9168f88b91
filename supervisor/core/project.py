"""The project machine: every project-wide rule, pure (no I/O, no asyncio, time passed in).

Everything that decides what happens to the project as a whole lives here, beside the
per-manager machine (manager.py) it drives: the start order, a core death -> a project
restart (or a blocked project), the conditions a manager needs to run (`run_on = "active"`),
the operator's rules, and changes of the manager list (core/change.py plans them, `change`
applies them). Only this module and manager.py change a manager's state.

The runtime feeds it events (spawned, exited, ready, a timer, an operator's command, a
condition flipping, a change) with the monotonic time `now`, and performs the effects it
queues (`drain`): spawn, terminate, kill, forget, record a decision, end a job.

Project sequences are data, not coroutines: a `Job` has a phase, the managers it goes
through with a cursor, the manager it waits for and until when, and a mode that says
whether a newer job may replace it (systemd's JOB_REPLACE) or not (the final stop:
JOB_REPLACE_IRREVERSIBLY). After every event the job is advanced until it waits again.

    start:   STOPPED | RUNNING | BLOCKED -> STARTING -> RUNNING
    stop:    -> STOPPING -> STOPPED        (final: nothing replaces it, nothing new begins)
    restart: -> RESTARTING -> STARTING -> RUNNING
    block:   -> STOPPING -> BLOCKED        (a core manager died too often)

Every decision carries its reason: a manager's `last_decision`, the project's `reason`, and a
`Record` effect per decision that the event log (and later the console, the metrics) shows.
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Union

from pmon.config import Config, ManagerSpec
from pmon.core import adoption
from pmon.core.change import Plan
from pmon.core.manager import Action, Deadline, Manager
from pmon.states import ManagerState
from pmon.errors import CommandError, UnknownManager

S = ManagerState
STOP_GRACE = 10.0  # a stop step waits seconds_to_kill + this for the death, then goes on


class ProjectState(str, enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    RESTARTING = "restarting"
    BLOCKED = "blocked"  # a core manager died too often; waits for an operator

    def __str__(self) -> str:
        return self.value


BUSY = frozenset({ProjectState.STARTING, ProjectState.STOPPING, ProjectState.RESTARTING})


class JobKind(str, enum.Enum):
    START = "start"
    STOP = "stop"
    RESTART = "restart"
    BLOCK = "block"


class JobMode(str, enum.Enum):
    REPLACE = "replace"            # a newer job replaces this one
    IRREVERSIBLE = "irreversible"  # nothing replaces it: the final stop of pmon


class Phase(str, enum.Enum):
    STOPPING = "stopping"  # reverse start order, each down before the next
    STARTING = "starting"  # start order, each ready (or timed out) before the next


@dataclass
class Job:
    id: int
    kind: JobKind
    reason: str
    mode: JobMode
    final: ProjectState  # the state the job ends in
    phase: Phase
    order: tuple[str, ...] = ()  # the managers of this phase, in order
    cursor: int = 0
    waiting: str | None = None  # the manager this job waits for
    deadline: float | None = None  # when it stops waiting for it
    skip: frozenset[str] = frozenset()  # stay down in the start phase (hot restart)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "kind": self.kind.value, "reason": self.reason,
            "mode": self.mode.value, "phase": self.phase.value, "cursor": self.cursor,
            "steps": len(self.order), "waiting": self.waiting,
            # what the next pmon needs to resume it where it stood (core/adoption.py)
            "final": self.final.value, "order": list(self.order), "skip": sorted(self.skip),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], id: int) -> "Job | None":
        """A job the previous pmon saved, or None when the record is not one."""
        try:
            job = cls(
                id, JobKind(data["kind"]), str(data["reason"]), JobMode(data["mode"]),
                ProjectState(data["final"]), Phase(data["phase"]),
            )
            order, cursor, skip = data["order"], data["cursor"], data.get("skip", [])
        except (KeyError, TypeError, ValueError):
            return None
        if (
            not isinstance(order, list) or not all(isinstance(n, str) for n in order)
            or not isinstance(cursor, int) or isinstance(cursor, bool)
            or not 0 <= cursor <= len(order)
            or not isinstance(skip, list) or not all(isinstance(n, str) for n in skip)
        ):
            return None
        job.order, job.cursor, job.skip = tuple(order), cursor, frozenset(skip)
        return job


# --- effects: what the runtime performs -------------------------------------------------
@dataclass(frozen=True)
class Spawn:
    name: str


@dataclass(frozen=True)
class Terminate:
    name: str
    resumed: bool = False  # a stop the previous pmon began: its stop_command ran already


@dataclass(frozen=True)
class Kill:
    name: str
    reason: str


@dataclass(frozen=True)
class Forget:
    """A removed manager is down: report its last state, then drop its process record,
    timer and log (the project no longer knows it by name)."""

    name: str
    manager: Manager


@dataclass(frozen=True)
class Record:
    """A decision for the event log: its kind, a sentence for people, its data."""

    kind: str
    message: str
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProjectChanged:
    """The project entered `state` (each change in order, also within one event)."""

    state: ProjectState


@dataclass(frozen=True)
class JobEnded:
    job: int
    outcome: str  # "done" | "replaced"


Effect = Union[Spawn, Terminate, Kill, Forget, Record, ProjectChanged, JobEnded]


def condition_of(spec: ManagerSpec) -> str | None:
    """The condition a manager needs to run, or None."""
    return "active" if spec.run_on == "active" else None


class Project:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.managers: dict[str, Manager] = {s.name: Manager(s) for s in config.managers}
        self.leaving: dict[str, Manager] = {}  # removed from the file, still stopping
        self.state = ProjectState.STOPPED
        self.reason = ""  # why the project is in its state
        self.job: Job | None = None
        self.closing = False  # the final stop began: nothing new may start
        # A condition: whether it holds, and why (the sentence a refusal ends with). On a
        # pair nothing runs on "active" until the pair has decided.
        self.conditions: dict[str, tuple[bool, str]] = {}
        if config.redundancy is not None:
            self.conditions["active"] = (
                False, f"this server ({config.redundancy.name}) is not decided yet"
            )
        # Managers a condition held back (or stopped): started when it holds again.
        self.held: set[str] = set()
        self._ids = itertools.count(1)
        self._effects: list[Effect] = []
        self._touched: set[str] = set()

    # --- reading --------------------------------------------------------------------
    def drain(self) -> tuple[list[Effect], set[str]]:
        """The effects queued since the last drain, and the managers touched (their timers
        and reported states may have changed)."""
        effects, self._effects = self._effects, []
        touched, self._touched = self._touched, set()
        return effects, touched

    def get(self, name: str) -> Manager | None:
        """A manager of the project, or one removed and still stopping."""
        return self.managers.get(name) or self.leaving.get(name)

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
        """Why this manager may not start now (a condition it needs is off), or None."""
        needed = condition_of(spec)
        holds, why = self.conditions.get(needed, (True, "")) if needed else (True, "")
        if holds:
            return None
        return f'{spec.name} runs only on the active server (run_on = "active"); {why}'

    @property
    def restarts_allowed(self) -> bool:
        return self.state in (ProjectState.STARTING, ProjectState.RUNNING)

    @property
    def deadline(self) -> float | None:
        """When the job stops waiting (the runtime's job timer)."""
        return self.job.deadline if self.job else None

    # --- project jobs -----------------------------------------------------------------
    def start(self, now: float, skip: Iterable[str] = ()) -> int:
        """Start the project: the managers in order, each ready before the next. Managers
        already alive are left as they are; `skip` stays down (a hot restart)."""
        job = self._job(JobKind.START, "start", ProjectState.RUNNING, Phase.STARTING)
        job.skip = frozenset(skip)
        return self._begin(job, now)

    def stop(self, now: float, reason: str = "operator request", final: bool = False) -> int:
        """Stop every manager in reverse start order. `final`: pmon is going away; nothing
        replaces this stop and nothing new may start."""
        job = self._job(JobKind.STOP, reason, ProjectState.STOPPED, Phase.STOPPING)
        if final:
            job.mode = JobMode.IRREVERSIBLE
            self.closing = True
        return self._begin(job, now)

    def close(self) -> None:
        """pmon is going away: from now on nothing new starts (the final stop may follow)."""
        self.closing = True

    def restart(self, now: float, reason: str) -> int:
        self._refuse_if_closing()  # before the record: a refused restart logs nothing
        self._record("project-restart", f"restarting the project: {reason}", reason=reason)
        return self._begin(
            self._job(JobKind.RESTART, reason, ProjectState.RUNNING, Phase.STOPPING), now
        )

    def restart_all(self, now: float, reason: str = "operator request") -> int:
        """An operator's project restart is a fresh start: every restart window is reset."""
        self._refuse_if_closing()
        for manager in self.managers.values():
            manager.reset_counter()
        return self.restart(now, reason)

    def _job(self, kind: JobKind, reason: str, final: ProjectState, phase: Phase) -> Job:
        return Job(next(self._ids), kind, reason, JobMode.REPLACE, final, phase)

    def _refuse_if_closing(self) -> None:
        if self.closing:
            raise CommandError("pmon is shutting down; the project is being stopped")

    def _begin(self, job: Job, now: float) -> int:
        """Make `job` the project's job, replacing the one under way (a restart replaces a
        start) unless that one is irreversible."""
        old = self.job
        if old is not None and old.mode is JobMode.IRREVERSIBLE:
            raise CommandError("pmon is shutting down; the project is being stopped")
        if job.mode is not JobMode.IRREVERSIBLE:
            self._refuse_if_closing()
        if old is not None:
            self._effects.append(JobEnded(old.id, "replaced"))
        self.job = job
        self._enter(job, now)
        self._advance(now)
        return job.id

    def _enter(self, job: Job, now: float) -> None:
        order = tuple(spec.name for spec in self.config.start_order())
        job.cursor, job.waiting, job.deadline = 0, None, None
        if job.phase is Phase.STARTING:
            job.order = order
            self.held.clear()  # the start phase holds back anew what it may not start
            self._set_state(ProjectState.STARTING, job.reason)
            return
        job.order = (*self.leaving, *reversed(order))  # removed ones still stopping too
        going = ProjectState.RESTARTING if job.kind is JobKind.RESTART else ProjectState.STOPPING
        self._set_state(going, job.reason)
        for manager in self.managers.values():  # no restart may fire while going down
            if manager.state in (S.BACKOFF, S.STOPPING):  # STOPPING: a restart it awaits
                self._do(manager, manager.stop(now, operator=False), now)

    def _advance(self, now: float) -> None:
        """Carry the job on until it waits for a manager (or ends)."""
        while (job := self.job) is not None:
            if job.waiting is not None:
                manager = self.get(job.waiting)  # a removed one still stopping, too
                if manager is not None:
                    settled = self._settled(job, manager)
                    if (job.phase is Phase.STARTING and job.deadline is not None
                            and manager.deadline_kind is Deadline.START_TIMEOUT
                            and manager.deadline is not None and manager.deadline > job.deadline):
                        job.deadline = manager.deadline  # its timeout counts from its spawn
                    if not settled and (job.deadline is None or now < job.deadline):
                        return
                    if not settled and manager.deadline is not None and now >= manager.deadline:
                        # its own start timeout falls due with the job's: whichever timer
                        # fired first, the manager's comes first (it is `not ready` then)
                        self._tick_manager(manager, now)
                        settled = self._settled(job, manager)
                    if job.phase is Phase.STARTING and (not settled or manager.ready_failed):
                        self._record(
                            "start-timeout",
                            f"{manager.spec.name} not ready within "
                            f"{manager.spec.start_timeout:g} s; the start goes on",
                            manager=manager.spec.name,
                        )
                job.waiting, job.deadline = None, None
                job.cursor += 1
                continue
            if job.cursor >= len(job.order):
                if job.phase is Phase.STOPPING and job.kind is JobKind.RESTART:
                    job.phase = Phase.STARTING  # RESTARTING -> STARTING
                    self._enter(job, now)
                    continue
                self._finish(job)
                return
            self._step(job, job.order[job.cursor], now)

    def _step(self, job: Job, name: str, now: float) -> None:
        manager = self.get(name)  # a change may have removed it meanwhile
        if job.phase is Phase.STARTING:
            if manager is None or not manager.wanted or name in job.skip:
                job.cursor += 1  # manual: only on an operator's command
                return
            if self.refusal(manager.spec):
                self.held.add(name)  # started when its condition holds
                job.cursor += 1
                return
            self._do(manager, manager.start(now), now)
            job.waiting, job.deadline = name, now + manager.spec.start_timeout
            return
        if manager is None or not manager.alive:
            job.cursor += 1
            return
        self._do(manager, manager.stop(now, operator=False), now)
        job.waiting, job.deadline = name, now + manager.spec.seconds_to_kill + STOP_GRACE

    @staticmethod
    def _settled(job: Job, manager: Manager) -> bool:
        if job.phase is Phase.STARTING:
            return manager.state is not S.STARTING or manager.ready_failed
        return not manager.alive

    def _finish(self, job: Job) -> None:
        self.job = None
        self._effects.append(JobEnded(job.id, "done"))
        self._set_state(job.final, job.reason)
        if job.final is ProjectState.RUNNING:
            self._record("project-started", f"project '{self.config.project.name}' started")

    def _set_state(self, state: ProjectState, reason: str) -> None:
        if state is not self.state:
            self._effects.append(ProjectChanged(state))
        self.state, self.reason = state, reason

    # --- events from the runtime ---------------------------------------------------------
    def spawned(self, name: str, pid: int, now: float, wall: float) -> None:
        manager = self.get(name)
        if manager is not None:
            self._do(manager, manager.spawned(pid, now, wall), now)
        self._advance(now)

    def spawn_failed(self, name: str, now: float) -> str | None:
        """The program could not be started (or a plugin refused it): a death with no exit
        code. Returns the decision, or None when the manager no longer waits for a spawn."""
        manager = self.get(name)
        if manager is None or manager.state is not S.STARTING or manager.pid is not None:
            return None
        self._do(manager, manager.spawn_failed(now, restart=self.restarts_allowed), now)
        self._advance(now)
        return manager.last_decision

    def exited(self, name: str, code: int | None, now: float) -> Manager | None:
        """A manager's process is gone. Returns the manager (its last_decision says what
        happens now), or None when pmon does not know it any more."""
        manager = self.managers.get(name)
        if manager is None:
            manager = self.leaving.get(name)
            if manager is None:
                return None
            self._do(manager, manager.exited(code, now, restart=False), now)
            self._forget_if_down(manager)
            self._advance(now)
            return manager
        self._do(manager, manager.exited(code, now, restart=self.restarts_allowed), now)
        self._advance(now)
        return manager

    def automatic_restart(self, name: str, now: float) -> float | None:
        """The delay of the automatic restart `exited` just decided (0: at once), or None
        when none was decided (for a plugin's advice, which `hold_restart` applies)."""
        manager = self.managers.get(name)
        if manager is None or manager.spec.core or manager.pid is not None:
            return None
        if manager.state is S.STARTING:
            return 0.0
        if manager.state is S.BACKOFF:
            return max(0.0, (manager.deadline or now) - now)
        return None

    def hold_restart(self, name: str, now: float, delay: float | None, reason: str) -> None:
        manager = self.managers.get(name)
        if manager is not None:
            self._do(manager, manager.hold_restart(now, delay, reason), now)
        self._advance(now)

    def ready(self, name: str, now: float) -> bool:
        """READY=1 from a manager; True when it made the manager running."""
        manager = self.get(name)
        if manager is None or not manager.starting:
            return False
        self._do(manager, manager.ready(now), now)
        self._advance(now)
        return manager.state is S.RUNNING

    def tick(self, now: float, name: str | None = None) -> None:
        """A timer fired: one manager's deadline (`name`), or the job's."""
        manager = self.get(name) if name is not None else None
        if manager is not None:
            self._tick_manager(manager, now)
        self._advance(now)

    def _tick_manager(self, manager: Manager, now: float) -> None:
        was_failed = manager.ready_failed
        self._do(manager, manager.tick(now), now)
        if manager.ready_failed and not was_failed:
            self._record(
                "not-ready",
                f"{manager.spec.name} did not report READY=1 within "
                f"{manager.spec.start_timeout:g} s",
                manager=manager.spec.name,
            )

    def set_condition(
        self, condition: str, holds: bool, why: str, now: float, *, enforce: bool = True,
        kill_in: float | None = None,
    ) -> None:
        """A condition (e.g. "active": this server is the active one) turned on or off.
        Off stops the managers that need it (also when it was off already: an adopted one
        runs without it); on starts the ones it held back. Off with `enforce=False` means
        "not known": nothing new starts, what runs is left alone (a pmon restarted on the
        active server keeps its drivers until the pair has decided). `kill_in`: those stops
        kill after at most this long (a self-fence must end before the partner takes over)."""
        before = self.conditions.get(condition, (True, ""))[0]
        self.conditions[condition] = (holds, why)
        order = self.config.start_order()
        if not holds and enforce:
            for spec in reversed(order):
                manager = self.managers[spec.name]
                if condition_of(spec) == condition and (manager.alive or manager.state is S.BACKOFF):
                    self.held.add(spec.name)
                    self._do(manager, manager.stop(now, operator=False, kill_in=kill_in), now)
        elif holds and not before and self.state in (ProjectState.STARTING, ProjectState.RUNNING):
            held, self.held = self.held, set()
            for spec in order:
                manager = self.managers[spec.name]
                # start() restarts a STOPPING one after its exit and leaves a live one
                # alone; a blocked one waits for an operator.
                if spec.name in held and manager.wanted and manager.state is not S.BLOCKED:
                    self._do(manager, manager.start(now), now)
        self._advance(now)

    # --- a restarted pmon takes over (hot restart) ------------------------------------------
    def adopted(
        self, name: str, pid: int, now: float, wall: float | None, ready: bool = True
    ) -> None:
        manager = self.managers[name]
        self._do(manager, manager.adopted(pid, now, wall, ready=ready), now)

    def resume_stop(self, name: str, now: float, kill_in: float, then_start: bool) -> None:
        """An adopted manager was stopping when the previous pmon went away: go on."""
        manager = self.managers[name]
        actions = manager.resume_stop(now, kill_in, then_start)
        if Action.TERMINATE in actions:  # the stop signal only: never a second stop_command
            self._effects.append(Terminate(name, resumed=True))
        self._do(manager, [a for a in actions if a is not Action.TERMINATE], now)

    def resume(self, saved: Job, now: float, skip: Iterable[str] = (), new: bool = False) -> int:
        """Carry on the job the previous pmon had under way, in the phase it stood in. The
        phase is walked again from its first step: a step already done is nothing (a stop
        of a manager already down, a start of one running), and a manager that died while
        no pmon watched is not passed over. The final stop of a pmon that died comes here
        as a restart (core/adoption.py: a new pmon means "run the project")."""
        job = self._job(saved.kind, saved.reason, saved.final, saved.phase)
        job.skip = saved.skip | frozenset(skip)
        if new:  # decided at adoption: recorded as any project restart is (once)
            self._record("project-restart", f"restarting the project: {saved.reason}",
                         reason=saved.reason)
        self._record(
            "job-resumed",
            f"resuming the project {saved.kind.value} ({saved.reason}) where the previous "
            f"pmon left it: {saved.phase.value} phase, step {saved.cursor + 1} of "
            f"{len(saved.order)}",
            job=saved.kind.value, phase=saved.phase.value, cursor=saved.cursor,
            steps=len(saved.order), reason=saved.reason,
        )
        if self.job is not None:
            self._effects.append(JobEnded(self.job.id, "replaced"))
        self.job = job
        self._enter(job, now)
        self._advance(now)
        return job.id

    def restored(self, name: str, record: Mapping[str, Any], now: float) -> None:
        adoption.restore(self.managers[name], record, now)
        self._touched.add(name)

    def left_down(self, name: str, state: ManagerState, reason: str) -> None:
        self.managers[name].left_down(state, reason)
        self._touched.add(name)

    def died_away(self, name: str) -> None:
        self.managers[name].died_away()
        self._touched.add(name)

    def settle(self, state: ProjectState, reason: str) -> None:
        """Take the project state the previous pmon left (stopped or blocked stays so)."""
        self._set_state(state, reason)

    # --- the operator's commands ---------------------------------------------------------
    def start_manager(self, target: str | int, now: float) -> tuple[Manager, int | None]:
        """Start (and unblock) a manager. A core manager of a stopped or blocked project (or
        one stopping) starts the whole project; a start or restart under way starts it in its
        turn. Returns the manager and the job begun (or joined), if any."""
        manager = self.find(target)
        if self.closing:
            raise CommandError("pmon is shutting down; nothing new is started")
        reason = self.refusal(manager.spec)
        if reason:
            raise CommandError(reason)
        if manager.spec.core and self.state is not ProjectState.RUNNING:
            manager.reset_counter()  # the operator resets the core manager's counter
            job = self.job
            if job is not None and (job.phase is Phase.STARTING or job.kind is JobKind.RESTART):
                return manager, job.id  # the job under way starts it, in order
            # stopped, blocked, or on its way there: never alone, with the whole project
            return manager, self.restart(now, f"operator started core manager {manager.spec.name}")
        self._do(manager, manager.start(now, operator=True), now)
        self._advance(now)
        return manager, None

    def stop_manager(self, target: str | int, now: float) -> Manager:
        manager = self._stoppable(target)
        self._do(manager, manager.stop(now, operator=True), now)
        self._advance(now)
        return manager

    def kill_manager(self, target: str | int, now: float) -> Manager:
        """Stop a manager without the polite signal: kill its process group now."""
        manager = self._stoppable(target)
        had_process = manager.pid is not None
        actions = manager.stop(now, operator=True)
        self._do(manager, [a for a in actions if a is not Action.TERMINATE], now)
        if had_process:
            self._effects.append(Kill(manager.spec.name, f"{manager.spec.name} killed by request"))
        self._advance(now)
        return manager

    def restart_manager(self, target: str | int, now: float) -> tuple[Manager, int | None]:
        manager = self.find(target)
        if manager.spec.core:
            return manager, self.restart(now, f"operator restarted core manager {manager.spec.name}")
        if self.closing:
            raise CommandError("pmon is shutting down; nothing new is started")
        reason = self.refusal(manager.spec)
        if reason:
            raise CommandError(reason)
        self._do(manager, manager.restart(now), now)
        self._advance(now)
        return manager, None

    def recycle(self, name: str, now: float, reason: str) -> bool:
        """A monitor's restart: end the process; the death goes through the restart policy.
        False when the manager has no process to end."""
        manager = self.managers.get(name)
        if manager is None:
            return False
        actions = manager.recycle(now, reason)
        self._do(manager, actions, now)
        return bool(actions)

    def _stoppable(self, target: str | int) -> Manager:
        manager = self.find(target)
        if manager.spec.core and manager.alive:
            raise CommandError(
                f"{manager.spec.name} is a core manager: the project cannot run without it; "
                "stop the whole project with `pmon stop --all`"
            )
        return manager

    # --- changes of the manager list (one path: core/change.py plans, this applies) -------
    def check_change(self, plan: Plan) -> None:
        """Refuse a change that cannot be applied now; nothing is touched."""
        if self.closing:
            raise CommandError("pmon is shutting down; nothing changed")
        if self.state in BUSY:
            raise CommandError(
                f"the project is {self.state.value}; nothing changed: change it once it "
                "runs (`pmon status` shows when)"
            )
        coming_back = [name for name in plan.added if name in self.leaving]
        if coming_back:
            raise CommandError(
                f"{', '.join(coming_back)} is still stopping after its removal; nothing "
                "changed: try again in a moment"
            )

    def change(self, new: Config, plan: Plan, now: float, source: str = "change") -> list[str]:
        """Apply a planned change: stop the removed managers (forgotten once down), take the
        new configuration, restart the changed ones, start the added ones. Unchanged and
        updated managers keep their process, unless a changed manager is core: then the
        whole project restarts. Returns the managers whose settling a caller may await."""
        self.check_change(plan)
        running = self.state is ProjectState.RUNNING
        for name in plan.removed:
            manager = self.managers.pop(name)
            self.held.discard(name)
            self._do(manager, manager.stop(now, operator=False), now)
            self.leaving[name] = manager
            self._forget_if_down(manager)
        old_specs = {name: self.managers[name].spec for name in plan.changed}
        self._take(new)
        for name in plan.changed:
            self.managers[name].respecified(old_specs[name])
        core = [name for name in plan.changed if self.managers[name].spec.core]
        if core and running:
            # pmon's rule: a core manager restarts with the whole project, never alone. The
            # project restart also restarts the other changed ones and starts the added ones.
            self.restart(now, f"{source} changed core manager {', '.join(core)}")
            return []
        touched = []
        for name in plan.changed:
            manager = self.managers[name]
            keys = plan.changed[name]
            if self.refusal(manager.spec):  # its condition is off here now
                if manager.alive or manager.state is S.BACKOFF:
                    self._do(manager, manager.stop(now, operator=False), now)
                if manager.wanted:
                    self.held.add(name)
            elif manager.alive:
                if manager.wanted:
                    self._do(manager, manager.restart(now), now)
                else:
                    self._do(manager, manager.stop(now, operator=False), now)
            elif manager.state in (S.BACKOFF, S.BLOCKED) and manager.wanted and running:
                self._do(manager, manager.start(now, operator=True), now)  # a fixed command
            elif manager.state is S.STOPPED and "run_on" in keys and manager.wanted and running:
                self.held.discard(name)
                self._do(manager, manager.start(now), now)  # its condition held it back
            touched.append(name)
        for name in plan.added:
            manager = self.managers[name]
            if manager.wanted and running:
                if self.refusal(manager.spec):
                    self.held.add(name)  # started when its condition holds
                else:
                    self._do(manager, manager.start(now), now)
            touched.append(name)
        self._advance(now)
        return touched

    def _take(self, config: Config) -> None:
        """A new, validated configuration: specs replaced, managers added, reordered."""
        for spec in config.managers:
            if spec.name in self.managers:
                self.managers[spec.name].spec = spec
        merged = {**self.managers, **{s.name: Manager(s) for s in config.managers
                                      if s.name not in self.managers}}
        self.managers = {spec.name: merged[spec.name] for spec in config.managers}
        self._touched.update(self.managers)
        self.config = config

    def _forget_if_down(self, manager: Manager) -> None:
        name = manager.spec.name
        if self.leaving.get(name) is manager and not manager.alive:
            del self.leaving[name]
            self._effects.append(Forget(name, manager))

    # --- helpers -----------------------------------------------------------------------
    def _do(self, manager: Manager, actions: list[Action], now: float) -> None:
        """Turn one manager machine's actions into effects (and project jobs)."""
        name = manager.spec.name
        self._touched.add(name)
        for action in actions:
            if action is Action.SPAWN:
                self._effects.append(Spawn(name))
            elif action is Action.TERMINATE:
                self._effects.append(Terminate(name))
            elif action is Action.KILL:
                self._effects.append(Kill(
                    name, f"{name} still alive {manager.spec.seconds_to_kill:g} s after "
                    "SIGTERM: killing its process group",
                ))
            elif action is Action.PROJECT_RESTART:
                if not self.closing:
                    self.restart(now, f"core manager {name} died")
            elif action is Action.PROJECT_BLOCKED:
                if not self.closing:
                    self._block(manager, now)

    def _block(self, manager: Manager, now: float) -> None:
        name = manager.spec.name
        reason = f"core manager {name} died too often ({manager.last_decision})"
        self._record(
            "project-blocked",
            f"core manager {name} died too often: the project is stopped and blocked; "
            "start it again with `pmon restart --all`",
            manager=name,
        )
        self._begin(self._job(JobKind.BLOCK, reason, ProjectState.BLOCKED, Phase.STOPPING), now)

    def _record(self, kind: str, message: str, **fields: Any) -> None:
        self._effects.append(Record(kind, message, fields))
