"""pmon's own start-up and end (review 1, findings 2, 3, 11): a hot restart (SIGUSR2 or
`pmon detach`) that comes while pmon is still starting up must not save the project as
stopped nor kill pmon; a pmon killed during its own final stop must not leave the project
stopped for good. Real pmon processes, a gate file instead of sleeps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from support import Pmon, child, kill_project_processes, pmon_cli, poll_for, project_processes, write_project

GATED = str(Path(__file__).parent / "children" / "gated_pmon.py")


def saved(config_dir: Path) -> dict:
    return json.loads((config_dir / "var" / "state.json").read_text())


def project(tmp_path: Path) -> Path:
    return write_project(tmp_path, [
        {"name": "core1", "command": child(), "core": True},
        {"name": "drv", "command": child()},
    ])


def gated(config: Path, where: str, tmp_path: Path) -> tuple[subprocess.Popen[str], Path, Path]:
    marker, gate = tmp_path / f"marker-{where}", tmp_path / f"gate-{where}"
    proc = subprocess.Popen([sys.executable, GATED, str(config), where, str(marker), str(gate)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, marker, gate


def wait_exit(proc: subprocess.Popen[str], timeout: float = 30) -> int:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError("pmon did not end in time")
    proc.communicate()
    return proc.returncode


def assert_next_pmon_supervises(config: Path, name: str) -> None:
    """A plain pmon started next finds the project running and restarts a death."""
    instance = Pmon(config)
    try:
        status = instance.wait_ready(project_state=None)
        assert status["project_state"] == "running", status
        before = instance.manager("drv")
        for process in project_processes(name, "drv"):
            process.kill()
        poll_for(lambda: (m := instance.manager("drv"))["state"] == "running"
                 and m["pid"] != before["pid"], 20, "drv restarted by the next pmon")
    finally:
        instance.stop()


@pytest.mark.skipif(not hasattr(signal, "SIGUSR2"), reason="no SIGUSR2 on this platform")
@pytest.mark.parametrize("where", ["first", "last"])
def test_sigusr2_during_start_up_detaches_once_the_project_runs(tmp_path, where):
    """`first`: before the hot-restart handler is armed (Python's default would kill pmon);
    `last`: armed, the control server answers, but the project has not started yet."""
    config = project(tmp_path)
    from pmon import config as config_module
    name = config_module.load(config).project.name
    first = Pmon(config)  # a pmon that started the project, then hands over (hot restart)
    try:
        first.wait_ready()
        first.proc.send_signal(signal.SIGUSR2)
        assert first.stop() == 0
        proc, marker, gate = gated(config, where, tmp_path)
        try:
            poll_for(lambda: marker.exists() or proc.poll() is not None, 20, "the gated start")
            proc.send_signal(signal.SIGUSR2)  # inside the start-up window
            if where == "last":  # the control socket answers: `pmon detach` is refused
                result = pmon_cli(config, "detach", timeout=30)
                assert result.returncode != 0
                assert "still starting up" in result.stderr
            gate.touch()
            assert wait_exit(proc) == 0  # detached, not killed by the signal
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        state = saved(tmp_path)
        assert (state["project_state"], state["job"]) == ("running", None)
        assert {m.name() for m in project_processes(name)}  # the managers ran on
        assert_next_pmon_supervises(config, name)
    finally:
        first.stop()
        kill_project_processes(name)
