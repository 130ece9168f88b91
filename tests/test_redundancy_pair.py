"""Two real pmon instances on loopback, each with its redundancy manager, linked through a
UDP relay the test controls (tests/relay.py)."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import pytest
import tomli_w

from relay import Relay
from support import Pmon, child, kill_project_processes, kill_tree, pmon_cli, poll_for, write_pair

WAIT = 15  # generous deadlines: the machine is shared and may be slow


@pytest.fixture
def relay() -> Iterator[Relay]:
    instance = Relay(links=2)
    yield instance
    instance.close()


def managers(tmp_path: Path):
    def for_server(server: str) -> list[dict[str, Any]]:
        usr1 = str(tmp_path / f"usr1-{server}")
        return [
            {"name": "w", "command": child("--on-usr1", usr1), "notify_switchover": True},
            {"name": "drv", "command": child("--record", str(tmp_path / f"drv-{server}")),
             "run_on": "active", "weight": 2},
        ]
    return for_server


def redu(server: Pmon) -> dict[str, Any]:
    return server.call("redu-status")


def wait_roles(a: Pmon, b: Pmon, role_a: str, role_b: str, connected: bool = True) -> None:
    def settled() -> bool:
        sa, sb = redu(a), redu(b)
        return (sa["role"], sb["role"]) == (role_a, role_b) and (
            not connected or (sa["partner_available"] and sb["partner_available"]))
    try:
        poll_for(settled, WAIT, f"a {role_a}, b {role_b}")
    except AssertionError as exc:
        history = {s.config.project.name: [(e["ts"], e["message"]) for e in s.events()][-12:]
                   for s in (a, b)}
        raise AssertionError(f"{exc}; now: {redu(a)}, {redu(b)}; events: {history}") from None


def start_pair(
    pmon, tmp_path: Path, relay: Relay, managers_of: Any = None, **redundancy: Any
) -> tuple[Pmon, Pmon]:
    """Start both servers; `managers_of(server)` lists each one's managers (default: the
    standard set of `managers`)."""
    config_a, config_b = write_pair(tmp_path, relay, managers_of or managers(tmp_path), **redundancy)
    a, b = pmon(config_a, wait=False), pmon(config_b, wait=False)
    a.wait_ready(WAIT)
    b.wait_ready(WAIT)
    return a, b


def switchovers(server: Pmon) -> list[dict[str, Any]]:
    return [e for e in server.events() if e["event"] == "switchover"]


def test_pair_starts_the_preferred_active_and_obeys_prefer_and_set_active(tmp_path, pmon, relay):
    a, b = start_pair(pmon, tmp_path, relay)
    wait_roles(a, b, "active", "passive")
    a.wait_state("drv", "running")
    assert b.manager("drv")["state"] == "stopped"  # run_on = "active"
    refused = b.call  # an operator cannot start an active-only manager on the passive
    with pytest.raises(Exception, match='runs only on the active server'):
        refused("start", target="drv")

    status = pmon_cli(a.config_path, "redu", "status")
    assert status.returncode == 0
    assert "server a: active" in status.stdout and "partner b: passive, available" in status.stdout
    assert status.stdout.count(": up (") == 2

    # priority 4: prefer b -> b takes over (equal error states)
    result = pmon_cli(a.config_path, "redu", "prefer", "b")
    assert result.returncode == 0, result.stderr
    wait_roles(a, b, "passive", "active")
    b.wait_state("drv", "running")
    a.wait_state("drv", "stopped")
    last = switchovers(b)[-1]
    assert (last["active"], last["reason"]) == ("b", "preference")
    # the managers that asked for it heard of the switchover (SIGUSR1), on both servers
    poll_for(lambda: (tmp_path / "usr1-a").exists() and (tmp_path / "usr1-b").exists(), WAIT,
             "SIGUSR1 to notify_switchover managers")

    # priority 2: set-active a (from b), whatever the preference
    result = pmon_cli(b.config_path, "redu", "set-active", "a")
    assert result.returncode == 0, result.stderr
    assert "a is active" in result.stdout
    wait_roles(a, b, "active", "passive")
    assert (switchovers(a)[-1]["active"], switchovers(a)[-1]["reason"]) == ("a", "forced")
    as_json = json.loads(pmon_cli(b.config_path, "redu", "status", "--json").stdout)
    assert as_json["last_switchover"]["reason"] == "forced" and as_json["preferred"] == "b"

    # garbage on a link (from a's address: through the relay) is dropped and counted,
    # never acted on
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"\x00garbage", relay.links[0].a_side.getsockname())
        sock.sendto(b'{"v": 1, "from": "mallory"}', relay.links[0].a_side.getsockname())
    poll_for(lambda: redu(b)["dropped"].get("garbage", 0) >= 2, WAIT, "garbage counted")
    assert redu(b)["role"] == "passive"


def test_split_brain_refuses_planned_stops_then_resolves_to_the_lower_error_state(tmp_path, pmon, relay):
    # a long first_active_change_interval: once a has lost and restarted its project, it is
    # healthy and preferred again, but b keeps the role (a's restart was a connection error)
    a, b = start_pair(pmon, tmp_path, relay, first_active_change_interval=60)
    wait_roles(a, b, "active", "passive")
    relay.cut()  # every link down, both servers alive
    poll_for(lambda: redu(b)["role"] == "active" and redu(a)["partner_connected"] is False,
             WAIT, "split brain")
    b.wait_state("drv", "running")
    a.wait_state("drv", "running")
    assert redu(a)["error_breakdown"] == {"link 1": 1, "link 2": 1}

    for args in (("stop", "--all"), ("shutdown",), ("redu", "set-active", "b")):
        result = pmon_cli(a.config_path, *args)
        assert result.returncode == 1, args
        assert "not connected" in result.stderr, result.stderr
    assert a.status()["project_state"] == "running"

    a.call("stop", target="w")  # a gets worse while alone: it must lose
    poll_for(lambda: "manager w" in redu(a)["error_breakdown"], WAIT, "a's error state to count w")
    relay.restore()
    wait_roles(a, b, "passive", "active")
    restarts = [e for e in a.events() if e["event"] == "project-restart"]
    assert restarts and "split-brain" in restarts[-1]["reason"]
    assert any(e["reason"] == "split-brain resolution" for e in switchovers(a))
    a.wait_state("drv", "stopped")
    a.wait_state("w", "running")  # the restarted project runs every manager again
    assert not [e for e in b.events() if e["event"] == "project-restart"]

    # stopping the passive's project needs no partner: it is never refused
    assert pmon_cli(a.config_path, "stop", "--all").returncode == 0


def test_killing_the_active_server_makes_the_passive_take_over_once(tmp_path, pmon, relay):
    a, b = start_pair(pmon, tmp_path, relay)
    wait_roles(a, b, "active", "passive")
    kill_tree(a.proc.pid)
    poll_for(lambda: redu(b)["role"] == "active", WAIT, "b to take over")
    b.wait_state("drv", "running")
    events = switchovers(b)
    assert [(e["active"], e["reason"]) for e in events] == [("b", "failure")]
    # alone now: b's project may not be stopped without --force
    result = pmon_cli(b.config_path, "stop", "--all")
    assert result.returncode == 1 and "--force" in result.stderr
    for restart in (("restart", "--all"), ("restart", "redundancy")):  # nor restarted
        result = pmon_cli(b.config_path, *restart)
        assert result.returncode == 1 and "--force" in result.stderr, result.stderr
    assert pmon_cli(b.config_path, "stop", "--all", "--force").returncode == 0


def test_a_stopped_weighted_manager_hands_the_active_role_over(tmp_path, pmon, relay):
    a, b = start_pair(pmon, tmp_path, relay)
    wait_roles(a, b, "active", "passive")
    a.call("stop", target="w", force=True)  # a stop that switches the pair over needs force
    wait_roles(a, b, "passive", "active")
    status = redu(b)
    assert status["partner_error_breakdown"] == {"manager w": 1}
    assert status["error_state"] == 0
    assert switchovers(b)[-1]["reason"] == "error state"
    a.call("start", target="w")  # repaired: equal error states, a is preferred again
    wait_roles(a, b, "active", "passive")
    assert switchovers(a)[-1]["reason"] == "preference"


def stamps(path: Path) -> list[tuple[str, float]]:
    if not path.exists():
        return []
    return [(kind, float(at)) for kind, at, _pid in (l.split() for l in path.read_text().splitlines())]


def test_pmon_killed_alone_on_the_active_its_driver_is_fenced_before_the_partner_starts_one(
        tmp_path, pmon, relay):
    def for_server(server: str) -> list[dict[str, Any]]:
        return [{"name": "drv", "command": child("--stamp", str(tmp_path / f"stamp-{server}")),
                 "run_on": "active"}]

    a, b = start_pair(pmon, tmp_path, relay, for_server)
    wait_roles(a, b, "active", "passive")
    a.wait_state("drv", "running")
    a.proc.kill()  # pmon alone dies (and stays down); its driver and redundancy manager run on
    poll_for(lambda: redu(b)["role"] == "active", WAIT, "b to take over from the orphan")
    b.wait_state("drv", "running")
    poll_for(lambda: stamps(tmp_path / "stamp-b"), WAIT, "b's driver to start")
    stopped_a = [at for kind, at in stamps(tmp_path / "stamp-a") if kind == "stop"]
    started_b = [at for kind, at in stamps(tmp_path / "stamp-b") if kind == "start"]
    assert stopped_a and stopped_a[0] < started_b[0], (stopped_a, started_b)
    reasons = [e["reason"] for e in switchovers(b)]
    assert reasons == ["error state"]  # a fenced its driver, went passive: a's pmon weighs 1


def test_a_standalone_project_has_no_pair_and_is_never_refused_a_stop(tmp_path, pmon):
    from support import write_project

    config = write_project(tmp_path, [{"name": "w", "command": child(), "run_on": "active"}])
    server = pmon(config)
    server.wait_state("w", "running")  # run_on = "active" runs on a standalone server
    result = pmon_cli(config, "redu", "status")
    assert result.returncode == 0 and "standalone" in result.stdout
    result = pmon_cli(config, "redu", "set-active")
    assert result.returncode == 1 and "add a [redundancy] section" in result.stderr
    assert pmon_cli(config, "stop", "--all").returncode == 0


def test_a_partner_with_a_blocked_manager_is_not_available(tmp_path, pmon, relay):
    def for_server(server: str) -> list[dict[str, Any]]:
        listed = managers(tmp_path)(server)
        if server == "b":  # dies at once and may not be restarted: blocked
            listed.append({"name": "bad", "command": child("--exit-after", "0", "--code", "1"),
                           "restart_count": 0})
        return listed

    a, b = start_pair(pmon, tmp_path, relay, for_server)
    poll_for(lambda: redu(a)["role"] == "active" and redu(a)["partner_connected"]
             and redu(a)["partner_error_breakdown"] == {"manager bad": 1}, WAIT, "b's blocked manager")
    assert redu(a)["partner_available"] is False
    for args in (("redu", "set-active", "b"), ("stop", "--all"), ("shutdown",)):
        result = pmon_cli(a.config_path, *args)
        assert result.returncode == 1, args
        assert "not available" in result.stderr and "--force" in result.stderr, result.stderr
    # forced: b takes the role although its project has a blocked manager
    result = pmon_cli(a.config_path, "redu", "set-active", "b", "--force")
    assert result.returncode == 0, result.stderr
    wait_roles(a, b, "passive", "active", connected=False)


def test_a_lost_split_brain_does_not_undo_an_operators_forced_stop(tmp_path, pmon, relay):
    def for_server(server: str) -> list[dict[str, Any]]:
        listed = managers(tmp_path)(server)
        if server == "a":  # a slow stop keeps a's stop sequence (and redundancy manager) going
            listed[0] = {**listed[0], "command": child("--ignore-term"), "seconds_to_kill": 30}
        return listed

    a, b = start_pair(pmon, tmp_path, relay, for_server)
    wait_roles(a, b, "active", "passive")
    relay.cut()
    poll_for(lambda: redu(b)["role"] == "active" and redu(a)["partner_connected"] is False,
             WAIT, "split brain")
    a.call("stop-all", force=True, wait=False)
    poll_for(lambda: a.status()["project_state"] == "stopping", WAIT, "a's project to stop")
    relay.restore()  # a lost the split brain while its operator stops it
    poll_for(lambda: redu(a)["role"] == "passive", WAIT, "a to lose the split brain")
    kill_tree(a.manager("w")["pid"])  # do not wait for seconds_to_kill
    poll_for(lambda: a.status()["project_state"] == "stopped", WAIT, "a's project stopped")
    assert not [e for e in a.events() if e["event"] == "project-restart"]
    assert all(m["state"] != "running" for m in a.status()["managers"])


def test_back_to_active_while_an_active_only_manager_still_stops_starts_it_again(tmp_path, pmon, relay):
    def for_server(server: str) -> list[dict[str, Any]]:
        listed = managers(tmp_path)(server)
        if server == "a":  # drv outlives the switch to passive and back
            listed[1] = {**listed[1], "command": child("--ignore-term"), "seconds_to_kill": 30}
        return listed

    a, b = start_pair(pmon, tmp_path, relay, for_server)
    wait_roles(a, b, "active", "passive")
    old = a.wait_state("drv", "running")["pid"]
    assert pmon_cli(a.config_path, "redu", "prefer", "b").returncode == 0
    # a hands over, but b waits while a's driver still stops (the release): never two
    poll_for(lambda: redu(a)["role"] == "passive" and redu(a)["releasing"], WAIT, "a releasing")
    a.wait_state("drv", "stopping")
    assert redu(b)["role"] == "passive"
    assert pmon_cli(a.config_path, "redu", "prefer", "a").returncode == 0
    wait_roles(a, b, "active", "passive")
    kill_tree(old)  # do not wait for seconds_to_kill
    poll_for(lambda: a.manager("drv")["state"] == "running" and a.manager("drv")["pid"] != old,
             WAIT, "drv to start again on the active a")


def test_reload_on_the_passive_server_obeys_run_on(tmp_path, pmon, relay):
    a, b = start_pair(pmon, tmp_path, relay)
    wait_roles(a, b, "active", "passive")
    b.wait_state("w", "running")
    data = tomllib.loads(b.config_path.read_text())
    w, drv = data["managers"]
    data["managers"] = [
        {**w, "run_on": "active"},                              # both -> active: stopped
        {**drv, "command": child("--print", "v2")},             # changed, stays held
        {"name": "new", "command": child(), "run_on": "active"},  # added, held
        {"name": "was", "command": child(), "run_on": "active"},
    ]
    b.config_path.write_text(tomli_w.dumps(data))
    result = pmon_cli(b.config_path, "reload")
    assert result.returncode == 0, result.stderr
    b.wait_state("w", "stopped")
    assert {m["name"]: m["state"] for m in b.status()["managers"]} == {
        "redundancy": "running", "w": "stopped", "drv": "stopped", "new": "stopped",
        "was": "stopped"}

    data["managers"][3] = {**data["managers"][3], "run_on": "both"}  # active -> both: runs
    b.config_path.write_text(tomli_w.dumps(data))
    assert pmon_cli(b.config_path, "reload").returncode == 0
    b.wait_state("was", "running")

    # the managers held back start when b becomes active
    assert pmon_cli(a.config_path, "redu", "prefer", "b").returncode == 0
    wait_roles(a, b, "passive", "active")
    for name in ("w", "drv", "new"):
        b.wait_state(name, "running")


def stays(predicate: Any, seconds: float) -> None:
    """`predicate` holds at every poll for `seconds` (a deadline, not a sleep)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert predicate()
        time.sleep(0.05)


def test_a_forced_choice_ends_when_overruled_and_when_the_forced_server_fails(tmp_path, pmon, relay):
    a, b = start_pair(pmon, tmp_path, relay, hold_down=0.5)
    wait_roles(a, b, "active", "passive")
    assert pmon_cli(a.config_path, "redu", "set-active", "b").returncode == 0
    wait_roles(a, b, "passive", "active")
    forced = redu(a)["forced"]
    assert (forced["server"], forced["by"], forced["ended"]) == ("b", "set-active on a", None)
    assert "forced: b, in force; given " in pmon_cli(a.config_path, "redu", "status").stdout

    b.call("stop", target="w", force=True)  # b gets worse (--force: it switches over): the forced choice is overruled, a takes over
    wait_roles(a, b, "active", "passive")
    poll_for(lambda: (redu(a)["forced"] or {}).get("ended") == "overruled", WAIT, "ended")
    b.call("start", target="w")  # the error states are equal again: the choice stays ended
    poll_for(lambda: redu(b)["error_state"] == 0 and redu(a)["partner_error_state"] == 0, WAIT,
             "b repaired")
    stays(lambda: redu(a)["role"] == "active", 2)  # > error_state_delay + hold_down
    assert [e["reason"] for e in switchovers(a)] == ["forced", "error state"]
    assert "ended" in pmon_cli(b.config_path, "redu", "status").stdout

    # forced again, then the forced server crashes and comes back: it stays passive
    assert pmon_cli(a.config_path, "redu", "set-active", "b").returncode == 0
    wait_roles(a, b, "passive", "active")
    kill_tree(b.proc.pid)
    poll_for(lambda: redu(a)["role"] == "active", WAIT, "a to take over")
    assert redu(a)["forced"]["ended"] == "failure"
    b2 = pmon(b.config_path, wait=False)
    b2.wait_ready(WAIT)
    wait_roles(a, b2, "active", "passive")
    stays(lambda: redu(a)["role"] == "active" and redu(b2)["role"] == "passive", 2)
    assert redu(b2)["forced"]["ended"] == "failure"


def usr1_lines(path: Path) -> list[str]:
    return [l.split()[0] for l in path.read_text().splitlines()] if path.exists() else []


def test_the_general_query_reaches_the_managers_that_keep_running_on_both_servers(
        tmp_path, pmon, relay):
    def for_server(server: str) -> list[dict[str, Any]]:
        usr1 = str(tmp_path / f"usr1-{server}")
        return [{"name": "w", "command": child("--on-usr1", usr1), "notify_switchover": True},
                {"name": "drv", "command": child("--on-usr1", usr1), "run_on": "active",
                 "notify_switchover": True}]

    a, b = start_pair(pmon, tmp_path, relay, for_server, first_active_change_interval=60)
    wait_roles(a, b, "active", "passive")
    a.wait_state("drv", "running")
    assert pmon_cli(a.config_path, "redu", "set-active", "b").returncode == 0
    wait_roles(a, b, "passive", "active")
    a.wait_state("drv", "stopped")
    poll_for(lambda: usr1_lines(tmp_path / "usr1-a") == ["w"] and usr1_lines(tmp_path / "usr1-b") == ["w"],
             WAIT, "SIGUSR1 to w on both servers")
    # a's drv was being stopped, b's had just started: neither got a query
    assert "drv" not in usr1_lines(tmp_path / "usr1-a") + usr1_lines(tmp_path / "usr1-b")

    relay.cut()  # split brain; a gets worse while alone and loses it
    poll_for(lambda: redu(a)["role"] == "active", WAIT, "split brain")
    a.call("stop", target="w")
    relay.restore()
    wait_roles(a, b, "passive", "active")
    poll_for(lambda: usr1_lines(tmp_path / "usr1-b").count("w") == 2
             and usr1_lines(tmp_path / "usr1-b").count("drv") == 1, WAIT,
             "the survivor's w and drv queried")
    event = b.wait_event("general-query", reason="the partner lost a split brain")
    assert set(event["managers"]) == {"w", "drv"}


def test_a_fence_takes_the_drivers_helpers_along_in_its_cgroup(tmp_path, pmon, relay):
    """With cgroups, a fenced driver's setsid and daemonised helpers (in its cgroup, not in
    its process group) die with it before the partner starts its own (review 2, finding 1)."""
    import os
    import sys

    import psutil

    from support import cgroups_writable

    if why := cgroups_writable():
        pytest.skip(why)
    daemonizer = str(Path(__file__).parent / "children" / "daemonizer.py")

    def for_server(server: str) -> list[dict[str, Any]]:
        return [{"name": "drv", "command": [sys.executable, daemonizer, str(tmp_path / f"rec-{server}")],
                 "run_on": "active"}]

    def recorded() -> list[int]:
        path = tmp_path / "rec-a"
        return [int(line.split()[1]) for line in path.read_text().splitlines()] if path.exists() else []

    def alive(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    a, b = start_pair(pmon, tmp_path, relay, for_server)
    wait_roles(a, b, "active", "passive")
    pids = poll_for(lambda: len(r := recorded()) == 3 and r, WAIT, "a's driver and its helpers")
    try:
        a.proc.kill()  # pmon alone dies; the redundancy manager fences
        poll_for(lambda: redu(b)["role"] == "active", WAIT, "b to take over")
        poll_for(lambda: not [p for p in pids if alive(p)], WAIT, "a's driver and helpers fenced")
        b.wait_state("drv", "running")
    finally:
        for pid in pids:  # what a fence left (before the fix: the helpers)
            if alive(pid):
                os.kill(pid, 9)


def _guarded_pair(pmon, tmp_path: Path, relay: Relay) -> tuple[Pmon, Pmon]:
    def for_server(server: str) -> list[dict[str, Any]]:
        return [{"name": "w", "command": child()},  # weight 1 (manager_weight)
                {"name": "tool", "command": child(), "start": "manual", "weight": 2}]
    a, b = start_pair(pmon, tmp_path, relay, for_server)
    wait_roles(a, b, "active", "passive")
    return a, b


def test_the_stop_guard_leaves_links_out_as_the_arbitration_does(tmp_path, pmon, relay):
    """b counts link 2 down (it hears nothing on it; a hears b there): b's full error state
    is 1, a's 0, but the arbitration leaves links out, so stopping a's w (weight 1) switches
    over, and the guard says so (review 2, finding 3)."""
    a, b = _guarded_pair(pmon, tmp_path, relay)
    relay.links[1].deaf.add("b")
    poll_for(lambda: redu(a)["partner_error_breakdown"] == {"link 2": 1}
             and redu(a)["partner_available"] and redu(a)["error_breakdown"] == {}, WAIT,
             "b to count link 2 down")
    out = pmon_cli(a.config_path, "stop", "w")
    assert out.returncode == 1, out.stdout
    assert "raises its error state from 0 to 1, above the partner's (0): the pair would " \
           "switch over to b" in out.stderr
    assert a.manager("w")["state"] == "running"


def test_the_stop_guard_counts_a_tie_with_the_preferred_partner_as_a_switch(tmp_path, pmon, relay):
    a, b = _guarded_pair(pmon, tmp_path, relay)
    assert pmon_cli(b.config_path, "stop", "w").returncode == 0  # b: error state 1
    assert pmon_cli(a.config_path, "redu", "prefer", "b").returncode == 0  # a stays: 0 < 1
    poll_for(lambda: redu(a)["partner_error_breakdown"] == {"manager w": 1}
             and redu(a)["preferred"] == "b" and redu(a)["partner_available"], WAIT,
             "b preferred, with an error state of 1")
    assert redu(a)["role"] == "active"
    out = pmon_cli(a.config_path, "stop", "w")
    assert out.returncode == 1, out.stdout
    assert "from 0 to 1, equal to the partner's (1), and b is the preferred server: the pair " \
           "would switch over to b" in out.stderr
    assert pmon_cli(a.config_path, "stop", "w", "--force").returncode == 0
    wait_roles(a, b, "passive", "active", connected=False)  # what the guard foretold


def test_the_stop_guard_lets_a_manual_manager_stop(tmp_path, pmon, relay):
    """An operator's stop of a manual manager makes it unwanted: it adds no error state, so
    the stop needs no --force, and the pair does not switch."""
    a, b = _guarded_pair(pmon, tmp_path, relay)
    assert pmon_cli(a.config_path, "start", "tool").returncode == 0
    a.wait_state("tool", "running")
    out = pmon_cli(a.config_path, "stop", "tool")
    assert out.returncode == 0, out.stderr
    assert a.manager("tool")["state"] == "stopped"
    poll_for(lambda: a.call("redu-status")["redundancy_manager"] == "connected", WAIT, "a sync")
    assert "manager tool" not in redu(a)["error_breakdown"] and redu(a)["role"] == "active"


def test_an_operators_prefer_outlives_a_restart_of_both_servers(tmp_path, pmon, relay):
    """review 3, finding 10: the preference lived only in the two redundancy managers."""
    config_a, config_b = write_pair(tmp_path, relay, managers(tmp_path))
    a, b = pmon(config_a, wait=False), pmon(config_b, wait=False)
    wait_roles(a, b, "active", "passive")
    assert pmon_cli(a.config_path, "redu", "prefer", "b").returncode == 0
    wait_roles(a, b, "passive", "active")
    for server in (a, b):
        server.stop()
        kill_project_processes(server.config.project.name)
    a, b = pmon(config_a, wait=False), pmon(config_b, wait=False)
    wait_roles(a, b, "passive", "active")
    assert redu(a)["preferred"] == redu(b)["preferred"] == "b"


def test_a_redundancy_manager_thawed_after_a_long_freeze_does_not_exit_as_an_orphan(
        tmp_path, pmon, relay):
    """Frozen longer than PMON_GRACE (5 s), it asks pmon again when it thaws: pmon owes it
    nothing from before the freeze (the pair and a group judge pmon alike: PmonSync)."""
    from support import project_processes

    a, b = start_pair(pmon, tmp_path, relay)
    wait_roles(a, b, "active", "passive")
    manager = project_processes(b.config.project.name, "redundancy")[0].pid
    os.kill(manager, signal.SIGSTOP)
    time.sleep(7)  # the freeze itself (longer than PMON_GRACE), not a wait for a condition
    os.kill(manager, signal.SIGCONT)
    wait_roles(a, b, "active", "passive")
    time.sleep(1.5)  # (not a wait: the thawed manager has had time to misjudge pmon)
    assert [p.pid for p in project_processes(b.config.project.name, "redundancy")] == [manager]
    assert not [e for e in b.events() if e["event"] == "exited" and e.get("manager") == "redundancy"]


def test_heartbeats_from_a_stranger_with_the_partners_name_change_nothing(tmp_path, pmon, relay):
    """A third server that sends to a's links by mistake (a neighbouring pair whose servers
    are also called a and b): its heartbeats claim b is active with a far higher epoch, an
    operator's forced choice and a preference for b. Before, a took them for b's: a took
    the epoch over and handed the role to b by preference within seconds, for nothing b said.
    Now they are dropped (not from b's address), nothing changes, and `redu status` says
    where they came from."""
    from pmon.redundancy.arbitration import Choice, Role
    from pmon.redundancy.messages import Heartbeat, encode

    a, b = start_pair(pmon, tmp_path, relay)
    wait_roles(a, b, "active", "passive")
    a.wait_state("drv", "running")
    before = redu(a)
    forged = Heartbeat(
        sender="b", to="a", epoch=10**6, boot="0badc0ffee00", seq=1, role=Role.ACTIVE, error=0,
        available=True, target="b", seen=10**6, forced=Choice("b", 50, (("a", 0), ("b", 0))),
        preferred=Choice("b", 50))
    targets = [link.a_local for link in relay.links]  # where a listens
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
        stranger.bind(("127.0.0.2", 0))  # another host (all of 127/8 is this machine's)
        for seq in range(1, 31):  # 3 s of a stranger's heartbeats on both links
            for target in targets:
                stranger.sendto(encode(replace(forged, seq=seq)), target)
            time.sleep(0.1)
        where = "127.0.0.2:%d" % stranger.getsockname()[1]
    # time enough for a forced choice (at once) or a preference (error_state_delay) to act
    stays(lambda: redu(a)["role"] == "active" and redu(b)["role"] == "passive", 3)
    after = redu(a)
    assert (after["epoch"], after["preferred"], after.get("forced")) == (
        before["epoch"], "a", before.get("forced"))
    assert switchovers(a) == [] and switchovers(b) == []
    assert a.manager("drv")["state"] == "running" and b.manager("drv")["state"] == "stopped"
    assert [(link["strangers"], link["stranger"]) for link in after["links"]] == [(30, where)] * 2
    status = pmon_cli(a.config_path, "redu", "status")
    assert status.returncode == 0
    assert f"30 datagrams dropped from {where}, which is not the partner's host 127.0.0.1:" \
        in status.stdout, status.stdout
    told = [e["link"] for e in a.events() if e["event"] == "redundancy-stranger"]
    assert sorted(told) == [1, 2] and all(
        e["sender"] == where for e in a.events() if e["event"] == "redundancy-stranger")


def test_a_passive_partner_restarted_behind_a_slow_link_moves_nothing(tmp_path, pmon, relay):
    """Link 2 is slow (0.4 s, within the timeout): when b's redundancy manager dies and b's
    project restarts (it is a core manager), its new run speaks on link 1 while the old
    run's last heartbeats still arrive on link 2 (a's view of b may flip between the two
    runs for that long). Nothing moves: no switchover, a's driver runs on."""
    a, b = start_pair(pmon, tmp_path, relay)
    wait_roles(a, b, "active", "passive")
    relay.links[1].delay = 0.4
    stays(lambda: redu(a)["role"] == "active" and redu(b)["role"] == "passive", 1)
    old = b.manager("redundancy")["pid"]
    os.kill(old, signal.SIGKILL)
    poll_for(lambda: b.manager("redundancy")["pid"] not in (None, old), WAIT, "b's new run")
    wait_roles(a, b, "active", "passive")
    stays(lambda: redu(a)["role"] == "active", 2)
    assert switchovers(a) == [] and switchovers(b) == []
    assert a.manager("drv")["state"] == "running"


def test_two_servers_given_the_same_name_hear_nothing_and_status_says_why(tmp_path, pmon, relay):
    """A copied config: the second server is also called a (partner b). Each drops the
    other's heartbeats as unknown, so both are active (no witness: the seeds' behaviour
    when nothing is heard), and `redu status` says which names came and which it expects."""
    config_a, config_b = write_pair(tmp_path, relay, managers(tmp_path))
    data = tomllib.loads(config_b.read_text())
    data["redundancy"]["name"], data["redundancy"]["partner"] = "a", "b"
    config_b.write_text(tomli_w.dumps(data))
    first, second = pmon(config_a, wait=False), pmon(config_b, wait=False)
    for server in (first, second):
        server.wait_ready(WAIT)
    for server in (first, second):
        poll_for(lambda: redu(server)["dropped"].get("unknown", 0) >= 3, WAIT, "unknown counted")
        assert redu(server)["role"] == "active" and not redu(server)["partner_connected"]
        status = pmon_cli(server.config_path, "redu", "status")
        assert status.returncode == 0
        assert ("the last unknown one came from 'a' for 'b', but this server is 'a' and hears "
                "only 'b': another server is also called 'a'") in status.stdout, status.stdout
