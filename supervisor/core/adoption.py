"""Hot restart, the decision: what a starting pmon does with the managers it finds still
running and with the state the previous pmon saved. Pure: state + processes in, a Decision
out; runtime/adopt.py reads the process table and the state file, and carries it out
through the project machine.

A process is adopted only when it carries the marks of that manager; when the state file
names it, its start time must match too. So a pid that now belongs to an unrelated process
is never adopted, and a missing, truncated or foreign state file costs the counters, never a
second copy of a manager. Marked processes pmon cannot adopt (a second copy of one manager,
a manager removed from the file while pmon was away) are stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from pmon.states import ALIVE_STATES, ManagerState, StartType

if TYPE_CHECKING:
    from pmon.config import Config
    from pmon.core.manager import Manager

S = ManagerState
# Start times of one process read by two pmon processes agree to psutil's rounding, unless
# the wall clock was stepped in between (boot time is derived from it): allow for that.
START_TIME_TOLERANCE = 2.0
ALIVE = {state.value for state in ALIVE_STATES}  # as the state file spells them


@dataclass(frozen=True)
class Found:
    """A running process that carries the marks of one of this project's managers."""

    name: str
    pid: int
    create_time: float


@dataclass
class Decision:
    """What a starting pmon does with what it found."""

    adopt: dict[str, Found] = field(default_factory=dict)
    strays: list[Found] = field(default_factory=list)  # ours, but not adoptable: stop them
    restore: dict[str, Mapping[str, Any]] = field(default_factory=dict)  # saved counters
    down: dict[str, ManagerState] = field(default_factory=dict)  # stay down, not started
    died_away: list[str] = field(default_factory=list)  # died while no pmon watched
    start_project: bool = True

    @property
    def skip(self) -> frozenset[str]:
        """The managers the start sequence leaves down (or leaves to the stop under way)."""
        return frozenset(self.down) | frozenset(self.stopping)

    project_state: str = "running"
    notes: list[str] = field(default_factory=list)
    # The project job the previous pmon had under way (Job.as_dict), resumed by this one;
    # with "new": True, a restart decided here (no pmon began it, nor recorded it).
    resume: Mapping[str, Any] | None = None
    # Adopted managers caught in a stop: seconds left until the kill, start again after it.
    stopping: dict[str, tuple[float, bool]] = field(default_factory=dict)
    not_ready: set[str] = field(default_factory=set)  # adopted while still starting


def decide(
    config: "Config", saved: Mapping[str, Any] | None, found: Iterable[Found],
    wall: float | None = None,
) -> Decision:
    """What to adopt, stop, restore and start, from the saved state and the live processes
    (`wall`: the wall clock now, for a kill deadline the previous pmon saved)."""
    decision = Decision()
    specs = {spec.name: spec for spec in config.managers}
    records: Mapping[str, Any] = (saved or {}).get("managers", {})
    fresh = saved is None or bool(saved.get("stopped_cleanly"))
    by_name: dict[str, list[Found]] = {}
    for proc in found:
        by_name.setdefault(proc.name, []).append(proc)

    for name, procs in by_name.items():
        if name not in specs:
            decision.strays.extend(procs)
            decision.notes.append(
                f"{name} (pid {', '.join(str(p.pid) for p in procs)}) still runs but is no "
                "longer in the project file: stopping it"
            )
            continue
        record = records.get(name)
        record = record if isinstance(record, dict) else {}
        chosen = _matching(procs, record.get("pid"), record.get("create_time"))
        if chosen is None:
            chosen = min(procs, key=lambda p: p.create_time)  # the first one started
        decision.adopt[name] = chosen
        extra = [p for p in procs if p is not chosen]
        if extra:
            decision.strays.extend(extra)
            decision.notes.append(
                f"{name} runs {len(procs)} times: keeping pid {chosen.pid}, stopping "
                + ", ".join(str(p.pid) for p in extra)
            )

    for name, record in records.items():
        pid = record.get("pid") if isinstance(record, dict) else None
        adopted = decision.adopt.get(name)
        if pid and name in specs and (adopted is None or adopted.pid != pid):
            decision.notes.append(
                f"{name}: pid {pid} from the state file is gone or is another process now; "
                "not adopted"
            )

    if fresh:
        return decision
    assert saved is not None
    project_state = str(saved.get("project_state", "running"))
    if project_state in ("stopped", "blocked"):  # an operator (or the block) stopped it
        decision.start_project = False
        decision.project_state = project_state
    job = saved.get("job")
    if isinstance(job, dict) and project_state not in ("stopped", "blocked", "running"):
        decision.resume = job
    if decision.resume is not None and decision.resume.get("mode") == "irreversible":
        # pmon's own final stop, cut short (SIGKILL at TimeoutStopSec, a power cut, the OOM
        # killer). Had it ended, the next pmon would start the project (stopped_cleanly): a
        # new pmon means "run the project". So the stop is finished, then the project
        # starts: a restart. Only an operator's stop (`stop --all`) keeps it stopped.
        reason = "pmon went away during its own final stop"
        decision.resume = {**decision.resume, "kind": "restart", "mode": "replace",
                           "final": "running", "reason": reason, "new": True}
        decision.notes.append(f"{reason}: finishing the stop, then starting the project")
    going_down = decision.resume is not None and decision.resume.get("kind") in ("stop", "block")
    for name, spec in specs.items():
        record = records.get(name)
        if not isinstance(record, dict):
            continue
        decision.restore[name] = record
        state = record.get("state")
        if name in decision.adopt:
            if state == S.STOPPING.value:
                decision.stopping[name] = (
                    _kill_in(record.get("kill_at"), wall, spec.seconds_to_kill),
                    record.get("then_start") is True,
                )
            elif state == S.STARTING.value:
                decision.not_ready.add(name)
            continue
        if spec.start is StartType.MANUAL and record.get("wanted") is False and state != S.BLOCKED.value:
            decision.down[name] = S.STOPPED  # an operator stopped it (or never started it)
        elif going_down and state != S.BLOCKED.value:
            decision.down[name] = S.STOPPED  # the stop under way would have stopped it
        elif state == S.BLOCKED.value:
            decision.down[name] = S.BLOCKED
        elif state == S.STOPPED.value and project_state == "running" and spec.run_on != "active":
            decision.down[name] = S.STOPPED  # stopped on purpose (mid-sequence: not yet)
        # A stopped run_on = "active" manager is left to the start sequence's gate: most often
        # the passive server stopped it, and only a gated one is started on becoming active.
        # The price: an operator's stop of one on the active server is forgotten here.
        elif state in ALIVE or state == S.BACKOFF.value or (
            state == S.EXITED.value and spec.start is not StartType.ONCE
        ):
            if spec.start is StartType.ONCE:
                decision.down[name] = S.EXITED  # once: it ran, it is not restarted
            else:
                decision.died_away.append(name)
        elif state == S.EXITED.value:
            decision.down[name] = S.EXITED
        if not decision.start_project and name not in decision.down:
            decision.down[name] = S.STOPPED
    core_gone = [name for name in decision.died_away if specs[name].core]
    kind = decision.resume.get("kind") if decision.resume is not None else "start"
    if core_gone and decision.start_project and kind in ("start", "restart"):
        # The seed's rule holds also when no pmon saw the death: the whole project restarts,
        # also when the death fell in a project restart's start phase (the managers it had
        # started after the core would otherwise live on beside a new core)
        reason = f"core manager {core_gone[0]} died while pmon was away"
        decision.resume = {
            "kind": "restart", "reason": reason, "mode": "replace", "final": "running",
            "phase": "stopping", "order": [], "cursor": 0, "skip": [], "new": True,
        }
        decision.notes.append(f"{reason}: restarting the whole project")
    return decision


def _kill_in(kill_at: Any, wall: float | None, seconds_to_kill: float) -> float:
    """Seconds left of a stop's grace the previous pmon began (all of it when unknown)."""
    if wall is None or not isinstance(kill_at, (int, float)) or isinstance(kill_at, bool):
        return seconds_to_kill
    left = kill_at - wall
    return max(0.0, min(left, seconds_to_kill)) if left == left else seconds_to_kill


def _matching(procs: list[Found], pid: Any, create_time: Any) -> Found | None:
    if not isinstance(pid, int) or not isinstance(create_time, (int, float)):
        return None
    for proc in procs:
        if proc.pid == pid and abs(proc.create_time - create_time) <= START_TIME_TOLERANCE:
            return proc
    return None


def restore(manager: "Manager", record: Mapping[str, Any], now: float) -> None:
    """Give a manager the counters (and exit code) the previous pmon saved for it."""
    manager.restored(
        record.get("restarts"), record.get("recent_restarts"), record.get("wanted"),
        record.get("exit_code"), now,
    )
