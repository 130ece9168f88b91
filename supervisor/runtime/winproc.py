"""Windows only: what a process group and SIGTERM are on POSIX, for a manager.

- Containment: each manager is put in a Job object of its own right after its spawn;
  killing the manager terminates the job, so every process it started (and they started)
  goes with it. The job is not KILL_ON_JOB_CLOSE: the managers must outlive pmon (hot
  restart). A job's name lives as long as a handle is open, so a pmon that adopted a
  manager holds no job for it: there the kill walks the process tree (psutil), as before.
  Between CreateProcess and AssignProcessToJobObject a manager could start a child that
  escapes the job; the tree walk of the kill covers it while its parent link stands.
- The polite stop: CTRL_BREAK reaches only processes that share pmon's console, and a
  service has none. So every manager gets the name of an event in PMON_STOP_EVENT; pmon
  sets that event for the polite stop (and sends CTRL_BREAK too when it has a console). A
  manager that wants a clean stop waits on the event (CreateEventW(NULL, TRUE, FALSE,
  name), WaitForSingleObject); one that does not is killed after its seconds_to_kill.

The Win32 calls go through ctypes' kernel32 (no pywin32 in the daemon). Every function
takes the kernel32 object as an argument, so the logic is tested on Linux with a fake one;
nothing here has run on Windows.
"""

from __future__ import annotations

import os
import secrets
from typing import Any, Mapping

STOP_EVENT_ENV = "PMON_STOP_EVENT"
JOB_ENV = "PMON_JOB"

PROCESS_TERMINATE = 0x0001
PROCESS_SET_QUOTA = 0x0100
JOB_OBJECT_TERMINATE = 0x0008
EVENT_MODIFY_STATE = 0x0002
KILLED_EXIT_CODE = 1

_jobs: dict[int, Any] = {}  # manager pid -> job handle (held: the job's name lives with it)
_stop_events: dict[int, str] = {}  # manager pid -> its stop event's name


def kernel32() -> Any:  # pragma: no cover (Windows only)
    import ctypes

    return ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]


def names(env: Mapping[str, str]) -> dict[str, str]:
    """The stop event and job of a manager about to start: unique per spawn (a token), in
    the session's namespace (Local\\), named after the project and the manager."""
    base = f"pmon-{env.get('PMON_PROJECT', '')}-{env.get('PMON_MANAGER', '')}-{secrets.token_hex(4)}"
    return {STOP_EVENT_ENV: f"Local\\{base}-stop", JOB_ENV: f"Local\\{base}-job"}


def contain(pid: int, env: Mapping[str, str], k32: Any) -> bool:
    """Put a just-spawned manager in a job of its own; False when Windows refused."""
    _stop_events[pid] = env.get(STOP_EVENT_ENV, "")
    job = k32.CreateJobObjectW(None, env.get(JOB_ENV))
    if not job:
        return False
    process = k32.OpenProcess(PROCESS_SET_QUOTA | PROCESS_TERMINATE, False, pid)
    try:
        if not process or not k32.AssignProcessToJobObject(job, process):
            k32.CloseHandle(job)
            return False
    finally:
        if process:
            k32.CloseHandle(process)
    _jobs[pid] = job
    return True


def stop_politely(pid: int, k32: Any, has_console: bool | None = None) -> bool:
    """Set the manager's stop event (and CTRL_BREAK its group when pmon has a console).
    True when the event was there to set, i.e. the manager listens."""
    name = _stop_events.get(pid) or _event_name_from_environment(pid)
    done = False
    if name:
        event = k32.OpenEventW(EVENT_MODIFY_STATE, False, name)
        if event:
            done = bool(k32.SetEvent(event))
            k32.CloseHandle(event)
    if has_console is None:
        has_console = bool(k32.GetConsoleWindow())
    if has_console:
        import signal

        try:
            os.kill(pid, signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
        except OSError:
            pass  # not in our console, or gone: the event (or the kill) does it
    return done


def kill_tree(pid: int, k32: Any) -> None:
    """Kill the manager and everything it started: its job, then what is left of its tree
    (an adopted manager has no job of ours; a child may have escaped before the job)."""
    job = _jobs.pop(pid, None)
    _stop_events.pop(pid, None)
    if job is not None:
        k32.TerminateJobObject(job, KILLED_EXIT_CODE)
        k32.CloseHandle(job)
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.Error:
        return
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass


def _event_name_from_environment(pid: int) -> str:
    """An adopted manager: its stop event's name is in its environment."""
    import psutil

    try:
        return str(psutil.Process(pid).environ().get(STOP_EVENT_ENV, ""))
    except psutil.Error:
        return ""
