"""What a redundancy manager knows of its pmon, from pmon's replies to its syncs: one base
of the pair's manager (daemon.py) and a group member's (group_daemon.py), which keep the
same view of pmon and differ in what they do with it.

- `pmon_ok(now)`: pmon answered once and owes no answer older than pmon_timeout (judged by
  the answer it owes: `PmonSync.owes`);
- `breakdown(now)`: this server's error sources as pmon reports them, the manager's own
  (`own_errors`: the pair's links) and "pmon" (`pmon_weight`) while pmon does not answer
  (or, the pair's, until `pmon_held_until` after a fence);
- `_take_pmon(at, reply)`: the part of a reply both keep: the error sources, availability,
  the run_on = "active" managers to fence (pids, cgroups, names; the fence under way takes
  new ones too) and pmon's own pid and home cgroup.

A subclass sets `spec`, `sync` and `fence` and calls `PmonView.__init__` first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pmon.redundancy.fence import Fence
from pmon.redundancy.settings import RedundancySpec

if TYPE_CHECKING:
    from pmon.redundancy.daemon import PmonSync


class PmonView:
    spec: RedundancySpec
    sync: "PmonSync"
    fence: Fence

    def __init__(self) -> None:
        self.available = False
        self.pmon_breakdown: dict[str, float] = {}
        self.fence_pids: list[int] = []
        self.fence_cgroups: list[str] = []  # their cgroups (cgroup containment)
        self.fence_names: list[str] = []  # the run_on = "active" managers, running or not
        self.fence_pmon: tuple[int, str] | None = None  # pmon's pid and home cgroup
        self.pmon_ok_at: float | None = None  # the last answer from pmon
        self.pmon_held_until = 0.0  # "pmon" weighs on until then (the pair's, after a fence)

    def pmon_ok(self, now: float) -> bool:
        """pmon answered once and owes no answer older than pmon_timeout."""
        return self.pmon_ok_at is not None and self.sync.owes(now) < self.spec.pmon_timeout

    def own_errors(self, now: float) -> dict[str, float]:
        """The manager's own error sources, beside pmon's (none here)."""
        return {}

    def breakdown(self, now: float) -> dict[str, float]:
        out = dict(self.pmon_breakdown)
        out.update(self.own_errors(now))
        if (not self.pmon_ok(now) or now < self.pmon_held_until) and self.spec.pmon_weight:
            out["pmon"] = self.spec.pmon_weight
        return out

    def _take_pmon(self, at: float, reply: dict[str, Any]) -> float | None:
        """Keep what pmon's answer `reply` (received at `at`) says of this server; the
        release bound it sends (as pmon's config has it now: a reload), None if none."""
        self.pmon_ok_at = max(at, self.pmon_ok_at or 0.0)
        self.pmon_breakdown = dict(reply.get("breakdown", {}))
        self.available = bool(reply.get("available"))
        self.fence_pids = [int(p) for p in reply.get("fence", []) if isinstance(p, int)]
        self.fence_cgroups = [c for c in reply.get("fence_cgroups", []) if isinstance(c, str)]
        self.fence_names = [n for n in reply.get("fence_names", []) if isinstance(n, str)]
        self.fence.extend(self.fence_pids, self.fence_cgroups)  # pmon restarted one meanwhile
        pmon = reply.get("pmon")
        self.fence_pmon = (pmon["pid"], pmon["home"]) if isinstance(pmon, dict) and isinstance(
            pmon.get("pid"), int) and isinstance(pmon.get("home"), str) else None
        bound = reply.get("release_bound")
        if isinstance(bound, (int, float)) and not isinstance(bound, bool) and 0 < bound < 3600:
            return float(bound)
        return None
