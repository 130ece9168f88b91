"""The unit under a real systemd: PID 1 of a container booted on this machine's own root
(systemd-nspawn --volatile=overlay: nothing of the host changes). `pmon service install
--enable --now` from a project folder with a space, `$`, `%` and non-ASCII in its path;
`systemctl restart` is a hot restart (every manager keeps its pid); a killed manager shows in
`journalctl -t pmon-PROJECT -p warning`; `pmon shutdown` leaves the unit stopped, not
restarted; a typo in the file fails the unit once, with no restart loop.

Needs root, systemd-nspawn (Debian: systemd-container) and unshare; skips otherwise.
About 10-20 s, most of it the container's boot.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from support import child, poll_for, write_project

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("systemd-nspawn") or not shutil.which("unshare"),
    reason="needs root, systemd-nspawn (Debian package systemd-container) and unshare",
)


class Container:
    """systemd as PID 1 of a container on the host's root (TESTING recipe); commands run
    inside with nsenter."""

    def __init__(self, tmp: Path, binds: list[Path]) -> None:
        root = tmp / "root"
        root.mkdir()
        boot = (
            "set -e; mount -t tmpfs tmpfs /run; mount --bind / \"$1\"; shift; "
            "exec systemd-nspawn -q -D \"$0\" --volatile=overlay -b --register=no "
            "--keep-unit --private-network --tmpfs=/etc/systemd/system \"$@\""
        )
        self.proc = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", boot, str(root), str(root),
             *(f"--bind={path}" for path in binds)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        self.pid = poll_for(self._init_pid, 30, "the container's systemd")
        poll_for(lambda: self.run("systemctl", "is-system-running").stdout.strip()
                 in ("running", "degraded"), 60, "the container to boot")

    def _init_pid(self) -> int | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"systemd-nspawn ended: {self.proc.stderr.read().decode()}")
        try:
            return next((c.pid for c in psutil.Process(self.proc.pid).children()
                         if c.name() == "systemd"), None)
        except psutil.Error:
            return None

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["nsenter", "-t", str(self.pid), "-a", *args],
                              capture_output=True, text=True, timeout=timeout)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run("systemctl", "show", unit, *(f"-p{p}" for p in props)).stdout
        return dict(line.partition("=")[::2] for line in out.splitlines())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # nspawn shuts the container down
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc.stderr.close()


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
                   "Result": "success", "NRestarts": "0"}
    assert box.run("pgrep", "-f", "children/child.py").stdout == ""

    # a typo: the unit fails once, says why, and is not restarted every second
    path.write_text(path.read_text().replace("[[managers]]", "typo = 1\n[[managers]]", 1))
    assert box.run("systemctl", "start", unit).returncode != 0
    failed = box.show(unit, "ActiveState", "ExecMainStatus", "NRestarts")
    assert failed == {"ActiveState": "failed", "ExecMainStatus": "2", "NRestarts": "0"}
    text = box.run("systemctl", "status", unit, "--no-pager", "-n", "5").stdout
    assert "typo" in text and "status=2" in text
