"""The pair on a real network: two network namespaces joined by two veth links
(tests/netpair.py), one pmon per namespace with the default [redundancy] timing, faults made
with tc filters (loss, cuts per direction) and `ip link`. Needs root; skips otherwise."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import psutil
import pytest

from netpair import NetPair
from support import Pmon, child, pmon_cli, poll_for, write_pair

WAIT = 15
DEFAULTS = {"heartbeat_interval": 0.2, "timeout": 0.6, "first_active_change_interval": 5}

_why = NetPair.unavailable()
pytestmark = pytest.mark.skipif(_why is not None, reason=_why or "")


@pytest.fixture
def net() -> Iterator[NetPair]:
    pair = NetPair()
    try:
        yield pair
    finally:
        pair.close()


def drivers(tmp_path: Path):
    def for_server(server: str) -> list[dict[str, Any]]:
        return [
            {"name": "w", "command": child("--on-usr1", str(tmp_path / f"usr1-{server}")),
             "notify_switchover": True},
            {"name": "drv", "command": child("--record", str(tmp_path / f"drv-{server}")),
             "run_on": "active", "notify_switchover": True},
        ]
    return for_server


def start(pmon: Any, tmp_path: Path, net: NetPair, managers: Any = None,
          **redundancy: Any) -> tuple[Pmon, Pmon]:
    config_a, config_b = write_pair(tmp_path, net, managers or drivers(tmp_path),
                                    **{**DEFAULTS, **redundancy})
    a = pmon(config_a, wait=False, prefix=net.prefix("a"))
    b = pmon(config_b, wait=False, prefix=net.prefix("b"))
    a.wait_ready(WAIT)
    b.wait_ready(WAIT)
    return a, b


def redu(server: Pmon) -> dict[str, Any]:
    return server.call("redu-status")


def settled(a: Pmon, b: Pmon, active: str) -> None:
    def ok() -> bool:
        sa, sb = redu(a), redu(b)
        roles = {"a": sa["role"], "b": sb["role"]}
        want = {active: "active", ("b" if active == "a" else "a"): "passive"}
        return roles == want and sa["partner_available"] and sb["partner_available"]
    poll_for(ok, WAIT, f"{active} active, the other passive, both available")
    (a if active == "a" else b).wait_state("drv", "running", WAIT)


def switchovers(*servers: Pmon) -> list[tuple[str, str, str]]:
    return [(s.config.project.name, e["active"], e["reason"])
            for s in servers for e in s.events() if e["event"] == "switchover"]


def hold(seconds: float, *servers: Pmon) -> None:
    """Watch the pair for `seconds` (a deadline, polling): fail at once on a switchover."""
    before = switchovers(*servers)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        now = switchovers(*servers)
        assert now == before, f"switchovers during the fault: {now[len(before):]}"
        time.sleep(0.1)


def test_the_network_harness_drops_the_share_it_is_told_one_way_only(net):
    """The harness itself: 40 % loss a -> b on link 1 drops about that share, b -> a none."""
    receive = ("import socket, sys\n"
               "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], 9000))\n"
               "print('ready', flush=True); s.settimeout(1.0); n = 0\n"
               "try:\n    while True: s.recv(100); n += 1\n"
               "except socket.timeout: print(n)\n")
    send = ("import socket, sys, time\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "for i in range(500):\n    s.sendto(b'x', (sys.argv[1], 9000)); time.sleep(0.0005)\n")
    net.loss(1, 40, sender="a")

    def count(sender: str, receiver: str) -> int:
        link = net.links[0]
        rx = subprocess.Popen([*net.prefix(receiver), sys.executable, "-c", receive,
                               link.address(receiver)], stdout=subprocess.PIPE, text=True)
        assert rx.stdout is not None and rx.stdout.readline().strip() == "ready"
        subprocess.run([*net.prefix(sender), sys.executable, "-c", send, link.address(receiver)],
                       check=True, timeout=30)
        out, _ = rx.communicate(timeout=30)
        return int(out)

    assert 200 <= count("a", "b") <= 400  # about 300 of 500 pass
    assert count("b", "a") >= 495
    net.cut(1, sender="b")
    assert count("b", "a") == 0


def test_on_a_real_network_the_preferred_server_is_active_and_one_link_down_changes_nothing(
        tmp_path, pmon, net):
    a, b = start(pmon, tmp_path, net)
    settled(a, b, "a")
    assert b.manager("drv")["state"] == "stopped"
    net.down(1)
    poll_for(lambda: not redu(a)["links"][0]["up"] and not redu(b)["links"][0]["up"], WAIT,
             "link 1 down on both sides")
    hold(3, a, b)
    net.up(1)
    poll_for(lambda: all(l["up"] for s in (a, b) for l in redu(s)["links"]), WAIT, "links up")
    assert switchovers(a, b) == []


def test_loss_up_to_30_percent_on_both_links_or_one_way_costs_no_switchover(tmp_path, pmon, net):
    a, b = start(pmon, tmp_path, net)
    settled(a, b, "a")
    for percent in (10, 20, 30):  # both links, both ways
        net.loss(None, percent)
        hold(4, a, b)
    net.loss(None, 0)
    net.loss(None, 30, sender="b")  # one way, toward the active
    hold(4, a, b)
    net.loss(None, 0)
    net.loss(None, 30, sender="a")  # one way, from the active
    hold(4, a, b)
    assert redu(a)["role"] == "active" and redu(b)["role"] == "passive"
    assert not (tmp_path / "drv-b").exists()  # b's driver never started


def flap(net: NetPair, links: list[int], periods: list[float]) -> None:
    for period in periods:
        for link in links:
            net.cut(link)
        time.sleep(period)  # the fault's own schedule, not a wait for the system
        for link in links:
            net.restore(link)
        time.sleep(period)


def test_a_flapping_link_costs_no_switchover_and_both_links_flapping_one_split_brain(
        tmp_path, pmon, net):
    a, b = start(pmon, tmp_path, net)
    settled(a, b, "a")
    flap(net, [1], [0.4, 0.4, 0.6, 0.6, 0.8, 0.8])  # link 1 up and down around the timeout
    hold(1, a, b)
    assert switchovers(a, b) == []
    flap(net, [1, 2], [0.7] * 6)  # every link: a split brain, then failure is damped
    poll_for(lambda: redu(a)["role"] == "active" and redu(b)["role"] == "passive"
             and redu(b)["partner_connected"], WAIT, "a active again")
    events = switchovers(a, b)
    assert len(events) <= 2, events  # b active by failure once, and back
    restarts = [e for s in (a, b) for e in s.events() if e["event"] == "project-restart"]
    assert len(restarts) <= 1, restarts


def alive(pid: int | None) -> bool:
    try:
        return pid is not None and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def driver_pids(path: Path) -> list[int]:
    return [int(line.split()[1]) for line in path.read_text().splitlines()] if path.exists() else []


def watch_drivers(seconds: float, tmp_path: Path) -> float:
    """Sample both servers' drivers every 20 ms for `seconds`; the longest time both ran."""
    longest, since = 0.0, None
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        both = all(any(alive(p) for p in driver_pids(tmp_path / f"drv-{s}")) for s in "ab")
        now = time.monotonic()
        if both and since is None:
            since = now
        if not both and since is not None:
            longest, since = max(longest, now - since), None
        time.sleep(0.02)
    return max(longest, 0.0 if since is None else time.monotonic() - since)


# 4 s: pmon is late pmon_timeout (2 s) after the first request it leaves unanswered, which
# goes out up to SYNC_IDLE (1 s) into the stall; 3 s was the very edge
@pytest.mark.parametrize("stall", [1.0, 4.0])
def test_a_stalled_pmon_never_leaves_two_drivers_running(tmp_path, pmon, net, stall):
    a, b = start(pmon, tmp_path, net)
    settled(a, b, "a")
    os.kill(a.proc.pid, signal.SIGSTOP)
    try:
        both = watch_drivers(stall, tmp_path)
    finally:
        os.kill(a.proc.pid, signal.SIGCONT)
    both = max(both, watch_drivers(2, tmp_path))
    assert both == 0.0, f"two drivers ran for {both:.2f} s"
    if stall < 2:  # shorter than pmon_timeout: the pair noticed nothing
        assert switchovers(a, b) == []
    else:  # a fenced its driver and handed over; b took the role once
        poll_for(lambda: redu(b)["role"] == "active", WAIT, "b active")
        assert switchovers(b) == [(b.config.project.name, "b", "error state")]
        assert [e["reason"] for e in a.events() if e["event"] == "switchover"] == ["fenced"]


def test_a_one_way_partition_is_resolved_the_side_that_hears_yields(tmp_path, pmon, net):
    a, b = start(pmon, tmp_path, net)
    settled(a, b, "a")
    net.cut(None, sender="a")  # a -> b lost on both links: b hears nothing, a hears b
    poll_for(lambda: redu(b)["role"] == "active" and redu(a)["role"] == "passive", WAIT,
             "a to yield to b, which claims the role by failure")
    b.wait_state("drv", "running", WAIT)
    restarts = [e for e in a.events() if e["event"] == "project-restart"]
    assert restarts and "split-brain" in restarts[-1]["reason"]
    net.restore()
    poll_for(lambda: redu(a)["partner_connected"] and redu(b)["partner_connected"], WAIT,
             "contact both ways")
    hold(2, a, b)
    assert redu(b)["role"] == "active" and redu(a)["role"] == "passive"


@pytest.mark.parametrize("seed", [15])
def test_chaos_random_loss_up_to_30_percent_per_link_and_direction_never_switches(
        tmp_path, pmon, net, seed):
    """A seeded chaos run: every second each link and direction gets a new loss rate in
    0-30 %, for 10 s. The rule: loss up to 30 % costs no switchover."""
    import random

    rng = random.Random(seed)
    a, b = start(pmon, tmp_path, net)
    settled(a, b, "a")
    for _ in range(10):
        for link in (1, 2):
            for sender in ("a", "b"):
                net.loss(link, rng.uniform(0, 30), sender)
        hold(1, a, b)
    assert not (tmp_path / "drv-b").exists()


def test_a_beat_at_rest_sends_what_a_full_step_would_whatever_happens(tmp_path, pmon, net):
    """At rest a beat repeats the settled heartbeat instead of an arbitration step (the idle
    CPU). PMON_REST_CHECK=1 makes every such beat take the full step too, and stops the
    redundancy manager (exit 70, a line in its log) if that sent anything else. A seeded run
    of what changes a step's inputs: loss and cuts per link and direction, a weighted
    manager stopped and started, prefer and set-active, quiet spells. The rule: the shortcut
    is taken, and never differs from the full step."""
    import random

    seed = int(os.environ.get("PMON_CHAOS_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)

    def managers(server: str) -> list[dict[str, Any]]:
        return [*drivers(tmp_path)(server), {"name": "w2", "command": child(), "weight": 1}]

    config_a, config_b = write_pair(tmp_path, net, managers, **DEFAULTS)
    servers = {name: pmon(path, wait=False, prefix=net.prefix(name), env={"PMON_REST_CHECK": "1"})
               for name, path in (("a", config_a), ("b", config_b))}
    for server in servers.values():
        server.wait_ready(WAIT)
    settled(servers["a"], servers["b"], "a")
    kinds = ["loss", "cut", "weight", "prefer", "set-active", "quiet"]
    schedule = kinds * 2 + [rng.choice(kinds) for _ in range(4)]  # each kind at least twice
    rng.shuffle(schedule)
    for action in schedule:
        roles = {name: redu(s)["role"] for name, s in servers.items()}
        active = [name for name, role in roles.items() if role == "active"]
        # mostly on the active server: a change of its error state is what the pair waits on
        name = active[0] if active and rng.random() < 0.7 else rng.choice("ab")
        server = servers[name]
        if action == "loss":
            net.loss(rng.choice((1, 2)), rng.uniform(5, 40), rng.choice("ab"))
        elif action == "cut":
            net.cut(rng.choice((1, 2)), rng.choice(["a", "b", None]))
        elif action == "weight":
            if server.manager("w2")["state"] == "running":
                server.call("stop", target="w2", force=True)
            else:
                server.call("start", target="w2")
        elif action in ("prefer", "set-active"):
            pmon_cli(server.config_path, "redu", action, rng.choice("ab"))
        time.sleep(rng.uniform(0.3, 1.5))
        if rng.random() < 0.4:
            net.restore()
    net.restore()
    for server in servers.values():
        if server.manager("w2")["state"] != "running":
            server.call("start", target="w2")

    def quiet() -> bool:
        sa, sb = redu(servers["a"]), redu(servers["b"])
        return {sa["role"], sb["role"]} == {"active", "passive"} and all(
            s["partner_available"] and not s["fencing"] and not s["releasing"] for s in (sa, sb))
    poll_for(quiet, WAIT, f"the pair settled after the faults (seed {seed})")
    # and, on a quiet network, what the arbitration waits on: an error state that changed
    # moves the role once it has lasted error_state_delay (and back after hold_down)
    active = next(name for name, s in servers.items() if redu(s)["role"] == "active")
    other = "b" if active == "a" else "a"
    servers[active].call("stop", target="w2", force=True)
    poll_for(lambda: redu(servers[other])["role"] == "active", WAIT, f"{other} active (seed {seed})")
    servers[active].call("start", target="w2")
    preferred = redu(servers["a"])["preferred"]  # the schedule's prefer may have moved it
    poll_for(lambda: redu(servers[preferred])["role"] == "active" and quiet(), WAIT,
             f"{preferred} active again by preference (seed {seed})")
    before = {name: redu(s)["beats"]["rest"] for name, s in servers.items()}
    poll_for(lambda: all(redu(s)["beats"]["rest"] >= before[n] + 5 for n, s in servers.items()),
             WAIT, f"beats at rest on both servers (seed {seed})")
    for name, server in servers.items():
        log = (server.config.project.state_dir / "log" / "redundancy.log").read_text()
        assert "PMON_REST_CHECK" not in log, f"seed {seed}: {name}: {log[-2000:]}"
        # it ended only when a lost split brain (both links cut one way) restarted the
        # project, never by an exit of its own (70: the check failed)
        ends = [(e["exit_code"], e["action"]) for e in server.events()
                if e["event"] == "exited" and e.get("manager") == "redundancy"]
        assert set(ends) <= {(0, "stopped")}, f"seed {seed}: {name}: {ends}"
        restarts = [e for e in server.events() if e["event"] == "project-restart"]
        assert len(ends) <= len(restarts), f"seed {seed}: {name}: {ends}, {restarts}"
