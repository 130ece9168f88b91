"""`pmon logs`: a manager's output with pmon's own lines in it; a SIGKILL leaves a trace;
`-f` sees a restart as it happens. Real pmon, real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from support import child, pmon_cli, poll_for, write_project


def test_logs_show_output_and_pmons_lines_and_a_sigkill_leaves_a_trace(tmp_path, pmon):
    config = write_project(tmp_path, [
        {"name": "talker", "command": child("--print", "hello from talker")},
    ])
    instance = pmon(config)
    first = instance.manager("talker")["pid"]
    poll_for(lambda: "hello from talker" in pmon_cli(config, "logs", "talker").stdout, 10, "output")
    os.kill(first, signal.SIGKILL)
    second = poll_for(lambda: (p := instance.manager("talker")["pid"]) not in (None, first) and p, 10,
                      "the restart")
    def both():
        out = pmon_cli(config, "logs", "talker").stdout.splitlines()
        return any(f"started as pid {second}" in line for line in out) and out
    lines = poll_for(both, 10, "pmon's lines in the log")
    killed = next(i for i, l in enumerate(lines) if f"pid {first} exited with signal SIGKILL: restarted" in l)
    assert lines[killed].startswith("-- pmon ")
    assert any("hello from talker" in l for l in lines[:killed])  # the first run's output first
    assert any(f"started as pid {second}" in l for l in lines[killed:])
    assert any("hello from talker" in l for l in lines[killed + 1:])  # then the second run's
    assert pmon_cli(config, "logs", "talker", "-n", "1").stdout.count("\n") == 1
    since = pmon_cli(config, "logs", "talker", "--since", "1h").stdout
    assert since.splitlines()[0].startswith("-- pmon ") and "SIGKILL" in since
    out = pmon_cli(config, "logs", "talkr")
    assert out.returncode == 4 and "did you mean 'talker'" in out.stderr


def test_logs_follow_sees_a_restart(tmp_path, pmon):
    config = write_project(tmp_path, [
        {"name": "ticker", "command": child("--print-every", "0.2"), "seconds_to_kill": 2},
    ])
    instance = pmon(config)
    follower = subprocess.Popen(
        [sys.executable, "-m", "pmon.cli", "logs", "ticker", "-f", "-n", "0", "-c", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert "ticker line" in follower.stdout.readline()  # live output
        old = instance.manager("ticker")["pid"]
        assert pmon_cli(config, "restart", "ticker").returncode == 0
        new = instance.manager("ticker")["pid"]
        seen = []
        poll_for(lambda: seen.append(follower.stdout.readline()) or f"started as pid {new}" in seen[-1],
                 15, "the restart in the followed log")
        assert any(f"pid {old} exited with signal SIGTERM: restarted by request" in l for l in seen)
        assert "ticker line 1" in follower.stdout.readline()  # the new run counts from 1 again
    finally:
        follower.terminate()
        follower.wait(10)
