"""Manager states and their groups. Imports nothing, so everything may import it."""

from __future__ import annotations

import enum


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
