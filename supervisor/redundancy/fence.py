"""Fencing: the redundancy manager stops this server's `run_on = "active"` managers itself,
when its pmon does not answer (docs/redundancy.md "Fencing").

pmon starts every manager as the leader of its own session and process group, and tells the
redundancy manager at every sync the pids of the `run_on = "active"` ones that run and,
with cgroup containment, their cgroups and its own pid and home cgroup. A fence sends
SIGTERM to each of those process groups and to every process in those cgroups (a manager's
setsid or daemonised helpers are in its cgroup, not in its group), SIGKILL (cgroup.kill)
after `grace`, and is done when no process of those groups is left alive (a zombie counts as
dead: its parent, pmon, may be stopped and unable to reap it; so does a process stuck in
the kernel with the SIGKILL pending, which runs no more code of its own) and those cgroups
are empty. Bounded: `bound` (settings' fence_limit) after its start it ends anyway, says on
stderr what it left alive, and keeps `overrun` (pmon's report shows it): its heartbeats stop
saying "fencing", and the partner takes over.
pmon itself may sit in a manager's cgroup (a stall in the middle of a spawn): it is moved
home first, and never signalled. pmon, while it answers, may restart a manager the fence
has just stopped before it hears of the fence (a few ms against a sync's round trip): the
fence takes in what each sync reply reports (`extend`) and signals, at every step, any
process that appeared in a fenced cgroup since. Never blocks: `step(now)` is called from
the heartbeat loop every 50 ms, and polls. POSIX only (Windows has no process groups to
signal here; the fence is then empty).

Cheap on that loop: reading every process of the machine (its process group, its
environment) costs tens of ms with a few thousand processes, so a fence does it at its
start, and twice (END_QUIET apart: a driver restarted at once by something outside pmon
is back in between) before it calls itself done (a process it first saw between a fork and
its exec carried its marks only after; then it reads what was born since that listing, of
a parent found dead meanwhile); at most every RESCAN while such a look keeps finding
something. In between a step lists the machine's pids (no file read) and reads only
the processes that are new since the last step (pids are allocated in a cycle: a new
process has a pid the last listing did not have), and checks the processes it knows of: a
fenced group with no known member alive is asked (killpg 0) whether any member is left at
all, and only the look before the end tells a group of zombies from one with a member it
did not know.
"""

from __future__ import annotations

import math
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

RESCAN = 0.5  # seconds: a look at the whole machine that found something waits this long
# seconds between the two looks at the whole machine that must both find nothing of the
# fence's alive before it is done (in practice the next step's): something outside pmon that
# restarts a driver at once (within ms of its death) brings it back in between, and the
# fence goes on (to its bound: overrun) instead of ending in that gap
END_QUIET = 0.05

def _doomed(pid: int) -> bool:
    """Stuck in the kernel (D state) with a SIGKILL pending: it dies the moment it leaves the
    kernel and runs no more code of its own, so a fence need not wait for it (a driver
    blocked on a dead device would otherwise hold the fence, and the role, for ever)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    if not fields.get("State", "").strip().startswith("D"):
        return False
    kill = 1 << (signal.SIGKILL - 1)
    try:
        return any(int(fields.get(key, "0"), 16) & kill for key in ("SigPnd", "ShdPnd"))
    except ValueError:
        return False


def _finished(status: str, pid: int, killed: bool) -> bool:
    """A zombie, or (once SIGKILLed) doomed: runs no more code of its own."""
    return status == psutil.STATUS_ZOMBIE or (
        killed and status == psutil.STATUS_DISK_SLEEP and _doomed(pid))


def _dead(pid: int, killed: bool) -> bool:
    try:
        return _finished(psutil.Process(pid).status(), pid, killed)
    except psutil.Error:
        return True  # gone


def _pids_now() -> set[int]:
    """The pids of the machine: a listing, nothing read of each."""
    try:
        return set(psutil.pids())
    except (psutil.Error, OSError):
        return set()


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None  # gone


def _group_left(group: int) -> bool:
    """Some process (a zombie too) is still in the group."""
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # there, not ours to signal
    return True


def _leaders(pids: list[int]) -> set[int]:
    """The process groups to fence: each manager leads its own (never init's, never ours;
    none where there are no process groups to signal)."""
    if not hasattr(os, "killpg"):
        return set()
    return {pid for pid in pids if pid > 1 and pid != os.getpgrp()}


def _marks(names: frozenset[str]) -> tuple[bytes, frozenset[bytes]] | None:
    """What the processes that came from the managers `names` of this project carry in their
    environment: this project's NOTIFY_SOCKET (this process has it from the same pmon) and
    PMON_MANAGER, inherited by their helpers. They find a driver that pmon started after its
    last sync (a restart just before a stall), which no reported pid or cgroup names. Only
    a hint (a process may change its environment), so they add to the rest. None: no marks
    to look for (none fenced, no NOTIFY_SOCKET, no /proc)."""
    socket = os.environ.get("NOTIFY_SOCKET")
    if not names or not socket or not os.path.isdir("/proc"):
        return None
    return (f"\0NOTIFY_SOCKET={socket}\0".encode(),
            frozenset(f"\0PMON_MANAGER={name}\0".encode() for name in names))


def _marked(pid: int, marks: tuple[bytes, frozenset[bytes]] | None) -> bool:
    if marks is None:
        return False
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            raw = b"\0" + handle.read() + b"\0"
    except OSError:
        return False
    return marks[0] in raw and any(name in raw for name in marks[1])


def _signal_groups(groups: set[int], signum: int) -> None:
    for group in groups:
        try:
            os.killpg(group, signum)
        except OSError:
            pass  # gone already


def _procs(cgroup: Path) -> set[int]:
    """The live processes in a cgroup (v2 lists no zombies); none once it is gone."""
    try:
        return {int(line) for line in (cgroup / "cgroup.procs").read_text().split()}
    except (OSError, ValueError):
        return set()


def _signal_cgroups(cgroups: list[Path], signum: int, spare: set[int]) -> set[int]:
    """`signum` to every process in `cgroups` except `spare`: cgroup.kill for a SIGKILL of
    a cgroup that holds none of them (it also catches processes forking meanwhile).
    Returns the processes signalled."""
    signalled: set[int] = set()
    for cgroup in cgroups:
        members = _procs(cgroup)
        signalled |= members - spare
        if signum == signal.SIGKILL and not members & spare:
            try:
                (cgroup / "cgroup.kill").write_text("1")
                continue
            except OSError:
                pass  # before Linux 5.14: one by one
        _signal_each(members - spare, signum)
    return signalled


def _pids(pids: set[int]) -> str:
    return " ".join(str(pid) for pid in sorted(pids)) or "-"


def _signal_each(pids: set[int], signum: int) -> set[int]:
    """`signum` to each of `pids`; returns those it reached (the others are gone)."""
    reached: set[int] = set()
    for pid in pids:
        try:
            os.kill(pid, signum)
            reached.add(pid)
        except OSError:
            pass
    return reached


@dataclass
class Fence:
    grace: float
    bound: float = math.inf  # it ends anyway this long after its start (the daemons: fence_limit)
    groups: set[int] = field(default_factory=set)  # the fenced process groups not yet empty
    members: dict[int, set[int]] = field(default_factory=dict)  # each one's processes known
    cgroups: list[Path] = field(default_factory=list)
    spare: set[int] = field(default_factory=set)  # never signalled: pmon, this process
    signalled: set[int] = field(default_factory=set)  # processes that had the phase's signal
    names: frozenset[str] = frozenset()  # the managers fenced (to find their processes)
    marks: tuple[bytes, frozenset[bytes]] | None = None  # what their processes carry
    strays: set[int] = field(default_factory=set)  # by their marks or out of their group
    seen: set[int] = field(default_factory=set)  # the machine's pids at the last step
    rescan_at: float = -math.inf  # no look at the whole machine before then
    quiet_since: float | None = None  # the looks have found nothing of it since then
    started_at: float | None = None
    killed: bool = False
    done: bool = False
    overrun: bool = False  # the last fence ended by its bound, something of it still alive

    @property
    def active(self) -> bool:
        """Started and not done yet (the heartbeats say "fencing")."""
        return self.started_at is not None and not self.done

    def start(self, now: float, pids: list[int], cgroups: Sequence[str] = (),
              pmon: tuple[int, str] | None = None, names: Sequence[str] = ()) -> None:
        """`cgroups`: the managers' cgroups; `pmon`: pmon's pid and home cgroup; `names`:
        the managers (their processes are found by their marks too)."""
        if self.started_at is not None:
            return
        self.started_at, self.overrun = now, False
        self.names = frozenset(names)
        self.marks = _marks(self.names)
        self.groups = _leaders(pids)
        self.members = {group: set() for group in self.groups}
        self.cgroups = [Path(c) for c in cgroups if Path(c, "cgroup.procs").exists()]
        self.spare = {os.getpid()}
        if pmon is not None:
            self.spare.add(pmon[0])
            if any(pmon[0] in _procs(c) for c in self.cgroups):
                try:  # pmon stalled in a manager's cgroup (a spawn): out before the kill
                    (Path(pmon[1]) / "cgroup.procs").write_text(str(pmon[0]))
                except OSError:
                    pass  # then its cgroup is signalled one process at a time, pmon spared
        self.seen = _pids_now()
        self._look(self.seen)  # the whole machine: the groups' members, the marked
        _signal_groups(self.groups, signal.SIGTERM)
        self.signalled = {pid for known in self.members.values() for pid in known}
        self.signalled |= _signal_cgroups(self.cgroups, signal.SIGTERM, self.spare)
        self.signalled |= _signal_each(self.strays - self.signalled, signal.SIGTERM)
        self.step(now)

    def extend(self, pids: list[int], cgroups: Sequence[str] = ()) -> None:
        """Take in what pmon reports running while the fence is under way: a manager it
        restarted before it heard of the fence is fenced too (with the signal of the phase
        the fence is in)."""
        if not self.active:
            return
        signum = signal.SIGKILL if self.killed else signal.SIGTERM
        new = _leaders(pids) - self.groups
        if new:
            self.groups |= new
            for group in new:
                self.members[group] = set() if _dead(group, self.killed) else {group}
            _signal_groups(new, signum)
            self.signalled |= new
        fresh = [Path(c) for c in cgroups if Path(c) not in self.cgroups and
                 Path(c, "cgroup.procs").exists()]
        self.cgroups += fresh
        self.signalled |= _signal_cgroups(fresh, signum, self.spare)

    def _look(self, pids: set[int]) -> set[int]:
        """Take in those of `pids` that are the fence's and not finished: members of a
        fenced group, and processes with the marks (strays). Returns them."""
        found: set[int] = set()
        if not self.groups and self.marks is None:
            return found  # nothing to look for (and on Windows, no process groups to ask)
        known = self.strays.union(*self.members.values())
        for pid in pids - self.spare - known:
            group = _pgid(pid)
            if group is None:
                continue  # gone
            ours = group in self.groups
            if not (ours or _marked(pid, self.marks)) or _dead(pid, self.killed):
                continue
            (self.members[group] if ours else self.strays).add(pid)
            found.add(pid)
        return found

    def _prune(self) -> dict[Path, set[int]]:
        """Forget what is gone or finished; returns each fenced cgroup's processes. A group
        stays while something is in it, even if none of its processes known lives: only a
        look at the whole machine tells zombies from a member not known (step)."""
        for group in list(self.groups):
            if not _group_left(group):
                self.groups.discard(group)
                del self.members[group]
                continue
            known = self.members[group]
            for pid in list(known):  # up to the first that lives: one is enough for now
                if _dead(pid, self.killed):
                    known.discard(pid)
                elif _pgid(pid) != group:  # it left the group (setsid): still the fence's
                    known.discard(pid)
                    self.strays.add(pid)
                else:
                    break
        self.strays = {pid for pid in self.strays if not _dead(pid, self.killed)}
        members = {cgroup: {pid for pid in _procs(cgroup) - self.spare
                            if not (self.killed and _doomed(pid))} for cgroup in self.cgroups}
        self.cgroups = [cgroup for cgroup, pids in members.items() if pids]
        return members

    def step(self, now: float) -> None:
        if not self.active:
            return
        assert self.started_at is not None
        pids = _pids_now()
        self._look(pids - self.seen)  # the processes new since the last step (a fork, a
        self.seen = pids              # helper in a session of its own: it has the marks)
        members = self._prune()
        nothing = not any(self.members.values()) and not self.cgroups and not self.strays
        if not nothing:
            self.quiet_since = None
        elif now >= self.rescan_at and pids:  # (none: the listing failed, nothing to tell)
            # nothing known lives: the whole machine once more before the end (a member not
            # known, a process first seen between its fork and its exec, without its marks),
            # then what was born since the listing (forked by one found dead meanwhile)
            if self._look(pids):
                self.rescan_at, self.quiet_since = now + RESCAN, None  # more came: not too soon
            else:
                later = _pids_now()
                born, self.seen = self._look(later - pids), later
                if born:
                    self.quiet_since = None
                elif self.quiet_since is None:
                    self.quiet_since = now  # and once more, END_QUIET later at least
                elif now - self.quiet_since >= END_QUIET:
                    self.done = True  # (what is left in the groups has finished: zombies)
                    return
        if not self.killed and now - self.started_at >= self.grace:
            self.killed = True
            _signal_groups(self.groups, signal.SIGKILL)
            # every process known, one by one too: one may have left its group since
            # (setsid on its SIGTERM) unnoticed, as a step looks no further than a living
            # member; `signalled` is the kill's from now on (a SIGTERM is not a SIGKILL)
            known = self.strays.union(*self.members.values()) - self.spare
            self.signalled = _signal_each(known, signal.SIGKILL)
            self.signalled |= _signal_cgroups(self.cgroups, signal.SIGKILL, self.spare)
            return
        if now - self.started_at >= self.bound:  # (never before its SIGKILL: a thawed loop)
            self._give_up()
            return
        # a process that came into a fenced cgroup or group after its signal (a restart by
        # pmon, a fork), or that its marks show: the same signal now, not a grace later
        appeared = self.strays.union(*members.values(), *self.members.values())
        self.signalled |= _signal_each(appeared - self.signalled,
                                       signal.SIGKILL if self.killed else signal.SIGTERM)

    def _give_up(self) -> None:
        """The bound has passed: the fence ends with something of it alive (a process that
        keeps coming back, one the signals do not finish), so that the pair is not left
        without an active server for ever; one line on stderr says what is left."""
        self.done = self.overrun = True
        self._look(_pids_now())  # once more, so that the line names every one (rare: once)
        self._prune()
        left = [f"process group {group} (pids {_pids(self.members[group])})"
                for group in sorted(self.groups) if self.members[group]]  # (not: zombies)
        left += [f"cgroup {cgroup} (pids {_pids(_procs(cgroup) - self.spare)})"
                 for cgroup in self.cgroups]
        if self.strays:
            left.append(f"pids {_pids(self.strays)} (by their marks, or out of their group)")
        print(f"redundancy: the fence did not end within {self.bound:g} s; left alive: "
              f"{', '.join(left)}; it ends anyway, the partner may take over",
              file=sys.stderr, flush=True)

    def reset(self) -> None:
        """Ready for the next fence (`overrun` stays: it tells of the last one)."""
        self.groups, self.started_at, self.killed, self.done = set(), None, False, False
        self.cgroups, self.spare, self.signalled = [], set(), set()
        self.names, self.strays, self.marks, self.members = frozenset(), set(), None, {}
        self.seen, self.rescan_at, self.quiet_since = set(), -math.inf, None


@dataclass
class Release:
    """The second phase of a handover while pmon answers (docs/redundancy.md "Fencing"):
    this server went passive and told pmon, which stops its run_on = "active" managers
    (SIGTERM, up to their seconds_to_kill); until pmon's reply to a report that said
    "passive" lists none of them alive, the heartbeats still say "fencing" and the partner
    does not take the role. Bounded: after `bound` it ends anyway (`overrun`)."""

    bound: float  # the longest seconds_to_kill of those managers + pmon_timeout
    started_at: float | None = None
    seq: int | None = None  # the first report sent to pmon that said "passive"
    overrun: bool = False  # the last release ended by its bound, not by pmon's word

    @property
    def active(self) -> bool:
        return self.started_at is not None

    def start(self, now: float) -> None:
        self.started_at, self.seq, self.overrun = now, None, False

    def reported(self, seq: int) -> None:
        """A report with this seq (saying "passive") goes to pmon."""
        if self.active and self.seq is None:
            self.seq = seq

    def answered(self, seq: object, alive: list[int]) -> bool:
        """pmon's reply to report `seq`: True when it ends the release."""
        if self.seq is None or not isinstance(seq, int) or seq < self.seq or alive:
            return False
        self.started_at, self.seq = None, None  # once: a later reply ends nothing
        return True

    def expired(self, now: float) -> bool:
        """True (once) when the bound has passed: the release ends unconfirmed."""
        if self.started_at is None or now - self.started_at < self.bound:
            return False
        self.started_at, self.seq, self.overrun = None, None, True
        return True

    def cancel(self) -> None:
        self.started_at, self.seq = None, None
