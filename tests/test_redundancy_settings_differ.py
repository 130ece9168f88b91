"""Two servers whose timing settings differ (docs/redundancy.md "When the two sides' settings
differ"): a rollout that changed one project's heartbeat_interval, timeout or fence_grace
before the other's. Each heartbeat says its sender's timing, and each side waits the longer
of the two: a partner is counted lost only after its own timeout, and its fence is given
its own grace. Real pairs on loopback through the test relay."""

from __future__ import annotations

import os
import random
import signal
import time

import psutil

from relay import Relay
from support import kill_project_processes, kill_tree, pmon_cli, poll_for, write_pair
from test_redundancy_pair import redu, stamps, switchovers, wait_roles
from test_redundancy_self_fence import (
    TwoDrivers, check_handover, freeze_the_active_redundancy_manager, redundancy_pid, settled)
from test_redundancy_witness import KEY, TTL, drivers, etcd, relay, running  # noqa: F401 (fixtures)

WAIT = 20


def start(pmon, tmp_path, relay: Relay, only, **redundancy):
    config_a, config_b = write_pair(tmp_path, relay, drivers(tmp_path), only=only, **redundancy)
    a, b = pmon(config_a, wait=False), pmon(config_b, wait=False)
    a.wait_ready(WAIT)
    b.wait_ready(WAIT)
    return a, b


def next_run(server, old: int) -> bool:
    """Another run of the server's redundancy manager than `old`, passive, hearing b."""
    try:
        pid = redundancy_pid(server)
    except (StopIteration, psutil.Error):  # between two runs (the old one a zombie)
        return False
    status = redu(server)
    return pid != old and status["role"] == "passive" and status["partner_connected"]


def test_an_active_with_a_longer_timeout_frozen_the_partner_waits_for_its_self_fence(
        tmp_path, pmon, relay):
    # a self-fences 2.8 s after its last beat (timeout 3 s); b's own timeout is 0.6 s: had b
    # claimed the role by it, both drivers would have run for more than two seconds
    a, b = start(pmon, tmp_path, relay, only={"a": {"timeout": 3.0}})
    wait_roles(a, b, "active", "passive")
    a.wait_state("drv", "running")
    assert redu(b)["timing"]["timeout"] == 3.0  # b learned a's
    with TwoDrivers(tmp_path) as sampler:
        at, *said = freeze_the_active_redundancy_manager(a, b, tmp_path, 4.5)
        check_handover(a, tmp_path, at, (said[0], said[1]))
        settled(a, b)
    assert sampler.seen == [], "two drivers ran at once"
    reasons = [e["reason"] for e in switchovers(b) if e["at"] >= at]
    assert reasons[:1] == ["failure"] and len(reasons) <= 2, reasons


def test_a_partner_beating_slower_than_this_sides_timeout_is_not_counted_lost_nor_claimed_beside(
        tmp_path, pmon, relay):
    # b beats once a second, slower than a's own timeout (0.6 s): a probes each overdue
    # heartbeat and is answered, and a run of a's redundancy manager that starts listens
    # for b's timeout before it claims the role
    a, b = start(pmon, tmp_path, relay, only={"b": {"heartbeat_interval": 1.0, "timeout": 3.0}},
                 preferred="b")
    wait_roles(a, b, "passive", "active")
    b.wait_state("drv", "running")
    settled(a, b)
    since = time.time()
    downs = 0
    with TwoDrivers(tmp_path) as sampler:
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            sa = redu(a)
            downs += sum(not link["up"] for link in sa["links"])
            assert sa["partner_connected"] and sa["role"] == "passive", sa
            time.sleep(0.1)
    assert sampler.seen == [], "two drivers ran at once"
    assert downs == 0
    assert [e for e in a.events() + b.events() if e["event"] == "switchover" and e["at"] >= since] == []
    shown = pmon_cli(a.config_path, "redu", "status").stdout
    assert "the partner's timing differs" in shown and "timeout 3 s" in shown, shown
    assert "heartbeat_interval 1 s" in shown, shown
    assert redu(a)["timing"] == {"heartbeat_interval": 1.0, "timeout": 3.0, "fence_bound": 4.0}
    # the partner's own, as it said them, and this side's
    assert redu(a)["partner_timing"] == {"heartbeat_interval": 1.0, "timeout": 3.0, "fence_grace": 1.0}
    # a's redundancy manager killed (a core manager: a's project restarts): its next run
    # waits b's timeout at start (pmon kept it), hears b active and claims nothing
    with TwoDrivers(tmp_path) as sampler:
        for _ in range(3):
            old = redundancy_pid(a)
            os.kill(old, signal.SIGKILL)
            poll_for(lambda: next_run(a, old), WAIT, "a's next redundancy manager, passive")
            assert redu(b)["role"] == "active"
        # and a's whole server down and up again (a reboot): pmon kept b's timing on disk
        kill_tree(a.proc.pid)
        kill_project_processes(a.config.project.name)
        a = pmon(a.config_path, wait=False)
        a.wait_ready(WAIT)
        poll_for(lambda: next_run(a, 0), WAIT, "a's new pmon, passive")
    assert sampler.seen == [], "two drivers ran at once"
    assert [kind for kind, at in stamps(tmp_path / "stamp-b") if at >= since] == []  # b's ran on
    assert [e for e in b.events() if e["event"] == "switchover" and e["at"] >= since] == []


def test_settings_that_differ_are_named_on_both_servers_and_in_the_event_log(tmp_path, pmon, relay):
    a, b = start(pmon, tmp_path, relay, only={"b": {"hold_down": 7, "manager_weight": 2}})
    wait_roles(a, b, "active", "passive")
    for server, here, there in ((a, 5, 7), (b, 7, 5)):
        poll_for(lambda: redu(server)["settings_differ"], WAIT, "the partner's settings")
        differ = redu(server)["settings_differ"]
        assert differ["hold_down"] == {"here": here, "partner": there}, differ
        assert set(differ) == {"hold_down", "manager_weight"}, differ
        shown = pmon_cli(server.config_path, "redu", "status").stdout
        assert f"hold_down {here} here, {there} on the partner" in shown, shown
        told = [e for e in server.events() if e["event"] == "redundancy-settings-differ"]
        assert len(told) == 1 and "hold_down" in told[0]["message"], told
        assert "timing differs" not in shown  # the same timing on both
    # b's redundancy manager killed (b's project restarts): its next run reports nothing
    # to compare until it hears a, and then the same difference: no second event
    old = redundancy_pid(b)
    os.kill(old, signal.SIGKILL)
    poll_for(lambda: next_run(b, old) and redu(b)["settings_differ"], WAIT, "b's next run to compare")
    told = [e for e in b.events() if e["event"] == "redundancy-settings-differ"]
    assert len(told) == 1, told


def test_a_witness_on_one_server_only_is_named_with_what_it_costs(tmp_path, pmon, relay, etcd):
    a, b = start(pmon, tmp_path, relay,
                 only={"a": {"witness": {"etcd": [etcd.url], "ttl": TTL, "key": KEY}}})
    wait_roles(a, b, "active", "passive")
    for server in (a, b):
        poll_for(lambda: "witness" in redu(server)["settings_differ"], WAIT, "the witness named")
        shown = pmon_cli(server.config_path, "redu", "status").stdout
        assert "a partition leaves both servers active" in shown, shown
    assert f'witness "{KEY}" here, none on the partner' in pmon_cli(a.config_path, "redu", "status").stdout


def test_random_timing_on_each_side_a_frozen_active_never_makes_two_drivers(tmp_path, pmon, relay):
    """Chaos with a seed (PMON_CHAOS_SEED): each round gives a and b their own
    heartbeat_interval, timeout and fence_grace, freezes the active's redundancy manager
    until b's driver runs, and samples both drivers every 20 ms: never two at once, and a's
    stopped (its self-fence) before b's started."""
    seed = int(os.environ.get("PMON_CHAOS_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)

    def timing() -> dict[str, float]:
        interval = rng.choice([0.1, 0.15, 0.2, 0.3])
        timeout = max(interval * rng.uniform(3, 8), interval + 0.4)  # room for the self-fence
        return {"heartbeat_interval": interval, "timeout": round(timeout, 2),
                "fence_grace": rng.choice([0, 0.5, 1.5])}
    for n in range(3):
        only = {"a": timing(), "b": timing()}
        directory = tmp_path / f"round{n}"
        directory.mkdir()
        a, b = start(pmon, directory, relay, only)
        context = f"seed {seed}, round {n}: {only}"
        wait_roles(a, b, "active", "passive")
        a.wait_state("drv", "running")
        with TwoDrivers(directory) as sampler:
            at, *said = freeze_the_active_redundancy_manager(a, b, directory, 0)
            check_handover(a, directory, at, (said[0], said[1]))
        assert sampler.seen == [], f"two drivers ran at once ({context})"
        for server in (a, b):
            server.stop()
            kill_project_processes(server.config.project.name)
