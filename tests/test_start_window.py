"""pmon's own start-up and end (review 1, findings 2, 3, 11): a hot restart (SIGUSR2 or
`pmon detach`) that comes while pmon is still starting up must not save the project as
stopped nor kill pmon; a pmon killed during its own final stop must not leave the project
stopped for good. Real pmon processes, a gate file instead of sleeps."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from support import Pmon, child, kill_project_processes, pmon_cli, poll_for, project_processes, saved_state, write_project

GATED = str(Path(__file__).parent / "children" / "gated_pmon.py")


def saved(config_dir: Path) -> dict:
    return saved_state(config_dir / "var")


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


def ignores_term(pid: int) -> bool:
    with open(f"/proc/{pid}/status") as handle:
        mask = next(line for line in handle if line.startswith("SigIgn:")).split()[1]
    return bool(int(mask, 16) & (1 << (signal.SIGTERM - 1)))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_final_stop_cut_short_is_finished_then_the_project_starts(tmp_path):
    """`systemctl stop` ending in SIGKILL (or a power cut during shutdown): the next pmon,
    started as by `systemctl start` or at boot, finishes the stop and runs the project."""
    config = write_project(tmp_path, [
        {"name": "core1", "command": child(), "core": True},
        {"name": "drv", "command": child()},
        {"name": "slow", "command": child("--ignore-term"), "seconds_to_kill": 5},
    ])
    from pmon import config as config_module
    name = config_module.load(config).project.name
    first = Pmon(config)
    try:
        first.wait_ready()
        old = first.manager("slow")["pid"]
        poll_for(lambda: ignores_term(old), 10, "slow to ignore SIGTERM")
        first.proc.send_signal(signal.SIGTERM)  # the final stop waits out slow's SIGTERM
        poll_for(lambda: (saved(tmp_path).get("job") or {}).get("mode") == "irreversible",
                 20, "the final stop on disk")
        first.kill()
        nxt = Pmon(config, env={"PMON_SYSTEMD_UNIT": "pmon-test.service"})
        try:
            status = poll_for(
                lambda: (s := _answered(nxt)) and s["project_state"] == "running"
                and all(m["state"] == "running" for m in s["managers"]) and s,
                45, "the project running again after the stop was finished")
            slow = next(m for m in status["managers"] if m["name"] == "slow")
            assert slow["pid"] != old  # the stop was finished (killed at its deadline), then started
            assert not psutil_alive(old)
        finally:
            assert nxt.stop() == 40  # a clean final stop under the unit
        assert_next_pmon_supervises(config, name)  # and after that clean stop, a start again
    finally:
        first.stop()
        kill_project_processes(name)


def _answered(instance):
    try:
        return instance.status()
    except Exception:
        return None


def psutil_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
