"""The manager state machine, driven with an injected clock: no processes, no sleeping."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pmon.config import ManagerSpec
from pmon.core.manager import BACKOFF_BASE, Action, Manager
from pmon.states import ManagerState as S
from pmon.states import Readiness, StartType


def spec(**kw) -> ManagerSpec:
    return ManagerSpec(name="m", command=("x",), index=1, **kw)


def running(m: Manager, now: float = 0.0, pid: int = 100) -> Manager:
    assert m.start(now) == [Action.SPAWN]
    m.spawned(pid, now, 1000.0)
    return m


def test_first_restart_is_immediate_then_backoff_doubles_then_blocked():
    m = running(Manager(spec(restart_count=3, reset_after=60)))
    assert m.exited(1, 1.0) == [Action.SPAWN] and m.state is S.STARTING
    m.spawned(101, 1.0, 0)
    assert m.exited(1, 2.0) == [] and m.state is S.BACKOFF
    assert m.deadline == 2.0 + BACKOFF_BASE
    assert m.tick(2.0) == []  # not yet
    assert m.tick(2.0 + BACKOFF_BASE) == [Action.SPAWN]
    m.spawned(102, 2.2, 0)
    m.exited(1, 3.0)
    assert m.deadline == 3.0 + 2 * BACKOFF_BASE
    m.tick(10.0)
    m.spawned(103, 10.0, 0)
    assert m.exited(1, 11.0) == [] and m.state is S.BLOCKED
    assert m.restarts == 3 and "blocked" in m.last_decision


def test_restart_window_resets_after_reset_after():
    m = running(Manager(spec(restart_count=1, reset_after=10)))
    assert m.exited(1, 1.0) == [Action.SPAWN]
    m.spawned(2, 1.0, 0)
    assert m.exited(1, 11.5) == [Action.SPAWN], "the first restart left the window"


def test_operator_start_unblocks_and_resets_the_counter():
    m = running(Manager(spec(restart_count=0)))
    m.exited(-9, 1.0)
    assert m.state is S.BLOCKED
    assert m.start(2.0, operator=True) == [Action.SPAWN]
    m.spawned(5, 2.0, 0)
    assert m.state is S.RUNNING


def test_once_is_never_restarted_and_keeps_its_exit_code():
    m = running(Manager(spec(start=StartType.ONCE)))
    assert m.exited(4, 1.0) == [] and m.state is S.EXITED and m.exit_code == 4


def test_manual_is_not_wanted_until_an_operator_starts_it():
    m = Manager(spec(start=StartType.MANUAL))
    assert not m.wanted
    m.start(0.0, operator=True)
    m.spawned(7, 0.0, 0)
    assert m.wanted and m.exited(1, 1.0) == [Action.SPAWN], "kept like always"
    m.spawned(8, 1.0, 0)
    m.stop(2.0)
    assert not m.wanted


def test_core_death_asks_for_a_project_restart_then_blocks_the_project():
    m = running(Manager(spec(core=True, restart_count=1)))
    assert m.exited(1, 1.0) == [Action.PROJECT_RESTART] and m.state is S.EXITED
    m.start(1.5)
    m.spawned(9, 1.5, 0)
    assert m.exited(1, 2.0) == [Action.PROJECT_BLOCKED] and m.state is S.BLOCKED


def test_stop_terminates_then_kills_at_seconds_to_kill():
    m = running(Manager(spec(seconds_to_kill=5)))
    assert m.stop(10.0) == [Action.TERMINATE] and m.state is S.STOPPING
    assert m.tick(14.9) == []
    assert m.tick(15.0) == [Action.KILL]
    assert m.exited(-9, 15.1) == [] and m.state is S.STOPPED


def test_restart_request_stops_then_spawns():
    m = running(Manager(spec()))
    assert m.restart(1.0) == [Action.TERMINATE]
    assert m.exited(0, 1.1) == [Action.SPAWN] and m.state is S.STARTING


def test_readiness_notify_and_timeout():
    m = running(Manager(spec(ready=Readiness.NOTIFY, start_timeout=3)))
    assert m.state is S.STARTING
    m.tick(3.0)
    assert m.ready_failed and m.state is S.STARTING
    m.ready(4.0)
    assert m.state is S.RUNNING


def test_readiness_delay():
    m = running(Manager(spec(ready=Readiness.DELAY, ready_seconds=2)), now=1.0)
    assert m.tick(2.9) == [] and m.state is S.STARTING
    m.tick(3.0)
    assert m.state is S.RUNNING


def test_death_while_the_project_goes_down_is_not_restarted_nor_counted():
    m = running(Manager(spec()))
    assert m.exited(1, 1.0, restart=False) == [] and m.state is S.STOPPED and m.restarts == 0


class RestartModel(RuleBasedStateMachine):
    """The real machine against a model: restarts inside the window never exceed the limit,
    a manager is blocked exactly when the limit is reached, and nothing restarts a blocked one."""

    def __init__(self) -> None:
        super().__init__()
        self.limit = 3
        self.window = 10.0
        self.m = running(Manager(spec(restart_count=self.limit, reset_after=self.window)))
        self.now = 0.0
        self.model_restarts: list[float] = []
        self.pid = 100

    @rule(dt=st.floats(min_value=0, max_value=8))
    def time_passes(self, dt):
        self.now += dt
        if self.m.state is S.BACKOFF and self.m.deadline is not None and self.m.deadline <= self.now:
            assert self.m.tick(self.now) == [Action.SPAWN]
            self.pid += 1
            self.m.spawned(self.pid, self.now, 0)

    @precondition(lambda self: self.m.state in (S.RUNNING, S.STARTING))
    @rule(code=st.integers(-15, 3))
    def dies(self, code):
        recent = [t for t in self.model_restarts if t > self.now - self.window]
        actions = self.m.exited(code, self.now)
        if len(recent) >= self.limit:
            assert self.m.state is S.BLOCKED and actions == []
        else:
            self.model_restarts = recent + [self.now]
            if not recent:
                assert actions == [Action.SPAWN]
                self.pid += 1
                self.m.spawned(self.pid, self.now, 0)
            else:
                assert self.m.state is S.BACKOFF

    @precondition(lambda self: self.m.state is S.BLOCKED)
    @rule()
    def operator_starts(self):
        assert self.m.start(self.now, operator=True) == [Action.SPAWN]
        self.model_restarts = []
        self.pid += 1
        self.m.spawned(self.pid, self.now, 0)

    @invariant()
    def never_more_restarts_in_window_than_allowed(self):
        inside = [t for t in self.m.recent if t > self.now - self.window]
        assert len(inside) <= self.limit


TestRestartModel = RestartModel.TestCase
TestRestartModel.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)


def test_stop_before_a_failed_spawn_is_reported_goes_straight_to_stopped():
    m = Manager(spec())
    assert m.start(0.0) == [Action.SPAWN]  # the spawn then fails: no pid yet
    assert m.stop(0.1) == [] and m.state is S.STOPPED and m.deadline is None


def test_a_monitor_restart_outlives_ready_and_kills_at_its_deadline():
    """A notify manager recycled while starting, which then sends READY=1 and ignores
    SIGTERM, is still killed seconds_to_kill after the recycle (found by review)."""
    m = running(Manager(spec(ready=Readiness.NOTIFY, seconds_to_kill=3)))
    assert m.recycle(1.0, "memory: too big") == [Action.TERMINATE]
    m.ready(2.0)
    assert m.state is S.RUNNING and m.deadline == 4.0
    assert m.tick(4.0) == [Action.KILL]
