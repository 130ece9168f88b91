"""Every CLI command against a running pmon, as a user types it."""

from __future__ import annotations

import json
import socket
import tomllib

import psutil

from support import child, pmon_cli, poll_for, write_project


def project(tmp_path):
    return write_project(tmp_path, [
        {"name": "data", "command": child(), "core": True},
        {"name": "driver", "command": child(), "seconds_to_kill": 2},
        {"name": "tool", "command": child(), "start": "manual"},
    ])


def test_status_table_and_json(tmp_path, pmon):
    config = project(tmp_path)
    instance = pmon(config)
    table = pmon_cli(config, "status")
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    assert lines[0].startswith(f"project {instance.config.project.name}: running")
    assert lines[1].startswith("containment: ")  # which one is in force
    lines = lines[1:]
    assert lines[1].split() == ["#", "NAME", "STATE", "PID", "START", "CORE", "RESTARTS", "UPTIME",
                                "CPU", "RSS", "LAST", "EXIT"]
    assert lines[2].split()[:5] == ["1", "data", "running", str(instance.manager("data")["pid"]), "always"]
    assert lines[4].split()[:5] == ["3", "tool", "stopped", "-", "manual"]
    data = json.loads(pmon_cli(config, "status", "--json").stdout)
    assert data["project"] == instance.config.project.name
    assert set(data["managers"][0]) >= {"index", "name", "state", "pid", "start", "core",
                                        "restarts", "exit_code", "started_at"}
    assert [m["state"] for m in data["managers"]] == ["running", "running", "stopped"]


def test_start_stop_restart_by_name_and_index(tmp_path, pmon):
    config = project(tmp_path)
    instance = pmon(config)
    result = pmon_cli(config, "start", "tool")
    assert result.returncode == 0 and "tool: running" in result.stdout
    pid = instance.manager("tool")["pid"]
    assert pmon_cli(config, "restart", "3").returncode == 0
    assert instance.manager("tool")["pid"] not in (None, pid)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    result = pmon_cli(config, "stop", "2")
    assert result.returncode == 0 and "driver: stopped" in result.stdout
    assert instance.manager("driver")["state"] == "stopped"


def test_stopping_a_core_manager_alone_is_refused(tmp_path, pmon):
    config = project(tmp_path)
    instance = pmon(config)
    result = pmon_cli(config, "stop", "data")
    assert result.returncode == 1 and "core manager" in result.stderr
    assert instance.manager("data")["state"] == "running"


def test_stop_all_keeps_pmon_and_restart_all_starts_again(tmp_path, pmon):
    config = project(tmp_path)
    instance = pmon(config)
    pids = [m["pid"] for m in instance.status()["managers"] if m["pid"]]
    result = pmon_cli(config, "stop", "--all")
    assert result.returncode == 0 and "stopped" in result.stdout
    assert {m["state"] for m in instance.status()["managers"]} == {"stopped"}
    assert instance.proc.poll() is None
    assert pmon_cli(config, "restart", "--all").returncode == 0
    status = instance.status()
    assert status["project_state"] == "running"
    assert [m["state"] for m in status["managers"]] == ["running", "running", "stopped"]
    assert not set(pids) & {m["pid"] for m in status["managers"]}


def test_add_and_remove_change_the_project_and_its_file(tmp_path, pmon):
    config = project(tmp_path)
    instance = pmon(config)
    result = pmon_cli(config, "add", "extra", "--start", "always", "--seconds-to-kill", "3",
                      "--env", "A=1", "--", *child("--print", "hi"))
    assert result.returncode == 0, result.stderr
    row = instance.wait_state("extra", "running")
    assert row["index"] == 4
    saved = tomllib.loads(config.read_text())
    assert saved["managers"][-1]["name"] == "extra" and saved["managers"][-1]["seconds_to_kill"] == 3
    assert pmon_cli(config, "validate").returncode == 0

    refused = pmon_cli(config, "remove", "extra")
    assert refused.returncode == 1 and "stop it first" in refused.stderr
    assert pmon_cli(config, "stop", "extra").returncode == 0
    assert pmon_cli(config, "remove", "extra").returncode == 0
    assert [m["name"] for m in instance.status()["managers"]] == ["data", "driver", "tool"]
    assert [m["name"] for m in tomllib.loads(config.read_text())["managers"]] == ["data", "driver", "tool"]

    core = pmon_cli(config, "remove", "data")
    assert core.returncode == 1 and "core manager" in core.stderr


def test_an_invalid_add_changes_nothing(tmp_path, pmon):
    config = project(tmp_path)
    instance = pmon(config)
    before = config.read_text()
    result = pmon_cli(config, "add", "driver", "--", "x")
    assert result.returncode == 1 and "duplicate manager name" in result.stderr
    assert config.read_text() == before
    assert len(instance.status()["managers"]) == 3


def test_unknown_manager_is_one_clear_line(tmp_path, pmon):
    config = project(tmp_path)
    pmon(config)
    for args in (("start", "nope"), ("stop", "9"), ("restart", "nope")):
        result = pmon_cli(config, *args)
        assert result.returncode == 4  # supervisorctl's "no such process"
        assert result.stderr.count("\n") == 1 and "no manager" in result.stderr
        assert "data, driver, tool" in result.stderr


def test_usage_errors(tmp_path):
    config = project(tmp_path)
    result = pmon_cli(config, "stop")
    assert result.returncode == 2 and "--all" in result.stderr


def test_commands_without_a_running_pmon_say_so(tmp_path):
    config = project(tmp_path)
    for args in (("status",), ("stop", "driver"), ("restart", "--all")):
        result = pmon_cli(config, *args)
        assert result.returncode == 3 and "not running" in result.stderr


def test_config_from_environment(tmp_path, pmon):
    import os
    import subprocess
    import sys

    config = project(tmp_path)
    pmon(config)
    result = subprocess.run([sys.executable, "-m", "pmon.cli", "status"], capture_output=True,
                            text=True, env={**os.environ, "PMON_CONFIG": str(config)}, timeout=30)
    assert result.returncode == 0 and "driver" in result.stdout


def test_malformed_control_messages_get_errors_and_the_daemon_lives(tmp_path, pmon):
    config = project(tmp_path)
    instance = pmon(config)
    path = str(tmp_path / "var" / "pmon.sock")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(path)
        stream = sock.makefile("rwb")
        for garbage in (b"not json\n", b"[1,2]\n", b'{"command": "explode"}\n',
                        b'{"command": "stop", "args": {"target": [1]}}\n',
                        b'{"command": "stop", "args": {}}\n', b"\xff\xfe\n"):
            stream.write(garbage)
            stream.flush()
            reply = json.loads(stream.readline())
            assert reply["ok"] is False and reply["error"]["message"]
        stream.write(b'{"command": "status"}\n')
        stream.flush()
        assert json.loads(stream.readline())["ok"] is True
    with socket.socket(socket.AF_UNIX) as sock:  # a client that vanishes mid-message
        sock.connect(path)
        sock.sendall(b'{"command": "sta')
    assert instance.status()["project_state"] == "running"


def test_shutdown_stops_everything(tmp_path, pmon):
    config = project(tmp_path)
    instance = pmon(config)
    pids = [m["pid"] for m in instance.status()["managers"] if m["pid"]]
    assert pmon_cli(config, "shutdown").returncode == 0
    poll_for(lambda: instance.proc.poll() is not None, 20, "pmon to exit")
    assert instance.proc.returncode == 0
    assert not any(psutil.pid_exists(p) for p in pids)


def test_tcp_control_needs_the_token(tmp_path, pmon):
    config = write_project(tmp_path, [{"name": "a", "command": child()}],
                           control={"tcp": "127.0.0.1:0"})
    instance = pmon(config)
    assert pmon_cli(config, "status").returncode == 0
    host, _, port = (tmp_path / "var" / "control.addr").read_text().rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        stream = sock.makefile("rwb")
        stream.write(b'{"command": "stop", "args": {"target": "a"}, "token": "guess"}\n')
        stream.flush()
        reply = json.loads(stream.readline())
    assert reply["error"]["code"] == "auth"
    assert instance.manager("a")["state"] == "running"
    import stat
    assert stat.S_IMODE((tmp_path / "var" / "control.token").stat().st_mode) == 0o600


def test_commands_during_shutdown_are_refused_and_the_stop_completes(tmp_path, pmon):
    config = write_project(tmp_path, [
        {"name": "fast", "command": child()},
        {"name": "slow", "command": child("--ignore-term"), "seconds_to_kill": 1.5},
    ])
    instance = pmon(config)
    pids = [m["pid"] for m in instance.status()["managers"]]
    assert pmon_cli(config, "shutdown").returncode == 0
    # while `slow` holds the stop sequence, a restart of the project must not cancel it
    for args in (("restart", "--all"), ("start", "--all"), ("start", "fast")):
        result = pmon_cli(config, *args)
        if result.returncode == 3:
            break  # pmon already gone: nothing left to refuse
        assert result.returncode == 1 and "shutting down" in result.stderr, result.stderr
    poll_for(lambda: instance.proc.poll() is not None, 20, "pmon to exit")
    assert instance.proc.returncode == 0
    assert not any(psutil.pid_exists(p) for p in pids)
    assert instance.events()[-1]["event"] == "pmon-stopped"


def test_editing_the_redundancy_manager_pmon_added_is_refused_clearly(tmp_path, pmon):
    from pmon.control.client import RemoteError

    ports = []
    for _ in range(2):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    redundancy = {"name": "a", "partner": "b", "links": [
        {"local": f"127.0.0.1:{ports[0]}", "partner": f"127.0.0.1:{ports[1]}"}]}
    config = write_project(tmp_path, [{"name": "data", "command": child(), "core": True}],
                           redundancy=redundancy)
    instance = pmon(config)
    before = config.read_text()
    try:
        instance.call("edit", target="redundancy", changes={"seconds_to_kill": 3})
    except RemoteError as exc:
        assert "pmon adds it for [redundancy]" in str(exc)
    else:
        raise AssertionError("the edit was accepted")
    assert config.read_text() == before
    assert instance.manager("redundancy")["state"] == "running"
