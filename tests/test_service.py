"""pmon as a service: the systemd unit, the notify protocol towards systemd, and the
Windows service's logic (the parts that need Windows itself are not run here)."""

from __future__ import annotations

import importlib
import shutil
import socket
import subprocess
import sys
import threading

import psutil
import pytest

from pmon import config as config_module
from pmon.control.client import call as control_call
from pmon.service import service_name, stop_timeout, systemd, windows
from support import child, kill_project_processes, pmon_cli, poll_for, write_project


def project(tmp_path, managers=None):
    managers = managers or [{"name": "a", "command": child(), "seconds_to_kill": 7},
                            {"name": "b", "command": child(), "seconds_to_kill": 4}]
    path = write_project(tmp_path, managers)
    return path, config_module.load(path)


def test_unit_is_notify_and_lets_pmon_stop_its_managers(tmp_path):
    _, config = project(tmp_path)
    text = systemd.unit_text(config, systemd.UnitOptions(watchdog_sec=5))
    for line in ("Type=notify", "KillMode=process", "Delegate=yes", "Restart=always", "WatchdogSec=5",
                 "ExecReload=/bin/kill -HUP $MAINPID", "WantedBy=multi-user.target"):
        assert line in text.splitlines()
    assert f"-c {config.path}" in text
    timeout = float(next(line for line in text.splitlines()
                         if line.startswith("TimeoutStopSec=")).partition("=")[2])
    assert timeout >= 7 + 4  # the whole ordered stop fits
    from pmon.service import start_timeout, stop_timeout
    # a hot restart waits for a project restart under way: its stop and its start (review 1, 10)
    assert timeout >= stop_timeout(config) + start_timeout(config)
    with pytest.raises(ValueError):
        systemd.unit_text(config, systemd.UnitOptions(kill_mode="control-group"))


def test_unit_words_are_quoted_for_systemd():
    assert systemd.quote("/opt/pmon/bin/python") == "/opt/pmon/bin/python"
    assert systemd.quote("/srv/my plant/pmon.toml") == '"/srv/my plant/pmon.toml"'
    assert systemd.quote("50%$HOME") == "50%%$$HOME"


def test_install_verify_and_uninstall_through_the_cli(tmp_path):
    path, config = project(tmp_path)
    units = tmp_path / "units"
    done = pmon_cli(path, "service", "install", "--unit-dir", str(units), "--watchdog-sec", "30")
    assert done.returncode == 0, done.stderr
    unit = units / f"pmon-{config.project.name}.service"
    assert f"wrote {unit}" in done.stdout and "enable --now" in done.stdout
    # the service runs the module by its import name, pmon (never the old `supervisor.cli`)
    text = unit.read_text()
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    assert exec_start.split("=", 1)[1].split() == [
        sys.executable, "-m", "pmon.cli", "run", "-c", str(config.path)]
    assert "supervisor." not in text
    if shutil.which("systemd-analyze"):
        verify = subprocess.run(["systemd-analyze", "verify", str(unit)],
                                capture_output=True, text=True, timeout=60)
        assert verify.returncode == 0, verify.stderr
    gone = pmon_cli(path, "service", "uninstall", "--unit-dir", str(units))
    assert gone.returncode == 0 and not unit.exists()
    again = pmon_cli(path, "service", "uninstall", "--unit-dir", str(units))
    assert again.returncode == 1 and "no unit" in again.stderr


def test_pmon_tells_systemd_ready_after_the_start_sequence_and_keeps_the_watchdog(tmp_path, pmon):
    path, config = project(tmp_path, [
        {"name": "slow", "command": child("--ready-after", "0.3"), "ready": "notify"},
        {"name": "b", "command": child()},
    ])
    address = tmp_path / "systemd-notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(address))
    sock.settimeout(15)
    try:
        instance = pmon(path, wait=False,
                        env={"NOTIFY_SOCKET": str(address), "WATCHDOG_USEC": "200000"})
        received = []
        while not any(m.startswith("READY=1") for m in received):
            received.append(sock.recv(4096).decode())
        # READY=1 only after every manager of the start sequence was started and ready
        status = instance.status()
        assert status["project_state"] == "running"
        assert all(m["state"] == "running" for m in status["managers"])
        assert any(e["event"] == "ready" for e in instance.events())
        # systemd's watchdog is pmon's business: its managers do not inherit it
        pid = instance.manager("b")["pid"]  # /proc/PID/environ can read empty just after exec
        env = poll_for(lambda: psutil.Process(pid).environ(), what="b's environment")
        assert "WATCHDOG_USEC" not in env and env["NOTIFY_SOCKET"] != str(address)
        watchdogs = 0
        while watchdogs < 2:
            watchdogs += sock.recv(4096) == b"WATCHDOG=1"
        instance.stop()
        poll_for(lambda: sock.recv(4096).startswith(b"STOPPING=1\n"), what="STOPPING=1")
    finally:
        sock.close()


def test_windows_registration_names_the_project_and_restarts_on_failure(tmp_path):
    _, config = project(tmp_path)
    reg = windows.registration(config)
    assert reg.name == service_name(config) == f"pmon-{config.project.name}"
    assert config.project.name in reg.display_name
    assert reg.class_string == "pmon.service.windows.PmonService"
    assert reg.config_path == str(config.path)
    assert reg.stop_wait_ms == int(stop_timeout(config) * 1000) >= (7 + 4) * 1000
    module, _, cls = reg.class_string.rpartition(".")
    assert importlib.import_module(module) is windows  # importable on Linux too
    assert cls == "PmonService" and not hasattr(windows, cls)  # only with pywin32
    actions = reg.failure_actions["Actions"]
    assert actions and all(kind == windows.SC_ACTION_RESTART for kind, _ in actions)


def test_windows_service_stop_control_stops_the_managers_in_reverse_order(tmp_path):
    _, config = project(tmp_path, [{"name": n, "command": child()} for n in ("a", "b", "c")])
    runner = windows.ServiceRunner(config)
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(runner.run()))
    thread.start()  # the service thread (SvcDoRun)
    try:
        poll_for(lambda: _running(config), timeout=20, what="the project to run")
        assert runner.request_stop()  # what SvcStop does, from another thread
        thread.join(30)
        assert result == [0]
    finally:
        if thread.is_alive():
            runner.request_stop()
            thread.join(30)
        kill_project_processes(config.project.name)
    import json

    events = [json.loads(line) for line in
              (config.project.state_dir / "log" / "events.jsonl").read_text().splitlines()]
    stopped = [e["manager"] for e in events if e["event"] == "exited"]
    assert stopped == ["c", "b", "a"]


def _running(config) -> bool:
    try:
        return control_call(config, "status", timeout=5)["project_state"] == "running"
    except Exception:
        return False
