"""The Prometheus exporter ([metrics]) against a real pmon: scraped over HTTP and parsed with
prometheus_client's own text parser; counters across a hot restart; bad requests; the
configuration; and a real Prometheus scraping pmon and evaluating etc/pmon-alerts.yml."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from etcd import etcd  # noqa: F401 (the fixture)
from group import MEMBERS, write_group
from relay import Relay
from support import Pmon, child, pmon_cli, poll_for, write_pair, write_project

ROOT = Path(__file__).resolve().parent.parent
WAIT = 15.0


def metrics_address(server: Pmon) -> str:
    path = server.config.project.state_dir / "metrics.addr"
    return poll_for(lambda: path.exists() and path.read_text(), WAIT, "metrics.addr")


def scrape(server: Pmon) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample: (name, sorted labels) -> value, parsed by prometheus_client."""
    with urllib.request.urlopen(f"http://{metrics_address(server)}/metrics", timeout=WAIT) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = reply.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def project(tmp_path: Path, listen: str = "127.0.0.1:0", **sections: Any) -> Path:
    managers = [
        {"name": "steady", "command": child()},
        {"name": "tree", "command": child("--grandchild", str(tmp_path / "grandchild"))},
        {"name": "busy", "command": child("--spin")},
        {"name": "flaky", "command": child("--exit-after", "0.2", "--code", "7"),
         "restart_count": 2, "reset_after": 300},
        {"name": "tool", "command": child(), "start": "manual"},
    ]
    return write_project(tmp_path, managers, metrics={"listen": listen}, **sections)


def test_a_scrape_shows_each_manager_and_the_project(tmp_path, pmon):
    server = pmon(project(tmp_path))
    server.wait_state("flaky", "blocked", WAIT)
    samples = poll_for(lambda: (s := scrape(server)) and value(
        s, "pmon_manager_cpu_seconds_total", manager="busy") and s, WAIT, "the spinning manager's CPU")
    for name, state in (("steady", "running"), ("flaky", "blocked"), ("tool", "stopped")):
        assert value(samples, "pmon_manager_state", manager=name, state=state) == 1
        assert value(samples, "pmon_manager_up", manager=name) == (state == "running")
    assert value(samples, "pmon_manager_state", manager="steady", state="blocked") == 0
    assert value(samples, "pmon_manager_restarts_total", manager="flaky") == 2
    assert value(samples, "pmon_manager_last_exit_code", manager="flaky") == 7
    assert value(samples, "pmon_manager_last_exit_code", manager="steady") is None
    assert value(samples, "pmon_manager_info", manager="tool", index="5", start="manual", core="false") == 1
    assert value(samples, "pmon_project_state", project=server.config.project.name, state="running") == 1
    assert value(samples, "pmon_project_restarts_total", project=server.config.project.name) == 0
    # The tree's figures cover the grandchild: its RSS is in, its pid is not the manager's.
    grandchild = int(poll_for(lambda: (tmp_path / "grandchild").read_text().strip(), WAIT, "grandchild"))
    import psutil

    tree_rss = value(samples, "pmon_manager_resident_memory_bytes", manager="tree")
    alone_rss = psutil.Process(server.manager("tree")["pid"]).memory_info().rss
    assert grandchild != server.manager("tree")["pid"] and tree_rss > alone_rss
    uptime = value(samples, "pmon_manager_uptime_seconds", manager="steady")
    assert uptime is not None and 0 <= uptime < 120
    assert value(samples, "pmon_manager_uptime_seconds", manager="tool") is None
    # pmon's own figures, under the standard names
    assert value(samples, "process_resident_memory_bytes") > 1e6
    assert value(samples, "process_cpu_seconds_total") > 0
    assert value(samples, "pmon_event_loop_lag_seconds") is not None
    # CPU only grows while the tree lives (a counter)
    later = poll_for(lambda: (v := value(scrape(server), "pmon_manager_cpu_seconds_total", manager="busy"))
                     and v > samples[("pmon_manager_cpu_seconds_total", (("manager", "busy"),))] and v,
                     WAIT, "the busy manager's CPU to grow")
    assert later > 0


def test_counters_survive_a_hot_restart(tmp_path, pmon):
    config = project(tmp_path)
    first = pmon(config)
    first.wait_state("flaky", "blocked", WAIT)
    pmon_cli(config, "restart", "--all")
    first.wait_ready(WAIT)
    first.wait_state("flaky", "blocked", WAIT)  # blocked again: its counter stands still
    before = scrape(first)
    name = first.config.project.name
    assert value(before, "pmon_project_restarts_total", project=name) == 1
    restarts = value(before, "pmon_manager_restarts_total", manager="flaky")
    assert restarts is not None and restarts >= 2
    steady_pid = first.manager("steady")["pid"]
    result = pmon_cli(config, "detach")
    assert result.returncode == 0, result.stderr
    assert first.proc.wait(WAIT) == 0
    (first.config.project.state_dir / "metrics.addr").unlink()
    second = pmon(config, wait=False)
    second.wait_ready(WAIT, project_state=None)
    assert second.manager("steady")["pid"] == steady_pid  # adopted, not restarted
    after = scrape(second)
    assert value(after, "pmon_project_restarts_total", project=name) == 1
    assert value(after, "pmon_manager_restarts_total", manager="flaky") == restarts


def test_bad_requests_get_errors_and_pmon_goes_on(tmp_path, pmon):
    server = pmon(project(tmp_path))
    host, port = metrics_address(server).rsplit(":", 1)

    def exchange(data: bytes, close_write: bool = False) -> bytes:
        with socket.create_connection((host, int(port)), timeout=WAIT) as sock:
            sock.sendall(data)
            if close_write:
                sock.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
            return reply

    assert exchange(b"GARBAGE\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert exchange(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert exchange(b"POST /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405")
    assert exchange(b"GET /other HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404")
    assert exchange(b"GET /metr", close_write=True).startswith(b"HTTP/1.1 400")
    assert exchange(b"\xff\xfe\x00\r\n\r\n").startswith(b"HTTP/1.1 400")
    head = exchange(b"HEAD /metrics HTTP/1.0\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n")
    rng = random.Random(11)  # random bytes, seeded: whatever comes, an answer or a close
    for _ in range(30):
        noise = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
        reply = exchange(noise + b"\r\n\r\n", close_write=True)
        assert reply == b"" or reply.startswith(b"HTTP/1.1 ")
    # a silent client does not hold a scrape up
    with socket.create_connection((host, int(port)), timeout=WAIT):
        assert value(scrape(server), "pmon_manager_up", manager="steady") == 1
    assert server.status()["project_state"] == "running"
    assert server.proc.poll() is None


def test_the_listen_setting_is_checked(tmp_path):
    bad = {
        "example.com:9464": "no host names",
        "127.0.0.1:99999": "port 0..65535",
        "127.0.0.1": "port 0..65535",
        "[::1]:x": "port 0..65535",
    }
    for listen, message in bad.items():
        config = project(tmp_path, listen)
        result = pmon_cli(config, "validate")
        assert result.returncode == 2, (listen, result.stdout, result.stderr)
        assert "[metrics], key 'listen'" in result.stderr and message in result.stderr, result.stderr
    (tmp_path / "pmon.toml").write_text((tmp_path / "pmon.toml").read_text().replace("listen", "lisen"))
    result = pmon_cli(tmp_path / "pmon.toml", "validate")
    assert result.returncode == 2 and "did you mean 'listen'" in result.stderr


def test_loopback_by_default_and_another_address_only_when_named(tmp_path):
    from pmon import config as config_module

    path = write_project(tmp_path, [{"name": "x", "command": child()}], metrics={})
    assert config_module.load(path).metrics == config_module.MetricsSpec("127.0.0.1", 9464)
    for listen, host in ((":9999", "127.0.0.1"), ("9999", "127.0.0.1"), ("0.0.0.0:9999", "0.0.0.0"),
                         ("[::1]:9999", "::1")):
        path = write_project(tmp_path, [{"name": "x", "command": child()}], metrics={"listen": listen})
        assert config_module.load(path).metrics == config_module.MetricsSpec(host, 9999)
    path = write_project(tmp_path, [{"name": "x", "command": child()}])
    assert config_module.load(path).metrics is None


def test_without_metrics_prometheus_client_is_not_imported(tmp_path):
    path = write_project(tmp_path, [{"name": "x", "command": child()}])
    code = ("import sys; from pmon import app, config; app.build_extensions(config.load(sys.argv[1])); "
            "print(sorted(m for m in sys.modules if m.startswith(('prometheus_client', 'textual'))))")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_port_alone_listens_on_loopback(tmp_path, pmon):
    server = pmon(project(tmp_path, ":0"))
    host, port = metrics_address(server).rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0
    listening = [c for c in __import__("psutil").Process(server.proc.pid).net_connections("tcp")
                 if c.status == "LISTEN" and c.laddr.port == int(port)]
    assert [c.laddr.ip for c in listening] == ["127.0.0.1"]


def test_a_port_in_use_is_reported_and_pmon_runs_on(tmp_path, pmon):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = pmon(project(tmp_path, f"127.0.0.1:{port}"))
        failed = server.wait_event("metrics-failed", WAIT)
        assert str(port) in failed["message"] and "[metrics] listen" in failed["message"]
        assert server.manager("steady")["state"] == "running"


# --- on a pair --------------------------------------------------------------------------


@pytest.fixture
def relay() -> Iterator[Relay]:
    instance = Relay(links=2)
    yield instance
    instance.close()


def test_a_pair_shows_roles_error_states_links_and_switchovers(tmp_path, pmon, relay):
    def managers(server: str) -> list[dict[str, Any]]:
        return [{"name": "w", "command": child()}, {"name": "drv", "command": child(), "run_on": "active"}]

    config_a, config_b = write_pair(tmp_path, relay, managers)
    for path in (config_a, config_b):
        path.write_text(path.read_text() + '\n[metrics]\nlisten = "127.0.0.1:0"\n')
    a, b = pmon(config_a, wait=False), pmon(config_b, wait=False)
    for server in (a, b):
        server.wait_ready(WAIT)

    def settled(server: Pmon, role: str) -> dict[Any, float] | None:
        s = scrape(server)
        ok = (value(s, "pmon_redundancy_role", server=server.config.redundancy.name, role=role) == 1
              and value(s, "pmon_redundancy_partner_available", partner=server.config.redundancy.partner) == 1)
        return s if ok else None

    poll_for(lambda: settled(a, "active"), WAIT, "a active with b available")
    poll_for(lambda: settled(b, "passive"), WAIT, "b passive with a available")

    def healthy() -> dict[Any, float] | None:  # (a's driver may still be starting)
        s = settled(a, "active")
        return s if s and value(s, "pmon_redundancy_error_state", server="a") == 0 and \
            value(s, "pmon_redundancy_error_state", server="b") == 0 else None
    samples = poll_for(healthy, WAIT, "both error states 0 at a")
    links = [k for k in samples if k[0] == "pmon_redundancy_link_up"]
    assert len(links) == 2 and all(samples[k] == 1 for k in links)
    ages = [samples[k] for k in samples if k[0] == "pmon_redundancy_link_last_heartbeat_age_seconds"]
    assert len(ages) == 2 and all(0 <= age < 2 for age in ages)
    # b's error state rises when a manager it should run is stopped: both show it
    pmon_cli(config_b, "stop", "w")
    poll_for(lambda: value(scrape(a), "pmon_redundancy_error_state", server="b") == 1, WAIT, "b's error 1 at a")
    pmon_cli(config_b, "start", "w")
    poll_for(lambda: value(scrape(a), "pmon_redundancy_error_state", server="b") == 0, WAIT, "b's error 0 at a")
    # a planned switchover is counted with its reason, on both servers
    result = pmon_cli(config_a, "redu", "set-active", "b")
    assert result.returncode == 0, result.stderr
    for server in (a, b):
        poll_for(lambda: value(scrape(server), "pmon_redundancy_switchovers_total", reason="forced") == 1,
                 WAIT, f"a forced switchover counted at {server.config.redundancy.name}")
    last = [k for k in scrape(a) if k[0] == "pmon_redundancy_last_switchover_timestamp_seconds"]
    assert last and dict(last[0][1])["active"] == "b"
    # cut both links: a has no partner, its links show down and their age grows
    relay.cut(0, 1)
    samples = poll_for(lambda: (s := scrape(a)) and value(s, "pmon_redundancy_partner_connected", partner="b") == 0
                       and s, WAIT, "a without its partner")
    assert all(samples[k] == 0 for k in samples if k[0] == "pmon_redundancy_link_up")
    assert value(samples, "pmon_redundancy_error_state", server="b") is None


# --- a real Prometheus --------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _query(base: str, path: str, **params: str) -> Any:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=WAIT) as reply:
        answer = json.loads(reply.read())
    assert answer["status"] == "success", answer
    return answer["data"]


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Any]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("needs the Debian package prometheus")
    started: list[subprocess.Popen[bytes]] = []

    def start(target: str, rules: Path) -> str:
        port = _free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files: ['{rules}']\n"
            f"scrape_configs:\n  - job_name: pmon\n    static_configs:\n      - targets: ['{target}']\n"
        )
        log = open(tmp_path / "prometheus.log", "wb")
        started.append(subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=log,
        ))
        return f"http://127.0.0.1:{port}"

    yield start
    for proc in started:
        proc.terminate()
        try:
            proc.wait(WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_prometheus_scrapes_pmon_and_the_blocked_alert_fires(tmp_path, pmon, prometheus):
    server = pmon(project(tmp_path))
    base = prometheus(metrics_address(server), ROOT / "etc" / "pmon-alerts.yml")

    def result(query: str) -> list[dict[str, Any]]:
        try:
            return _query(base, "/api/v1/query", query=query)["result"]
        except OSError:
            return []  # Prometheus not up yet

    up = poll_for(lambda: result('up{job="pmon"} == 1'), 30, "Prometheus to scrape pmon")
    assert up[0]["metric"]["instance"] == metrics_address(server)
    blocked = poll_for(lambda: result('pmon_manager_state{state="blocked"} == 1'), 30, "flaky blocked")
    assert [r["metric"]["manager"] for r in blocked] == ["flaky"]
    restarts = result('pmon_manager_restarts_total{manager="flaky"}')
    assert float(restarts[0]["value"][1]) == 2

    def firing() -> list[dict[str, Any]]:
        alerts = _query(base, "/api/v1/alerts")["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == "PmonManagerBlocked" and a["state"] == "firing"]

    alert = poll_for(firing, 30, "the PmonManagerBlocked alert to fire")
    assert alert[0]["labels"]["manager"] == "flaky"
    # an operator unblocks it: the state reaches Prometheus
    pmon_cli(server.config_path, "stop", "flaky")
    poll_for(lambda: result('pmon_manager_state{manager="flaky",state="stopped"} == 1'), 30, "flaky stopped")


def test_the_sample_rules_pass_promtool():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("needs promtool (Debian package prometheus)")
    out = subprocess.run([promtool, "check", "rules", str(ROOT / "etc" / "pmon-alerts.yml")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 rules found" in out.stdout or "SUCCESS" in out.stdout, out.stdout


def test_the_sample_dashboard_queries_only_metrics_pmon_serves(tmp_path, pmon):
    dashboard = json.loads((ROOT / "etc" / "grafana-pmon.json").read_text())
    server = pmon(project(tmp_path))
    served = {name for name, _labels in scrape(server)} | {"pmon_redundancy_role"}
    import re

    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert exprs
    for expr in exprs:
        for name in re.findall(r"\b(pmon_[a-z_]+|process_[a-z_]+)\b", expr):
            assert name in served or name.startswith("pmon_redundancy_"), (name, expr)


def test_any_listen_value_is_taken_or_refused_with_the_key_named(tmp_path):
    """Random values of `listen` (hypothesis): a valid address is taken as written, and
    anything else is one clear error naming [metrics] and listen, never a crash."""
    import ipaddress

    from hypothesis import given, settings, strategies as st

    from pmon import config as config_module
    from pmon.errors import ConfigError

    hosts = st.one_of(st.just(""), st.just("localhost"), st.ip_addresses().map(
        lambda ip: f"[{ip}]" if ip.version == 6 else str(ip)), st.text(max_size=12))
    ports = st.one_of(st.integers(-5, 70000).map(str), st.text(max_size=6))
    values = st.one_of(st.builds(lambda h, p: f"{h}:{p}", hosts, ports), st.text(max_size=20),
                       st.integers(-5, 70000), st.booleans(), st.lists(st.integers(), max_size=2))

    @settings(max_examples=300, deadline=None)
    @given(values)
    def check(value: Any) -> None:
        data = {"project": {"name": "p"}, "managers": [], "metrics": {"listen": value}}
        try:
            spec = config_module.parse(data, tmp_path / "pmon.toml").metrics
        except ConfigError as exc:
            # a NUL is refused by the strict check common to every text value
            assert "[metrics], key 'listen'" in str(exc)
            assert "expected" in str(exc) or "NUL" in str(exc)
            return
        assert spec is not None and 0 <= spec.port <= 65535
        text = str(value)
        assert int(text.rpartition(":")[2]) == spec.port  # "00" is port 0 too
        if spec.host != "localhost":
            ipaddress.ip_address(spec.host)  # an IP address, never a name
        written = text.rpartition(":")[0].strip("[]")
        assert spec.host == (written or "127.0.0.1")

    check()


def test_a_group_shows_its_members_and_leader_not_a_partner(tmp_path, pmon, etcd):
    """A group of three (docs/redundancy.md "Groups of three or more") has no partner and no
    links: each member's exporter shows every member as etcd has its record, and the
    leader; a member that stops is shown down once its record is gone."""
    paths = write_group(tmp_path, etcd.url)
    for path in paths.values():
        path.write_text(path.read_text() + '\n[metrics]\nlisten = "127.0.0.1:0"\n')
    servers = {name: pmon(path, wait=False) for name, path in paths.items()}
    for server in servers.values():
        server.wait_ready(WAIT)

    def members(samples: dict[Any, float], name: str) -> dict[str, float | None]:
        return {m: value(samples, name, member=m) for m in MEMBERS}

    def settled() -> dict[Any, float] | None:
        s = scrape(servers["c"])
        return s if members(s, "pmon_redundancy_leader") == {"a": 1, "b": 0, "c": 0} and \
            set(members(s, "pmon_redundancy_member_available").values()) == {1} else None

    samples = poll_for(settled, 30, "c to show a as the leader and every member available")
    assert members(samples, "pmon_redundancy_member_up") == {"a": 1, "b": 1, "c": 1}
    assert {m: value(samples, "pmon_redundancy_error_state", server=m) for m in MEMBERS} == \
        {"a": 0, "b": 0, "c": 0}
    assert value(samples, "pmon_redundancy_role", server="c", role="passive") == 1
    names = {name for name, _labels in samples}
    assert not names & {"pmon_redundancy_partner_connected", "pmon_redundancy_partner_available",
                        "pmon_redundancy_link_up"}, names
    servers["b"].stop()
    poll_for(lambda: value(scrape(servers["c"]), "pmon_redundancy_member_up", member="b") == 0,
             30, "c to show b down")
    assert value(scrape(servers["c"]), "pmon_redundancy_error_state", server="b") is None
