"""The unit under a real systemd: PID 1 of a container booted on this machine's own root
(systemd-nspawn --volatile=overlay: nothing of the host changes). `pmon service install
--enable --now` from a project folder with a space, `$`, `%` and non-ASCII in its path;
`systemctl restart` is a hot restart (every manager keeps its pid), and so is `pmon detach`
(systemd older than 244 has only that); a killed manager shows in
`journalctl -t pmon-PROJECT -p warning`; `pmon shutdown` leaves the unit stopped, not
restarted; a typo in the file fails the unit once, with no restart loop; `pmon service
uninstall` stops and disables the unit before it removes the file.

Needs root, systemd-nspawn (Debian: systemd-container) and unshare; skips otherwise.
About 10-20 s, most of it the container's boot.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from support import child, poll_for, write_project
from systemd_box import Container

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("systemd-nspawn") or not shutil.which("unshare"),
    reason="needs root, systemd-nspawn (Debian package systemd-container) and unshare",
)


@pytest.fixture
def container(tmp_path):
    project_dir = tmp_path / "plant $HOME 50% ü"
    project_dir.mkdir()
    binds = sorted({REPO, Path(sys.prefix).resolve(), tmp_path})
    box = Container(tmp_path, binds)
    try:
        yield box, project_dir
    finally:
        box.close()


def test_restart_is_hot_shutdown_stays_stopped_and_a_typo_does_not_loop(container):
    box, directory = container
    path = write_project(directory, [
        {"name": "a", "command": child()},
        {"name": "b", "command": child(), "seconds_to_kill": 2},
    ], name="box")
    pmon = [sys.executable, "-m", "pmon.cli"]
    unit = "pmon-box.service"

    def status() -> dict:
        done = box.run(*pmon, "status", "--json", "-c", str(path))
        return json.loads(done.stdout) if done.returncode == 0 else {}

    done = box.run(*pmon, "service", "install", "-c", str(path), "--enable", "--now")
    assert done.returncode == 0, done.stdout + done.stderr
    first = box.show(unit, "MainPID", "ActiveState", "StatusText")
    assert first["ActiveState"] == "active"  # Type=notify: active once the project is up
    assert first["StatusText"] == "running: 2 of 2 managers running"
    pids = {m["name"]: m["pid"] for m in status()["managers"]}

    # systemctl restart: a hot restart, a new pmon, the same managers
    assert box.run("systemctl", "restart", unit).returncode == 0
    second = box.show(unit, "MainPID", "ActiveState")
    assert second["ActiveState"] == "active" and second["MainPID"] != first["MainPID"]
    now = status()
    assert {m["name"]: m["pid"] for m in now["managers"]} == pids
    assert all(m["state"] == "running" and m["restarts"] == 0 for m in now["managers"])

    # pmon detach (the hot restart where systemd is older than 244): exit 0, Restart=always
    # starts the next pmon a second later, which adopts the same managers
    assert box.run(*pmon, "detach", "-c", str(path)).returncode == 0
    poll_for(lambda: box.show(unit, "MainPID")["MainPID"] not in ("0", second["MainPID"])
             and box.show(unit, "ActiveState")["ActiveState"] == "active", 20, "the next pmon")
    assert {m["name"]: m["pid"] for m in poll_for(status, 20, "status")["managers"]} == pids

    # the journal: a manager killed under pmon is a warning of pmon-box (adopted: pmon
    # is not its parent any more, the line says its exit status cannot be known)
    box.run("kill", "-9", str(pids["a"]))
    poll_for(lambda: f"a (pid {pids['a']}) ended" in box.run(
        "journalctl", "-t", "pmon-box", "-p", "warning", "--no-pager", "-o", "cat").stdout,
        20, "the death as a warning in the journal")

    # pmon shutdown: every manager stopped, the unit stopped (not auto-restarting)
    assert box.run(*pmon, "shutdown", "-c", str(path)).returncode == 0
    end = poll_for(lambda: (s := box.show(unit, "ActiveState", "SubState", "ExecMainStatus",
                                          "Result", "NRestarts"))["ActiveState"] == "inactive"
                   and s, 30, "the unit to stop")
    assert end == {"ActiveState": "inactive", "SubState": "dead", "ExecMainStatus": "40",
                   "Result": "success", "NRestarts": "1"}  # the one of the detach above
    assert box.run("pgrep", "-f", "children/child.py").stdout == ""

    # a typo: the unit fails once, says why, and is not restarted every second
    path.write_text(path.read_text().replace("[[managers]]", "typo = 1\n[[managers]]", 1))
    assert box.run("systemctl", "start", unit).returncode != 0
    failed = box.show(unit, "ActiveState", "ExecMainStatus", "NRestarts")
    assert failed == {"ActiveState": "failed", "ExecMainStatus": "2", "NRestarts": "0"}
    text = box.run("systemctl", "status", unit, "--no-pager", "-n", "5").stdout
    assert "typo" in text and "status=2" in text

    # fixed, started again; uninstall stops (every manager) and disables before removing
    path.write_text(path.read_text().replace("typo = 1\n", "", 1))
    assert box.run("systemctl", "start", unit).returncode == 0
    assert box.run("pgrep", "-f", "children/child.py").stdout != ""
    done = box.run(*pmon, "service", "uninstall", "-c", str(path))
    assert done.returncode == 0 and "stopped and disabled" in done.stdout, done.stdout + done.stderr
    assert box.run("pgrep", "-f", "children/child.py").stdout == ""
    assert box.show(unit, "LoadState")["LoadState"] == "not-found"
