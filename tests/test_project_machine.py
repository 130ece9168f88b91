"""The project machine (core/project.py), driven like runtime/supervisor.py drives it, with
fake processes and a fake clock: no processes, no sleeping.

`Rig` is a small runtime: it performs every effect the machine queues (a Spawn gets a fake
pid and is reported back with `spawned`, a Terminate or a Kill marks the fake process, a
Forget drops its timer), arms a timer for each touched manager's deadline and one for the
job's deadline, and fires them in time order when the clock is advanced. It checks, at the
moment an effect is performed, the rules a user relies on: never a second process of one
manager, nothing with run_on = "active" started while the server is not active, nothing
started by a death or a timer while the project goes down, nothing at all while pmon shuts
down, and no process left alive when the final stop ends.
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import Phase as HPhase
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from pmon import config as config_module
from pmon.core.change import plan, with_added, with_edited, without
from pmon.core.manager import Manager
from pmon.core.project import (
    BUSY,
    Forget,
    ProjectChanged,
    JobEnded,
    JobKind,
    Kill,
    Phase,
    Project,
    ProjectState as P,
    Record,
    Spawn,
    Terminate,
)
from pmon.states import ManagerState as S
from pmon.errors import CommandError

PATH = Path("/p/pmon.toml")


def parse(raw: dict[str, Any]) -> config_module.Config:
    return config_module.parse(raw, PATH)


def project_table(*managers: dict[str, Any], **defaults: Any) -> dict[str, Any]:
    return {"project": {"name": "p"}, "defaults": defaults, "managers": [dict(m) for m in managers]}


@dataclass
class Proc:
    name: str
    pid: int
    stubborn: bool  # ignores SIGTERM: only the kill ends it
    spawned_at: float
    said_ready: bool = False
    terminated: bool = False
    killed: bool = False


def forgotten(log: list) -> list[str]:
    """The managers a Forget effect dropped, in order."""
    return [e.name for e in log if isinstance(e, Forget)]


class Rig:
    """The runtime's part, faked: performs effects, feeds events back, owns the clock."""

    def __init__(self, raw: dict[str, Any], *, active: bool = True, stubborn: str = "odd") -> None:
        self.project = Project(parse(raw))
        self.now = 0.0
        self.procs: dict[str, Proc] = {}
        self.pids = itertools.count(100)
        self.stubborn = stubborn  # which new processes ignore SIGTERM: none, odd pids, all
        self.timers: dict[str, tuple[float, int]] = {}
        self.job_timer: tuple[float, int] | None = None
        self.seq = itertools.count()
        self.log: list[Any] = []  # every effect performed, in order
        self.stale: set[int] = set()  # the Spawns in the log the runtime skips
        self.fail_spawns: set[str] = set()  # the next spawn of these fails
        self.soon: list[str] = []  # spawn failures, reported after the current event
        self.final_job: int | None = None
        self.final_done = False
        # what an operator (or a change) asked to start or restart, not carried out yet;
        # a project stop or restart cancels it
        self.operator_starts: set[str] = set()
        self.seen_job: int | None = None
        if not active:
            self.project.set_condition("active", False, "this server is the standby", self.now)
        self.perform()

    # --- performing effects, the way Supervisor._perform does --------------------------
    def _new_job(self) -> None:
        """A project stop or restart begun cancels what an operator asked to start before."""
        job = self.project.job
        if job is not None and job.id != self.seen_job:
            self.seen_job = job.id
            if job.phase is Phase.STOPPING:
                self.operator_starts.clear()

    def perform(self) -> None:
        self._new_job()
        for _ in range(10_000):
            for _ in range(10_000):
                effects, touched = self.project.drain()
                if not effects and not touched:
                    break
                for effect in effects:
                    self.log.append(effect)
                    self._effect(effect)
                for name in touched:
                    self._arm(name)
            else:
                raise AssertionError("the machine keeps queueing effects")
            deadline = self.project.deadline
            if deadline is None:
                self.job_timer = None
            elif self.job_timer is None or self.job_timer[0] != deadline:
                self.job_timer = (deadline, next(self.seq))
            if not self.soon:
                return
            failed, self.soon = self.soon, []
            for name in failed:  # call_soon(_spawn_failed): after the event that spawned
                self.spawn_failed(name)
        raise AssertionError("spawns keep failing")

    def _effect(self, effect: Any) -> None:
        if isinstance(effect, Spawn):
            self._spawn(effect.name)
        elif isinstance(effect, Terminate):
            if effect.name in self.procs:
                self.procs[effect.name].terminated = True
        elif isinstance(effect, Kill):
            if effect.name in self.procs:
                self.procs[effect.name].killed = True
        elif isinstance(effect, Forget):
            assert self.project.get(effect.name) is None, f"{effect.name} forgotten but known"
            assert effect.name not in self.procs, (
                f"{effect.name} forgotten while its process {self.procs[effect.name].pid} runs"
            )
            self.timers.pop(effect.name, None)
        elif isinstance(effect, JobEnded):
            if effect.job == self.final_job and effect.outcome == "done":
                alive = {n: p.pid for n, p in self.procs.items()}
                assert not alive, f"the final stop ended with processes alive: {alive}"
                self.final_done = True

    def _spawn(self, name: str) -> None:
        manager = self.project.get(name)
        if manager is None or manager.state is not S.STARTING or manager.pid is not None:
            self.stale.add(len(self.log) - 1)
            return  # stale: a stop came first (the runtime skips it the same way)
        assert name not in self.procs, (
            f"spawn of {name} asked while its process {self.procs[name].pid} is alive"
        )
        assert self.project.refusal(manager.spec) is None, (
            f"{name} (run_on = active) spawned while the condition is off"
        )
        assert not self.project.closing, f"{name} spawned while pmon shuts down"
        # While the project goes down, or is down, only an operator starts anything (one
        # spawn per command: a restart of its own after that is pmon's, and wrong here).
        self._new_job()
        job = self.project.job
        if job is not None and job.phase is Phase.STOPPING:
            assert name in self.operator_starts, (
                f"{name} spawned while the project goes down ({job.kind.value} job, "
                f"stop phase), not on an operator's command"
            )
        if job is None and self.project.state in (P.STOPPED, P.BLOCKED):
            assert name in self.operator_starts, (
                f"{name} spawned by itself in a {self.project.state.value} project"
            )
        self.operator_starts.discard(name)
        if name in self.fail_spawns:
            self.fail_spawns.discard(name)
            self.soon.append(name)
            return
        pid = next(self.pids)
        stubborn = self.stubborn == "all" or (self.stubborn == "odd" and pid % 2 == 1)
        self.procs[name] = Proc(name, pid, stubborn, self.now)
        self.project.spawned(name, pid, self.now, 1_000_000.0 + self.now)

    def spawn_failed(self, name: str) -> None:
        """A spawn that failed is a death: a core manager's restarts (or blocks) the project."""
        manager = self.project.get(name)
        core = (
            manager is not None and manager.spec.core and name in self.project.managers
            and not self.project.closing and self.project.state in (P.STARTING, P.RUNNING)
        )
        if self.project.spawn_failed(name, self.now) is not None and core:
            job = self.project.job
            assert (job is not None and job.kind in (JobKind.RESTART, JobKind.BLOCK)) or (
                self.project.state is P.BLOCKED
            ), f"core manager {name} could not start and the project is {self.project.state}"

    def _arm(self, name: str) -> None:
        self.timers.pop(name, None)
        manager = self.project.get(name)
        if manager is not None and manager.deadline is not None:
            self.timers[name] = (manager.deadline, next(self.seq))

    # --- events --------------------------------------------------------------------------
    def die(self, name: str, code: int | None = 1) -> Manager | None:
        self.procs.pop(name)  # reaped first, as _on_exit does
        manager = self.project.exited(name, code, self.now)
        self.perform()
        return manager

    def ready(self, name: str) -> bool:
        if name in self.procs:
            self.procs[name].said_ready = True
        made = self.project.ready(name, self.now)
        self.perform()
        return made

    def reap_killed(self) -> None:
        """A SIGKILLed process is gone within milliseconds: before any time passes."""
        while killed := [n for n, p in self.procs.items() if p.killed]:
            for name in killed:
                if name in self.procs and self.procs[name].killed:
                    self.die(name, -9)

    def obey(self) -> None:
        """Every process that got SIGTERM and does not ignore it ends now."""
        while polite := [n for n, p in self.procs.items() if p.terminated and not p.stubborn]:
            for name in polite:
                if name in self.procs:
                    self.die(name, -15)

    def next_timer(self) -> tuple[float, int, str | None] | None:
        timers = [(when, seq, name) for name, (when, seq) in self.timers.items()]
        if self.job_timer is not None:
            timers.append((*self.job_timer, None))
        return min(timers, key=lambda t: (t[0], t[1])) if timers else None

    def advance(self, dt: float) -> None:
        """Let `dt` seconds pass: every timer due meanwhile fires, in order, at its time."""
        target = self.now + dt
        while True:
            self.reap_killed()
            due = self.next_timer()
            if due is None or due[0] > target:
                break
            when, _, name = due
            self.now = max(self.now, when)
            if name is None:
                self.job_timer = None
                self.project.tick(self.now)
            else:
                del self.timers[name]
                self.project.tick(self.now, name)
            self.perform()
        self.now = target

    def call(self, fn: Any, *args: Any) -> Any:
        """An operator's command or a change: performed, or refused with nothing done."""
        try:
            result = fn(*args)
        except CommandError:
            effects, touched = self.project.drain()
            assert effects == [] and touched == set(), (
                f"a refused {fn.__name__} still queued {effects} / touched {touched}"
            )
            raise
        self.perform()
        return result

    def final_stop(self) -> int:
        """pmon shuts down: the final stop (its id is known before its effects are performed)."""
        self.final_job = self.project.stop(self.now, "shutdown", final=True)
        self.perform()
        return self.final_job

    def operator_start(self, name: str) -> None:
        self._new_job()
        self.operator_starts.add(name)

    def _awaiting_ready(self) -> str | None:
        for name, manager in self.project.managers.items():
            if name in self.procs and manager.starting and manager.spec.ready.value == "notify":
                return name
        return None

    # --- reading ---------------------------------------------------------------------------
    def state(self, name: str) -> S:
        manager = self.project.get(name)
        assert manager is not None
        return manager.state

    def pid(self, name: str) -> int | None:
        proc = self.procs.get(name)
        return proc.pid if proc else None

    def since(self, mark: int) -> list[Any]:
        return self.log[mark:]

    def records(self, kind: str, mark: int = 0) -> list[Record]:
        return [e for e in self.since(mark) if isinstance(e, Record) and e.kind == kind]

    def spawned(self, mark: int = 0) -> list[str]:
        """The managers spawned since `mark` (a spawn may fail), in order."""
        return [e.name for i, e in enumerate(self.log) if i >= mark and isinstance(e, Spawn)
                and i not in self.stale]

    def change(self, raw: dict[str, Any], source: str = "test") -> list[str]:
        new = parse(raw)
        planned = plan(self.project.config, new)
        for name in planned.changed:  # a change restarts what it changed
            self.operator_start(name)
        return self.call(self.project.change, new, planned, self.now, source)

    def settle_down(self, rounds: int = 100, ready: bool = False) -> None:
        """Deliver the deaths (and with `ready` every READY=1 due) and let time pass until
        the project's job ends."""
        for _ in range(rounds):
            self.obey()
            self.reap_killed()
            while ready and (waiting := self._awaiting_ready()):
                self.ready(waiting)
            if self.project.job is None:
                return
            due = self.next_timer()
            assert due is not None, "a job is under way with no timer to carry it on"
            self.advance(max(0.0, due[0] - self.now))
        raise AssertionError(f"the {self.project.job} never ended")


NOTIFY = {"ready": "notify", "start_timeout": 5}


def m(name: str, **keys: Any) -> dict[str, Any]:
    return {"name": name, "command": [name], **keys}


# --- start order and readiness ------------------------------------------------------------
def test_notify_the_next_manager_starts_only_after_ready():
    rig = Rig(project_table(m("a", **NOTIFY), m("b")))
    job = rig.call(rig.project.start, rig.now)
    assert rig.spawned() == ["a"] and rig.project.state is P.STARTING
    rig.advance(4.9)
    assert rig.spawned() == ["a"], "b started before a was ready"
    assert rig.ready("a") is True
    assert rig.spawned() == ["a", "b"] and rig.project.state is P.RUNNING
    assert rig.records("start-timeout") == [] and rig.records("project-started")
    assert JobEnded(job, "done") in rig.log


def test_notify_without_ready_the_start_goes_on_after_start_timeout():
    rig = Rig(project_table(m("a", **NOTIFY), m("b")))
    rig.call(rig.project.start, rig.now)
    rig.advance(4.99)
    assert rig.spawned() == ["a"]
    rig.advance(0.01)
    assert rig.spawned() == ["a", "b"] and rig.now == 5.0
    assert rig.records("not-ready")[0].fields == {"manager": "a"}
    timeout = rig.records("start-timeout")
    assert len(timeout) == 1 and timeout[0].fields == {"manager": "a"}
    a = rig.project.get("a")
    assert a is not None and a.state is S.STARTING and a.ready_failed
    assert rig.project.state is P.RUNNING
    rig.ready("a")  # late, but still welcome
    assert rig.state("a") is S.RUNNING


def test_delay_the_next_manager_starts_once_the_first_stayed_up_ready_seconds():
    rig = Rig(project_table(m("a", ready="delay", ready_seconds=2), m("b")))
    rig.call(rig.project.start, rig.now)
    rig.advance(1.9)
    assert rig.spawned() == ["a"] and rig.state("a") is S.STARTING
    rig.ready("a")  # READY=1 means nothing to a delay manager
    assert rig.spawned() == ["a"]
    rig.advance(0.1)
    assert rig.spawned() == ["a", "b"] and rig.state("a") is S.RUNNING
    assert rig.project.state is P.RUNNING and rig.records("start-timeout") == []


def test_a_delay_manager_that_dies_before_ready_seconds_is_restarted_and_waited_for():
    rig = Rig(project_table(m("a", ready="delay", ready_seconds=2), m("b")))
    rig.call(rig.project.start, rig.now)
    rig.advance(1)
    first = rig.pid("a")
    rig.die("a")
    assert rig.spawned() == ["a", "a"] and rig.pid("a") != first
    rig.advance(1.5)
    assert rig.spawned() == ["a", "a"], "b started though a never stayed up 2 s"
    rig.advance(0.5)
    assert rig.spawned() == ["a", "a", "b"]


# --- core deaths ---------------------------------------------------------------------------
def three() -> dict[str, Any]:
    return project_table(m("core", core=True), m("a"), m("b", **NOTIFY), seconds_to_kill=2)


def test_a_core_death_stops_everything_in_reverse_order_then_starts_in_order():
    rig = Rig(three())
    rig.call(rig.project.start, rig.now)
    rig.ready("b")
    old = {name: rig.pid(name) for name in ("core", "a", "b")}
    mark = len(rig.log)
    rig.die("core", 1)
    assert rig.project.state is P.RESTARTING and rig.records("project-restart", mark)
    assert rig.project.job is not None and rig.project.job.kind is JobKind.RESTART
    assert [e for e in rig.since(mark) if isinstance(e, (Terminate, Spawn))] == [Terminate("b")]
    rig.die("b", -15)
    assert [e for e in rig.since(mark) if isinstance(e, (Terminate, Spawn))] == [
        Terminate("b"), Terminate("a")]
    rig.die("a", -15)
    assert rig.spawned(mark) == ["core", "a", "b"] and rig.project.state is P.STARTING
    rig.ready("b")
    assert rig.project.state is P.RUNNING
    assert all(rig.pid(n) not in (None, old[n]) for n in old)


def test_a_core_death_during_the_stop_phase_is_not_restarted_on_its_own():
    rig = Rig(three())
    rig.call(rig.project.start, rig.now)
    rig.ready("b")
    rig.die("a", 1)  # an ordinary death: a alone restarts
    assert rig.spawned() == ["core", "a", "b", "a"] and rig.project.state is P.RUNNING
    rig.call(rig.project.restart_all, rig.now)
    mark = len(rig.log)
    rig.die("core", 1)  # while b is being stopped: nothing restarts it now
    assert rig.state("core") is S.STOPPED and rig.project.state is P.RESTARTING
    assert rig.since(mark) == [] and rig.records("project-restart") == [
        Record("project-restart", "restarting the project: operator request",
               {"reason": "operator request"})]
    rig.die("b", -15)
    rig.die("a", -15)
    assert rig.spawned(mark) == ["core", "a", "b"] and rig.project.state is P.STARTING
    rig.ready("b")
    assert rig.project.state is P.RUNNING
    assert set(rig.procs) == {"core", "a", "b"}


def test_a_core_manager_dying_too_often_blocks_the_project():
    rig = Rig(project_table(m("core", core=True, restart_count=1), m("a"), seconds_to_kill=2))
    rig.call(rig.project.start, rig.now)
    rig.die("core")
    rig.settle_down()
    assert rig.project.state is P.RUNNING and set(rig.procs) == {"core", "a"}
    mark = len(rig.log)
    rig.die("core")
    blocked = rig.records("project-blocked", mark)
    assert len(blocked) == 1 and blocked[0].fields == {"manager": "core"}
    assert rig.project.job is not None and rig.project.job.kind is JobKind.BLOCK
    assert rig.project.state is P.STOPPING and rig.state("core") is S.BLOCKED
    rig.settle_down()
    assert rig.project.state is P.BLOCKED and not rig.procs
    assert rig.spawned(mark) == []
    rig.call(rig.project.restart_all, rig.now)  # the operator's way out
    assert rig.project.state is P.RUNNING and set(rig.procs) == {"core", "a"}


def test_an_ordinary_manager_dying_too_often_is_blocked_alone():
    rig = Rig(project_table(m("core", core=True), m("a", restart_count=1), m("b")))
    rig.call(rig.project.start, rig.now)
    others = {n: rig.pid(n) for n in ("core", "b")}
    first = rig.pid("a")
    rig.die("a")
    assert rig.pid("a") not in (None, first), "the first restart is at once"
    rig.die("a")
    assert rig.state("a") is S.BLOCKED and "a" not in rig.procs
    rig.advance(100)
    assert rig.state("a") is S.BLOCKED, "nothing but an operator unblocks it"
    assert rig.project.state is P.RUNNING and {n: rig.pid(n) for n in others} == others
    assert rig.records("project-blocked") == [] and rig.records("project-restart") == []
    rig.call(rig.project.start_manager, "a", rig.now)
    assert rig.state("a") is S.RUNNING


def test_a_project_restart_starts_a_blocked_ordinary_manager_again_with_its_window_kept():
    """As before the project machine: the start sequence starts every wanted manager, a
    blocked one too; its restart window is not reset (only an operator's start does), so
    its next death blocks it again at once."""
    rig = Rig(project_table(m("core", core=True), m("a", restart_count=1, reset_after=300)))
    rig.call(rig.project.start, rig.now)
    rig.die("a")  # restarted (1 of 1)
    rig.die("a")
    assert rig.state("a") is S.BLOCKED
    rig.die("core")
    rig.settle_down()
    assert rig.project.state is P.RUNNING and set(rig.procs) == {"core", "a"}
    rig.die("a")
    assert rig.state("a") is S.BLOCKED and "blocked" in rig.project.get("a").last_decision


def test_a_spawn_that_fails_is_a_death_restarted_only_while_the_project_runs():
    rig = Rig(project_table(m("a"), m("b")))
    rig.call(rig.project.start, rig.now)
    rig.fail_spawns.add("b")
    rig.die("b")  # restarted at once; that spawn fails; restarted again (backoff)
    assert rig.state("b") is S.BACKOFF and rig.project.get("b").restarts == 2
    rig.advance(1)
    assert rig.state("b") is S.RUNNING
    rig.call(rig.project.stop, rig.now)
    rig.settle_down()
    rig.fail_spawns.add("b")
    rig.operator_start("b")
    rig.call(rig.project.start_manager, "b", rig.now)  # in a stopped project: it cannot start
    assert rig.state("b") is S.STOPPED and "not restarted" in rig.project.get("b").last_decision
    rig.advance(60)
    assert rig.spawned().count("b") == 4 and not rig.procs


# --- conditions (run_on = "active") ---------------------------------------------------
def test_not_knowing_the_condition_starts_nothing_it_holds_back():
    """Off with enforce=False ("not decided yet") neither stops what runs nor starts what
    the condition holds back (found by review: it started the held ones)."""
    rig = Rig(project_table(m("h", run_on="active"), m("a")), active=False)
    rig.call(rig.project.start, rig.now)
    assert rig.spawned() == ["a"] and "h" in rig.project.held
    rig.project.set_condition("active", False, "not decided yet", rig.now, enforce=False)
    rig.perform()
    assert rig.spawned() == ["a"] and "h" in rig.project.held


def test_a_job_that_ends_at_once_still_reports_each_project_state():
    """`pmon start --all` on a running project passes through starting back to running:
    the extensions hear both (the plugins' pmon_project_started), as before the machine."""
    rig = Rig(project_table(m("a")))
    rig.call(rig.project.start, rig.now)
    mark = len(rig.log)
    rig.call(rig.project.start, rig.now)
    assert [e.state for e in rig.since(mark) if isinstance(e, ProjectChanged)] == [
        P.STARTING, P.RUNNING]


def test_condition_off_during_a_start_holds_active_managers_and_on_starts_them():
    rig = Rig(project_table(m("h", run_on="active"), m("a", **NOTIFY), m("c")), active=False)
    rig.call(rig.project.start, rig.now)
    assert rig.spawned() == ["a"] and "h" in rig.project.held
    rig.project.set_condition("active", True, "", rig.now)  # in the middle of the start
    rig.perform()
    assert rig.spawned() == ["a", "h"] and rig.project.state is P.STARTING
    rig.ready("a")
    assert rig.spawned() == ["a", "h", "c"] and rig.project.state is P.RUNNING
    mark = len(rig.log)
    rig.project.set_condition("active", False, "the partner took over", rig.now)
    rig.perform()
    assert rig.since(mark) == [Terminate("h")]
    rig.die("h", -15)
    assert rig.state("h") is S.STOPPED and rig.spawned(mark) == []
    with pytest.raises(CommandError, match="only on the active server.*partner took over"):
        rig.call(rig.project.start_manager, "h", rig.now)
    rig.project.set_condition("active", True, "", rig.now)
    rig.perform()
    assert rig.spawned(mark) == ["h"]


def test_condition_turning_off_before_the_start_reaches_a_manager_holds_it():
    rig = Rig(project_table(m("a", **NOTIFY), m("h", run_on="active"), m("c")))
    rig.call(rig.project.start, rig.now)
    rig.project.set_condition("active", False, "standby", rig.now)
    rig.perform()
    rig.ready("a")
    assert rig.spawned() == ["a", "c"] and rig.project.state is P.RUNNING
    assert rig.project.held == {"h"} and rig.state("h") is S.STOPPED
    rig.advance(60)
    assert rig.spawned() == ["a", "c"]
    rig.project.set_condition("active", True, "", rig.now)
    rig.perform()
    assert rig.spawned() == ["a", "c", "h"] and rig.project.held == set()


# --- jobs replacing jobs, and the final stop --------------------------------------------
def test_a_newer_job_replaces_the_one_under_way():
    rig = Rig(project_table(m("a", **NOTIFY), m("b"), seconds_to_kill=2))
    start = rig.call(rig.project.start, rig.now)
    stop = rig.call(rig.project.stop, rig.now)
    assert JobEnded(start, "replaced") in rig.log and rig.project.job.id == stop
    assert rig.project.state is P.STOPPING and rig.spawned() == ["a"]
    restart = rig.call(rig.project.restart_all, rig.now)
    assert JobEnded(stop, "replaced") in rig.log and rig.project.state is P.RESTARTING
    rig.die("a", -15)
    assert rig.spawned() == ["a", "a"] and rig.project.state is P.STARTING
    rig.ready("a")
    assert rig.project.state is P.RUNNING and JobEnded(restart, "done") in rig.log


def test_the_final_stop_is_not_replaced_restarts_nothing_and_completes():
    rig = Rig(project_table(m("core", core=True), m("a"), m("b"), seconds_to_kill=2),
              stubborn="all")
    rig.call(rig.project.start, rig.now)
    final = rig.final_stop()
    assert rig.since(0)[-1] == Terminate("b") and rig.project.state is P.STOPPING
    mark = len(rig.log)
    for refused in (
        lambda: rig.project.restart_all(rig.now),
        lambda: rig.project.start(rig.now),
        lambda: rig.project.stop(rig.now),
        lambda: rig.project.restart(rig.now, "a core manager died"),
        lambda: rig.project.start_manager("a", rig.now),
        lambda: rig.project.restart_manager("a", rig.now),
        lambda: rig.project.restart_manager("core", rig.now),
    ):
        with pytest.raises(CommandError, match="shutting down"):
            rig.call(refused)
    assert rig.since(mark) == []
    rig.die("a", 1)  # not stopped yet: a death now is not restarted
    rig.die("core", 1)
    assert rig.state("a") is S.STOPPED and rig.state("core") is S.STOPPED
    assert rig.project.job is not None and rig.project.job.id == final
    rig.advance(2)  # b ignores SIGTERM: killed after seconds_to_kill
    assert Kill("b", "b still alive 2 s after SIGTERM: killing its process group") in rig.log
    assert rig.project.state is P.STOPPED and rig.final_done and not rig.procs
    assert rig.spawned(mark) == []
    with pytest.raises(CommandError):
        rig.call(rig.project.start, rig.now)


def test_a_restart_under_way_when_the_final_stop_begins_is_not_carried_out():
    rig = Rig(project_table(m("a"), m("b"), seconds_to_kill=2), stubborn="none")
    rig.call(rig.project.start, rig.now)
    rig.call(rig.project.restart_manager, "a", rig.now)  # a: SIGTERM, to be started again
    assert rig.state("a") is S.STOPPING
    mark = len(rig.log)
    rig.final_stop()
    rig.die("a", -15)  # its old process ends while b is being stopped
    assert rig.state("a") is S.STOPPED and rig.spawned(mark) == []
    rig.settle_down()
    assert rig.final_done and not rig.procs and rig.spawned(mark) == []


def test_a_restart_under_way_when_the_project_restarts_waits_for_its_turn():
    rig = Rig(project_table(m("core", core=True), m("a"), m("b"), seconds_to_kill=2),
              stubborn="none")
    rig.call(rig.project.start, rig.now)
    rig.call(rig.project.restart_manager, "a", rig.now)
    mark = len(rig.log)
    rig.die("core")  # the project restarts: b, then a (already going) are stopped first
    rig.die("a", -15)
    assert rig.spawned(mark) == [], "a started again before the project was down"
    rig.settle_down()
    assert rig.spawned(mark) == ["core", "a", "b"] and rig.project.state is P.RUNNING


def test_the_final_stop_waits_for_a_removed_manager_still_stopping():
    rig = Rig(project_table(m("a"), m("b"), seconds_to_kill=2), stubborn="none")
    rig.call(rig.project.start, rig.now)
    rig.procs["b"].stubborn = True
    rig.change(without(rig.project.config.raw, "b"))
    assert rig.project.leaving and rig.state("b") is S.STOPPING
    rig.final_stop()
    assert not rig.final_done, "pmon would exit with b still running"
    rig.settle_down()  # b is killed after seconds_to_kill, then forgotten
    assert Kill("b", "b still alive 2 s after SIGTERM: killing its process group") in rig.log
    assert "b" in forgotten(rig.log) and rig.final_done and not rig.procs


def test_an_operator_start_of_a_core_manager_while_the_project_stops_restarts_the_project():
    rig = Rig(project_table(m("core", core=True), m("a"), m("core2", core=True),
                            seconds_to_kill=2), stubborn="all")
    rig.call(rig.project.start, rig.now)
    stop = rig.call(rig.project.stop, rig.now)
    rig.die("core2", -15)  # stopped; the stop now waits for a
    mark = len(rig.log)
    rig.operator_start("core2")
    manager, job = rig.call(rig.project.start_manager, "core2", rig.now)
    assert manager.spec.name == "core2" and job is not None and job != stop
    assert JobEnded(stop, "replaced") in rig.log and rig.project.state is P.RESTARTING
    assert rig.spawned(mark) == [], "core2 started alone while the project was stopping"
    rig.settle_down()
    assert rig.spawned(mark) == ["core", "a", "core2"] and rig.project.state is P.RUNNING


def test_an_operator_start_of_a_core_manager_during_a_start_waits_for_its_turn():
    rig = Rig(project_table(m("core", core=True, **NOTIFY), m("core2", core=True)))
    start = rig.call(rig.project.start, rig.now)
    assert rig.call(rig.project.start_manager, "core2", rig.now)[1] == start
    assert rig.spawned() == ["core"], "core2 started before core was ready"
    rig.ready("core")
    assert rig.spawned() == ["core", "core2"] and rig.project.state is P.RUNNING
    assert JobEnded(start, "done") in rig.log


def test_an_operator_start_of_the_core_manager_of_a_blocked_project_starts_it_again():
    rig = Rig(project_table(m("core", core=True, restart_count=0), m("a")), stubborn="none")
    rig.call(rig.project.start, rig.now)
    rig.die("core")
    rig.settle_down()
    assert rig.project.state is P.BLOCKED and not rig.procs
    rig.call(rig.project.start_manager, "core", rig.now)
    assert rig.project.state is P.RUNNING and set(rig.procs) == {"core", "a"}


# --- changes ---------------------------------------------------------------------------
def running_rig(*managers: dict[str, Any], active: bool = True, **defaults: Any) -> Rig:
    rig = Rig(project_table(*managers, seconds_to_kill=2, **defaults), active=active)
    rig.call(rig.project.start, rig.now)
    assert rig.project.state is P.RUNNING
    return rig


def test_a_manager_added_while_its_condition_is_off_is_held_not_spawned():
    rig = running_rig(m("a"), active=False)
    mark = len(rig.log)
    touched = rig.change(with_added(rig.project.config.raw, m("x", run_on="active"), None))
    assert touched == ["x"] and rig.state("x") is S.STOPPED
    assert rig.project.held == {"x"} and rig.spawned(mark) == []
    assert "only on the active server" in (rig.project.refusal(rig.project.managers["x"].spec) or "")
    rig.project.set_condition("active", True, "", rig.now)
    rig.perform()
    assert rig.spawned(mark) == ["x"]


def test_an_added_manager_starts_at_once_unless_manual():
    rig = running_rig(m("a"))
    mark = len(rig.log)
    raw = with_added(rig.project.config.raw, m("x"), 1)
    rig.change(with_added(raw, m("y", start="manual"), None))
    assert rig.spawned(mark) == ["x"] and rig.state("y") is S.STOPPED
    assert [s.name for s in rig.project.config.start_order()] == ["x", "a", "y"]


def test_a_changed_command_restarts_the_running_manager_with_a_new_pid():
    rig = running_rig(m("a"), m("b"))
    before = {n: rig.pid(n) for n in ("a", "b")}
    mark = len(rig.log)
    rig.change(with_edited(rig.project.config.raw, "a", {"command": ["a", "--v2"]}, PATH))
    assert rig.since(mark) == [Terminate("a")] and rig.state("a") is S.STOPPING
    rig.die("a", -15)
    assert rig.spawned(mark) == ["a"] and rig.pid("a") not in (None, before["a"])
    assert rig.project.managers["a"].spec.command == ("a", "--v2")
    assert rig.pid("b") == before["b"] and rig.project.state is P.RUNNING


def test_a_changed_command_starts_a_blocked_manager_again():
    rig = running_rig(m("a", restart_count=0))
    rig.die("a")
    assert rig.state("a") is S.BLOCKED
    rig.change(with_edited(rig.project.config.raw, "a", {"command": ["a", "--fixed"]}, PATH))
    assert rig.state("a") is S.RUNNING and rig.pid("a") is not None


def test_a_manager_now_manual_and_not_started_by_an_operator_is_stopped():
    rig = running_rig(m("a"))
    mark = len(rig.log)
    rig.change(with_edited(rig.project.config.raw, "a", {"start": "manual"}, PATH))
    assert rig.since(mark) == [Terminate("a")]
    rig.die("a", -15)
    assert rig.state("a") is S.STOPPED and rig.spawned(mark) == []
    assert rig.project.managers["a"].wanted is False


def test_a_manual_manager_an_operator_started_is_restarted_by_a_change():
    rig = running_rig(m("a", start="manual"))
    rig.call(rig.project.start_manager, "a", rig.now)
    first = rig.pid("a")
    rig.change(with_edited(rig.project.config.raw, "a", {"env": {"V": "2"}}, PATH))
    rig.obey()
    assert rig.pid("a") not in (None, first) and rig.state("a") is S.RUNNING


def test_a_changed_limit_applies_in_place_with_the_same_pid():
    rig = running_rig(m("a"))
    pid = rig.pid("a")
    mark = len(rig.log)
    touched = rig.change(with_edited(
        rig.project.config.raw, "a", {"restart_count": 9, "seconds_to_kill": 7}, PATH))
    assert touched == [] and rig.since(mark) == []
    assert rig.pid("a") == pid and rig.state("a") is S.RUNNING
    spec = rig.project.managers["a"].spec
    assert (spec.restart_count, spec.seconds_to_kill) == (9, 7.0)


def test_a_removed_running_manager_is_stopped_then_forgotten():
    rig = running_rig(m("a"), m("b"))
    mark = len(rig.log)
    rig.change(without(rig.project.config.raw, "b"))
    assert rig.since(mark) == [Terminate("b")]
    assert "b" not in rig.project.managers and rig.state("b") is S.STOPPING
    assert "b" not in forgotten(rig.log)
    rig.die("b", -15)
    last = rig.since(mark)[-1]
    assert isinstance(last, Forget) and last.name == "b" and rig.project.get("b") is None
    assert rig.spawned(mark) == []


def test_a_removed_manager_that_ignores_sigterm_is_killed_then_forgotten():
    rig = running_rig(m("a"), m("b"))
    rig.procs["b"].stubborn = True
    rig.change(without(rig.project.config.raw, "b"))
    rig.advance(2)
    assert Kill("b", "b still alive 2 s after SIGTERM: killing its process group") in rig.log
    assert "b" in forgotten(rig.log) and not {"b"} & set(rig.procs)


@pytest.mark.parametrize("busy", ["starting", "stopping", "restarting", "shutting down"])
def test_every_change_is_refused_while_the_project_is_busy(busy):
    rig = Rig(project_table(m("a", **NOTIFY), m("b"), seconds_to_kill=2))
    rig.call(rig.project.start, rig.now)
    if busy != "starting":
        rig.ready("a")
    if busy in ("stopping", "restarting"):
        rig.call(rig.project.stop if busy == "stopping" else rig.project.restart_all, rig.now)
    if busy == "shutting down":
        rig.final_stop()
    assert rig.project.state.value == busy.replace("shutting down", "stopping")
    refusal = "pmon is shutting down" if busy == "shutting down" else f"the project is {busy}"
    before = rig.project.config
    raw = before.raw
    for new in (
        with_added(raw, m("x"), None),
        without(raw, "b"),
        with_edited(raw, "a", {"command": ["a2"]}, PATH),
        with_edited(raw, "b", {"restart_count": 1}, PATH),
    ):
        with pytest.raises(CommandError, match=f"{refusal}; nothing changed"):
            rig.change(new)
        assert rig.project.config is before
    assert set(rig.project.managers) == {"a", "b"}


def test_a_changed_core_manager_restarts_the_whole_project():
    rig = running_rig(m("core", core=True), m("a"))
    old = {n: rig.pid(n) for n in ("core", "a")}
    mark = len(rig.log)
    touched = rig.change(with_edited(rig.project.config.raw, "core", {"command": ["core2"]}, PATH),
                         "reload")
    assert touched == []
    restart = rig.records("project-restart", mark)
    assert restart and restart[0].fields == {"reason": "reload changed core manager core"}
    assert rig.project.state is P.RESTARTING and rig.since(mark)[-1] == Terminate("a")
    rig.settle_down()
    assert rig.project.state is P.RUNNING and rig.spawned(mark) == ["core", "a"]
    assert all(rig.pid(n) not in (None, old[n]) for n in old)
    assert rig.project.managers["core"].spec.command == ("core2",)


# --- the state machine ----------------------------------------------------------------
BASE = [
    m("core1", core=True, restart_count=2),
    m("a", **NOTIFY),
    m("b", ready="delay", ready_seconds=1, run_on="active"),
    m("core2", core=True, ready="notify", start_timeout=3, restart_count=3),
    m("man", start="manual", run_on="active"),
    m("o", start="once", ready="delay", ready_seconds=0.5),
]
EXTRA = {
    "x": m("x", run_on="active", **NOTIFY),
    "y": m("y", ready="delay", ready_seconds=2),
}
REMOVABLE = ("a", "b", "o", "x", "y")
POOL = {**{t["name"]: t for t in BASE}, **EXTRA}
CODES = st.sampled_from([0, 1, 2, -9, -15, None])


class ProjectMachine(RuleBasedStateMachine):
    """Random events against the project machine: deaths of live processes (core ones too)
    with any exit code, READY=1, time passing (every timer due fires at its time), failing
    spawns, the operator's commands (a refusal is legal, and must leave nothing queued), the
    condition flipping, changes through plan + change (refused ones change nothing), and the
    final stop. The rules a user relies on are checked as each effect is performed (`Rig`)
    and after every step (`the_rules_hold`); the teardown lets time pass and delivers the
    deaths until the final stop has ended with nothing left running."""

    def __init__(self) -> None:
        super().__init__()
        self.rig: Rig
        self.version = itertools.count(2)
        self.steps = 0  # the final stop comes late: after it every change is refused

    @initialize(active=st.booleans(), start=st.booleans(),
                stubborn=st.sampled_from(["none", "odd", "all"]))
    def begin(self, active: bool, start: bool, stubborn: str) -> None:
        self.rig = Rig(project_table(*BASE, seconds_to_kill=5, reset_after=30), active=active,
                       stubborn=stubborn)
        if start:
            self.rig.call(self.rig.project.start, self.rig.now)

    # --- helpers ---
    @property
    def project(self) -> Project:
        return self.rig.project

    def pick(self, data: st.DataObject, names: Any) -> str:
        return data.draw(st.sampled_from(sorted(names)))

    def attempt(self, fn: Any, *args: Any) -> Any:
        try:
            return self.rig.call(fn, *args)
        except CommandError:
            return None

    # --- processes ---
    @precondition(lambda self: self.rig.procs)
    @rule(data=st.data(), code=CODES)
    def a_process_dies(self, data: st.DataObject, code: int | None) -> None:
        name = self.pick(data, self.rig.procs)
        manager = self.project.get(name)
        assert manager is not None
        was, project_was = manager.state, self.project.state
        core_death = (
            manager.spec.core and name in self.project.managers and not self.project.closing
            and was in (S.STARTING, S.RUNNING) and project_was in (P.STARTING, P.RUNNING)
        )
        self.rig.procs.pop(name)
        mark = len(self.rig.log)
        self.project.exited(name, code, self.rig.now)
        if core_death:
            job = self.project.job
            assert (job is not None and job.kind in (JobKind.RESTART, JobKind.BLOCK)) or (
                self.project.state is P.BLOCKED
            ), f"core manager {name} died and the project is {self.project.state}, job {job}"
        self.rig.perform()
        if core_death:
            kinds = {e.kind for e in self.rig.since(mark) if isinstance(e, Record)}
            assert kinds & {"project-restart", "project-blocked"}, kinds

    @precondition(lambda self: any(p.terminated and not p.stubborn for p in self.rig.procs.values()))
    @rule(data=st.data())
    def a_process_obeys_sigterm(self, data: st.DataObject) -> None:
        name = self.pick(data, [n for n, p in self.rig.procs.items()
                                if p.terminated and not p.stubborn])
        self.rig.die(name, -15)

    @precondition(lambda self: self.rig.procs)
    @rule(data=st.data())
    def a_process_reports_ready(self, data: st.DataObject) -> None:
        self.rig.ready(self.pick(data, self.rig.procs))

    @precondition(lambda self: self.rig._awaiting_ready())
    @rule()
    def a_starting_manager_gets_ready(self) -> None:
        self.rig.ready(self.rig._awaiting_ready())

    @rule()
    def everything_behaves_until_the_job_ends(self) -> None:
        self.rig.settle_down(ready=True)

    @rule(data=st.data())
    def the_next_spawn_fails(self, data: st.DataObject) -> None:
        self.rig.fail_spawns.add(self.pick(data, POOL))

    @rule(dt=st.sampled_from([0.05, 0.3, 1.0, 2.0, 3.5, 12.0, 40.0]))
    def time_passes(self, dt: float) -> None:
        self.rig.advance(dt)

    # --- the operator ---
    @rule(data=st.data())
    def operator_starts_a_manager(self, data: st.DataObject) -> None:
        name = self.pick(data, self.project.managers)
        self.rig.operator_start(name)
        self.attempt(self.project.start_manager, name, self.rig.now)

    @rule(data=st.data())
    def operator_restarts_a_manager(self, data: st.DataObject) -> None:
        name = self.pick(data, self.project.managers)
        self.rig.operator_start(name)
        self.attempt(self.project.restart_manager, name, self.rig.now)

    @rule(data=st.data(), kill=st.booleans())
    def operator_stops_a_manager(self, data: st.DataObject, kill: bool) -> None:
        name = self.pick(data, self.project.managers)
        self.attempt(self.project.kill_manager if kill else self.project.stop_manager,
                     name, self.rig.now)

    @rule()
    def operator_starts_the_project(self) -> None:
        self.attempt(self.project.start, self.rig.now)

    @rule()
    def operator_stops_the_project(self) -> None:
        self.attempt(self.project.stop, self.rig.now)

    @rule()
    def operator_restarts_the_project(self) -> None:
        self.attempt(self.project.restart_all, self.rig.now)

    @rule(holds=st.booleans())
    def the_condition_flips(self, holds: bool) -> None:
        self.project.set_condition("active", holds, "the partner is active", self.rig.now)
        self.rig.perform()

    # --- changes ---
    def change(self, raw: dict[str, Any]) -> None:
        before = self.project.config
        pids = {n: self.rig.pid(n) for n in self.rig.procs}
        new = parse(raw)
        p = plan(before, new)
        try:
            self.rig.change(raw)
        except CommandError:
            assert self.project.config is before
            return
        for name in p.updated:  # a limit only: the process keeps running
            if name in pids and name in self.project.managers:
                assert self.rig.pid(name) == pids[name], f"{name} lost its process for a limit"

    @rule(data=st.data())
    def edit_a_command(self, data: st.DataObject) -> None:
        name = self.pick(data, self.project.managers)
        self.change(with_edited(
            self.project.config.raw, name, {"command": [name, f"v{next(self.version)}"]}, PATH))

    @rule(data=st.data(), key=st.sampled_from(["restart_count", "seconds_to_kill", "start_timeout"]),
          value=st.integers(1, 4))
    def edit_a_limit(self, data: st.DataObject, key: str, value: int) -> None:
        name = self.pick(data, self.project.managers)
        self.change(with_edited(self.project.config.raw, name, {key: value}, PATH))

    @rule(data=st.data(), start=st.sampled_from(["always", "manual", "once"]))
    def edit_a_start_type(self, data: st.DataObject, start: str) -> None:
        name = self.pick(data, [n for n, mg in self.project.managers.items() if not mg.spec.core])
        self.change(with_edited(self.project.config.raw, name, {"start": start}, PATH))

    @precondition(lambda self: set(REMOVABLE) - set(self.project.managers))
    @rule(data=st.data())
    def add_a_manager(self, data: st.DataObject) -> None:
        name = self.pick(data, set(REMOVABLE) - set(self.project.managers))
        position = data.draw(st.integers(1, len(self.project.managers) + 1))
        self.change(with_added(self.project.config.raw, POOL[name], position))

    @precondition(lambda self: set(REMOVABLE) & set(self.project.managers))
    @rule(data=st.data())
    def remove_a_manager(self, data: st.DataObject) -> None:
        name = self.pick(data, set(REMOVABLE) & set(self.project.managers))
        self.change(without(self.project.config.raw, name))

    # --- the end ---
    @precondition(lambda self: self.rig.final_job is None and self.steps >= 25)
    @rule()
    def the_final_stop_begins(self) -> None:
        self.rig.final_stop()

    def teardown(self) -> None:
        rig = getattr(self, "rig", None)
        if rig is None or sys.exc_info()[0] is not None:
            return  # a rule failed: that failure is the report
        if rig.final_job is None:
            rig.final_stop()
        rig.settle_down()
        assert rig.final_done, "the final stop never ended"
        assert rig.project.state is P.STOPPED and not rig.procs and not rig.project.leaving
        self.the_rules_hold()

    # --- what must always hold ---
    @invariant()
    def the_rules_hold(self) -> None:
        rig = getattr(self, "rig", None)
        if rig is None:
            return
        self.steps += 1
        project = rig.project
        # an operator's start is carried out at once, a restart once the old process is gone
        rig.operator_starts = {
            name for name in rig.operator_starts
            if (manager := project.get(name)) is not None and manager.state is S.STOPPING
        }
        known = {**project.leaving, **project.managers}
        # pmon knows each process it started, and each manager has at most the one it knows
        for name, proc in rig.procs.items():
            manager = known.get(name)
            assert manager is not None, f"process {proc.pid} of {name} runs, {name} is forgotten"
            assert manager.pid == proc.pid and manager.alive, (name, manager.state, manager.pid)
        for name, manager in known.items():
            assert manager.pid is None or name in rig.procs, f"{name} has a pid but no process"
        # running means ready: READY=1 from a notify manager, ready_seconds alive for delay
        for name, manager in known.items():
            proc = rig.procs.get(name)
            if manager.state is S.RUNNING and proc is not None:
                if manager.spec.ready.value == "notify":
                    assert proc.said_ready, f"{name} running without READY=1"
                if manager.spec.ready.value == "delay":
                    assert rig.now >= proc.spawned_at + manager.spec.ready_seconds, (
                        f"{name} running {rig.now - proc.spawned_at} s after its spawn")
        # nothing that needs the condition runs while it is off (except on its way down);
        # what it holds back needs it, and nothing waits for it once it holds and the project
        # runs (`pmon status` would say it waits for the active server forever)
        holds = project.conditions.get("active", (True, ""))[0]
        for name, manager in project.managers.items():
            if not holds and manager.spec.run_on == "active" and name in rig.procs:
                assert manager.state is S.STOPPING, (name, manager.state)
        for name in project.held:
            assert name in project.managers and project.managers[name].spec.run_on == "active"
        if holds and project.state is P.RUNNING:
            assert not project.held, f"{project.held} held back though the condition holds"
        # the project state and its job agree
        job = project.job
        assert (job is None) == (project.state not in BUSY), (project.state, job)
        if job is not None:
            expected = P.STARTING if job.phase is Phase.STARTING else (
                P.RESTARTING if job.kind is JobKind.RESTART else P.STOPPING)
            assert project.state is expected, (project.state, job)
            # a job never waits for a manager that has already settled: it would stall
            # until its deadline for nothing
            assert job.waiting is not None and job.deadline is not None, job
            waited = project.get(job.waiting)
            assert waited is not None, job
            if job.phase is Phase.STARTING:
                assert waited.state is S.STARTING and not waited.ready_failed, (job, waited.state)
            else:
                assert waited.alive, (job, waited.state)
        # a running project runs its core managers; a stopped or blocked one none
        for name, manager in project.managers.items():
            if manager.spec.core and project.state is P.RUNNING:
                assert manager.alive, f"project running, core manager {name} {manager.state}"
            if manager.spec.core and project.state in (P.STOPPED, P.BLOCKED):
                assert manager.state in (S.STOPPING, S.STOPPED, S.EXITED, S.BLOCKED), (
                    f"project {project.state.value}, core manager {name} {manager.state}")


TestProjectInvariants = ProjectMachine.TestCase
TestProjectInvariants.settings = settings(
    max_examples=200, stateful_step_count=50, deadline=None,
    # the same examples every run (CI stays deterministic), still 200 different ones
    derandomize=True, database=None,
    phases=[HPhase.explicit, HPhase.generate, HPhase.shrink],
)
