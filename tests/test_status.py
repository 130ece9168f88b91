"""`pmon status` explains itself: for each kind of trouble, the reason and the way out, the
exit code, the filters; what a terminal shows (colour) against a pipe. Real processes."""

from __future__ import annotations

import json
import os
import signal
import sys

import psutil

from support import Pmon, child, pmon_cli, poll_for, write_project


def rows(config, *args):
    out = pmon_cli(config, "status", "--json", *args)
    return out.returncode, {m["name"]: m for m in json.loads(out.stdout)["managers"]}


def test_blocked_says_why_and_how_out_and_restarts_show_the_reset(tmp_path, pmon):
    config = write_project(tmp_path, [
        {"name": "data", "command": child(), "core": True},
        {"name": "driver2", "command": child(), "restart_count": 1, "reset_after": 300},
    ])
    instance = pmon(config)
    for _ in range(2):  # one restart allowed: the second SIGKILL blocks it
        pid = instance.wait_state("driver2", "running")["pid"]
        os.kill(pid, signal.SIGKILL)
        poll_for(lambda: instance.manager("driver2")["pid"] != pid, 10, "driver2 to die")
    instance.wait_state("driver2", "blocked")
    out = pmon_cli(config, "status")
    assert out.returncode == 1, out.stdout
    line = next(l for l in out.stdout.splitlines() if l.startswith("driver2:"))
    assert "blocked: 1 restarts in 300 s, last exit SIGKILL" in line
    assert line.endswith("-> pmon start driver2")
    table = next(l for l in out.stdout.splitlines() if " driver2 " in l).split()
    assert table[2] == "blocked" and table[5] == "1/1" and "SIGKILL" in table
    code, by_name = rows(config)
    last = by_name["driver2"]["last_exit"]
    assert code == 1 and last["signal"] == "SIGKILL" and last["code"] == -9
    assert "T" in last["at_iso"] and isinstance(last["at"], float)
    # the way out works, and RESTARTS shows the operator's reset of the counter
    assert pmon_cli(config, "start", "driver2").returncode == 0
    code, by_name = rows(config)
    assert code == 0 and by_name["driver2"]["recent_restarts"] == 0 and by_name["driver2"]["ok"]
    assert by_name["driver2"]["restarts"] == 1  # the total stays in the JSON
    assert "0/1" in next(l for l in pmon_cli(config, "status").stdout.splitlines() if " driver2 " in l)


def test_backoff_says_when_it_retries_and_the_last_exit(tmp_path, pmon):
    config = write_project(tmp_path, [
        {"name": "flaky", "command": child("--exit-after", "0.05", "--code", "3"),
         "restart_count": 50, "reset_after": 300},
    ])
    instance = pmon(config, wait=False)

    def in_backoff():
        code, by_name = rows(config)
        row = by_name["flaky"]
        return row["state"] == "backoff" and code == 1 and row

    row = poll_for(in_backoff, 20, "flaky in backoff")
    assert row["why"].startswith("backoff: retry in ") and row["why"].endswith(", last exit code 3")
    assert row["hint"].startswith("pmon start flaky") and not row["ok"]
    assert row["last_exit"]["code"] == 3 and row["last_exit"]["signal"] is None
    assert row["pid"] is None and row["uptime"] is None


def vanishing_program(tmp_path):
    """An executable that exists when pmon checks the file, and is gone when pmon restarts it
    (deleted, then its process killed): a start that fails for real."""
    program = tmp_path / "ctrl2.sh"
    program.write_text("#!/bin/sh\nexec sleep 3600\n")
    program.chmod(0o755)
    return program


def make_it_vanish(instance, program, name="ctrl2"):
    pid = instance.wait_state(name, "running")["pid"]
    program.unlink()
    os.kill(pid, signal.SIGKILL)
    instance.wait_state(name, "blocked")


def test_could_not_start_names_the_program_and_no_pid_none_anywhere(tmp_path, pmon):
    program = vanishing_program(tmp_path)
    config = write_project(tmp_path, [
        {"name": "data", "command": child(), "core": True},
        {"name": "ctrl2", "command": [str(program)], "restart_count": 2},
    ])
    instance = pmon(config)
    make_it_vanish(instance, program)
    code, by_name = rows(config, "ctrl2")
    row = by_name["ctrl2"]
    assert code == 1 and row["why"] == f"could not start: No such file or directory: '{program}'"
    assert "pmon reload" in row["hint"] and row["exit_code"] is None and row["last_exit"]["code"] is None
    text = pmon_cli(config, "status").stdout
    assert "could not start" in text and "None" not in text
    assert not [e for e in instance.events() if "pid None" in e["message"]]
    assert any(e["message"].startswith("ctrl2 could not start: blocked: 2 restarts")
               for e in instance.events())


def test_hung_manager_is_named_hung_with_its_silence(tmp_path, pmon):
    config = write_project(
        tmp_path,
        [{"name": "stalls", "command": child("--watchdog-every", "0.1", "--watchdog-for", "0.5"),
          "monitor": {"alive": {"alive_seconds": 0.6}}},
         {"name": "steady", "command": child()}],
        plugins={"alive": {"interval": 0.1, "alive_seconds": 0.6}},
    )
    instance = pmon(config)
    instance.wait_event("verdict", plugin="alive", target="stalls", timeout=15)
    code, by_name = rows(config, "--state", "hung")
    assert list(by_name) == ["stalls"] and code == 1
    assert by_name["stalls"]["why"].startswith("hung: no WATCHDOG=1 for ")
    assert by_name["stalls"]["hint"] == "pmon restart stalls"
    out = pmon_cli(config, "status")
    assert "hung" in next(l for l in out.stdout.splitlines() if " stalls " in l).split()
    assert "blocked" not in out.stdout


def test_names_globs_state_filter_and_did_you_mean(tmp_path, pmon):
    config = write_project(tmp_path, [
        {"name": "data", "command": child(), "core": True},
        {"name": "driver1", "command": child()},
        {"name": "driver2", "command": child()},
        {"name": "tool", "command": child(), "start": "manual"},
    ])
    pmon(config)
    code, by_name = rows(config, "driver*", "1")
    assert code == 0 and list(by_name) == ["data", "driver1", "driver2"]
    code, by_name = rows(config, "--state", "stopped")
    assert list(by_name) == ["tool"] and code == 0  # a manual manager nobody asked for is fine
    out = pmon_cli(config, "status", "drivr1")
    assert out.returncode == 4 and "did you mean 'driver1'" in out.stderr


def test_exit_codes_when_the_project_is_stopped_and_when_pmon_is_not_running(tmp_path, pmon):
    config = write_project(tmp_path, [{"name": "data", "command": child(), "core": True}])
    instance = pmon(config)
    assert pmon_cli(config, "status").returncode == 0
    assert pmon_cli(config, "stop", "--all").returncode == 0
    out = pmon_cli(config, "status")
    assert out.returncode == 1 and "data: project stopped  -> pmon start --all" in out.stdout
    instance.stop()
    out = pmon_cli(config, "status", "--json")
    assert out.returncode == 3 and "not running" in out.stderr
    error = json.loads(out.stdout)
    assert error["ok"] is False and error["error"]["code"] == "not-running"


def test_uptime_cpu_and_rss_count_the_whole_tree(tmp_path, pmon):
    # the manager itself sleeps; its child burns CPU: only a tree sum shows it
    spinner = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'while True: pass']); time.sleep(3600)"
    config = write_project(tmp_path, [{"name": "burner", "command": [sys.executable, "-c", spinner]}])
    pmon(config)

    def busy():
        _code, by_name = rows(config)
        row = by_name["burner"]
        return row["cpu_percent"] is not None and row["cpu_percent"] > 20 and row

    row = poll_for(busy, 20, "the spinning child to show in the manager's CPU")
    root = psutil.Process(row["pid"])
    assert root.cpu_percent(0.2) < 20  # the manager alone is idle
    alone = max(root.memory_info().rss, root.children()[0].memory_info().rss)
    poll_for(lambda: rows(config)[1]["burner"]["rss"] > 1.5 * alone, 10,
             "the RSS of both processes")  # a sample taken while python still loaded is older
    assert row["uptime"] is not None and row["uptime"] >= 0


def test_gated_manager_on_the_passive_and_the_roles_in_the_header(tmp_path, pmon):
    from relay import Relay
    from support import write_pair

    relay = Relay(links=2)
    try:
        def managers(server):
            return [{"name": "w", "command": child()},
                    {"name": "drv", "command": child(), "run_on": "active"}]
        config_a, config_b = write_pair(tmp_path, relay, managers)
        a, b = pmon(config_a, wait=False), pmon(config_b, wait=False)
        a.wait_ready(15), b.wait_ready(15)
        poll_for(lambda: a.call("redu-status")["role"] == "active"
                 and b.call("redu-status")["role"] == "passive"
                 and b.call("redu-status")["partner_available"], 15, "a active, b passive")
        out = pmon_cli(config_b, "status")
        assert out.returncode == 0, out.stdout  # nothing that should run here is down
        first = out.stdout.splitlines()[0]
        assert first == "project " + b.config.project.name + ": running; server b: passive, partner a: active"
        line = next(l for l in out.stdout.splitlines() if l.startswith("drv:"))
        assert line.startswith("drv: not started: ") and line.rstrip().endswith(
            "(run_on = active)  -> pmon redu set-active  (makes this server active)")
        assert "passive" in line
    finally:
        relay.close()


def test_a_terminal_shows_colour_a_pipe_and_no_color_do_not(tmp_path, pmon):
    import pty
    import select
    import subprocess
    import time

    program = vanishing_program(tmp_path)
    config = write_project(tmp_path, [
        {"name": "data", "command": child(), "core": True},
        {"name": "ctrl2", "command": [str(program)], "restart_count": 1},
    ])
    instance = pmon(config)
    make_it_vanish(instance, program)

    def on_a_terminal(env):
        leader, follower = pty.openpty()
        proc = subprocess.Popen(
            [sys.executable, "-m", "pmon.cli", "status", "-c", str(config)],
            stdin=follower, stdout=follower, stderr=follower, env={**os.environ, **env},
        )
        os.close(follower)
        data, deadline = b"", time.monotonic() + 30
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # the pty closed: the program ended
                    break
                if not chunk:
                    break
                data += chunk
            elif proc.poll() is not None:
                break
        proc.wait(10)
        os.close(leader)
        return proc.returncode, data.decode()

    os.environ.pop("NO_COLOR", None)
    code, screen = on_a_terminal({})
    assert code == 1
    assert "\x1b[32mrunning" in screen  # green running
    assert "\x1b[31m\x1b[1mblocked" in screen  # bold red
    assert "\x1b[31mcould not start" in screen
    code, screen = on_a_terminal({"NO_COLOR": "1"})
    assert code == 1 and "\x1b[" not in screen and "could not start" in screen
    piped = pmon_cli(config, "status")
    assert "\x1b[" not in piped.stdout and "could not start" in piped.stdout
