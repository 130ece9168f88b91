"""The redundancy manager of a group member (`[redundancy] group`): no links, no heartbeats;
the members meet in etcd (group_store.py) and decide with group.py.

One loop (the main thread) wakes on a change in etcd (the watch), a reply from pmon (the
pair's `PmonSync`, reused as it is), or a deadline (a damped change falling due, the lease
counted lost, pmon counted silent); at rest it sleeps up to IDLE seconds. At every wake-up
it steps, in this order:

1. fence: an active member that cannot stay (its pmon silent for pmon_timeout, its lease not
   renewed for TTL/2, the leader key not its own any more) goes passive ("fenced": pmon, if
   it answers, stops its drivers as at any switchover), stops its run_on = "active"
   managers itself too (fence.py, as for the pair; once pmon acknowledged "passive", at
   once when pmon is silent), and then lets go of the leader key. The lease's bound (ttl >= 2 x (fence_grace + 1)) ends the fence before
   the lease can expire, so the next leader starts its drivers only after;
2. handover: a leader that `decide` says must hand over (priorities 2-4) goes passive at
   once (pmon stops its drivers), waits until pmon reports none of them alive (or fences
   them itself if pmon goes silent), then deletes the leader key and puts the handover mark
   in one transaction; the target takes the key;
3. take: a member without the key wants it when nobody holds it and `decide` names it (or
   the handover mark does); the store creates the key if it is absent. A member that got
   the key becomes active, and pmon starts its drivers.

Its own record in etcd (error state, availability, role, whether pmon answers) is put when
it changes. pmon is judged by the request it owes (PmonSync, as for the pair): a freeze of
this process (a gap in the loop) restarts that count, so a manager thawed after a long
freeze asks pmon again before it calls itself an orphan.
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import select
import socket
import sys
import threading
import time
from typing import Any, Callable

from pmon.config import Config
from pmon.redundancy.arbitration import Role
from pmon.redundancy.daemon import PmonSync, _notify
from pmon.redundancy.fence import Fence
from pmon.redundancy.group import AUTOMATIC, Forced, Member, Situation, decide, ranking
from pmon.redundancy.group_store import GroupStore, Watcher
from pmon.redundancy.pmon_view import PmonView
from pmon.redundancy.settings import RedundancySpec, release_bound

IDLE = 1.0       # the longest sleep of the loop at rest
STARTUP = 2.0    # a starting member listens this long before it takes the role by itself
ACK_WAIT = 0.3   # a fence waits this long at most for pmon to acknowledge "passive"


def _differing(said: dict[str, tuple[str, ...]]) -> dict[str, list[str]] | None:
    """Every member's own list, while they differ (for redu status); else None."""
    return {name: list(order) for name, order in said.items()} if len(set(said.values())) > 1 \
        else None


def _json(text: str | None) -> dict[str, Any] | None:
    try:
        value = json.loads(text) if text else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def renew_bound(spec: RedundancySpec) -> float:
    """How long after the loop's last turn the store renews the lease: a hung loop (the
    sync thread alive) must lose it, but only once its pmon surely stopped the drivers.
    Its reports carry its last turn, so pmon takes them for pmon_timeout and stops the
    drivers pmon_timeout after the last one it took (extensions/group.py), SIGKILL after
    fence_grace: 2 x pmon_timeout + fence_grace after the hang at the latest. The lease,
    last renewed up to TTL/6 before the bound, lives TTL on; plus one second of margin (as
    the ttl rule's). pmon_timeout at least: pmon's own bound for a silent manager (as the
    pair's witness goes by the self-fence's)."""
    assert spec.witness is not None
    ttl = spec.witness.ttl
    return max(spec.pmon_timeout, 2 * spec.pmon_timeout + spec.fence_grace + 1 - ttl * 5 / 6)


class GroupManager(PmonView):
    def __init__(self, config: Config, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()  # pmon's side of the view (pmon_view.py), as the pair keeps it
        spec = config.redundancy
        assert spec is not None and spec.witness is not None
        self.spec, self.clock = spec, clock
        self.boot = secrets.token_hex(6)
        self.sync = PmonSync(config, spec.pmon_timeout, self._locked_report, self._deliver)
        # The store renews the lease only while this loop turns (`sync.last_turn`, set at
        # every turn; at rest it turns every IDLE): a hung loop decides nothing, so its
        # lease must expire and another member take the role (renew_bound).
        bound = renew_bound(spec)
        self.store = GroupStore(spec.witness, spec.name, self.boot, self._wake, clock,
                                loop_alive=lambda now: now - self.sync.last_turn < bound)
        self.watch = Watcher(self.store, self._wake)
        self.fence = Fence(spec.fence_grace, spec.fence_limit)
        self.fence_at: float | None = None  # the fence starts then (or once pmon acknowledged)
        self.let_go_after_fence = False
        self.acked: Role | None = None      # the role of the last report pmon answered
        self.role: Role | None = None
        self.reason = ""
        self.changed_at: float | None = None
        self.started_at = clock()
        self.seen_leader = False      # a leader was seen since start ("failure", not "start")
        self.pending: tuple[str, float] | None = None
        self.due: float | None = None
        self.switched_at: float | None = None   # this member's last automatic takeover
        self.handover: dict[str, Any] | None = None  # the mark of a handover under way
        self.drivers_gone = False     # pmon, told "passive", reports no run_on = "active" alive
        self.handover_since = 0.0     # when the handover under way began
        # how long a handover waits for pmon's word (as the pair's release; pmon sends it)
        self.release_bound = release_bound(
            (m.seconds_to_kill for m in config.managers if m.run_on == "active"), self.spec)
        self.mark_seen: tuple[str, float] | None = None  # the mark in etcd, when first seen
        self.taking = "start"  # the reason of the takeover under way   # a handover mark, when first seen leaderless
        self.joined: dict[tuple[str, str], float] = {}
        self.put: dict[str, Any] = {}  # the record as last handed to the store
        self.members: dict[str, Member] = {}
        self.preference = spec.preference  # as the group ranks (_agreed_preference)
        self.preferences: dict[str, tuple[str, ...]] = {}  # every member's own, as last said
        self.groups: dict[str, tuple[str, ...]] = {}  # every member's group list, likewise
        self.records: dict[str, dict[str, Any]] = {}
        self.leader: str | None = None
        self.forced_raw: dict[str, Any] | None = None
        self.reported: Role | None = None   # the role in the report pmon is answering
        self.ready_sent = False
        self.poked = False
        self.signature: tuple[Any, ...] = ()
        self.lock = threading.Lock()
        self.replies: "queue.SimpleQueue[tuple[float, Role | None, dict[str, Any] | None]]" = \
            queue.SimpleQueue()
        self.wake_r, self.wake_w = socket.socketpair()
        for sock in (self.wake_r, self.wake_w):
            sock.setblocking(False)

    # --- threads' entry points -------------------------------------------------------
    def _wake(self) -> None:
        try:
            self.wake_w.send(b"x")
        except OSError:
            pass

    def poke(self) -> None:
        """SIGUSR2 from pmon (a request, a new error state): sync now. From the handler, so
        no lock (not even the sync's Event's): the loop wakes on the socket and wakes it."""
        self.poked = True
        self._wake()

    def _deliver(self, at: float, reply: dict[str, Any] | None) -> None:
        self.replies.put((at, self.reported, reply))
        self._wake()

    def _locked_report(self) -> dict[str, Any]:
        with self.lock:
            now = self.clock()
            self.reported = self.role
            return self.report(now)

    # --- what this member knows ------------------------------------------------------
    def _read_etcd(self, now: float) -> bool:
        """Members, leader, forced choice as etcd has them; False when the view is stale."""
        values, fresh = self.watch.snapshot()
        self.records = {}
        for name in self.spec.group:
            record = _json(values.get(f"/members/{name}"))
            if record is not None and name != self.spec.name:
                self.records[name] = record
        members = {}
        for name, r in self.records.items():
            joined = self.joined.setdefault((name, str(r.get("boot"))), now)
            members[name] = Member(name, float(r.get("error", 0)), bool(r.get("available")),
                                   bool(r.get("can_act")), joined)
        ok = self.pmon_ok(now)
        if self.store.held(now):
            members[self.spec.name] = Member(self.spec.name, sum(self.breakdown(now).values()),
                                             self.available and ok, ok, self.started_at)
        self.members = members
        self.preferences[self.spec.name] = self.spec.preference
        self.groups[self.spec.name] = self.spec.group
        for name, record in self.records.items():  # kept while a member is down
            for key, said in (("preference", self.preferences), ("group", self.groups)):
                order = record.get(key)
                if isinstance(order, list) and all(isinstance(n, str) for n in order):
                    said[name] = tuple(order)
        self.preference = self._agreed_preference()
        holder = values.get("", "").split()
        self.leader = self.spec.name if self.store.is_leader() else (holder[0] if holder else None)
        if self.leader is not None and self.leader != self.spec.name:
            self.seen_leader = True
        self.forced_raw = _json(values.get("/forced"))
        return fresh

    def _agreed_preference(self) -> tuple[str, ...]:
        """The order of preference this member ranks by: its own while every member says the
        same; else the one of the member whose name sorts first, so that all still rank
        alike. (Each ranking by its own, a failure could find every member naming another,
        and nobody took the key: no active server at all.) What a member said is kept
        while it is down (until it says otherwise): a passive member's crash must not change
        the order, and with it the role."""
        said = self.preferences
        return said[min(said)] if len(set(said.values())) > 1 else self.spec.preference

    def _forced(self) -> Forced | None:
        raw = self.forced_raw
        if raw is None or not isinstance(raw.get("server"), str):
            return None
        errors = raw.get("errors")
        if not isinstance(errors, dict):
            errors = {}
        return Forced(raw["server"], tuple((str(k), float(v)) for k, v in errors.items()),
                      str(raw.get("ended") or ""))

    # --- the loop --------------------------------------------------------------------
    def run(self) -> int:
        self.sync.start()
        self.store.start()
        self.watch.start()
        try:  # pmon's first answer (error state, availability) before anything else
            self._on_reply(*self.replies.get(timeout=self.spec.pmon_timeout))
        except queue.Empty:
            pass
        try:
            while True:
                now = self.clock()
                if self.poked:
                    self.poked = False
                    self.sync.wake.set()
                if self.sync.orphaned(now, self.spec, self.pmon_ok_at is not None,
                                      self.fence.active, IDLE):
                    return 1  # an orphan: pmon is gone (and the fence, if any, is done)
                with self.lock:
                    self._drain()
                    self.evaluate(now)
                select.select([self.wake_r], [], [], max(0.0, self._deadline(now) - now))
                try:
                    while self.wake_r.recv(4096):
                        pass
                except OSError:
                    pass
        finally:
            self.store.stop()
            self.watch.stopping = True

    def _deadline(self, now: float) -> float:
        wake = [now + IDLE]
        if self.fence.active:
            wake.append(now + 0.05)
        if self.fence_at is not None:
            wake.append(self.fence_at)
        if self.handover is not None:
            wake.append(self.handover_since + self.release_bound)
        if self.due is not None and self.due > now:
            wake.append(self.due)
        if self.role is None:
            wake.append(self.started_at + STARTUP)
        owed = self.sync.owed_since
        if owed is not None and self.pmon_ok(now):
            wake.append(owed + self.spec.pmon_timeout)
        renewed = self.store.renewed_at
        if renewed is not None and now < renewed + self.store.spec.lost_after:
            wake.append(renewed + self.store.spec.lost_after)
        return min(wake)

    def _drain(self) -> None:
        while True:
            try:
                self._on_reply(*self.replies.get_nowait())
            except queue.Empty:
                return

    def evaluate(self, now: float) -> None:
        ok, held, mine = self.pmon_ok(now), self.store.held(now), self.store.is_leader()
        fresh = self._read_etcd(now)
        me = self.spec.name
        # 1. fence: active, but without pmon, the lease or the key. Passive at once, so that a
        # pmon that answers stops its drivers as for any switchover (the fence's kill, coming
        # first, would look to it like a crash, and a few make a blocked manager); the fence
        # itself follows pmon's acknowledgement of "passive" (at once when pmon is silent),
        # after ACK_WAIT at the latest: inside the lease's margin (one second)
        if self.role is Role.ACTIVE and (not ok or not held or not mine):
            self._become(Role.PASSIVE, "fenced", now)
            self.fence_at, self.let_go_after_fence = (now if not ok else now + ACK_WAIT), True
        if self.fence_at is not None and (now >= self.fence_at or self.acked is Role.PASSIVE):
            self.fence_at = None
            self.fence.start(now, self.fence_pids, self.fence_cgroups, self.fence_pmon,
                             self.fence_names)
        if self.handover is not None and not self.drivers_gone and not ok:
            self.fence.start(now, self.fence_pids, self.fence_cgroups, self.fence_pmon,
                             self.fence_names)
        self.fence.step(now)
        if self.let_go_after_fence and self.fence.done:
            self.let_go_after_fence = False
            self.store.let_go()  # (carried out once etcd answers, if it does not now)
        if self.fence.done and ok and held and self.role is not Role.ACTIVE and \
                self.handover is None and not self.let_go_after_fence:
            self.fence.reset()  # pmon answers again: it decides about its drivers again
        # 2. handover: once pmon stopped the drivers (or the fence did), let go of the key;
        # bounded, as the pair's release (a driver stuck in the kernel stays "alive" to pmon)
        if self.handover is not None and not self.drivers_gone and \
                now - self.handover_since >= self.release_bound:
            print(f"redundancy: pmon did not confirm within {self.release_bound:g} s that its "
                  'run_on = "active" managers stopped; the handover goes on', file=sys.stderr,
                  flush=True)
            self.drivers_gone = True
        if self.handover is not None and (self.drivers_gone or self.fence.done):
            self.store.let_go(self.handover)
            self.handover, self.drivers_gone = None, False
        forced = self._forced()
        verdict = decide(Situation(
            now=now, members=self.members, leader=self.leader, preference=self.preference,
            forced=forced, pending=self.pending, switched_at=self.switched_at,
            error_state_delay=self.spec.error_state_delay, hold_down=self.spec.hold_down,
            first_active_change_interval=self.spec.first_active_change_interval))
        self.pending, self.due = verdict.pending, verdict.due
        leading = self.role is Role.ACTIVE and mine and held and not self.fencing
        if leading and fresh and verdict.forced_ended and self.forced_raw is not None:
            self.store.put_forced({**self.forced_raw, "ended": verdict.forced_ended,
                                   "ended_at": time.time()})
        if leading and fresh and verdict.target not in (None, me):
            # "at" makes each mark its own: the same handover again later is a new mark, not
            # the first one, long expired (its target fell back to the ranking: a "failure",
            # or nobody took the key where the ranking named another)
            self.handover = {"from": me, "to": verdict.target, "reason": verdict.reason,
                             "at": time.time()}
            self.drivers_gone, self.handover_since = False, now
            self._become(Role.PASSIVE, verdict.reason, now)
        # 3. take the key
        mark = _json(self.watch.snapshot()[0].get("/handover")) if fresh else None
        if mark is not None and self.leader is None:
            seen = json.dumps(mark, sort_keys=True)
            if self.mark_seen is None or self.mark_seen[0] != seen:
                self.mark_seen = (seen, now)
            since = self.mark_seen[1]
            target = mark.get("to")
            if now - since > self.store.spec.ttl or target not in self.members or \
                    not self.members[target].can_act:
                mark = None  # its target did not take the key: back to the ranking
        else:
            mark = None
        free = fresh and ok and held and self.leader is None and self.handover is None and \
            not self.fencing and (self.role is not None or now - self.started_at >= STARTUP)
        want = free and (mark["to"] == me if mark is not None else verdict.target == me)
        if want:  # why it wants the key: the handover's reason, else failure (or start)
            self.taking = str(mark.get("reason")) if mark is not None else (
                "failure" if self.seen_leader else "start")
        self.store.want(want, now)
        if self.store.is_leader() and held and ok and self.role is not Role.ACTIVE and \
                self.handover is None and not self.fencing:  # (not `mine`: let go above)
            reason = self.taking
            self._become(Role.ACTIVE, reason, now)
            if reason in AUTOMATIC:
                self.switched_at = now
        # a starting member is passive once another leads, or it does not want the key (or
        # could not get it within a second more: etcd away at start)
        waited = now - self.started_at
        if self.role is None and ((waited >= STARTUP and not want) or waited >= STARTUP + 1 or (
                fresh and self.leader not in (None, me))):
            self._become(Role.PASSIVE, "start", now)
        self._put_record(now, ok, fresh)
        signature = (self.role, self.leader, self.fencing, json.dumps(self.records, sort_keys=True,
                                                                           default=str))
        if signature != self.signature:
            self.signature = signature
            self.sync.wake.set()

    @property
    def fencing(self) -> bool:
        return self.fence.active or self.fence_at is not None

    def _become(self, role: Role, reason: str, now: float) -> None:
        if role is self.role:
            return
        self.role, self.reason, self.changed_at = role, reason, time.time()
        self.acked = None  # until pmon answers a report with the new role
        if not self.ready_sent:
            self.ready_sent = True
            _notify("READY=1")

    def _put_record(self, now: float, ok: bool, fresh: bool) -> None:
        breakdown = self.breakdown(now)
        record = {"name": self.spec.name, "boot": self.boot, "preference": list(self.spec.preference),
                  "group": list(self.spec.group),
                  "role": self.role.value if self.role else None,
                  "error": sum(breakdown.values()), "breakdown": breakdown,
                  "available": self.available and ok, "can_act": ok,
                  "fencing": self.fencing}
        if record != self.put:
            self.put = record
            self.store.put_record({**record, "at": time.time()})

    # --- pmon ----------------------------------------------------------------------------
    def report(self, now: float) -> dict[str, Any]:
        breakdown = self.breakdown(now)
        members = []
        order = ranking(self.members, self.preference)
        for name in self.spec.group:
            record = self.put if name == self.spec.name else self.records.get(name)
            members.append({"name": name, "live": record is not None and (
                name != self.spec.name or self.store.held(now)),
                **{k: (record or {}).get(k) for k in (
                    "role", "error", "breakdown", "available", "can_act", "fencing", "boot", "at")},
                "rank": order.index(name) + 1 if name in order else None})
        return {
            "role": self.role.value if self.role else None, "reason": self.reason or None,
            "changed_at": self.changed_at, "restart_project": False, "epoch": 0,
            "error": sum(breakdown.values()), "breakdown": breakdown, "target": None,
            "forced": self.forced_raw, "preferred": {"server": self.spec.preferred},
            "queries": 0, "fencing": self.fencing, "fence_overrun": self.fence.overrun,
            "witness": {**self.store.status(now), "failsafe": False},
            "damp": 0, "partner": None, "links": [], "dropped": {}, "pid": os.getpid(),
            # pmon ignores a report older than pmon_timeout: one that waited out a stall of
            # pmon, or one the sync thread sends for a loop that hangs (its last turn)
            "sent": self.sync.last_turn,
            "group": {"leader": self.leader, "members": members, "order": order,
                      "handover": self.handover, "preference": list(self.preference),
                      # every member's own, while they differ (the group follows one)
                      "preferences": _differing(self.preferences), "groups": _differing(self.groups)},
        }

    def _on_reply(self, at: float, role: Role | None,
                  reply: dict[str, Any] | None) -> None:
        if reply is None or reply.get("stale"):
            return  # no answer (or to a report too old: none either)
        bound = self._take_pmon(at, reply)  # error sources, availability, what to fence
        if bound is not None:
            self.release_bound = bound
        self.acked = role  # pmon has answered a report with this role
        if self.handover is not None and role is Role.PASSIVE and not self.fence_pids:
            self.drivers_gone = True  # pmon knew we are passive and runs none of them
        for request in reply.get("requests", []):
            if request.get("op") == "force" and request.get("server") in self.spec.group:
                errors = {name: m.error for name, m in self.members.items()}
                self.store.put_forced({"server": request["server"], "seq": time.time_ns(),
                                       "errors": errors, "at": time.time(),
                                       "by": str(request.get("by", "")), "ended": None})

