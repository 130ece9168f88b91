"""The bundled monitors against real processes, sockets and commands."""

from __future__ import annotations

import socket
import subprocess
import sys

import psutil

from support import child, poll_for, write_project


def verdicts_of(instance, plugin: str) -> list[dict]:
    return [v for v in instance.status()["verdicts"] if v["plugin"] == plugin]


def test_memory_over_the_limit_restarts_the_manager(tmp_path, pmon):
    config = write_project(
        tmp_path,
        [{"name": "hog", "command": child("--allocate-mb", "80")},
         {"name": "calm", "command": child()}],
        plugins={"memory": {"interval": 0.2, "max_rss_mb": 50, "checks": 2, "restart": True}},
    )
    instance = pmon(config)
    first = instance.wait_state("hog", "running")["pid"]
    verdict = instance.wait_event("verdict", plugin="memory", target="hog")
    assert verdict["key"] == "rss" and verdict["action"] == "restart"
    assert verdict["detail"].startswith("rss ") and "over the limit of 50 MB (2 checks in a row)" in verdict["detail"]
    assert instance.wait_event("plugin-restart", manager="hog")["pid"] == first
    poll_for(lambda: instance.manager("hog")["pid"] not in (None, first), 10, "hog restarted")
    assert not any(e.get("target") == "calm" for e in instance.events() if e["event"] == "verdict")


def test_cpu_over_the_limit_gives_a_verdict(tmp_path, pmon):
    config = write_project(
        tmp_path, [{"name": "spinner", "command": child("--spin"),
                    "monitor": {"memory": {"max_cpu_percent": 30, "severity": "error"}}}],
        plugins={"memory": {"interval": 0.3, "checks": 2}},
    )
    instance = pmon(config)
    verdict = instance.wait_event("verdict", plugin="memory", target="spinner")
    assert verdict["key"] == "cpu" and verdict["severity"] == "error" and verdict["action"] is None


def test_tree_sampler_counts_the_whole_process_tree(tmp_path):
    from pmon_plugins._trees import TreeSampler, _scan_psutil, scan

    code = (
        "import subprocess, sys, time;"
        f"subprocess.Popen([sys.executable, {child()[1]!r}, '--allocate-mb', '60']);"
        "time.sleep(60)"
    )
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        tree = poll_for(
            lambda: len(kids := psutil.Process(parent.pid).children(recursive=True)) == 1
            and kids[0].memory_info().rss > 60 * 2**20 and kids, 10, "the grandchild's memory",
        )
        sampler = TreeSampler()
        rss, cpu = sampler.sample({"p": parent.pid})["p"]
        assert cpu is None  # no CPU figure before a second sample
        expected = sum(p.memory_info().rss for p in [psutil.Process(parent.pid), *tree])
        assert abs(rss - expected) < 8 * 2**20 and rss > 60 * 2**20
        assert sampler.sample({"p": parent.pid})["p"][1] is not None
        fast, portable = scan(), _scan_psutil()
        assert fast[tree[0].pid][0] == portable[tree[0].pid][0] == parent.pid
    finally:
        for proc in psutil.Process(parent.pid).children(recursive=True):
            proc.kill()
        parent.kill()
        parent.wait()


def test_disk_and_free_memory_of_the_server(tmp_path, pmon):
    config = write_project(
        tmp_path, [{"name": "a", "command": child()}],
        plugins={"server": {"interval": 0.2, "disk_paths": ["."], "min_free_disk_percent": 100,
                            "min_free_memory_mb": 10**9, "error_state": 3}},
    )
    instance = pmon(config)
    found = poll_for(lambda: len(v := verdicts_of(instance, "server")) == 2 and v, 10, "2 verdicts")
    assert {v["key"] for v in found} == {f"disk:{tmp_path}", "memory"}
    assert all(v["target"] is None and v["severity"] == "error" for v in found)
    assert instance.status()["plugin_error_state"] == 6


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_port_that_closes(tmp_path, pmon):
    port = free_port()
    partner = socket.create_server(("127.0.0.1", 0))
    partner_port = partner.getsockname()[1]
    config = write_project(
        tmp_path,
        [{"name": "driver", "command": child("--listen", str(port), "--close-after", "1"),
          "monitor": {"port": {"port": port, "restart": True}}}],
        plugins={"port": {"interval": 0.2, "checks": 2, "connect_timeout": 0.5,
                          "targets": [{"name": "partner", "port": partner_port}]}},
    )
    try:
        instance = pmon(config)
        first = instance.wait_state("driver", "running")["pid"]
        verdict = instance.wait_event("verdict", plugin="port", target="driver")
        assert f"port 127.0.0.1:{port} of driver refuses connections" in verdict["detail"]
        instance.wait_event("plugin-restart", manager="driver")
        poll_for(lambda: instance.manager("driver")["pid"] not in (None, first), 10, "restart")
        instance.wait_event("verdict-cleared", plugin="port", target="driver")
        assert not verdicts_of(instance, "port")  # the partner still answers
    finally:
        partner.close()
    verdict = instance.wait_event("verdict", plugin="port", target=None)
    assert verdict["detail"].startswith(f"partner (127.0.0.1:{partner_port}) refuses connections")


def test_manager_that_stops_sending_watchdog_is_hung_and_restarted(tmp_path, pmon):
    config = write_project(
        tmp_path,
        [{"name": "stalls", "command": child("--watchdog-every", "0.1", "--watchdog-for", "1.5"),
          "monitor": {"alive": {"alive_seconds": 0.6, "restart": True}}},
         {"name": "steady", "command": child("--watchdog-every", "0.1")},
         {"name": "silent", "command": child()}],  # never sends: the global setting ignores it
        plugins={"alive": {"interval": 0.1, "alive_seconds": 0.6}},
    )
    instance = pmon(config)
    first = instance.wait_state("stalls", "running")["pid"]
    verdict = instance.wait_event("verdict", plugin="alive", target="stalls", timeout=15)
    assert verdict["detail"].startswith("hung: no WATCHDOG=1 for ")
    assert instance.wait_event("plugin-restart", manager="stalls")["pid"] == first
    poll_for(lambda: instance.manager("stalls")["pid"] not in (None, first), 10, "restart")
    targets = {e["target"] for e in instance.events() if e["event"] == "verdict"}
    assert targets == {"stalls"}


def test_check_commands_exit_status_is_the_verdict(tmp_path, pmon):
    config = write_project(
        tmp_path,
        [{"name": "a", "command": child(),
          "monitor": {"command": {"command": ["sh", "-c", "echo driver stuck; exit 2"]}}}],
        plugins={"command": {"interval": 0.2, "checks": [
            {"name": "db", "command": ["sh", "-c", "echo db down; exit 2"]},
            {"name": "queue", "command": ["sh", "-c", "exit 1"]},
            {"name": "fine", "command": ["true"]},
        ]}},
    )
    instance = pmon(config)
    found = poll_for(lambda: len(v := verdicts_of(instance, "command")) == 3 and v, 10, "3 verdicts")
    seen = {(v["target"], v["severity"], v["message"]) for v in found}
    assert seen == {
        (None, "error", "db: db down"),
        (None, "warning", "queue: exit status 1"),
        ("a", "error", "driver stuck"),
    }
