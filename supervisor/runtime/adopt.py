"""Hot restart: a pmon started again on a project takes over the managers still running.

Two sources, both read before the start sequence:

- the state file (statefile.py), as the previous pmon last wrote it (at most 50 ms old):
  per manager its pid and that process's start time, its state and restart counters;
- the process table: every process whose environment carries this project's marks
  (NOTIFY_SOCKET = this state directory's notify socket, PMON_MANAGER = a manager's name)
  and that leads its own session, as pmon starts every manager. A manager's children share
  its environment but not its session leadership, so they are never taken for it.

A process is adopted only when it carries the marks of that manager; when the state file
names it, its start time must match too. So a pid that now belongs to an unrelated process
is never adopted, a manager spawned just before the last state write is still found, and a
missing, truncated or foreign state file costs the counters, never a second copy of a
manager. Marked processes pmon cannot adopt (a second copy of one manager, a manager
removed from the file while pmon was away) are stopped.

`decide` is pure (state + processes -> what to do); `take_over` reads, decides and acts.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from pmon.runtime import platform, statefile
from pmon.commands import command
from pmon.runtime.process import ManagedProcess
from pmon.core.states import ALIVE_STATES, ManagerState, StartType

if TYPE_CHECKING:
    from pmon.config import Config
    from pmon.runtime.supervisor import Supervisor

S = ManagerState
# Start times of one process read by two pmon processes agree to psutil's rounding, unless
# the wall clock was stepped in between (boot time is derived from it): allow for that.
START_TIME_TOLERANCE = 2.0
STRAY_KILL_SECONDS = 10.0
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
    project_state: str = "running"
    notes: list[str] = field(default_factory=list)


# --- reading ------------------------------------------------------------------------------
def read_saved(config: "Config", path: Any) -> tuple[dict[str, Any] | None, str | None]:
    """The previous pmon's state, or None and the reason it cannot be used."""
    try:
        data = statefile.load(path)
    except FileNotFoundError:
        return None, f"no state file {path}: first start (running managers are still looked for)"
    except ValueError as exc:
        return None, f"state file ignored: {exc}; counters start from zero"
    if data.get("project") != config.project.name:
        return None, (
            f"state file ignored: {path} belongs to project '{data.get('project')}', "
            f"not '{config.project.name}'; counters start from zero"
        )
    if not isinstance(data.get("managers"), dict):
        return None, f"state file ignored: {path} has no managers table; counters start from zero"
    return data, None


def marks(config: "Config") -> dict[str, str]:
    """The environment every manager of this project gets from pmon (see pmon._spawn)."""
    return {
        "NOTIFY_SOCKET": str(config.project.state_dir / "notify.sock"),
        "PMON_PROJECT": config.project.name,
    }


def scan(config: "Config") -> list[Found]:
    """Every running process that is one of this project's managers (not their children)."""
    import psutil

    wanted = marks(config)
    me = os.getpid()
    found: list[Found] = []
    for pid in psutil.pids():
        if pid == me or (not platform.IS_WINDOWS and not _leads_session(pid)):
            continue
        try:
            name = _manager_name(pid, wanted)
            if name:
                found.append(Found(name, pid, psutil.Process(pid).create_time()))
        except (psutil.Error, OSError):
            continue
    if platform.IS_WINDOWS:  # no sessions: a manager's child has a marked parent
        pids = {f.pid for f in found}
        found = [f for f in found if _parent(f.pid) not in pids]
    return found


def _manager_name(pid: int, wanted: Mapping[str, str]) -> str | None:
    """PMON_MANAGER of `pid` when its environment carries every mark, else None."""
    if not os.path.exists("/proc/self/environ"):
        import psutil

        env = psutil.Process(pid).environ()
        if any(env.get(key) != value for key, value in wanted.items()):
            return None
        return env.get("PMON_MANAGER")
    # Linux: a byte search; parsing the environment of every process costs far more.
    with open(f"/proc/{pid}/environ", "rb") as handle:
        raw = b"\0" + handle.read() + b"\0"
    for key, value in wanted.items():
        if b"\0%s=%s\0" % (key.encode(), value.encode()) not in raw:
            return None
    start = raw.find(b"\0PMON_MANAGER=")
    if start < 0:
        return None
    start += len(b"\0PMON_MANAGER=")
    return raw[start:raw.index(b"\0", start)].decode(errors="replace") or None


def _leads_session(pid: int) -> bool:
    try:
        return os.getsid(pid) == pid
    except OSError:
        return False


def _parent(pid: int) -> int | None:
    import psutil

    try:
        return psutil.Process(pid).ppid()
    except psutil.Error:
        return None


# --- deciding (pure) ----------------------------------------------------------------------
def decide(
    config: "Config", saved: Mapping[str, Any] | None, found: Iterable[Found]
) -> Decision:
    """What to adopt, stop, restore and start, from the saved state and the live processes."""
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
    for name, spec in specs.items():
        record = records.get(name)
        if not isinstance(record, dict):
            continue
        decision.restore[name] = record
        if name in decision.adopt:
            continue
        state = record.get("state")
        if state == S.BLOCKED.value:
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
    return decision


def _matching(procs: list[Found], pid: Any, create_time: Any) -> Found | None:
    if not isinstance(pid, int) or not isinstance(create_time, (int, float)):
        return None
    for proc in procs:
        if proc.pid == pid and abs(proc.create_time - create_time) <= START_TIME_TOLERANCE:
            return proc
    return None


# --- acting -------------------------------------------------------------------------------
def take_over(sup: "Supervisor") -> Decision:
    """Adopt the running managers before the start sequence. Returns what was decided;
    `decision.adopt` and `decision.down` name the managers the start sequence skips."""
    began = time.perf_counter()
    saved, problem = read_saved(sup.config, sup.state_file)
    decision = decide(sup.config, saved, scan(sup.config))
    if problem:
        decision.notes.insert(0, problem)
    for note in decision.notes:
        sup.events.write("adoption", note)
    now = sup.now()
    for name, record in decision.restore.items():
        _restore_counters(sup.managers[name], record, now)
    for name, state in decision.down.items():
        sup.managers[name].state = state
    for name in decision.died_away:
        manager = sup.managers[name]
        manager.restarts += 1
        sup.events.write(
            "died-away",
            f"{name} died while pmon was away: starting it again ({manager.spec.start.value})",
            manager=name,
        )
    for name, proc in decision.adopt.items():
        _adopt(sup, name, proc)
    for proc in decision.strays:
        _stop_stray(sup, proc)
    if not decision.start_project:
        sup.events.write(
            "adoption",
            f"the project was {decision.project_state} when pmon went away: it stays so; "
            "start it with `pmon start --all`",
        )
    elapsed = time.perf_counter() - began
    sup.events.write(
        "adopted",
        f"took over {len(decision.adopt)} running managers in {elapsed * 1000:.0f} ms",
        count=len(decision.adopt), seconds=round(elapsed, 4),
        pids={name: proc.pid for name, proc in decision.adopt.items()},
    )
    return decision


def _restore_counters(manager: Any, record: Mapping[str, Any], now: float) -> None:
    restarts = record.get("restarts")
    if isinstance(restarts, int) and restarts >= 0:
        manager.restarts = restarts
    recent = record.get("recent_restarts")
    if isinstance(recent, list):
        # Monotonic times: comparable across processes on one boot; later ones are from
        # another boot and mean nothing here.
        manager.recent.clear()
        manager.recent.extend(t for t in recent if isinstance(t, (int, float)) and t <= now)
    # Only a manual manager's wish is the operator's; another start type (maybe changed in
    # the file while pmon was away) is wanted by its type.
    if isinstance(record.get("wanted"), bool) and manager.spec.start is StartType.MANUAL:
        manager.wanted = record["wanted"]


def _adopt(sup: "Supervisor", name: str, found: Found) -> None:
    manager = sup.managers[name]
    proc = ManagedProcess(None, found.pid)
    sup.procs[name] = proc
    sup.by_pid[found.pid] = name
    sup._start_times[found.pid] = found.create_time
    sup._log_for(name)  # its output file is rotated like any other
    sup.watcher.watch(found.pid)  # dead meanwhile: the watcher reports the exit at once
    sup._apply(manager, manager.adopted(found.pid, sup.now(), found.create_time))
    sup.events.write(
        "adopt", f"{name} (pid {found.pid}) adopted: still running from before", manager=name,
        pid=found.pid,
    )


def _stop_stray(sup: "Supervisor", found: Found) -> None:
    sup.events.write(
        "stray", f"stopping pid {found.pid} ({found.name}): not adoptable", manager=found.name,
        pid=found.pid,
    )
    platform.terminate_group(found.pid)
    sup.loop.call_later(STRAY_KILL_SECONDS, _kill_if_same, found)


def _kill_if_same(found: Found) -> None:
    if statefile.process_start_time(found.pid) == found.create_time:
        platform.kill_group(found.pid)


# --- the command ----------------------------------------------------------------------------


@command("detach")
async def detach(sup: "Supervisor") -> dict[str, Any]:
    """Stop pmon but leave every manager running (for an upgrade of pmon); the next
    `pmon run` on this project adopts them."""
    sup.leave_running = True
    sup.request_shutdown("pmon detach: the managers run on")
    return {"detached": True, "managers": sum(1 for m in sup.managers.values() if m.alive)}
