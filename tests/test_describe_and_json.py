"""`pmon describe`, and JSON everywhere a table is printed (describe, events, plugins,
redu status) with ISO 8601 times beside the epoch numbers. Real pmon."""

from __future__ import annotations

import json
import os
import signal

from support import child, pmon_cli, poll_for, write_project


def test_describe_shows_configuration_history_events_and_hides_secrets(tmp_path, pmon):
    config = write_project(tmp_path, [
        {"name": "data", "command": child(), "core": True},
        {"name": "driver1", "command": child("-num", "2"), "restart_count": 5, "reset_after": 120,
         "env": {"PLANT": "north", "DB_PASSWORD": "hunter2", "API_TOKEN": "abc"}},
    ])
    instance = pmon(config)
    first = instance.manager("driver1")["pid"]
    os.kill(first, signal.SIGKILL)
    poll_for(lambda: instance.manager("driver1")["pid"] not in (None, first), 10, "the restart")
    out = pmon_cli(config, "describe", "driver1")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "hunter2" not in text and "abc" not in text
    assert "DB_PASSWORD=***" in text and "API_TOKEN=***" in text and "PLANT=north" in text
    assert "-num 2" in text and "restart_count 5 within reset_after 120 s" in text
    assert f"{tmp_path}/var/log/driver1.log" in text
    assert "restarts: 1/5 in the window, 1 since pmon started" in text
    assert "ended with signal SIGKILL: restarted" in text  # its last events
    data = json.loads(pmon_cli(config, "describe", "driver1", "--json").stdout)
    assert data["env"]["DB_PASSWORD"] == "***" and data["command"][-2:] == ["-num", "2"]
    assert len(data["restarts_in_window"]) == 1 and "T" in data["restarts_in_window"][0]["at_iso"]
    assert data["last_exit"]["signal"] == "SIGKILL" and data["events"][-1]["ts_iso"]
    assert pmon_cli(config, "describe", "nope").returncode == 1


def test_json_of_plugins_redu_status_events_and_errors_when_not_running(tmp_path, pmon):
    config = write_project(tmp_path, [{"name": "data", "command": child(), "core": True}])
    instance = pmon(config)
    plugins = json.loads(pmon_cli(config, "plugins", "--json").stdout)
    assert {p["name"] for p in plugins["plugins"]} >= {"alive", "memory"}
    redu = json.loads(pmon_cli(config, "redu", "status", "--json").stdout)
    assert redu["role"] == "standalone"
    status = json.loads(pmon_cli(config, "status", "--json").stdout)
    assert status["managers"][0]["started_at_iso"].startswith(
        __import__("time").strftime("%Y-%m-%d"))
    instance.stop()
    for args in (("plugins", "--json"), ("redu", "status", "--json"), ("describe", "data", "--json"),
                 ("status", "--json")):
        out = pmon_cli(config, *args)
        assert out.returncode == 3, args
        error = json.loads(out.stdout)
        assert error == {"ok": False, "error": {"code": "not-running", "message": error["error"]["message"],
                                                 "exit_code": 3}}
        assert "not running" in out.stderr
