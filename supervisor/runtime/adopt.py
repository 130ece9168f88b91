"""Hot restart: a pmon started again on a project takes over the managers still running.

Two sources, both read before the start sequence:

- the state file (statefile.py), as the previous pmon last wrote it (at most 50 ms old):
  per manager its pid and that process's start time, its state, restart counters and exit
  code;
- the running managers as the containment in force finds them (containment.py): with
  cgroups, the process of each manager's cgroup that the state file names (the cgroup is
  the identity; nothing outside it is ever taken for a manager); without, only a process
  that matches what pmon spawned (pid, start time, owner uid, executable in the state file).
  Neither depends on a process's environment, title or session, which it can change.

What to do is decided in core/adoption.py (pure); `take_over` reads, decides, and carries the
decision out through the project machine (which alone sets a manager's state).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from pmon.core.adoption import Decision, Found, decide
from pmon.runtime import statefile

if TYPE_CHECKING:
    from pmon.config import Config
    from pmon.core.project import Job
    from pmon.runtime.supervisor import Supervisor

STRAY_KILL_SECONDS = 10.0


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
    wrong = statefile.wrong_fields(data, statefile.TOP_TYPES)
    if wrong:
        return None, (
            f"state file ignored: {path} has fields of the wrong type ({', '.join(wrong)}); "
            "counters start from zero"
        )
    return data, None


def usable_records(saved: dict[str, Any]) -> list[str]:
    """Drop the manager records with fields of the wrong type (each treated as unknown:
    no state file entry); returns one warning per record dropped."""
    notes = []
    managers = saved["managers"]
    for name in list(managers):
        wrong = statefile.wrong_fields(managers[name], statefile.RECORD_TYPES)
        if wrong:
            del managers[name]
            notes.append(
                f"state file entry of {name!r} ignored: wrong type ({', '.join(wrong)}); "
                "it is treated as unknown"
            )
    return notes


# --- acting -------------------------------------------------------------------------------
def take_over(sup: "Supervisor") -> Decision:
    """Adopt the running managers before the start sequence. Returns what was decided;
    `decision.skip` names the managers the start sequence leaves down."""
    began = time.perf_counter()
    saved, problem = read_saved(sup.config, sup.state_file)
    dropped = usable_records(saved) if saved is not None else []
    records = saved["managers"] if saved else {}
    names = {spec.name for spec in sup.config.managers}
    found, found_notes = sup.containment.find(names, records)
    decision = decide(sup.config, saved, found, time.time())
    decision.notes[:0] = dropped + ([problem] if problem else []) + found_notes
    for note in decision.notes:
        sup.events.write("adoption", note)
    project, now = sup.project, sup.now()
    for name, record in decision.restore.items():
        project.restored(name, record, now)
    for name, state in decision.down.items():
        reason = str((decision.restore.get(name) or {}).get("reason") or "") or (
            f"{state.value} when pmon went away"
        )
        project.left_down(name, state, reason)
    for name in decision.died_away:
        project.died_away(name)
        sup.events.write(
            "died-away",
            f"{name} died while pmon was away: starting it again "
            f"({sup.managers[name].spec.start.value})",
            manager=name,
        )
    for name, proc in decision.adopt.items():
        ready = name not in decision.not_ready
        sup.watch_adopted(name, proc.pid, proc.create_time, ready=ready)
        sup.events.write(
            "adopt", f"{name} (pid {proc.pid}) adopted: still running from before"
            + ("" if ready else "; not ready yet: it is starting again from here"),
            manager=name, pid=proc.pid, ready=ready,
        )
    for name, (kill_in, then_start) in decision.stopping.items():
        _resume_stop(sup, name, kill_in, then_start)
    for proc in decision.strays:
        _stop_stray(sup, proc)
    if not decision.start_project:
        sup.events.write(
            "adoption",
            f"the project was {decision.project_state} when pmon went away: it stays so; "
            + ("start it again with `pmon restart --all`" if decision.project_state == "blocked"
               else "start it with `pmon start --all`"),
        )
    elapsed = time.perf_counter() - began
    sup.events.write(
        "adopted",
        f"took over {len(decision.adopt)} running managers in {elapsed * 1000:.0f} ms",
        count=len(decision.adopt), seconds=round(elapsed, 4),
        pids={name: proc.pid for name, proc in decision.adopt.items()},
    )
    return decision


def resumable(decision: Decision) -> "Job | None":
    """The project job the previous pmon had under way, to be resumed (None: none, or a
    record this pmon cannot read, and then the project starts as after any restart)."""
    from pmon.core.project import Job

    if decision.resume is None:
        return None
    return Job.from_dict(decision.resume, 0)


def _resume_stop(sup: "Supervisor", name: str, kill_in: float, then_start: bool) -> None:
    """It was stopping when the previous pmon went away: the stop goes on, with the kill at
    the deadline that pmon set."""
    manager = sup.managers[name]
    if manager.pid is None:
        return  # dead meanwhile: the watcher reported it
    sup.events.write(
        "stop-resumed",
        f"{name} (pid {manager.pid}) was stopping when pmon went away: the stop goes on, "
        f"killed in {kill_in:g} s if still alive" + ("; then started again" if then_start else ""),
        manager=name, pid=manager.pid, kill_in=round(kill_in, 3), then_start=then_start,
    )
    sup.project.resume_stop(name, sup.now(), kill_in, then_start)  # performed with the job


def _stop_stray(sup: "Supervisor", found: Found) -> None:
    sup.events.write(
        "stray", f"stopping pid {found.pid} ({found.name}): not adoptable", manager=found.name,
        pid=found.pid,
    )
    sup.containment.stop_stray(found)
    sup.loop.call_later(STRAY_KILL_SECONDS, _kill_if_same, sup, found)


def _kill_if_same(sup: "Supervisor", found: Found) -> None:
    if statefile.process_start_time(found.pid) == found.create_time:
        sup.containment.kill_stray(found)
