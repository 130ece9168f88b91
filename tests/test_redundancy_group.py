"""Groups of three or more (docs/redundancy.md "Groups of three or more"): three real pmon
on loopback ("a", "b", "c"; preference a, b, c) and a real etcd, through which alone they
decide who is active. "drv" is run_on = "active" and stamps its starts and stops."""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import psutil

from etcd import Etcd, _b64, etcd  # noqa: F401 (the fixture)
from group import KEY, MEMBERS, driver_runs, stamp_path, write_group
from support import Pmon, kill_tree, pmon_cli, poll_for, project_processes
from test_redundancy_pair import redu, stamps, switchovers

WAIT = 20
TTL = 4


class Group:
    """The three members; `check()` asserts that at most one driver runs."""

    def __init__(self, pmon: Callable[..., Pmon], tmp_path: Path, etcd: Etcd, **redundancy: Any) -> None:
        self.pmon, self.tmp_path, self.etcd = pmon, tmp_path, etcd
        self.paths = write_group(tmp_path, etcd.url, ttl=TTL, **redundancy)
        self.servers = {name: pmon(path, wait=False) for name, path in self.paths.items()}
        for server in self.servers.values():
            server.wait_ready(WAIT)

    def role(self, name: str) -> str | None:
        try:
            return str(redu(self.servers[name])["role"])
        except Exception:
            return None  # killed, or frozen

    def running(self) -> list[str]:
        return [n for n in MEMBERS if driver_runs(stamp_path(self.tmp_path, n))]

    def check(self, context: str = "") -> None:
        drivers = self.running()
        assert len(drivers) <= 1, f"two drivers run: {drivers} {context}"

    def wait_active(self, name: str, timeout: float = WAIT) -> float:
        """Wait (checking all along) until `name` is active and its driver runs; the time."""
        start = time.monotonic()

        def settled() -> bool:
            self.check(f"waiting for {name}")
            return self.running() == [name] and self.role(name) == "active"
        poll_for(settled, timeout, f"{name} active with its driver")
        return time.monotonic() - start

    def views(self) -> dict[str, Any]:
        """What each member says (for a failure's message)."""
        out: dict[str, Any] = {"drivers": self.running()}
        for name, server in self.servers.items():
            try:
                s = redu(server)
                out[name] = (s["role"], s["group"]["leader"], s["witness"], [
                    (m["name"], m["live"], m.get("role"), m.get("available"), m.get("can_act"),
                     m.get("error")) for m in s["group"]["members"]])
            except Exception as exc:
                out[name] = repr(exc)
        return out

    def holder(self) -> str | None:
        value = self.etcd.holder(KEY)
        return value.split()[0] if value else None

    def restart(self, name: str) -> None:
        self.servers[name] = self.pmon(self.paths[name], wait=False)
        self.servers[name].wait_ready(WAIT)

    def redundancy_manager(self, name: str) -> int:
        procs = project_processes(self.servers[name].config.project.name, "redundancy")
        assert procs, f"no redundancy manager for {name}"
        return procs[0].pid


def all_switchovers(group: Group) -> list[dict[str, Any]]:
    return sorted((e for s in group.servers.values() for e in switchovers(s) if e["role"] == "active"),
                  key=lambda e: e["at"])


def test_a_group_starts_with_exactly_one_active_the_preferred(tmp_path, pmon, etcd):
    group = Group(pmon, tmp_path, etcd)
    group.wait_active("a")
    assert group.holder() == "a"
    status = redu(group.servers["b"])
    assert status["group"]["leader"] == "a"
    roles = {m["name"]: m["role"] for m in status["group"]["members"]}
    assert roles == {"a": "active", "b": "passive", "c": "passive"}
    out = pmon_cli(group.paths["c"], "redu", "status").stdout
    assert "leader a" in out and "b: passive, available" in out, out
    assert "a: active, available, rank 1; error state 0" in out, out
    as_json = json.loads(pmon_cli(group.paths["c"], "redu", "status", "--json").stdout)
    assert [m["name"] for m in as_json["group"]["members"]] == list(MEMBERS)


def test_the_actives_tree_killed_the_best_by_error_state_takes_over_within_the_ttl(
        tmp_path, pmon, etcd):
    group = Group(pmon, tmp_path, etcd)
    group.wait_active("a")
    group.servers["b"].call("stop", target="w")  # b's error state 1: c is the best after a
    poll_for(lambda: next(m for m in redu(group.servers["c"])["group"]["members"]
                          if m["name"] == "b")["error"] == 1, WAIT, "b's error state in etcd")
    killed = time.monotonic()
    kill_tree(group.servers["a"].proc.pid)
    took = group.wait_active("c", TTL + 5)
    assert took < TTL + 3, took  # the lease's expiry, then one watch event and one txn
    ends = [e for e in switchovers(group.servers["c"]) if e["role"] == "active"]
    assert [e["reason"] for e in ends] == ["failure"]
    assert group.role("b") == "passive" and time.monotonic() - killed < WAIT


def test_the_error_state_rising_on_the_active_switches_once_to_the_best(tmp_path, pmon, etcd):
    group = Group(pmon, tmp_path, etcd, hold_down=60)
    group.wait_active("a")
    since = time.time()
    group.servers["a"].call("stop", target="w")
    group.wait_active("b")
    deadline = time.monotonic() + 4  # more than error_state_delay: nothing else moves
    while time.monotonic() < deadline:
        group.check("after the switchover")
        time.sleep(0.05)
    ends = [e for e in all_switchovers(group) if e["at"] >= since]
    assert [(e["active"], e["reason"]) for e in ends] == [("b", "error state")], ends
    assert group.holder() == "b"


def test_the_same_handover_twice_is_taken_twice(tmp_path, pmon, etcd):
    """a -> b by error state, back by preference, and a -> b by error state again: the second
    mark says what the first said (a review found the target taking it for the first one,
    long expired, and nobody active until the lease's TTL made it a failure)."""
    group = Group(pmon, tmp_path, etcd, hold_down=1)
    group.wait_active("a")
    since = time.time()
    for _ in range(2):
        group.servers["a"].call("stop", target="w")
        group.wait_active("b")
        group.servers["a"].call("start", target="w")
        group.wait_active("a")
        time.sleep(TTL + 1)  # the scenario: the first mark is older than the TTL by then
    ends = [(e["active"], e["reason"]) for e in all_switchovers(group) if e["at"] >= since]
    assert ends == [("b", "error state"), ("a", "preference")] * 2, ends


def test_members_whose_preferences_differ_follow_one_order_and_say_so(tmp_path, pmon, etcd):
    """a prefers c, b prefers b, c the default a (a rollout half done). Each ranking by its
    own, the leader handed the role on by preference at every hold_down until a handover
    found its target naming another: nobody took the key, no member was active at all.
    Now all follow a's order (the first name), also while a is down (a review: the order of
    the first name alive changed with a passive member's crash, and the role with it)."""
    group = Group(pmon, tmp_path, etcd, hold_down=1,
                  only={"a": {"preferred": "c"}, "b": {"preferred": "b"},
                        "c": {"group": [*MEMBERS, "d"]}})  # and c's list names a fourth
    group.wait_active("c")  # a's order: c, a, b
    since = time.time()

    def steady(seconds: float) -> None:
        deadline = time.monotonic() + seconds  # hold_down 1: a group that flaps moves by then
        while time.monotonic() < deadline:
            group.check()
            assert group.running() == ["c"] and group.role("c") == "active", group.views()
            time.sleep(0.05)
    steady(4)
    out = pmon_cli(group.paths["b"], "redu", "status").stdout
    assert "the members' preferences differ (a c, a, b; b b, a, c; c a, b, c, d): the group " \
           "follows a's" in out, out
    assert "the members' group lists differ (a a, b, c; b a, b, c; c a, b, c, d)" in out, out
    kill_tree(group.servers["a"].proc.pid)  # the first name, passive: its lease expires
    steady(TTL + 3)
    group.restart("a")
    poll_for(lambda: group.role("a") == "passive", WAIT, "a back, passive")
    steady(3)
    assert [e for e in all_switchovers(group) if e["at"] >= since] == []
    kill_tree(group.servers["c"].proc.pid)  # the active: the next by a's order takes over
    group.wait_active("a", TTL + 5)
    assert group.role("b") == "passive"


def test_set_active_makes_the_named_member_active_and_ends_as_for_the_pair(tmp_path, pmon, etcd):
    group = Group(pmon, tmp_path, etcd, hold_down=60)
    group.wait_active("a")
    result = pmon_cli(group.paths["b"], "redu", "set-active", "c")
    assert result.returncode == 0 and "c is active" in result.stdout, result.stderr
    group.wait_active("c")
    a_stops = [at for kind, at in stamps(stamp_path(tmp_path, "a")) if kind == "stop"]
    c_starts = [at for kind, at in stamps(stamp_path(tmp_path, "c")) if kind == "start"]
    assert a_stops and a_stops[-1] < c_starts[-1]  # the handover fenced a first
    forced = redu(group.servers["a"])["forced"]
    assert forced["server"] == "c" and not forced["ended"]
    # a change of the error states ends it (overruled); the error state then decides
    group.servers["c"].call("stop", target="w")
    poll_for(lambda: (redu(group.servers["a"])["forced"] or {}).get("ended") == "overruled",
             WAIT, "the forced choice overruled")
    group.wait_active("a")
    refused = pmon_cli(group.paths["a"], "redu", "set-active", "x")
    assert refused.returncode != 0 and "no server 'x'" in refused.stderr


def handed_over(tmp_path: Path, since: float) -> tuple[float, float]:
    """a's driver stopped before b's started, of what happened after `since` (the stamps'
    wall clock): at the group's start another member may have held the role for a moment,
    its driver started and stopped long before the fault (a CI run failed on that)."""
    a_stops = [at for kind, at in stamps(stamp_path(tmp_path, "a")) if kind == "stop" and at >= since]
    b_starts = [at for kind, at in stamps(stamp_path(tmp_path, "b")) if kind == "start" and at >= since]
    assert a_stops and b_starts and a_stops[0] < b_starts[0], (a_stops, b_starts)
    return a_stops[0], b_starts[0]


def test_the_leaders_pmon_frozen_its_driver_stops_before_another_starts(tmp_path, pmon, etcd):
    group = Group(pmon, tmp_path, etcd)
    group.wait_active("a")
    since = time.time()
    os.kill(group.servers["a"].proc.pid, signal.SIGSTOP)
    try:
        group.wait_active("b")
    finally:
        os.kill(group.servers["a"].proc.pid, signal.SIGCONT)
    handed_over(tmp_path, since)
    poll_for(lambda: group.role("a") == "passive", WAIT, "a passive after the thaw")


def test_the_leaders_redundancy_manager_frozen_pmon_stops_the_driver_before_the_lease_expires(
        tmp_path, pmon, etcd):
    group = Group(pmon, tmp_path, etcd)
    group.wait_active("a")
    manager = group.redundancy_manager("a")
    since = time.time()
    os.kill(manager, signal.SIGSTOP)
    try:
        group.wait_active("b")
        frozen_for = 8.0  # longer than PMON_GRACE (5 s): it must not exit as an orphan on thaw
        deadline = time.monotonic() + frozen_for
        while time.monotonic() < deadline:
            group.check("while a's redundancy manager is frozen")
            time.sleep(0.05)
    finally:
        os.kill(manager, signal.SIGCONT)
    handed_over(tmp_path, since)
    poll_for(lambda: group.role("a") == "passive", WAIT, "a passive after the thaw")
    time.sleep(1.0)  # (not a wait: the thawed manager has had a second to misjudge pmon)
    assert group.redundancy_manager("a") == manager, "the thawed manager exited"


def test_the_leaders_whole_tree_frozen_the_next_takes_over_by_the_lease_and_the_thaw_fences(
        tmp_path, pmon, etcd):
    """pmon, redundancy manager and driver frozen together: the driver does not run while
    frozen; another member takes over once the lease expired; at the thaw the frozen
    manager finds its lease older than ttl / 2 and fences at once (its driver may run for
    that moment: docs/redundancy.md, only a watchdog closes it)."""
    group = Group(pmon, tmp_path, etcd)
    group.wait_active("a")
    tree = [group.servers["a"].proc.pid] + [
        p.pid for p in psutil.Process(group.servers["a"].proc.pid).children(recursive=True)]
    for pid in tree:
        os.kill(pid, signal.SIGSTOP)
    try:
        group.wait_active("b", TTL + 5)
    finally:
        thawed = time.time()
        for pid in tree:
            os.kill(pid, signal.SIGCONT)
    poll_for(lambda: [at for kind, at in stamps(stamp_path(tmp_path, "a")) if kind == "stop"],
             WAIT, "a's driver fenced after the thaw")
    stopped = [at for kind, at in stamps(stamp_path(tmp_path, "a")) if kind == "stop"][0]
    assert stopped - thawed < 1.0, stopped - thawed  # at once, not after a grace
    poll_for(lambda: group.role("a") == "passive", WAIT, "a passive after the thaw")
    assert group.running() == ["b"] and group.holder() == "b"


def test_etcd_killed_the_leader_fences_and_one_is_active_again_after_its_restart(
        tmp_path, pmon, etcd):
    group = Group(pmon, tmp_path, etcd)
    group.wait_active("a")
    etcd.kill()
    poll_for(lambda: (group.check("etcd away"), group.running() == [])[1], TTL + 5,
             "the leader to fence its driver")
    poll_for(lambda: (group.check("etcd away"), all(group.role(n) == "passive" for n in MEMBERS))[1],
             WAIT, "every member passive (no failsafe for groups)")
    etcd.start()
    poll_for(lambda: (group.check("etcd back"), len(group.running()) == 1)[1], WAIT,
             "one driver again")
    active = [n for n in MEMBERS if group.role(n) == "active"]
    assert len(active) == 1 and group.holder() == active[0]


def test_random_kills_freezes_and_error_changes_never_make_two_drivers(tmp_path, pmon, etcd):
    """Chaos with a seed (PMON_CHAOS_SEED): one fault at a time on a random member (its tree
    SIGKILLed and started again, its pmon frozen 1-3 s, its error state raised and repaired)
    or on etcd (killed 1-4 s, then started again: it counts as a fault of the leader),
    sampled every 50 ms: never two drivers; each fault moves the leader at most once away
    and once back (by preference, after hold_down)."""
    seed = int(os.environ.get("PMON_CHAOS_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    group = Group(pmon, tmp_path, etcd, hold_down=2)
    group.wait_active("a")
    deadline = time.monotonic() + float(os.environ.get("PMON_CHAOS_SECONDS", 40))
    faults = 0
    while time.monotonic() < deadline:
        name, kind = rng.choice(MEMBERS), rng.choice(("kill", "freeze", "error", "etcd"))
        before = len(all_switchovers(group))
        leader = group.holder()
        if kind == "kill":
            kill_tree(group.servers[name].proc.pid)
            group.servers[name].proc.wait(10)
            _watch(group, TTL + 2, f"{kind} {name} (seed {seed})")
            group.restart(name)
        elif kind == "freeze":
            pid = group.servers[name].proc.pid
            os.kill(pid, signal.SIGSTOP)
            try:
                _watch(group, rng.uniform(1, 3), f"{kind} {name} (seed {seed})")
            finally:
                os.kill(pid, signal.SIGCONT)
        elif kind == "etcd":  # the witness away 1-4 s (the leader fences after ttl / 2)
            name = leader or name
            etcd.kill()
            _watch(group, rng.uniform(1, 4), f"{kind} (seed {seed})")
            etcd.start()
        else:
            group.servers[name].call("stop", target="w")
            _watch(group, rng.uniform(1, 3), f"{kind} {name} (seed {seed})")
            group.servers[name].call("start", target="w")
        # settled: the preferred active again (hold_down 2 s after its last move)
        try:
            poll_for(lambda: (group.check(f"settling (seed {seed})"),
                              group.running() == ["a"] and group.role("a") == "active")[1],
                     WAIT + TTL, f"a active again after {kind} {name} (seed {seed})")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; {group.views()}") from None
        moves = len(all_switchovers(group)) - before
        allowed = 0 if name != leader and kind != "kill" else 2
        if kind == "kill" and name != leader:
            allowed = 0
        assert moves <= allowed, f"{moves} switchovers for {kind} {name} (leader {leader}, seed {seed})"
        if kind == "error":  # nobody failed: planned handovers only (not a lease's expiry)
            reasons = {e["reason"] for e in all_switchovers(group)[before:]}
            assert reasons <= {"error state", "preference"}, f"{reasons} for {kind} {name} (seed {seed})"
        faults += 1
    assert faults >= 3, f"too few faults in the time (seed {seed})"


def _watch(group: Group, seconds: float, context: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        group.check(context)
        time.sleep(0.05)


def test_a_member_whose_group_loop_hangs_lets_its_lease_expire_and_another_takes_the_key(etcd):
    """The store against a real etcd: a's group loop stops turning (`loop_alive` turns
    False; the thread runs on): a's store renews nothing any more and revokes nothing, so
    etcd expires a's lease (read back with etcd's own /v3/lease/timetolive), K and a's
    record go with it, and b's store, which wants the role, creates K."""
    from pmon.redundancy.group_store import GroupStore
    from pmon.redundancy.settings import WitnessSpec

    key, ttl = "/pmon/test/hung", 3
    spec = WitnessSpec(etcd=(etcd.url,), ttl=float(ttl), key=key)
    hung = threading.Event()
    a = GroupStore(spec, "a", "boot-a", lambda: None, loop_alive=lambda _now: not hung.is_set())
    b = GroupStore(spec, "b", "boot-b", lambda: None)

    def members() -> set[str]:
        reply = etcd.post("/v3/kv/range", {"key": _b64(f"{key}/members/"),
                                           "range_end": _b64(f"{key}/members0")})
        return {base64.b64decode(kv["key"]).decode().rsplit("/", 1)[1] for kv in reply.get("kvs", [])}

    def ttl_left(lease: int) -> int:  # etcd's own word (-1: expired; 0 is left out)
        return int(etcd.post("/v3/lease/timetolive", {"ID": str(lease)}).get("TTL", 0))

    a.start()
    b.start()
    try:
        a.put_record({"name": "a"})
        b.put_record({"name": "b"})
        a.want(True, a.clock())
        poll_for(lambda: etcd.holder(key) == "a boot-a" and a.is_leader(), WAIT, "a to hold K")
        b.want(True, b.clock())  # b would take K, were it free
        poll_for(lambda: members() == {"a", "b"}, WAIT, "both records")
        lease = a.lease
        # while a's loop lives, its lease outlives the ttl by far (renewed every ttl / 6)
        time.sleep(ttl + 1)
        assert etcd.holder(key) == "a boot-a"
        assert ttl_left(lease) > 0

        hung.set()
        at = time.monotonic()
        poll_for(lambda: ttl_left(lease) == -1, WAIT, "a's lease to expire in etcd")
        expired_after = time.monotonic() - at
        # expired, not revoked: the last renewal was at most ttl / 6 before the hang
        assert ttl * 5 / 6 - 0.3 <= expired_after <= ttl + 1.0, expired_after
        poll_for(lambda: etcd.holder(key) == "b boot-b" and b.is_leader(), WAIT, "b to take K")
        assert members() == {"b"}  # a's record went with its lease: no ranking waits on it
        assert not a.held(a.clock()) and a.is_alive()
        assert a.lease == lease  # nothing granted meanwhile either
    finally:
        for store in (a, b):
            store.stop()
        for store in (a, b):
            store.join(5)


def test_the_leaders_group_loop_hung_its_threads_alive_pmon_stops_the_driver_and_another_takes_over(
        tmp_path, pmon, etcd):
    """A real group; only the main thread of the leader's redundancy manager stopped (its
    loop hangs; its sync with pmon and its etcd store run on): the store stops renewing, so
    a's lease expires in etcd and b becomes active; a's pmon stops a's driver first (the
    reports of a hung loop are stale), never two drivers. When the loop comes back, it finds
    its lease lost and is passive."""
    from hold_thread import main_thread_stopped

    group = Group(pmon, tmp_path, etcd)
    group.wait_active("a")
    manager = group.redundancy_manager("a")
    threads = [int(t) for t in os.listdir(f"/proc/{manager}/task") if int(t) != manager]
    lease = int(etcd.post("/v3/kv/range", {"key": _b64(KEY)})["kvs"][0]["lease"])
    since = time.time()
    with main_thread_stopped(manager):
        hung = time.monotonic()
        # the other threads run on (stopped, they would be "t" / "T")
        assert all(open(f"/proc/{manager}/task/{t}/stat").read().split(")")[-1].split()[0]
                   not in "tT" for t in threads)
        group.wait_active("b", TTL + 10)
        took = time.monotonic() - hung
        assert int(etcd.post("/v3/lease/timetolive", {"ID": str(lease)}).get("TTL", 0)) == -1
        assert group.holder() == "b"
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:  # a stays off while its loop hangs
            group.check("while a's group loop hangs")
            time.sleep(0.05)
    a_stop, b_start = handed_over(tmp_path, since)
    print(f"b active {took:.2f} s after the hang; a's driver stopped "
          f"{b_start - a_stop:.2f} s before b's started")
    assert took < TTL + 2 * 2.0 + 2, took  # the renewal's bound + ttl, and a margin
    poll_for(lambda: group.role("a") == "passive", WAIT, "a passive once its loop is back")
    assert group.running() == ["b"] and group.holder() == "b"
    assert group.redundancy_manager("a") == manager
