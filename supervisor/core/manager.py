"""One manager's state machine: pure logic, no I/O, no clock of its own.

Everything that decides what happens to one manager lives here: which state follows which
event, when it is restarted, backed off or blocked, when a stop turns into a kill. The
supervisor feeds it events (with the monotonic time `now`) and performs the actions it
returns through the process layer; it never changes a manager's state by itself. Because
time comes in as an argument, the whole policy is tested without sleeping.

Transitions (event: from -> to):
    start:        STOPPED | EXITED | BLOCKED | BACKOFF -> (SPAWN) -> STARTING
    spawned:      STARTING -> RUNNING (ready = spawn) | STARTING (notify, delay)
    adopted:      STOPPED | EXITED | BACKOFF | BLOCKED -> RUNNING (hot restart of pmon)
                  ... -> STARTING (it had not reported ready: notify, delay)
    resume_stop:  RUNNING (just adopted) -> STOPPING (TERMINATE, the old kill deadline)
    ready:        STARTING -> RUNNING (ready = notify)
    stop:         STARTING (no process yet: spawn failed) -> STOPPED
                  STARTING | RUNNING -> STOPPING (TERMINATE, kill deadline)
                  BACKOFF | BLOCKED -> STOPPED
    kill deadline: STOPPING -> STOPPING (KILL)
    exited:       STOPPING -> STOPPED (or STARTING again for a restart)
                  STARTING | RUNNING -> EXITED (once)
                                     -> STARTING (first restart: immediate)
                                     -> BACKOFF (later restarts in the window)
                                     -> BLOCKED (restart limit reached)
                  core manager: PROJECT_RESTART, or BLOCKED + PROJECT_BLOCKED
    hold_restart: STARTING | BACKOFF (a restart just decided) -> BLOCKED (a plugin's veto)
                                                          -> BACKOFF (a plugin's delay)
    recycle:      STARTING | RUNNING -> same state (TERMINATE, kill deadline): a monitor's
                  restart; the death then goes through the restart policy like any other
    left_down:    STOPPED -> STOPPED | EXITED | BLOCKED (hot restart: it was down before)
    restored / died_away / reset_counter: counters only, never the state

`last_decision` says why the manager is in its state (which exit, which rule, which limit);
the event log, the status and the plugins read it.
"""

from __future__ import annotations

import enum
from collections import deque


from pmon.config import ManagerSpec
from pmon.states import ALIVE_STATES, ManagerState, Readiness, Snapshot, StartType

S = ManagerState

BACKOFF_BASE = 0.1  # seconds before the second restart in a window; doubles each time
BACKOFF_MAX = 5.0


class Action(enum.Enum):
    SPAWN = "spawn"                      # start the process
    TERMINATE = "terminate"              # SIGTERM / CTRL_BREAK to the process group
    KILL = "kill"                        # SIGKILL the whole process group
    PROJECT_RESTART = "project-restart"  # a core manager died: restart everything
    PROJECT_BLOCKED = "project-blocked"  # a core manager died too often: stop everything


class Deadline(enum.Enum):
    READY = "ready"            # ready = "delay": running once alive this long
    START_TIMEOUT = "start-timeout"
    KILL = "kill"              # seconds_to_kill after TERMINATE
    RECYCLE_KILL = "recycle-kill"  # seconds_to_kill after a monitor's TERMINATE
    BACKOFF = "backoff"        # next restart


class TransitionError(Exception):
    """An event that has no meaning in the current state (a bug in the caller)."""


class Manager:
    def __init__(self, spec: ManagerSpec) -> None:
        self.spec = spec
        self.state = S.STOPPED
        self.pid: int | None = None
        self.exit_code: int | None = None
        self.started_at: float | None = None  # wall clock, for people
        self.restarts = 0  # total restarts by pmon, for people
        self.recent: deque[float] = deque()  # restart times inside the reset window
        self.deadline: float | None = None
        self.deadline_kind: Deadline | None = None
        self.ready_failed = False
        # A manual manager an operator started is kept like `always` until stopped.
        self.wanted = spec.start is not StartType.MANUAL
        self._restart_after_stop = False
        self.last_decision = ""  # what pmon did at the last death, for the event log

    # --- helpers --------------------------------------------------------------------
    def _set_deadline(self, kind: Deadline | None, at: float | None = None) -> None:
        self.deadline_kind, self.deadline = (kind, at) if kind else (None, None)

    def _spawn(self) -> list[Action]:
        self.state = S.STARTING
        self.ready_failed = False
        self._set_deadline(None)
        return [Action.SPAWN]

    def snapshot(self) -> Snapshot:
        return Snapshot(
            index=self.spec.index,
            name=self.spec.name,
            state=self.state.value,
            pid=self.pid,
            start=self.spec.start.value,
            core=self.spec.core,
            restarts=self.restarts,
            exit_code=self.exit_code,
            started_at=self.started_at,
            ready_failed=self.ready_failed,
            wanted=self.wanted,
            reason=self.last_decision,
        )

    @property
    def alive(self) -> bool:
        return self.state in ALIVE_STATES

    @property
    def starting(self) -> bool:
        return self.state is S.STARTING

    # --- events ---------------------------------------------------------------------
    def start(self, now: float, *, operator: bool = False) -> list[Action]:
        """Start request, by the project's start sequence or by an operator.

        An operator's start resets the restart counter (PMON's "reset start counter") and
        unblocks a blocked manager.
        """
        if operator:
            self.recent.clear()
            self.wanted = True
            self.last_decision = "started by an operator"
        if self.state is S.STOPPING:
            self._restart_after_stop = True  # STOPPING -> (exit) -> STARTING
            return []
        if self.alive:
            return []
        # STOPPED | EXITED | BLOCKED | BACKOFF -> STARTING
        return self._spawn()

    def spawned(self, pid: int, now: float, wall: float) -> list[Action]:
        if self.state is not S.STARTING:
            raise TransitionError(f"spawned in state {self.state}")
        self.pid, self.exit_code, self.started_at = pid, None, wall
        if self.spec.ready is Readiness.SPAWN:
            self.state = S.RUNNING  # STARTING -> RUNNING
        elif self.spec.ready is Readiness.DELAY:
            self._set_deadline(Deadline.READY, now + self.spec.ready_seconds)
        else:
            self._set_deadline(Deadline.START_TIMEOUT, now + self.spec.start_timeout)
        return []

    def adopted(
        self, pid: int, now: float, wall: float | None, *, ready: bool = True
    ) -> list[Action]:
        """A restarted pmon found this manager's process still running and takes it over.
        `ready` False: the previous pmon saw it starting (no READY=1 yet, or its delay not
        over): it starts again from here, with a fresh start_timeout / ready_seconds."""
        if self.alive:
            raise TransitionError(f"adopted in state {self.state}")
        # STOPPED | EXITED | BACKOFF | BLOCKED -> RUNNING, with no spawn: it already runs
        self.state = S.RUNNING
        self.pid, self.exit_code, self.started_at = pid, None, wall
        self.ready_failed = False
        self._set_deadline(None)
        if not ready and self.spec.ready is not Readiness.SPAWN:
            self.state = S.STARTING  # -> STARTING: waits for READY=1 (or its delay) anew
            if self.spec.ready is Readiness.DELAY:
                self._set_deadline(Deadline.READY, now + self.spec.ready_seconds)
            else:
                self._set_deadline(Deadline.START_TIMEOUT, now + self.spec.start_timeout)
        return []

    def resume_stop(self, now: float, kill_in: float, then_start: bool) -> list[Action]:
        """A restarted pmon adopted it in the middle of a stop: carry the stop on and kill
        at the deadline the previous pmon set (`kill_in` seconds from now; 0: at once)."""
        actions = self.stop(now, operator=False)
        if self.state is S.STOPPING:
            self._set_deadline(Deadline.KILL, now + max(0.0, min(kill_in, self.spec.seconds_to_kill)))
            self._restart_after_stop = then_start
        return actions

    @property
    def restart_pending(self) -> bool:
        """It is stopping to be started again (an operator's restart)."""
        return self._restart_after_stop

    def spawn_failed(self, now: float, *, restart: bool = True) -> list[Action]:
        """The program could not be executed at all: counts as a death with no exit code
        (`restart` False: the project is going down or down, as for `exited`)."""
        self.pid, self.exit_code = None, None  # not the previous instance's exit code
        if not restart:
            return self.exited(None, now, restart=False)
        return self._died(None, now)

    def ready(self, now: float) -> list[Action]:
        """READY=1. Only a notify manager is made ready by it: a delay manager is ready once
        it stayed alive ready_seconds, whatever it sends meanwhile."""
        if self.state is S.STARTING and self.pid is not None and self.spec.ready is Readiness.NOTIFY:
            self.state = S.RUNNING  # STARTING -> RUNNING
            if self.deadline_kind is not Deadline.RECYCLE_KILL:  # a monitor's restart stands
                self._set_deadline(None)
        return []

    def stop(self, now: float, *, operator: bool = True, kill_in: float | None = None) -> list[Action]:
        """Stop request. An operator's stop also means: do not start with the project.
        `kill_in`: kill after at most this long (a self-fence), not seconds_to_kill."""
        if operator and self.spec.start is StartType.MANUAL:
            self.wanted = False
        if operator:
            self.last_decision = "stopped by an operator"
        self._restart_after_stop = False
        if self.state is S.STARTING and self.pid is None:
            self.state = S.STOPPED  # the spawn failed or was refused: nothing to signal
            self._set_deadline(None)
            return []
        if self.state in (S.STARTING, S.RUNNING):
            self.state = S.STOPPING  # -> STOPPING, kill at the deadline
            grace = self.spec.seconds_to_kill if kill_in is None else min(kill_in, self.spec.seconds_to_kill)
            self._set_deadline(Deadline.KILL, now + grace)
            return [Action.TERMINATE]
        if self.state in (S.BACKOFF, S.BLOCKED):
            self.state = S.STOPPED
            self._set_deadline(None)
        return []

    def restart(self, now: float) -> list[Action]:
        """Operator restart: stop (politely) and start again."""
        if self.alive:
            actions = self.stop(now, operator=False)
            self._restart_after_stop = True
            return actions
        return self.start(now, operator=True)

    def tick(self, now: float) -> list[Action]:
        """Called by the supervisor's timer at (or after) `deadline`."""
        if self.deadline is None or now < self.deadline:
            return []
        kind = self.deadline_kind
        self._set_deadline(None)
        if kind is Deadline.READY and self.state is S.STARTING:
            self.state = S.RUNNING  # STARTING -> RUNNING (stayed alive long enough)
        elif kind is Deadline.START_TIMEOUT and self.state is S.STARTING:
            self.ready_failed = True  # stays STARTING; the start sequence goes on
        elif kind is Deadline.KILL and self.state is S.STOPPING:
            return [Action.KILL]
        elif kind is Deadline.RECYCLE_KILL and self.state in (S.STARTING, S.RUNNING):
            return [Action.KILL]
        elif kind is Deadline.BACKOFF and self.state is S.BACKOFF:
            return self._spawn()  # BACKOFF -> STARTING
        return []

    def exited(self, exit_code: int | None, now: float, *, restart: bool = True) -> list[Action]:
        """The process is gone (exit code; negative = killed by that signal).

        `restart` is False while the project is going down: a death then is not restarted
        and not counted.
        """
        self.pid = None
        self.exit_code = exit_code
        if self.state is S.STOPPING:
            self._set_deadline(None)
            if self._restart_after_stop:
                self._restart_after_stop = False
                self.last_decision = "restarted by request"
                return self._spawn()  # STOPPING -> STARTING
            self.state = S.STOPPED  # STOPPING -> STOPPED
            self.last_decision = "stopped"
            return []
        if self.state not in (S.STARTING, S.RUNNING):
            raise TransitionError(f"exited in state {self.state}")
        if not restart:
            self._set_deadline(None)
            self.state = S.STOPPED  # STARTING | RUNNING -> STOPPED (project going down)
            self.last_decision = "not restarted: the project is stopping"
            return []
        return self._died(exit_code, now)

    def hold_restart(self, now: float, delay: float | None, reason: str) -> list[Action]:
        """A plugin's advice on the automatic restart `exited` just decided: None vetoes it
        (the manager waits for an operator), a number postpones it by that many seconds."""
        if self.state not in (S.STARTING, S.BACKOFF) or self.pid is not None:
            return []
        why = f" ({reason})" if reason else ""
        if delay is None:
            self.state = S.BLOCKED  # STARTING | BACKOFF -> BLOCKED (restart vetoed)
            self._set_deadline(None)
            self.last_decision = f"restart vetoed by a plugin{why}"
            return []
        self.state = S.BACKOFF  # STARTING | BACKOFF -> BACKOFF (restart delayed)
        self._set_deadline(Deadline.BACKOFF, now + delay)
        self.last_decision = f"restarting in {delay:g} s, delayed by a plugin{why}"
        return []

    def recycle(self, now: float, reason: str) -> list[Action]:
        """A monitor asks for a restart: end the process (TERMINATE, KILL after
        seconds_to_kill); its death then goes through the restart policy like any other, so
        a manager that keeps failing its monitor ends blocked like one that keeps dying."""
        if self.state not in (S.STARTING, S.RUNNING) or self.pid is None:
            return []
        self._set_deadline(Deadline.RECYCLE_KILL, now + self.spec.seconds_to_kill)
        self.last_decision = f"stopped to be restarted: {reason}"
        return [Action.TERMINATE]

    def respecified(self, old: ManagerSpec) -> None:
        """Its keys were changed (from `old`; `spec` is the new one): a manager that is
        manual now is wanted only if it was manual already and an operator started it."""
        was_wanted = self.wanted
        self.wanted = self.spec.start is not StartType.MANUAL or (
            old.start is StartType.MANUAL and was_wanted
        )

    def reset_counter(self) -> None:
        """An operator's fresh start: the restart window forgets its restarts."""
        self.recent.clear()

    # --- a restarted pmon takes over (hot restart) ---------------------------------
    def restored(
        self, restarts: object, recent: object, wanted: object, exit_code: object, now: float
    ) -> None:
        """Counters saved by the previous pmon; anything malformed is ignored."""
        if isinstance(restarts, int) and not isinstance(restarts, bool) and restarts >= 0:
            self.restarts = restarts
        if isinstance(recent, list):
            # Monotonic times: comparable across processes on one boot; later ones are from
            # another boot and mean nothing here.
            self.recent = deque(
                t for t in recent
                if isinstance(t, (int, float)) and not isinstance(t, bool) and t <= now
            )
        # Only a manual manager's wish is the operator's; another start type (maybe changed
        # in the file while pmon was away) is wanted by its type.
        if isinstance(wanted, bool) and self.spec.start is StartType.MANUAL:
            self.wanted = wanted
        if isinstance(exit_code, int) and not isinstance(exit_code, bool):
            self.exit_code = exit_code

    def left_down(self, state: ManagerState, reason: str) -> None:
        """It was down when the previous pmon went away and stays so."""
        if self.alive or state in ALIVE_STATES or state is S.BACKOFF:
            raise TransitionError(f"left down as {state} in state {self.state}")
        self.state = state  # STOPPED -> STOPPED | EXITED | BLOCKED
        self.last_decision = reason

    def died_away(self) -> None:
        """It died while no pmon watched: the start about to come counts as a restart."""
        self.restarts += 1
        self.last_decision = "died while pmon was away"

    def _died(self, exit_code: int | None, now: float) -> list[Action]:
        """An unexpected death: apply the start type and the restart limit."""
        self._set_deadline(None)
        if self.spec.start is StartType.ONCE:
            self.state = S.EXITED  # once: never restarted
            self.last_decision = "once: not restarted"
            return []
        while self.recent and self.recent[0] <= now - self.spec.reset_after:
            self.recent.popleft()
        if len(self.recent) >= self.spec.restart_count:
            self.state = S.BLOCKED  # -> BLOCKED, until an operator starts it
            self.last_decision = (
                f"blocked: {self.spec.restart_count} restarts within {self.spec.reset_after:g} s"
            )
            return [Action.PROJECT_BLOCKED] if self.spec.core else []
        earlier = len(self.recent)
        self.recent.append(now)
        self.restarts += 1
        if self.spec.core:
            self.state = S.EXITED  # the project restart starts it again
            self.last_decision = "core manager died: restarting the project"
            return [Action.PROJECT_RESTART]
        if earlier == 0:
            self.last_decision = "restarted"
            return self._spawn()  # first restart in the window: immediate
        delay = min(BACKOFF_BASE * 2 ** (earlier - 1), BACKOFF_MAX)
        self.state = S.BACKOFF
        self._set_deadline(Deadline.BACKOFF, now + delay)
        self.last_decision = f"restarting in {delay:g} s"
        return []
