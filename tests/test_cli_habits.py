"""CLI habits from supervisorctl and systemctl: several names and globs, did you mean, kill,
signal, a core restart that says what it restarted, the --force guard on the active of a
pair. Real pmon, real processes."""

from __future__ import annotations

import pytest

from support import child, pmon_cli, poll_for, write_project


def project(tmp_path):
    usr1 = tmp_path / "usr1"
    return write_project(tmp_path, [
        {"name": "data", "command": child(), "core": True},
        {"name": "driver1", "command": child("--on-usr1", str(usr1)), "seconds_to_kill": 2},
        {"name": "driver2", "command": child(), "seconds_to_kill": 2},
        {"name": "ctrl", "command": child(), "seconds_to_kill": 2},
    ]), usr1


def test_several_names_and_globs_per_command_and_did_you_mean(tmp_path, pmon):
    config, _ = project(tmp_path)
    instance = pmon(config)
    out = pmon_cli(config, "stop", "driver*", "4")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["driver1: stopped", "driver2: stopped", "ctrl: stopped"]
    assert [m["state"] for m in instance.status()["managers"]] == ["running", "stopped", "stopped", "stopped"]
    out = pmon_cli(config, "start", "driver1", "ctrl")
    assert out.returncode == 0 and [l.split()[:2] for l in out.stdout.splitlines()] == [
        ["driver1:", "running"], ["ctrl:", "running"]]
    out = pmon_cli(config, "start", "drivr2")
    assert out.returncode == 4 and "no manager matches 'drivr2'; did you mean 'driver2'" in out.stderr
    assert instance.manager("driver2")["state"] == "stopped"  # nothing done on a miss
    out = pmon_cli(config, "restart", "driver2", "nothing*")
    assert out.returncode == 4 and instance.manager("driver2")["state"] == "stopped"
    out = pmon_cli(config, "start", "driver2", "--force")
    assert out.returncode == 2 and "--force goes with" in out.stderr
    assert pmon_cli(config, "kill").returncode == 2  # no NAME: a usage error, nothing killed


def test_kill_and_signal(tmp_path, pmon):
    config, usr1 = project(tmp_path)
    instance = pmon(config)
    pid = instance.manager("driver1")["pid"]
    out = pmon_cli(config, "signal", "driver1", "USR1")
    assert out.returncode == 0 and out.stdout.strip() == f"driver1: sent SIGUSR1 to pid {pid}"
    poll_for(lambda: usr1.exists() and "usr1" in usr1.read_text(), 10, "the manager to get SIGUSR1")
    assert instance.manager("driver1")["pid"] == pid
    assert pmon_cli(config, "signal", "driver1", "NOPE").returncode == 2
    out = pmon_cli(config, "kill", "driver2")
    assert out.returncode == 0 and out.stdout.strip() == "driver2: stopped"
    exited = instance.wait_event("exited", manager="driver2")
    assert exited["exit_code"] == -9
    out = pmon_cli(config, "signal", "driver2", "HUP")
    assert out.returncode == 1 and "driver2 is not running" in out.stderr


def test_restart_of_a_core_manager_says_it_restarted_the_project(tmp_path, pmon):
    config, _ = project(tmp_path)
    instance = pmon(config)
    before = {m["name"]: m["pid"] for m in instance.status()["managers"]}
    out = pmon_cli(config, "restart", "data")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == (
        "data is a core manager: the whole project was restarted (data, driver1, driver2, ctrl)")
    after = {m["name"]: m["pid"] for m in instance.status()["managers"]}
    assert all(after[name] != before[name] for name in before)
    assert all(f"  {name}: running (pid {after[name]})" in out.stdout for name in after)


def test_stop_that_would_switch_the_pair_over_needs_force(tmp_path, pmon):
    from relay import Relay
    from support import write_pair

    relay = Relay(links=2)
    try:
        def managers(server):
            return [{"name": "w", "command": child()},
                    {"name": "hmi", "command": child(), "weight": 0},
                    {"name": "drv", "command": child(), "weight": 3}]
        config_a, config_b = write_pair(tmp_path, relay, managers)
        a, b = pmon(config_a, wait=False), pmon(config_b, wait=False)
        a.wait_ready(15), b.wait_ready(15)
        # drv must run on a: while it is still starting its weight is counted already,
        # and stopping it would change nothing (the guard lets that stop through)
        poll_for(lambda: a.call("redu-status")["role"] == "active"
                 and a.call("redu-status")["partner_available"]
                 and a.call("redu-status")["error_state"] == 0
                 and a.call("redu-status")["partner_error_state"] == 0
                 and a.manager("drv")["state"] == "running", 15, "a active with drv running, b available")
        out = pmon_cli(config_a, "stop", "drv")
        assert out.returncode == 1
        assert "stop drv refused: this server (a) is active; stopping drv (weight 3) raises its " \
               "error state from 0 to 3, above the partner's (0): the pair would switch over to b" in out.stderr
        assert "add --force" in out.stderr and a.manager("drv")["state"] == "running"
        assert pmon_cli(config_a, "stop", "hmi").returncode == 0  # no weight: no switchover
        assert pmon_cli(config_b, "stop", "drv").returncode == 0  # the passive: nothing to switch
        assert pmon_cli(config_b, "start", "drv").returncode == 0
        poll_for(lambda: a.call("redu-status")["partner_error_state"] == 0, 15, "b healthy again")
        out = pmon_cli(config_a, "stop", "drv", "--force")
        assert out.returncode == 0 and a.manager("drv")["state"] == "stopped"
        poll_for(lambda: a.call("redu-status")["role"] == "passive", 15, "the pair to switch over")
    finally:
        relay.close()


def run_cli(*args, env=None, cwd=None):
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "pmon.cli", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})}, cwd=cwd)


def test_config_before_the_command_and_after_it(tmp_path, pmon):
    config, _ = project(tmp_path)
    instance = pmon(config)
    before = run_cli("-c", str(config), "status", "driver1")
    assert before.returncode == 0 and " driver1 " in before.stdout
    after = run_cli("status", "driver1", "-c", str(config))
    assert after.returncode == 0 and " driver1 " in after.stdout
    (tmp_path / "elsewhere").mkdir()
    other = tmp_path / "elsewhere" / "pmon.toml"
    other.write_text('[project]\nname = "nothing-runs-here"\n')
    assert run_cli("-c", str(other), "status", "-c", str(config)).returncode == 0  # after wins
    assert run_cli("-c", str(config), "stop", "driver2").returncode == 0
    assert instance.manager("driver2")["state"] == "stopped"
    assert run_cli("-c", str(other), "status").returncode == 3


def test_shell_completion_offers_the_running_projects_manager_names(tmp_path, pmon):
    config, _ = project(tmp_path)
    pmon(config)
    words = f"pmon -c {config} restart dri"
    out = run_cli(env={"_PMON_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": "4"})
    assert out.stdout.split() == ["plain,driver1", "plain,driver2"]
    out = run_cli(env={"_PMON_COMPLETE": "bash_complete", "COMP_WORDS": "pmon status ",
                       "COMP_CWORD": "2", "PMON_CONFIG": str(config)})
    assert out.stdout.split() == ["plain,data", "plain,driver1", "plain,driver2", "plain,ctrl"]
    script = run_cli(env={"_PMON_COMPLETE": "bash_source"})
    assert "_pmon_completion" in script.stdout


def test_shutdown_wait_returns_once_pmon_and_every_manager_are_gone(tmp_path, pmon):
    import psutil

    config, _ = project(tmp_path)
    instance = pmon(config)
    pids = [m["pid"] for m in instance.status()["managers"]]
    out = pmon_cli(config, "shutdown", "--wait")
    assert out.returncode == 0 and out.stdout.strip() == "pmon has stopped: every manager is down"
    assert instance.proc.poll() is not None or instance.proc.wait(5) == 0  # already gone, or going
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
