"""cgroup v2, the file interface: where pmon may make cgroups, and what it does with one.

Each manager runs in a cgroup of its own, `<base>/manager-<name>`. Membership is kept by
the kernel: every descendant of the manager is in it however it daemonised, no process can
leave it without write access to the tree, and it survives a restart of pmon, so it is
the manager's identity (runtime/containment.py).

Where `<base>` is (the same on every start of the same project, so that a restarted pmon
finds its managers):

- under systemd with `Delegate=yes` (pmon runs in its unit's cgroup, which systemd marked
  delegated with the xattr trusted.delegate): the unit's cgroup; pmon itself moves into its
  leaf `pmon-supervisor` (cgroup v2 lets controllers be enabled only for a cgroup without
  processes of its own), the managers under `managers/`;
- pmon as root with a writable cgroup2 mount (as here: the v2 hierarchy of a hybrid
  system): `<mount>/pmon/<project>-<hash of the canonical state directory>`;
- otherwise none: containment falls back to process groups and the subreaper.

Nothing here decides: the supervisor's containment calls these functions.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

SUPERVISOR_LEAF = "pmon-supervisor"
PREFIX = "manager-"


@dataclass(frozen=True)
class Tree:
    """Where this project's manager cgroups live, and where pmon itself sits."""

    base: Path  # holds one cgroup per manager
    home: Path  # pmon's own cgroup (it returns there after each spawn)
    how: str  # for `pmon status`: "delegated by systemd" | "root"
    top: Path  # the highest cgroup pmon may configure (controllers): the unit, or the mount
    no_limits: str = ""  # why memory_max & co. may not be used here ("": they may)

    def of(self, name: str) -> Path:
        return self.base / f"{PREFIX}{name}"


def mount_point() -> Path | None:
    """The cgroup2 mount (the unified hierarchy), from /proc/self/mountinfo."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        left, _, right = line.partition(" - ")
        if right.split(" ", 1)[0] == "cgroup2":
            return Path(left.split(" ")[4])
    return None


def own_cgroup() -> str | None:
    """This process's cgroup v2 path ("0::/..."), relative to the mount."""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                return line[3:]
    except OSError:
        pass
    return None


def project_key(name: str, state_dir: Path) -> str:
    """A cgroup name per project: its name, and a hash of its canonical state directory
    (two projects of one name in two folders are two projects)."""
    digest = hashlib.sha256(str(state_dir).encode()).hexdigest()[:12]
    return f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}-{digest}"


def find_tree(project: str, state_dir: Path) -> tuple[Tree | None, str]:
    """The project's cgroup tree (made if missing), or None and why not."""
    mount = mount_point()
    own = own_cgroup()
    if mount is None or own is None:
        return None, "no cgroup2 hierarchy mounted"
    here = mount / own.lstrip("/")
    unit = here.parent if here.name == SUPERVISOR_LEAF else here
    if own != "/" and _delegated(unit):
        try:
            home = unit / SUPERVISOR_LEAF
            home.mkdir(exist_ok=True)
            write_pid(home, os.getpid())
            base = unit / "managers"
            base.mkdir(exist_ok=True)
        except OSError as exc:
            return None, f"the delegated cgroup {unit} is not usable ({exc})"
        # Controllers enabled below the unit forbid processes in the unit's own cgroup, and
        # systemd starts the next pmon (a restart, Restart= after a crash) right there:
        # only a unit with DelegateSubgroup= (pmon started in its leaf) may have limits.
        why = "" if here.name == SUPERVISOR_LEAF else (
            f"the unit's cgroup {unit} is delegated without DelegateSubgroup=: controllers "
            "enabled under it would make systemd fail to start pmon there again on a restart "
            f"(status 219/CGROUP); add DelegateSubgroup={SUPERVISOR_LEAF} to the unit "
            "(systemd 254 or later), or remove the limits")
        return Tree(base, home, "delegated by systemd", unit, why), ""
    if not os.access(mount / "cgroup.procs", os.W_OK):
        return None, f"no permission to make cgroups under {mount} (not root, no delegation)"
    base = mount / "pmon" / project_key(project, state_dir)
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return None, f"cannot make {base} ({exc})"
    return Tree(base, here, "root", mount), ""


def _delegated(cgroup: Path) -> bool:
    """systemd marks a cgroup it delegated (Delegate=yes) with this extended attribute; a
    unit's cgroup without it is systemd's own, and pmon makes nothing inside it."""
    for name in ("trusted.delegate", "user.delegate"):
        try:
            if os.getxattr(cgroup, name) == b"1":
                return os.access(cgroup / "cgroup.procs", os.W_OK)
        except OSError:
            continue
    return False


def enable(tree: Tree, controllers: set[str]) -> None:
    """Enable controllers for the managers' cgroups (+memory, ... in every subtree_control
    from the mount down to the base). OSError saying what is missing when the v2 hierarchy
    lacks one (on a hybrid system, a controller bound to v1 is not in v2)."""
    mount = tree.top
    offered = set((mount / "cgroup.controllers").read_text().split())
    missing = controllers - offered
    if missing:
        raise OSError(
            f"needs the cgroup v2 controller(s) {', '.join(sorted(missing))}, which {mount} "
            f"does not offer (it has: {', '.join(sorted(offered)) or 'none'}); on a hybrid "
            "system they are bound to cgroup v1"
        )
    chain = [tree.base, *[p for p in tree.base.parents if p == mount or mount in p.parents]]
    for cgroup in reversed(chain):
        have = set((cgroup / "cgroup.subtree_control").read_text().split())
        for controller in sorted(controllers - have):
            (cgroup / "cgroup.subtree_control").write_text(f"+{controller}")


def oom_kills(cgroup: Path) -> int:
    """How many processes the OOM killer killed in `cgroup` (memory.events oom_kill)."""
    try:
        for line in (cgroup / "memory.events").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


MAIN_XATTR = "user.pmon.main"  # "<pid> <start time in clock ticks>" of the manager itself


def set_main_process(cgroup: Path, pid: int) -> None:
    """Name the manager's own process on its cgroup (an extended attribute: kept by the
    kernel, written at once, unlike the coalesced state file), so that a restarted pmon
    tells the manager from its helpers even without a state file."""
    ticks = start_ticks(pid)
    if ticks is not None:
        try:
            os.setxattr(cgroup, MAIN_XATTR, f"{pid} {ticks}".encode())
        except OSError:
            pass  # an older kernel: adoption then kills what it cannot tell apart


def main_process(cgroup: Path) -> tuple[int, int] | None:
    try:
        pid, ticks = os.getxattr(cgroup, MAIN_XATTR).split()
        return int(pid), int(ticks)
    except (OSError, ValueError):
        return None


def start_ticks(pid: int) -> int | None:
    """The process's start time since boot, in clock ticks (/proc/PID/stat field 22)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
        return int(stat[stat.rindex(b")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def write_pid(cgroup: Path, pid: int) -> None:
    """Move a process (all its threads) into `cgroup`."""
    fd = os.open(cgroup / "cgroup.procs", os.O_WRONLY)
    try:
        os.write(fd, str(pid).encode())
    finally:
        os.close(fd)


def procs(cgroup: Path) -> list[int]:
    """The live processes in `cgroup` (zombies are not listed); [] if it does not exist."""
    try:
        return [int(line) for line in (cgroup / "cgroup.procs").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []


def populated(cgroup: Path) -> bool:
    try:
        text = (cgroup / "cgroup.events").read_text()
    except FileNotFoundError:
        return False
    return "populated 1" in text


def signal_all(cgroup: Path, sig: int) -> None:
    for pid in procs(cgroup):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def kill(cgroup: Path) -> None:
    """SIGKILL every process in `cgroup`: cgroup.kill (Linux 5.14+) does it atomically, also
    to processes forking meanwhile; without it, kill every listed pid until none is left."""
    try:
        (cgroup / "cgroup.kill").write_text("1")
        return
    except FileNotFoundError:
        if not cgroup.exists():
            return
    except OSError:
        pass
    for _ in range(100):  # a fork bomb outruns one pass; each pass kills what it lists
        pids = procs(cgroup)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def remove(cgroup: Path) -> bool:
    """rmdir an empty cgroup; False while it still has processes. Just emptied, the kernel
    may still answer EBUSY for a moment: tried for up to 0.2 s."""
    for _ in range(100):
        try:
            cgroup.rmdir()
        except FileNotFoundError:
            return True
        except OSError:
            if populated(cgroup) or any(p.is_dir() for p in cgroup.iterdir()):
                return False
            time.sleep(0.002)
            continue
        return True
    return False


def _same_and_alive(pid: int, ticks: int | None) -> bool:
    """`pid` is still the process that had these start ticks, and not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return False
    fields = stat[stat.rindex(b")") + 2:].split()
    return fields[0] != b"Z" and int(fields[19]) == ticks


def kill_and_wait(cgroup: Path, timeout: float = 5.0) -> bool:
    """Kill the cgroup and wait (bounded) until it is empty. True: empty."""
    kill(cgroup)
    deadline = time.monotonic() + timeout
    while populated(cgroup):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def kill_manager(project: str, state_dir: Path, name: str, timeout: float = 5.0) -> bool:
    """Kill every process of manager `name` of a project, whatever pmon runs it, and wait
    until its cgroup is empty (fencing, for redundancy). True: nothing of it runs any more;
    False: the project runs without cgroups here, or processes were left after `timeout`.
    The pmon that supervises it sees its death as usual (and restarts it by its rules)."""
    mount = mount_point()
    own = own_cgroup()
    if mount is None or own is None:
        return False
    here = mount / own.lstrip("/")
    if here.name.startswith(PREFIX):  # pmon sits in a manager's cgroup for a spawn
        here = here.parent.parent / SUPERVISOR_LEAF if here.parent.name == "managers" else mount
    unit = here.parent if here.name == SUPERVISOR_LEAF else here
    candidates = [mount / "pmon" / project_key(project, state_dir.resolve()), unit / "managers"]
    for base in candidates:
        cgroup = base / f"{PREFIX}{name}"
        if cgroup.exists():
            if own_cgroup() == "/" + str(cgroup.relative_to(mount)):  # never kill itself
                write_pid(here, os.getpid())
            # Wait for these processes to end, not for an empty cgroup: the pmon that runs
            # the manager may start it again at once, in the same cgroup.
            killed = {pid: start_ticks(pid) for pid in procs(cgroup)}
            kill(cgroup)
            deadline = time.monotonic() + timeout
            while any(_same_and_alive(pid, ticks) for pid, ticks in killed.items()):
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.002)
            return True
    # The project has its cgroups but none for this manager: nothing of it runs. No
    # cgroups for the project at all: pmon runs it without, nothing can be said here.
    return any(base.exists() for base in candidates)
