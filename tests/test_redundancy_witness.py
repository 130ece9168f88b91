"""The witness (docs/redundancy.md "The witness"): two real pmon on loopback linked through
the test relay, and a real etcd on loopback holding the lease that being active needs."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from etcd import Etcd, etcd  # noqa: F401 (the fixture)
from relay import Relay
from support import Pmon, child, driver_runs, pmon_cli, poll_for, write_pair
from test_redundancy_pair import redu, stamps, switchovers, wait_roles

WAIT = 15
KEY = "/pmon/test/active"
TTL = 4  # the smallest with fence_grace = 1: lost after 2 s, fenced by 3 s, expires at 4 s


@pytest.fixture
def relay() -> Iterator[Relay]:
    instance = Relay(links=2)
    yield instance
    instance.close()


def drivers(tmp_path: Path):
    def for_server(server: str) -> list[dict[str, Any]]:
        return [{"name": "w", "command": child()},
                {"name": "drv", "command": child("--stamp", str(tmp_path / f"stamp-{server}")),
                 "run_on": "active"}]
    return for_server


def start(pmon, tmp_path: Path, relay: Relay, etcd: Etcd, **redundancy: Any) -> tuple[Pmon, Pmon]:
    config_a, config_b = write_pair(tmp_path, relay, drivers(tmp_path),
                                    witness={"etcd": [etcd.url], "ttl": TTL, "key": KEY},
                                    **redundancy)
    a, b = pmon(config_a, wait=False), pmon(config_b, wait=False)
    a.wait_ready(WAIT)
    b.wait_ready(WAIT)
    return a, b


def holder(etcd: Etcd) -> str | None:
    value = etcd.holder(KEY)
    return value.split()[0] if value else None


running = driver_runs  # (a frozen driver does not run either)


def roles(a: Pmon, b: Pmon) -> tuple[str, str]:
    return redu(a)["role"], redu(b)["role"]


def test_the_lease_holder_is_the_active_and_the_lease_moves_with_the_role(tmp_path, pmon, relay, etcd):
    a, b = start(pmon, tmp_path, relay, etcd)
    wait_roles(a, b, "active", "passive")
    assert holder(etcd) == "a"
    status = pmon_cli(a.config_path, "redu", "status")
    assert f"witness {KEY}: lease held" in status.stdout, status.stdout
    result = pmon_cli(a.config_path, "redu", "prefer", "b")
    assert result.returncode == 0, result.stderr
    wait_roles(a, b, "passive", "active")
    poll_for(lambda: holder(etcd) == "b", WAIT, "b to hold the lease")
    b.wait_state("drv", "running")
    a.wait_state("drv", "stopped")
    assert [e["reason"] for e in switchovers(b)][-1] == "preference"


def test_all_links_cut_leaves_exactly_one_active_the_lease_holder(tmp_path, pmon, relay, etcd):
    a, b = start(pmon, tmp_path, relay, etcd)
    wait_roles(a, b, "active", "passive")
    a.wait_state("drv", "running")
    relay.cut(0, 1)
    poll_for(lambda: not redu(b)["partner_connected"], WAIT, "b to lose a")
    # b would take over by failure, but waits for the lease, which a holds and renews
    poll_for(lambda: (redu(b).get("witness") or {}).get("wanted"), WAIT, "b to want the lease")
    deadline = time.monotonic() + 2 * TTL  # past a lease's expiry: a renews it
    while time.monotonic() < deadline:
        assert roles(a, b) == ("active", "passive")
        assert not running(tmp_path / "stamp-b")
        time.sleep(0.05)
    assert holder(etcd) == "a"
    relay.restore(0, 1)
    wait_roles(a, b, "active", "passive")
    assert switchovers(b) == [] or all(e["active"] == "a" for e in switchovers(b))
    assert not stamps(tmp_path / "stamp-b")


def test_etcd_killed_the_active_stays_in_failsafe_and_holds_the_lease_again_after_restart(
        tmp_path, pmon, relay, etcd):
    a, b = start(pmon, tmp_path, relay, etcd)
    wait_roles(a, b, "active", "passive")
    a.wait_state("drv", "running")
    etcd.kill()
    poll_for(lambda: (redu(a).get("witness") or {}).get("failsafe"), WAIT,
             "a in failsafe (lease not renewed, partner agrees)")
    deadline = time.monotonic() + TTL + 1  # past the lease's expiry
    while time.monotonic() < deadline:
        assert roles(a, b) == ("active", "passive")
        time.sleep(0.05)
    status = pmon_cli(a.config_path, "redu", "status")
    assert "failsafe" in status.stdout and "etcd:" in status.stdout, status.stdout
    # without etcd nobody takes the role: a preference does not hand it over
    pmon_cli(a.config_path, "redu", "prefer", "b")
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        assert roles(a, b) == ("active", "passive")
        time.sleep(0.05)
    etcd.start()
    poll_for(lambda: (redu(a).get("witness") or {}).get("held") or redu(b)["role"] == "active",
             WAIT, "a to hold the lease again (or b, preferred, to take the role)")
    # etcd back: the preference for b now moves the role, and the lease with it
    wait_roles(a, b, "passive", "active")
    poll_for(lambda: holder(etcd) == "b", WAIT, "b to hold the lease")
    a.wait_state("drv", "stopped")
    b.wait_state("drv", "running")


def test_etcd_away_and_the_partner_lost_the_active_fences(tmp_path, pmon, relay, etcd):
    a, b = start(pmon, tmp_path, relay, etcd)
    wait_roles(a, b, "active", "passive")
    restarts = a.wait_state("drv", "running")["restarts"]
    cut = time.time()
    etcd.kill()
    relay.cut(0, 1)
    poll_for(lambda: redu(a)["role"] == "passive", WAIT, "a to fence and go passive")
    assert not running(tmp_path / "stamp-a")
    assert [e["reason"] for e in switchovers(a)][-1] == "fenced"
    assert redu(b)["role"] == "passive" and not stamps(tmp_path / "stamp-b")
    # pmon answers all along: it stops the driver with the fence, as a stop, not a crash it
    # would restart (and count towards blocking it)
    history = [(e["event"], e["message"]) for e in a.events() if e["ts"] >= cut]
    assert a.manager("drv")["restarts"] == restarts, history
    assert not [e for e in a.events() if e["ts"] >= cut and e.get("manager") == "drv" and
                e["event"] in ("started", "start-refused", "spawn-failed")], history


def test_the_holders_pmon_frozen_the_other_takes_over_only_after_the_fence(
        tmp_path, pmon, relay, etcd):
    a, b = start(pmon, tmp_path, relay, etcd)
    wait_roles(a, b, "active", "passive")
    a.wait_state("drv", "running")
    os.kill(a.proc.pid, signal.SIGSTOP)
    try:
        poll_for(lambda: redu(b)["role"] == "active", WAIT, "b to take over")
        poll_for(lambda: running(tmp_path / "stamp-b"), WAIT, "b's driver to start")
        assert holder(etcd) == "b"
    finally:
        os.kill(a.proc.pid, signal.SIGCONT)
    stopped_a = [at for kind, at in stamps(tmp_path / "stamp-a") if kind == "stop"]
    started_b = [at for kind, at in stamps(tmp_path / "stamp-b") if kind == "start"]
    assert stopped_a and stopped_a[0] < started_b[0], (stopped_a, started_b)
    poll_for(lambda: redu(a)["role"] == "passive", WAIT, "a passive after the thaw")
    assert not running(tmp_path / "stamp-a")


def test_random_link_cuts_and_etcd_outages_never_make_two_drivers(tmp_path, pmon, relay, etcd):
    """Chaos with a seed: links cut and restored and etcd killed and restarted at random for
    15 s; sampled every 50 ms, the two drivers never run at once (stamps), and at most one
    server says it is active."""
    seed = int(os.environ.get("PMON_CHAOS_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    a, b = start(pmon, tmp_path, relay, etcd)
    wait_roles(a, b, "active", "passive")
    etcd_up, cut = True, False
    next_fault = time.monotonic()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        now = time.monotonic()
        if now >= next_fault:
            if rng.random() < 0.5:
                (relay.restore if cut else relay.cut)(0, 1)
                cut = not cut
            else:
                if etcd_up:
                    etcd.kill()
                else:
                    etcd.start()
                etcd_up = not etcd_up
            next_fault = now + rng.uniform(0.5, 4)
        both = running(tmp_path / "stamp-a") and running(tmp_path / "stamp-b")
        assert not both, f"two drivers (seed {seed})"
        assert roles(a, b) != ("active", "active"), f"two actives (seed {seed})"
        time.sleep(0.05)


def test_the_first_role_with_a_witness_is_a_start_not_a_switchover(tmp_path, pmon, relay, etcd):
    """The lease comes a round trip after the decision: the first role must not be
    "passive" and then a switchover by preference (review 3, finding 7), which logged a
    false switchover, sent a general query, and held down the operator's first prefer."""
    a, b = start(pmon, tmp_path, relay, etcd, hold_down=60)
    poll_for(lambda: roles(a, b) == ("active", "passive") and redu(a)["partner_available"],
             WAIT, "a active, b passive")
    assert [e["message"] for e in a.events() if e["event"] == "switchover"] == []
    first = [e for e in a.events() if e["event"] == "redundancy-role"]
    assert [(e["role"], e["reason"]) for e in first] == [("active", "start")], first
    assert not (tmp_path / "stamp-b").exists()
    assert pmon_cli(a.config_path, "redu", "prefer", "b").returncode == 0
    # not held down (60 s here) by a switchover that never was
    poll_for(lambda: roles(a, b) == ("passive", "active"), WAIT, "b active by preference")
