"""Containment: what holds a manager and every process it starts, and how pmon recognises
its managers after a restart of its own.

Two kinds, chosen once when pmon starts (`choose`); `pmon status` names the one in force:

- `CgroupContainment` (cgroup v2 writable, see cgroups.py): a cgroup per manager. A stop
  signals every process in it; a kill or the manager's death kills the whole cgroup; the
  manager is down only once its cgroup is empty. After a restart pmon reads the cgroups:
  the manager is the process its cgroup names (an extended attribute written at its spawn:
  pid and start time), if it is still in it; otherwise what is left there is killed, and
  never is a helper taken for the manager. The state file adds only the counters.
- `GroupContainment` (no cgroups: no permission, another OS, or PMON_NO_CGROUPS=1): the
  process group, and pmon as the child subreaper (Linux), so that an orphaned descendant
  (a setsid helper, a double-forked daemon) becomes pmon's child: pmon kills it with its
  manager and reaps it. Which manager an orphan came from is read from the marks pmon gave
  its manager (inherited); an orphan older than its manager's current process belongs to an
  earlier one, and is killed. After a restart pmon adopts only a process that matches what
  it spawned, as the state file recorded it: pid, start time, owner uid and executable.
  Marked processes that are not adopted are killed only if they belong to a manager that
  is not running and to pmon's user (a stranger's forged marks get it nothing).

Both give the same small interface to the supervisor and to adoption (adopt.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import Any, Callable, Container, Iterator, Mapping

from pmon.core.adoption import START_TIME_TOLERANCE, Found
from pmon.runtime import cgroups, platform

# PMON_NO_CGROUPS=1 forces the fallback (as PMON_NO_PIDFD forces the SIGCHLD watcher).
PR_SET_CHILD_SUBREAPER = 36


def choose(project: str, state_dir: Path, notify_address: str) -> "Containment":
    if platform.IS_WINDOWS:
        return GroupContainment(notify_address, "Windows: no cgroups")
    if os.environ.get("PMON_NO_CGROUPS"):
        return GroupContainment(notify_address, "PMON_NO_CGROUPS is set")
    tree, why = cgroups.find_tree(project, state_dir)
    if tree is None:
        return GroupContainment(notify_address, why)
    return CgroupContainment(tree, notify_address)


class Containment:
    kind = ""

    def __init__(self, notify_address: str) -> None:
        self.notify_address = notify_address
        self._mark = f"\0NOTIFY_SOCKET={notify_address}\0".encode()
        # The pids of the managers' own processes (the supervisor's table): never orphans.
        self.managers: Callable[[], Container[int]] = frozenset

    def describe(self) -> dict[str, str]:
        raise NotImplementedError

    def spawning(
        self, name: str, limits: Mapping[str, str] | None = None
    ) -> contextlib.AbstractContextManager[None]:
        """Wraps the spawn of manager `name`: the child is born contained. `limits`:
        cgroup files (memory.max, cpu.max, pids.max) and their values. OSError when they
        cannot be applied."""
        if limits:
            raise OSError(
                f"{', '.join(_key(f) for f in limits)} need(s) cgroups, and this pmon runs "
                f"without: {self.describe()['detail']}"
            )
        return contextlib.nullcontext()

    def oom_killed(self, name: str) -> bool:
        """The OOM killer killed a process of it since its spawn (memory_max)."""
        return False

    def beside(self, name: str) -> contextlib.AbstractContextManager[None]:
        """Wraps the spawn of a helper of manager `name` (its stop_command): born in the
        manager's containment, its limits untouched."""
        return contextlib.nullcontext()

    def spawned(self, name: str, pid: int) -> None:
        """Manager `name`'s process is `pid` (just spawned)."""

    def terminate(self, name: str, pid: int, sig: int = signal.SIGTERM) -> None:
        raise NotImplementedError

    def kill(self, name: str, pid: int) -> None:
        raise NotImplementedError

    def settle(self) -> None:
        """A burst of spawns is done (the supervisor calls it after each batch of effects)."""

    def empty(self, name: str) -> bool:
        """Nothing of manager `name` runs any more (after its main process ended)."""
        return True

    def forget(self, name: str) -> None:
        """The manager left the project."""

    def identity(self, pid: int) -> dict[str, Any]:
        """What the state file keeps about a spawned manager's process, for adoption: its
        owner and executable. In both kinds, so that a pmon of the other kind (a downgrade
        from cgroups to process groups, e.g. PMON_NO_CGROUPS=1) adopts it too."""
        import psutil

        try:
            proc = psutil.Process(pid)
            return {"uid": proc.uids().real, "exe": proc.exe()}
        except (psutil.Error, OSError):
            return {}

    def find(
        self, names: set[str], records: Mapping[str, Any]
    ) -> tuple[list[Found], list[str]]:
        """The running managers of this project (Found), and notes for the event log."""
        raise NotImplementedError

    def stop_stray(self, found: Found) -> None:
        """A process of this project that is not adopted: stop it (killed later by
        `kill_stray` if it is still the same process)."""
        self.terminate(found.name, found.pid)

    def kill_stray(self, found: Found) -> None:
        self.kill(found.name, found.pid)

    def sweep(self, live: Mapping[str, tuple[int, float | None]]) -> None:
        """Something died: kill and reap what outlived its manager (fallback only)."""

    def release(self) -> None:
        """pmon stops and every manager is down: remove what containment made."""


class CgroupContainment(Containment):
    kind = "cgroup"

    def __init__(self, tree: cgroups.Tree, notify_address: str) -> None:
        super().__init__(notify_address)
        self.tree = tree
        self._inside: Path | None = None  # the manager cgroup pmon sits in for a spawn
        self._pids_max: dict[Path, str] = {}  # written once pmon has left that cgroup
        self._oom_base: dict[str, int] = {}  # memory.events oom_kill at the spawn

    def describe(self) -> dict[str, str]:
        return {"kind": "cgroup", "detail": f"cgroup v2 {self.tree.base} ({self.tree.how})"}

    @contextlib.contextmanager
    def spawning(self, name: str, limits: Mapping[str, str] | None = None) -> Iterator[None]:
        # No CLONE_INTO_CGROUP from Python's subprocess, and a preexec_fn doubles the cost
        # of a spawn (fork instead of vfork): pmon steps into the manager's cgroup for the
        # spawn, so the child is born in it (no window in which it could fork outside it).
        # pmon goes home in settle(), once the burst of spawns is done (the supervisor calls
        # it right after its effects, before any hook): one move per spawn instead of two
        # (a move costs ~0.1-0.6 ms here). Every kill or signal to the cgroup pmon sits in
        # sends it home first.
        if limits and self.tree.no_limits:
            raise OSError(f"{', '.join(_key(f) for f in limits)} cannot be used: {self.tree.no_limits}")
        cgroup = self.tree.of(name)
        try:
            cgroup.mkdir()
        except FileExistsError:
            if cgroups.populated(cgroup):  # leftovers of an earlier process: never two
                self._leave(cgroup)
                cgroups.kill_and_wait(cgroup)
        self._apply(cgroup, dict(limits or {}))
        self._oom_base[name] = cgroups.oom_kills(cgroup)
        if self._inside != cgroup:
            left, self._inside = self._inside, cgroup
            cgroups.write_pid(cgroup, os.getpid())  # straight from the last one: one move
            self._left(left)
        yield
        if limits:  # at once: pmon must not count against (or be OOM-killed by) its limits
            self._leave(cgroup)

    @contextlib.contextmanager
    def beside(self, name: str) -> Iterator[None]:
        cgroup = self.tree.of(name)
        self.settle()
        try:
            cgroups.write_pid(cgroup, os.getpid())
            self._inside = cgroup
        except OSError:
            pass  # its cgroup is gone: the helper runs beside pmon
        try:
            yield
        finally:
            self._leave(cgroup)

    def _apply(self, cgroup: Path, limits: dict[str, str]) -> None:
        """Write the limits (and reset the ones no longer set). pids.max waits until pmon
        has left the cgroup: pmon's own threads count while it sits there for the spawn."""
        wanted = {f: limits.get(f, _UNSET[f]) for f in _UNSET}
        if any(f in limits for f in _UNSET) or any(
            (cgroup / f).exists() for f in _UNSET
        ):
            if limits:
                cgroups.enable(self.tree, {f.split(".")[0] for f in limits})
            for file, value in wanted.items():
                if (cgroup / file).exists():
                    (cgroup / file).write_text("max" if file == "pids.max" else value)
        self._pids_max[cgroup] = wanted["pids.max"]

    def oom_killed(self, name: str) -> bool:
        return cgroups.oom_kills(self.tree.of(name)) > self._oom_base.get(name, 0)

    def spawned(self, name: str, pid: int) -> None:
        cgroups.set_main_process(self.tree.of(name), pid)

    def settle(self) -> None:
        if self._inside is not None:
            self._leave(self._inside)

    def _leave(self, cgroup: Path | None) -> None:
        """pmon goes home if it sits in `cgroup` (before anything kills or signals it)."""
        if cgroup is None or self._inside != cgroup:
            return
        self._inside = None
        cgroups.write_pid(self.tree.home, os.getpid())
        self._left(cgroup)

    def _left(self, cgroup: Path | None) -> None:
        value = self._pids_max.pop(cgroup, None) if cgroup is not None else None
        if cgroup is not None and value is not None and (cgroup / "pids.max").exists():
            (cgroup / "pids.max").write_text(value)

    def terminate(self, name: str, pid: int, sig: int = signal.SIGTERM) -> None:
        self._leave(self.tree.of(name))
        cgroups.signal_all(self.tree.of(name), sig)  # every process, as systemd does

    def kill(self, name: str, pid: int) -> None:
        self._leave(self.tree.of(name))
        cgroups.kill(self.tree.of(name))

    def empty(self, name: str) -> bool:
        return not cgroups.populated(self.tree.of(name))

    def forget(self, name: str) -> None:
        self._leave(self.tree.of(name))
        cgroups.remove(self.tree.of(name))

    def find(
        self, names: set[str], records: Mapping[str, Any]
    ) -> tuple[list[Found], list[str]]:
        import psutil

        found: list[Found] = []
        notes: list[str] = []
        try:
            entries = sorted(p for p in self.tree.base.iterdir() if p.name.startswith(cgroups.PREFIX))
        except OSError:
            return [], []
        for cgroup in entries:
            name = cgroup.name[len(cgroups.PREFIX):]
            pids = cgroups.procs(cgroup)
            if not pids:
                cgroups.remove(cgroup)
                continue
            main = cgroups.main_process(cgroup)  # written at its spawn: always current
            if main is not None and main[0] in pids and cgroups.start_ticks(main[0]) == main[1]:
                try:
                    found.append(Found(name, main[0], psutil.Process(main[0]).create_time()))
                    continue
                except psutil.Error:
                    pass
            # Its process is gone; what is left in its cgroup (helpers) goes with it, and
            # none of them is ever taken for the manager.
            notes.append(
                f"{name}: its process ({f'pid {main[0]}' if main else 'not recorded'}) is "
                f"gone; killing what is left in its cgroup (pid {', '.join(map(str, pids))})"
            )
            cgroups.kill_and_wait(cgroup)
        return found + self._from_before_cgroups(names - {f.name for f in found}, records, notes), notes

    def _from_before_cgroups(
        self, names: set[str], records: Mapping[str, Any], notes: list[str]
    ) -> list[Found]:
        """Managers that a pmon without cgroups started (an upgrade through `pmon detach`,
        or a pmon that ran without root): adopted by the rule they were started under (pid
        and start time from the state file, and its marks), then moved into their cgroups
        with every process that carries their marks, so that they are contained from now."""
        import psutil

        found: list[Found] = []
        marked: list[tuple[int, str]] | None = None  # one scan of /proc, and only if needed
        for name in sorted(names):
            record = records.get(name)
            pid = record.get("pid") if isinstance(record, dict) else None
            ctime = record.get("create_time") if isinstance(record, dict) else None
            if not isinstance(pid, int) or not isinstance(ctime, (int, float)):
                continue
            try:
                actual = psutil.Process(pid).create_time()
            except psutil.Error:
                continue
            if abs(actual - ctime) > START_TIME_TOLERANCE or _owner(pid, self._mark) != name:
                continue
            cgroup = self.tree.of(name)
            cgroup.mkdir(exist_ok=True)
            if marked is None:
                marked = list(_marked(self._mark, set()))
            uid = _uid(pid)  # its helpers: marked as its, and of its owner (not a stranger's)
            moved = [pid, *(p for p, owner in marked if owner == name and p != pid and _uid(p) == uid)]
            for each in moved:
                try:
                    cgroups.write_pid(cgroup, each)
                except OSError:
                    pass  # gone meanwhile
            cgroups.set_main_process(cgroup, pid)
            notes.append(
                f"{name} (pid {pid}) was started without cgroups: moved into {cgroup} with "
                f"{len(moved) - 1} process(es) of its own"
            )
            found.append(Found(name, pid, actual))
        return found

    def release(self) -> None:
        self.settle()
        for cgroup in self.tree.base.glob(f"{cgroups.PREFIX}*"):
            cgroups.kill_and_wait(cgroup)
            cgroups.remove(cgroup)
        if self.tree.how == "root":
            cgroups.remove(self.tree.base)

    def stop_stray(self, found: Found) -> None:
        self._leave(self.tree.of(found.name))
        cgroups.signal_all(self.tree.of(found.name), signal.SIGTERM)

    def kill_stray(self, found: Found) -> None:
        self._leave(self.tree.of(found.name))
        cgroups.kill_and_wait(self.tree.of(found.name))
        cgroups.remove(self.tree.of(found.name))


# The cgroup files of the limits, and what they are without one.
_UNSET = {"memory.max": "max", "cpu.max": "max 100000", "pids.max": "max"}


def _key(file: str) -> str:
    return file.replace(".", "_")


class GroupContainment(Containment):
    kind = "process-group"

    def __init__(self, notify_address: str, why: str) -> None:
        super().__init__(notify_address)
        self.why = why
        self.subreaper = _become_subreaper()
        self._reap: set[int] = set()  # orphans seen: reaped (waitpid) once they have ended
        self._outside: dict[str, list[tuple[int, float]]] = {}  # found at adoption
        self._dying: dict[str, set[int]] = {}  # killed with their manager, not yet gone

    def describe(self) -> dict[str, str]:
        how = "process group + subreaper" if self.subreaper else "process group"
        return {"kind": "process-group", "detail": f"{how} (no cgroups: {self.why})"}

    def terminate(self, name: str, pid: int, sig: int = signal.SIGTERM) -> None:
        if sig == signal.SIGTERM or platform.IS_WINDOWS:
            platform.terminate_group(pid)  # CTRL_BREAK on Windows (no other stop signal)
            return
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self, name: str, pid: int) -> None:
        platform.kill_group(pid)
        dying = self._dying.setdefault(name, set())
        for opid, ctime in self._outside.pop(name, []):  # its helpers, seen at adoption
            if _start_time(opid) == ctime:
                self._kill_tree(opid)
                dying.add(opid)
        managers = self.managers()
        for opid in _children():  # its orphans, reparented to pmon (the subreaper)
            if opid not in managers and _owner(opid, self._mark) == name:
                self._kill_tree(opid)
                dying.add(opid)

    def empty(self, name: str) -> bool:
        """The orphans and helpers killed with it are gone (a zombie is gone)."""
        dying = self._dying.get(name)
        if not dying:
            return True
        for pid in list(dying):
            if _ended(pid):
                dying.discard(pid)
        return not dying

    def find(
        self, names: set[str], records: Mapping[str, Any]
    ) -> tuple[list[Found], list[str]]:
        """Only what the state file says pmon spawned, checked four ways; then the marks, to
        find the helpers of dead managers (killed) and of adopted ones (kept, and killed with
        their manager)."""
        import psutil

        found: list[Found] = []
        notes: list[str] = []
        for name, record in records.items():
            if not isinstance(record, dict) or not isinstance(record.get("pid"), int):
                continue
            pid, why = record["pid"], None
            try:
                proc = psutil.Process(pid)
                ctime = proc.create_time()
                saved_ctime = record.get("create_time")
                if not isinstance(saved_ctime, (int, float)) or abs(ctime - saved_ctime) > START_TIME_TOLERANCE:
                    why = "another process now (start time)"
                elif "uid" in record and proc.uids().real != record["uid"]:
                    why = f"owned by uid {proc.uids().real}, not {record['uid']}"
                elif "exe" in record and proc.exe() != record["exe"]:
                    why = f"runs {proc.exe()}, not {record['exe']}"
                elif "uid" not in record or "exe" not in record:
                    why = "the state file does not say who it was (written by an older pmon)"
            except (psutil.Error, OSError):
                continue  # gone: decide() says so
            if why:
                notes.append(f"{name}: pid {pid} is not adopted: {why}")
                continue
            found.append(Found(name, pid, ctime))
        adopted = {f.name for f in found}
        me = os.getuid() if hasattr(os, "getuid") else None
        mine = {f.pid for f in found}
        for pid, name in _marked(self._mark, mine):
            try:
                proc = psutil.Process(pid)
                ctime, uid = proc.create_time(), proc.uids().real
            except (psutil.Error, OSError):
                continue
            if name in adopted:
                self._outside.setdefault(name, []).append((pid, ctime))
            elif uid == me:
                notes.append(f"{name}: pid {pid} outlived its manager: killing it")
                self._kill_tree(pid)
        return found, notes

    def sweep(self, live: Mapping[str, tuple[int, float | None]]) -> None:
        for pid in list(self._reap):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                self._reap.discard(pid)
        managers = {pid for pid, _ in live.values()}
        for pid in _children():
            if pid in managers:
                continue
            name = _owner(pid, self._mark)
            if name is None:
                continue
            current = live.get(name)
            ctime = _start_time(pid)
            if current is None or (current[1] is not None and ctime is not None and ctime < current[1]):
                self._kill_tree(pid)  # outlived its manager (an earlier process of it)
            else:
                self._reap.add(pid)  # its manager's: reaped whenever it ends

    def _kill_tree(self, pid: int) -> None:
        """SIGKILL an orphan and the process group it leads (a daemon's setsid group)."""
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._reap.add(pid)


def _owner(pid: int, mark: bytes) -> str | None:
    """The manager a process came from: PMON_MANAGER in the marks pmon gave its manager
    (inherited), if it carries this project's NOTIFY_SOCKET. Only ever a hint: a process
    can change its environment."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            raw = b"\0" + handle.read() + b"\0"
    except OSError:
        return None
    if mark not in raw:
        return None
    start = raw.find(b"\0PMON_MANAGER=")
    if start < 0:
        return None
    start += len(b"\0PMON_MANAGER=")
    return raw[start:raw.index(b"\0", start)].decode(errors="replace") or None


def _marked(mark: bytes, exclude: set[int]) -> Iterator[tuple[int, str]]:
    """Every process carrying this project's marks (a byte search in /proc/*/environ)."""
    if not os.path.isdir("/proc"):
        return
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in exclude or int(entry) == me:
            continue
        name = _owner(int(entry), mark)
        if name is not None:
            yield int(entry), name


def _uid(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def _become_subreaper() -> bool:
    """PR_SET_CHILD_SUBREAPER: orphaned descendants are reparented to pmon (Linux)."""
    if not os.path.exists("/proc/self/task"):
        return False
    try:
        import ctypes

        prctl: Any = ctypes.CDLL(None, use_errno=True).prctl
        return bool(prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def _children() -> list[int]:
    """pmon's own children (Linux: /proc/self/task/*/children), zombies included."""
    out: list[int] = []
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return out
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/children") as handle:
                out.extend(int(p) for p in handle.read().split())
        except OSError:
            continue
    return out


def _ended(pid: int) -> bool:
    """Dead or a zombie (reaped here when it is pmon's child)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    except ChildProcessError:
        pass
    import psutil

    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return True


def _start_time(pid: int) -> float | None:
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None
