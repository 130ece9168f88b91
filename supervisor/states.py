"""The words every layer uses: manager states and their groups, start types, readiness, and
the frozen snapshot of one manager. Imports nothing of pmon, so everything may import it."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ManagerState(str, enum.Enum):
    STOPPED = "stopped"      # not running, and not meant to run until asked
    STARTING = "starting"    # spawned, not yet ready (notify / delay readiness)
    RUNNING = "running"      # ready
    STOPPING = "stopping"    # polite signal sent, waiting up to seconds_to_kill
    EXITED = "exited"        # a `once` manager that finished (or a stopped project's leftovers)
    BACKOFF = "backoff"      # died, waiting for its next restart
    BLOCKED = "blocked"      # died too often; waits for an operator

    def __str__(self) -> str:
        return self.value


ALIVE_STATES = frozenset({ManagerState.STARTING, ManagerState.RUNNING, ManagerState.STOPPING})
DOWN_STATES = frozenset({ManagerState.STOPPED, ManagerState.EXITED, ManagerState.BLOCKED})


class StartType(str, enum.Enum):
    ALWAYS = "always"
    ONCE = "once"
    MANUAL = "manual"

    def __str__(self) -> str:
        return self.value


class Readiness(str, enum.Enum):
    SPAWN = "spawn"
    NOTIFY = "notify"
    DELAY = "delay"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Snapshot:
    """A frozen view of one manager, for status replies, plugins and the state file."""

    index: int
    name: str
    state: str
    pid: int | None
    start: str
    core: bool
    restarts: int
    exit_code: int | None
    started_at: float | None
    ready_failed: bool
    wanted: bool
    reason: str  # why it is in its state (the last decision), "" when nothing was decided
