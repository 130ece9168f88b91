"""A handover's release phase (docs/redundancy.md "Fencing"), the stall of pmon judged by
the answer it owes, and the split-brain loser's restart: two real pmon on loopback linked
through the test relay (tests/relay.py), drivers that are slow to stop and write a stamp
at their start and at their real end (tests/children/child.py --stamp --stop-delay).

The rule under test: no moment where both servers run a run_on = "active" manager while
they hear each other."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from relay import Relay
from support import Pmon, child, pmon_cli, poll_for, write_pair

WAIT = 20  # generous deadlines: the machine is shared and may be slow
STOP_DELAY = 0.8  # a driver runs on this long after its SIGTERM


@pytest.fixture
def relay() -> Iterator[Relay]:
    instance = Relay(links=2)
    yield instance
    instance.close()


def slow_drivers(tmp_path: Path, stop_delay: float = STOP_DELAY):
    def for_server(server: str) -> list[dict[str, Any]]:
        return [
            {"name": "w", "command": child()},
            {"name": "drv", "run_on": "active", "seconds_to_kill": stop_delay + 4,
             "command": child("--stamp", str(tmp_path / f"stamp-{server}"),
                              "--stop-delay", str(stop_delay))},
        ]
    return for_server


def start_pair(pmon: Any, tmp_path: Path, relay: Relay, managers: Any = None,
               **redundancy: Any) -> tuple[Pmon, Pmon]:
    settings = {"error_state_delay": 0.3, "hold_down": 1, **redundancy}
    config_a, config_b = write_pair(tmp_path, relay, managers or slow_drivers(tmp_path),
                                    **settings)
    a, b = pmon(config_a, wait=False), pmon(config_b, wait=False)
    a.wait_ready(WAIT)
    b.wait_ready(WAIT)
    return a, b


def redu(server: Pmon) -> dict[str, Any]:
    return server.call("redu-status")


def roles(a: Pmon, b: Pmon, role_a: str, role_b: str) -> None:
    """Wait until the roles are these, both available, and the active's driver has
    stamped its start (it runs its own code, not only a spawn)."""
    active = a if role_a == "active" else b
    stamp = active.config.path.parent.parent / f"stamp-{active.config.redundancy.name}"

    def settled() -> bool:
        sa, sb = redu(a), redu(b)
        return (sa["role"], sb["role"]) == (role_a, role_b) and sa["partner_available"] \
            and sb["partner_available"] and any(end == float("inf") for _, end in runs(stamp))
    poll_for(settled, WAIT, f"a {role_a}, b {role_b}, both available, the driver running")


def switchovers(server: Pmon) -> list[tuple[str, str]]:
    return [(e["active"], e["reason"]) for e in server.events() if e["event"] == "switchover"]


def runs(path: Path) -> list[tuple[float, float]]:
    """Each run of a driver, (start, end) by its own stamps; a running one ends at +inf."""
    started: dict[str, float] = {}
    out = []
    for kind, at, pid in (line.split() for line in (
            path.read_text().splitlines() if path.exists() else [])):
        if kind == "start":
            started[pid] = float(at)
        else:
            out.append((started.pop(pid, 0.0), float(at)))
    return out + [(at, float("inf")) for at in started.values()]


def overlap(tmp_path: Path) -> float:
    """The longest time both servers' drivers ran at once (0.0: never)."""
    longest = 0.0
    for start_a, end_a in runs(tmp_path / "stamp-a"):
        for start_b, end_b in runs(tmp_path / "stamp-b"):
            longest = max(longest, min(end_a, end_b) - max(start_a, start_b))
    return longest


def test_a_planned_switchover_with_a_slow_driver_never_runs_two(tmp_path, pmon, relay):
    """set-active and prefer: the old active's driver runs on STOP_DELAY after its SIGTERM;
    the new active starts its own only after that (before the fix: both for ~STOP_DELAY)."""
    a, b = start_pair(pmon, tmp_path, relay)
    roles(a, b, "active", "passive")
    assert a.call("redu-prefer", server="b") is not None
    roles(a, b, "passive", "active")
    assert a.call("redu-set-active", server="a", force=False) is not None
    roles(a, b, "active", "passive")
    assert overlap(tmp_path) == 0.0, (runs(tmp_path / "stamp-a"), runs(tmp_path / "stamp-b"))
    assert switchovers(a) == [("b", "preference"), ("a", "forced")]
    assert not redu(a).get("releasing") and not redu(b).get("releasing")
    assert not redu(a).get("release_overrun", True)  # ended by pmon's word, not its bound


def test_an_error_state_switchover_with_a_slow_driver_never_runs_two(tmp_path, pmon, relay):
    a, b = start_pair(pmon, tmp_path, relay)
    roles(a, b, "active", "passive")
    a.call("stop", target="w", force=True)  # a's error state 1: b takes over
    roles(a, b, "passive", "active")
    a.call("start", target="w")  # repaired: back to a by preference after hold_down
    roles(a, b, "active", "passive")
    assert overlap(tmp_path) == 0.0, (runs(tmp_path / "stamp-a"), runs(tmp_path / "stamp-b"))
    assert switchovers(b) == [("b", "error state"), ("a", "preference")]


@pytest.mark.parametrize("seed", [15, 42])
def test_random_switchovers_never_run_two_drivers_while_connected(tmp_path, pmon, relay, seed):
    """A seeded run of random operator commands and error changes on random servers, at
    random intervals (some while a handover is still releasing); the links stay up. The
    rule: never two drivers while the servers hear each other."""
    rng = random.Random(seed)
    a, b = start_pair(pmon, tmp_path, relay, slow_drivers(tmp_path, 0.5))
    roles(a, b, "active", "passive")
    servers = {"a": a, "b": b}
    stopped: set[str] = set()
    done = []
    for _ in range(10):
        at = rng.choice("ab")
        action = rng.choice(["set-active", "prefer", "error"])
        target = rng.choice("ab")
        try:
            if action == "set-active":
                servers[at].call("redu-set-active", server=target, force=True)
            elif action == "prefer":
                servers[at].call("redu-prefer", server=target)
            elif at in stopped:
                servers[at].call("start", target="w")
                stopped.discard(at)
            else:
                servers[at].call("stop", target="w", force=True)
                stopped.add(at)
        except Exception as exc:  # a refusal (not available meanwhile) is an outcome too
            done.append((at, action, target, f"refused: {exc}"))
        else:
            done.append((at, action, target))
        time.sleep(rng.uniform(0.05, 1.5))  # the schedule of the faults, not a wait
    poll_for(lambda: [redu(s)["role"] for s in (a, b)].count("active") == 1
             and not redu(a).get("releasing") and not redu(b).get("releasing"), WAIT, "one active")
    assert redu(a)["partner_connected"] and redu(b)["partner_connected"]
    assert overlap(tmp_path) == 0.0, (done, runs(tmp_path / "stamp-a"), runs(tmp_path / "stamp-b"))


def test_a_pmon_stall_shorter_than_pmon_timeout_fences_nothing(tmp_path, pmon, relay):
    """SIGSTOP of the active's pmon for 1.5 s (pmon_timeout 2 s), six times, each at a
    random moment between two idle syncs: no fence, no switchover, the same driver runs on.
    Before the fix pmon was judged by its last answer (up to 1 s older than the stall), so
    about half of these stalls fenced."""
    rng = random.Random(2)
    a, b = start_pair(pmon, tmp_path, relay, pmon_timeout=2)
    roles(a, b, "active", "passive")
    driver = a.manager("drv")["pid"]
    for _ in range(6):
        time.sleep(rng.uniform(0, 1))  # the stall's phase against the idle sync
        os.kill(a.proc.pid, signal.SIGSTOP)
        try:
            time.sleep(1.5)  # the fault's length
        finally:
            os.kill(a.proc.pid, signal.SIGCONT)
        poll_for(lambda: redu(a)["redundancy_manager"] == "connected", WAIT, "a's sync")
        assert redu(a)["role"] == "active" and "pmon" not in redu(a)["error_breakdown"]
    assert a.manager("drv")["pid"] == driver
    assert switchovers(a) == [] and switchovers(b) == []
    assert not (tmp_path / "stamp-b").exists()


def test_a_fence_costs_one_switchover_and_the_fenced_server_waits_hold_down(
        tmp_path, pmon, relay):
    """pmon on the active stalls 3.5 s (over pmon_timeout + one idle sync): its redundancy
    manager fences and hands over, b takes the role; once pmon answers again a must not take
    it back within hold_down (the "pmon" error source stays that long), then it does, by
    preference. Before, a took it back hold_down after b's switchover, 1.6 s after its pmon
    answered here (and by preference 5 ms after, when b had not taken over yet)."""
    hold_down = 3.0
    a, b = start_pair(pmon, tmp_path, relay, pmon_timeout=2, hold_down=hold_down)
    roles(a, b, "active", "passive")
    os.kill(a.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(3.5)  # the fault's length
    finally:
        os.kill(a.proc.pid, signal.SIGCONT)
    resumed = time.monotonic()
    poll_for(lambda: redu(b)["role"] == "active", WAIT, "b to take over")
    # pmon a, just thawed, shows the role of its last sync for a moment (a CI-like run
    # asked it 5 ms after SIGCONT and read "active"): from its redundancy manager's word on
    poll_for(lambda: redu(a)["role"] == "passive", WAIT, "a's pmon to hear that a is passive")
    while time.monotonic() < resumed + hold_down - 0.5:  # a deadline, polling
        assert redu(a)["role"] == "passive", "a took the role back within hold_down"
        time.sleep(0.05)
    roles(a, b, "active", "passive")  # the way back, by preference, after hold_down
    assert switchovers(b) == [("b", "error state"), ("a", "preference")]
    assert [reason for _, reason in switchovers(a)] == ["fenced", "preference"]
    assert overlap(tmp_path) == 0.0, (runs(tmp_path / "stamp-a"), runs(tmp_path / "stamp-b"))


def test_a_reply_to_a_report_sent_before_the_restart_does_not_clear_it(tmp_path, relay):
    """The race of review finding 3, made exact: the split-brain loser decides to restart
    its project between a report and pmon's reply to it. That reply (pmon answered a report
    without restart_project) must not clear the restart; only a reply to a report that
    carried it does. The real redundancy manager (its links open on loopback), its threads
    not started: the test is the sync thread."""
    from pmon import config as config_module
    from pmon.redundancy.daemon import RedundancyManager

    config_a, _ = write_pair(tmp_path, relay, slow_drivers(tmp_path))
    manager = RedundancyManager(config_module.load(config_a))
    try:
        now = time.monotonic()
        before = manager.report(now)  # in flight when the arbitration decides
        assert before["restart_project"] is False
        manager.restart_pending = True  # what evaluate() does on a lost split brain
        manager._on_reply(now, {"seq": before.get("seq"), "breakdown": {}, "fence": []})
        after = manager.report(now)
        assert after["restart_project"] is True, "the restart was dropped"
        manager._on_reply(now, {"seq": after["seq"], "breakdown": {}, "fence": []})
        assert manager.report(now)["restart_project"] is False  # pmon has it now
    finally:
        manager.links.close()
        manager.wake_r.close()
        manager.wake_w.close()


def test_the_arbitration_never_takes_the_role_from_a_passive_partner_that_still_fences():
    """Pure: b would take the role (a handed over by preference: both name b), but while a
    says "fencing" (its release) b stays passive, for as long as a says it; then at once."""
    from pmon.redundancy.arbitration import Arbiter, Choice, Local, Partner, Role

    b = Arbiter("b", "a", Choice("b", 1), startup_wait=0.0)
    releasing = Partner("a", Role.PASSIVE, 0, True, "b", 2, preferred=Choice("b", 1),
                        boot="x", fencing=True)
    b.step(0.0, Local(0, True), Partner("a", Role.ACTIVE, 0, True, "b", 2, boot="x"))
    for tick in range(1, 100):  # 10 s of "fencing", heard all along
        assert b.step(tick * 0.1, Local(0, True), releasing).role is Role.PASSIVE
    done = Partner("a", Role.PASSIVE, 0, True, "b", 2, preferred=Choice("b", 1), boot="x")
    assert b.step(10.0, Local(0, True), done).role is Role.ACTIVE


def test_a_reload_that_lengthens_seconds_to_kill_lengthens_the_release(tmp_path, pmon, relay):
    """review 4, finding 7: the release's bound was taken from the config the redundancy
    manager started with. Here drv starts with seconds_to_kill 0.5 (bound 2.5 s with
    pmon_timeout 2) and runs on 4 s after SIGTERM; the reload gives it 8 s to stop. The
    old bound ended the release while a's driver still ran, and b started its own."""
    import tomli_w
    import tomllib

    a, b = start_pair(pmon, tmp_path, relay, slow_drivers(tmp_path, 4.0))
    for server in (a, b):
        data = tomllib.loads(server.config_path.read_text())
        for manager in data["managers"]:
            if manager["name"] == "drv":
                manager["seconds_to_kill"] = 0.5
        server.config_path.write_text(tomli_w.dumps(data))
    a.stop(), b.stop()
    a, b = pmon(a.config_path, wait=False), pmon(b.config_path, wait=False)
    roles(a, b, "active", "passive")
    data = tomllib.loads(a.config_path.read_text())
    for manager in data["managers"]:
        if manager["name"] == "drv":
            manager["seconds_to_kill"] = 8
    a.config_path.write_text(tomli_w.dumps(data))
    assert redu(a)["release_bound"] == 2.5
    assert pmon_cli(a.config_path, "reload").returncode == 0
    poll_for(lambda: redu(a)["release_bound"] == 10, WAIT, "the new bound at the redundancy manager")
    assert a.call("redu-prefer", server="b") is not None
    roles(a, b, "passive", "active")
    assert overlap(tmp_path) == 0.0, (runs(tmp_path / "stamp-a"), runs(tmp_path / "stamp-b"))
    assert not redu(a).get("release_overrun", True)
