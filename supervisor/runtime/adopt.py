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
    return data, None


# --- acting -------------------------------------------------------------------------------
def take_over(sup: "Supervisor") -> Decision:
    """Adopt the running managers before the start sequence. Returns what was decided;
    `decision.skip` names the managers the start sequence leaves down."""
    began = time.perf_counter()
    saved, problem = read_saved(sup.config, sup.state_file)
    records = saved["managers"] if saved else {}
    names = {spec.name for spec in sup.config.managers}
    found, found_notes = sup.containment.find(names, records)
    decision = decide(sup.config, saved, found)
    decision.notes[:0] = ([problem] if problem else []) + found_notes
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
        sup.watch_adopted(name, proc.pid, proc.create_time)
        sup.events.write(
            "adopt", f"{name} (pid {proc.pid}) adopted: still running from before",
            manager=name, pid=proc.pid,
        )
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
