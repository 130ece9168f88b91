"""Fencing: the redundancy manager stops this server's `run_on = "active"` managers itself,
when its pmon does not answer (docs/redundancy.md "Fencing").

pmon starts every manager as the leader of its own session and process group, and tells the
redundancy manager at every sync the pids of the `run_on = "active"` ones that run. A fence
sends SIGTERM to each of those process groups, SIGKILL after `grace`, and is done when no
process of those groups is left alive (a zombie counts as dead: its parent, pmon, may be
stopped and unable to reap it). Never blocks: `step(now)` is called from the heartbeat loop.
POSIX only (Windows has no process groups to signal here; the fence is then empty).
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field

import psutil


def _alive_members(groups: set[int]) -> set[int]:
    """The groups of `groups` that still have a live (non-zombie) process."""
    alive: set[int] = set()
    for proc in psutil.process_iter(["status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            group = os.getpgid(proc.pid)
        except (psutil.Error, OSError):
            continue
        if group in groups:
            alive.add(group)
    return alive


def _signal_groups(groups: set[int], signum: int) -> None:
    for group in groups:
        try:
            os.killpg(group, signum)
        except OSError:
            pass  # gone already


@dataclass
class Fence:
    grace: float
    groups: set[int] = field(default_factory=set)
    started_at: float | None = None
    killed: bool = False
    done: bool = False

    @property
    def active(self) -> bool:
        """Started and not done yet (the heartbeats say "fencing")."""
        return self.started_at is not None and not self.done

    def start(self, now: float, pids: list[int]) -> None:
        if self.started_at is not None:
            return
        self.started_at = now
        self.groups = {pid for pid in pids if pid > 1 and pid != os.getpgrp()}
        if not hasattr(os, "killpg"):
            self.groups = set()
        _signal_groups(self.groups, signal.SIGTERM)
        self.step(now)

    def step(self, now: float) -> None:
        if not self.active:
            return
        if self.groups:
            self.groups = _alive_members(self.groups)
        if not self.groups:
            self.done = True
            return
        assert self.started_at is not None
        if not self.killed and now - self.started_at >= self.grace:
            self.killed = True
            _signal_groups(self.groups, signal.SIGKILL)

    def reset(self) -> None:
        self.groups, self.started_at, self.killed, self.done = set(), None, False, False
