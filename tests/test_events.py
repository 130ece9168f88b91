"""The event feed (`subscribe` on the control channel) and `pmon events`, against a real pmon."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from pmon.control import protocol
from pmon.control.client import subscribe
from pmon.control.feed import Subscriber

from support import child, pmon_cli, poll_for, write_project


def project(tmp_path):
    return write_project(tmp_path, [
        {"name": "data", "command": child(), "core": True},
        {"name": "driver1", "command": child(), "seconds_to_kill": 2},
        {"name": "driver2", "command": child(), "seconds_to_kill": 2},
    ])


def collect(stream, into, until):
    """Read records from a subscription into `into` (a thread) until `until(record)`."""
    def run():
        for record in stream:
            into.append(record)
            if until(record):
                return
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_subscribe_pushes_log_records_and_state_changes_filtered(tmp_path, pmon):
    config = project(tmp_path)
    instance = pmon(config)
    mine, everything = [], []
    only_driver1 = subscribe(instance.config, ["driver1"])
    all_records = subscribe(instance.config)
    t1 = collect(only_driver1, mine, lambda r: r["event"] == "state" and r["state"] == "running")
    t2 = collect(all_records, everything, lambda r: r.get("manager") == "driver2" and r["event"] == "started")
    instance.call("restart", target="driver1")
    instance.call("restart", target="driver2")
    t1.join(10), t2.join(10)
    assert not t1.is_alive() and not t2.is_alive()
    assert {r.get("manager") for r in mine} == {"driver1"}
    kinds = [r["event"] for r in mine]
    assert "exited" in kinds and "started" in kinds  # the event log's own records
    assert kinds[-1] == "state" and mine[-1]["pid"] == instance.manager("driver1")["pid"]
    assert {"driver1", "driver2"} <= {r.get("manager") for r in everything}
    exited = next(r for r in mine if r["event"] == "exited")
    assert exited in instance.events()  # the same record as in events.jsonl
    only_driver1.close(), all_records.close()
    # the subscriptions are gone once the clients close: pmon answers and has no leftovers
    assert instance.call("status")["project_state"] == "running"


def test_a_subscriber_that_never_reads_does_not_stall_pmon(tmp_path, pmon):
    config = project(tmp_path)
    instance = pmon(config)
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(str(protocol.socket_path(instance.config.project.state_dir)))
    stuck.sendall(protocol.encode({"command": "subscribe", "args": {"limit": 3}}))
    try:
        started = time.monotonic()
        for _ in range(40):  # ~300 records (~50 KB) for a subscriber that reads none
            instance.call("restart", target="driver1")
            instance.call("restart", target="driver2")
        assert instance.call("status")["project_state"] == "running"
        assert time.monotonic() - started < 60
        # what the stuck client finally reads: the reply, records, and where some were lost
        stuck.settimeout(5)
        data = b""
        while b'"lost"' not in data:
            chunk = stuck.recv(65536)
            assert chunk, "pmon closed the stream"
            data += chunk
        records = [json.loads(line) for line in data.split(b"\n")[1:-1]]
        lost = [r for r in records if r["event"] == "lost"]
        assert lost and lost[0]["lost"] > 0 and "lost" in lost[0]["message"]
    finally:
        stuck.close()


def test_subscribe_with_bad_arguments_is_refused(tmp_path, pmon):
    instance = pmon(project(tmp_path))
    for args in ({"managers": "driver1"}, {"limit": 0}, {"nonsense": 1}):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(protocol.socket_path(instance.config.project.state_dir)))
            sock.sendall(protocol.encode({"command": "subscribe", "args": args}))
            reply = json.loads(sock.makefile("rb").readline())
            assert reply["ok"] is False and reply["error"]["code"] == "protocol"
    assert instance.call("status")["project_state"] == "running"


def test_pmon_events_prints_local_times_filters_and_json(tmp_path, pmon):
    config = project(tmp_path)
    instance = pmon(config)
    instance.call("restart", target="driver2")
    instance.wait_event("started", manager="driver2", pid=instance.manager("driver2")["pid"])
    out = pmon_cli(config, "events", "driver2")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines and all(" driver2 " in line for line in lines)
    assert time.strftime("%Y-%m-%d") in lines[0]
    assert any("ended with signal SIGTERM" in line for line in lines)
    as_json = [json.loads(line) for line in pmon_cli(config, "events", "--json", "-n", "3").stdout.splitlines()]
    assert len(as_json) == 3 and all("T" in r["time"] and isinstance(r["ts"], float) for r in as_json)
    assert pmon_cli(config, "events", "--since", "1h", "driver*").stdout.count("driver1 started") == 1
    assert pmon_cli(config, "events", "--since", "yesterday-ish").returncode == 2


def test_pmon_events_follow_sees_a_change(tmp_path, pmon):
    config = project(tmp_path)
    instance = pmon(config)
    follower = subprocess.Popen(
        [sys.executable, "-m", "pmon.cli", "events", "-c", str(config), "-f", "driver1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert "driver1 started" in follower.stdout.readline()  # the past, from the file
        # the subscription is open before the file is read: a change now is not missed
        instance.call("stop", target="driver1")
        seen = []
        poll_for(lambda: seen.append(follower.stdout.readline()) or "-> stopped" in seen[-1],
                 10, "the stop to be followed")
        assert all("driver1" in line for line in seen)
    finally:
        follower.terminate()
        follower.wait(10)


def test_pmon_events_follow_without_pmon_says_so(tmp_path):
    config = project(tmp_path)
    out = pmon_cli(config, "events", "-f")
    assert out.returncode == 3 and "not running" in out.stderr


@settings(max_examples=200, deadline=None)
@given(limit=st.integers(1, 6), ops=st.lists(st.sampled_from(["put", "get"]), max_size=60))
def test_a_subscriber_loses_only_what_overflows_and_says_how_much(limit, ops):
    """Randomized: whatever the interleaving of publishing and reading, the reader gets the
    records in order, each one at most once, and the `lost` markers count exactly the rest."""
    async def scenario():
        sub = Subscriber(limit=limit)
        sent, got = 0, []
        for op in ops + ["get"] * (2 * len(ops) + 1):
            if op == "put":
                sub.put({"ts": 0, "event": "x", "n": sent})
                sent += 1
            elif sub._queue or sub.lost:
                got.append(await asyncio.wait_for(sub.get(), 1))
        numbers = [r["n"] for r in got if r["event"] == "x"]
        lost = sum(r["lost"] for r in got if r["event"] == "lost")
        assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
        assert len(numbers) + lost == sent
        assert all(a["event"] != "lost" or b["event"] != "lost" for a, b in zip(got, got[1:]))
    asyncio.run(scenario())


def test_pmon_events_follow_sees_a_switchover(tmp_path, pmon):
    from relay import Relay
    from support import write_pair

    relay = Relay(links=2)
    follower = None
    try:
        def managers(server):
            return [{"name": "w", "command": child()},
                    {"name": "drv", "command": child(), "weight": 3}]
        config_a, config_b = write_pair(tmp_path, relay, managers)
        a, b = pmon(config_a, wait=False), pmon(config_b, wait=False)
        a.wait_ready(15), b.wait_ready(15)
        poll_for(lambda: a.call("redu-status")["role"] == "active"
                 and a.call("redu-status")["partner_error_state"] == 0, 15, "a active, b healthy")
        follower = subprocess.Popen(
            [sys.executable, "-m", "pmon.cli", "events", "-c", str(config_b), "-f", "-n", "1", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        json.loads(follower.stdout.readline())  # one past record: it subscribed before reading
        assert pmon_cli(config_a, "stop", "drv", "--force").returncode == 0
        seen = []
        poll_for(lambda: seen.append(json.loads(follower.stdout.readline())) or
                 seen[-1]["event"] == "switchover", 20, "the switchover in b's followed events")
        assert seen[-1]["active"] == "b" and "T" in seen[-1]["time"]
    finally:
        if follower is not None:
            follower.terminate()
            follower.wait(10)
        relay.close()

