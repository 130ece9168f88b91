"""Honest results: a program that is not there, or a cwd that is not, is an error naming the
manager and the key for validate, run, reload and add; start/restart exit non-zero and say
why a manager did not come up. Real processes and files."""

from __future__ import annotations

import subprocess
import sys

from support import child, pmon_cli, write_project


def test_validate_and_run_name_manager_and_key_of_a_missing_program_and_cwd(tmp_path):
    config = write_project(tmp_path, [
        {"name": "ctrl2", "command": ["pyhton3", "ctrl.py"]},
        {"name": "drv", "command": child(), "cwd": "no/such/dir"},
        {"name": "script", "command": ["./data.txt"]},
    ])
    (tmp_path / "data.txt").write_text("not a program\n")
    out = pmon_cli(config, "validate")
    assert out.returncode == 2
    assert "manager 'ctrl2' (managers[1]), key 'command': program 'pyhton3' not found on PATH" in out.stderr
    assert "manager 'drv' (managers[2]), key 'cwd':" in out.stderr and "is not a directory" in out.stderr
    assert "manager 'script' (managers[3]), key 'command':" in out.stderr and "is not executable" in out.stderr
    run = subprocess.run([sys.executable, "-m", "pmon.cli", "run", "-q", "-c", str(config)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "'pyhton3' not found on PATH" in run.stderr
    assert not (tmp_path / "var" / "pmon.sock").exists()  # nothing started


def test_reload_and_add_refuse_a_missing_program_and_change_nothing(tmp_path, pmon):
    config = write_project(tmp_path, [
        {"name": "data", "command": child(), "core": True},
        {"name": "ctrl2", "command": child()},
    ])
    instance = pmon(config)
    pid = instance.manager("ctrl2")["pid"]
    out = pmon_cli(config, "add", "ctrl3", "--", "pyhton3", "x.py")
    assert out.returncode == 1 and "manager 'ctrl3'" in out.stderr and "key 'command'" in out.stderr
    assert "ctrl3" not in config.read_text()
    text = config.read_text().replace(repr(child()[0]).replace("'", '"'), '"pyhton3"', 1)
    config.write_text(text)
    out = pmon_cli(config, "reload")
    assert out.returncode == 2 and "'pyhton3' not found on PATH" in out.stderr, out
    assert instance.manager("ctrl2")["pid"] == pid  # untouched
    assert [m["name"] for m in instance.status()["managers"]] == ["data", "ctrl2"]


def test_start_and_restart_exit_non_zero_and_say_why_a_manager_did_not_come_up(tmp_path, pmon):
    program = tmp_path / "ctrl2.sh"
    program.write_text("#!/bin/sh\nexec sleep 3600\n")
    program.chmod(0o755)
    config = write_project(tmp_path, [
        {"name": "data", "command": child(), "core": True},
        {"name": "ctrl2", "command": [str(program)], "restart_count": 1},
        # ready after 1 s alive: a start waits that long, so it sees the death at 0.2 s
        {"name": "quits", "command": child("--exit-after", "0.2", "--code", "4"), "start": "manual",
         "restart_count": 0, "ready": "delay", "ready_seconds": 1},
    ])
    instance = pmon(config)
    program.unlink()  # the file is gone: the next start fails for real
    out = pmon_cli(config, "restart", "ctrl2")
    assert out.returncode == 1, out
    assert "ctrl2 did not come up: could not start: No such file or directory" in out.stderr
    assert "pmon reload" in out.stderr
    out = pmon_cli(config, "start", "quits")
    assert out.returncode == 1 and "quits did not come up" in out.stderr, out
    assert "last exit code 4" in out.stderr
    assert pmon_cli(config, "start", "data").returncode == 0  # running already: fine


def test_reload_and_start_all_exit_1_naming_what_did_not_come_up(tmp_path, pmon):
    import tomllib

    import tomli_w

    config = write_project(tmp_path, [
        {"name": "data", "command": child(), "core": True},
        {"name": "fine", "command": child()},
    ])
    instance = pmon(config)
    data = tomllib.loads(config.read_text())
    data["managers"].append({"name": "bad", "command": child("--exit-after", "0.2", "--code", "5"),
                             "restart_count": 0, "ready": "delay", "ready_seconds": 1})
    config.write_text(tomli_w.dumps(data))
    out = pmon_cli(config, "reload")
    assert out.returncode == 1, out
    assert "add      bad" in out.stdout
    assert "bad did not come up: blocked: 0 restarts in 300 s, last exit code 5" in out.stderr
    assert instance.manager("fine")["state"] == "running"
    out = pmon_cli(config, "restart", "--all")
    assert out.returncode == 1 and "pmon: bad did not come up" in out.stderr, out
    assert "fine" not in out.stderr


def test_a_reload_that_changes_a_core_manager_says_the_project_restarted(tmp_path, pmon):
    import tomllib

    import tomli_w

    config = write_project(tmp_path, [
        {"name": "data", "command": child(), "core": True},
        {"name": "fine", "command": child()},
    ])
    instance = pmon(config)
    pid = instance.manager("fine")["pid"]
    data = tomllib.loads(config.read_text())
    data["managers"][0]["env"] = {"NEW": "1"}
    config.write_text(tomli_w.dumps(data))
    out = pmon_cli(config, "reload")
    assert out.returncode == 0, out
    assert "data changed (core): the whole project was restarted (data, fine)" in out.stdout
    assert instance.manager("fine")["pid"] != pid
