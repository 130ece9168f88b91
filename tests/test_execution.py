"""Execution settings per manager and in [defaults], with real processes: stop_signal,
stop_command, env_file, umask, rlimits, user / group (root only); and their validation."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from support import cgroups_writable, pmon_cli, poll_for, write_project

REPORT = str(Path(__file__).parent / "children" / "report.py")


def _report_of(path: Path) -> dict:
    return poll_for(lambda: path.exists() and json.loads(path.read_text()), 15, f"{path.name}")


def _signals(path: Path) -> list[str]:
    file = Path(str(path) + ".signals")
    return file.read_text().split() if file.exists() else []


def test_stop_signal_per_manager_and_from_defaults(tmp_path, pmon):
    config = write_project(tmp_path, [
        {"name": "int", "command": [sys.executable, REPORT, str(tmp_path / "int")], "stop_signal": "INT"},
        {"name": "usr2", "command": [sys.executable, REPORT, str(tmp_path / "usr2")], "stop_signal": "SIGUSR2"},
        {"name": "dflt", "command": [sys.executable, REPORT, str(tmp_path / "dflt")]},
    ], defaults={"stop_signal": "HUP"})
    instance = pmon(config)
    for name in ("int", "usr2", "dflt"):
        _report_of(tmp_path / name)
        instance.call("stop", target=name)
        instance.wait_state(name, "stopped")
    assert _signals(tmp_path / "int") == ["SIGINT"]
    assert _signals(tmp_path / "usr2") == ["SIGUSR2"]
    assert _signals(tmp_path / "dflt") == ["SIGHUP"]  # [defaults] stop_signal


def test_stop_command_runs_before_the_signal(tmp_path, pmon):
    order = tmp_path / "order"
    stopper = (f"import os; open({str(order)!r}, 'a').write('stop-command ' + "
               "os.environ['PMON_MANAGER_PID'] + ' ' + os.environ['PMON_MANAGER'] + chr(10))")
    config = write_project(tmp_path, [{
        "name": "oa", "command": [sys.executable, REPORT, str(tmp_path / "oa")],
        "stop_command": [sys.executable, "-c", stopper],
    }])
    instance = pmon(config)
    _report_of(tmp_path / "oa")
    pid = instance.manager("oa")["pid"]
    instance.call("stop", target="oa")
    instance.wait_state("oa", "stopped")
    assert order.read_text().splitlines() == [f"stop-command {pid} oa"]
    assert _signals(tmp_path / "oa") == ["SIGTERM"]  # after the command: it still ran
    assert instance.wait_event("stop-command", manager="oa")


def test_env_file_in_systemd_syntax_and_env_wins(tmp_path, pmon):
    (tmp_path / "plant.env").write_text(
        "# the plant's settings\n; also a comment\n\nPLANT=north\nQUOTED=\"two words \\\"x\\\"\"\n"
        "SINGLE='a b'\nLONG=one \\\ntwo\nOVERRIDDEN=from-file\n"
    )
    config = write_project(tmp_path, [{
        "name": "m", "command": [sys.executable, REPORT, str(tmp_path / "m")],
        "env_file": "plant.env", "env": {"OVERRIDDEN": "from-toml"},
    }])
    pmon(config)
    env = _report_of(tmp_path / "m")["env"]
    assert (env["PLANT"], env["QUOTED"], env["SINGLE"], env["LONG"], env["OVERRIDDEN"]) == (
        "north", 'two words "x"', "a b", "one two", "from-toml")


def test_umask_and_rlimits(tmp_path, pmon):
    config = write_project(tmp_path, [
        {"name": "m", "command": [sys.executable, REPORT, str(tmp_path / "m")],
         "umask": "027", "rlimits": {"nofile": 512, "core": 0, "as": "infinity"}},
        {"name": "plain", "command": [sys.executable, REPORT, str(tmp_path / "plain")]},
    ], defaults={"umask": 0o077})
    pmon(config)
    report = _report_of(tmp_path / "m")
    assert report["umask"] == 0o027
    assert report["nofile"] == [512, 512] and report["core"] == [0, 0]
    assert report["as"][0] == -1  # RLIM_INFINITY
    assert _report_of(tmp_path / "plain")["umask"] == 0o077  # [defaults]


@pytest.mark.parametrize(("table", "message"), [
    ({"stop_signal": "KILL"}, "key 'stop_signal': expected one of 'TERM' | 'INT'"),
    ({"umask": "99"}, "key 'umask': expected octal digits"),
    ({"rlimits": {"files": 5}}, "limits among nofile, core, as (not 'files')"),
    ({"rlimits": {"nofile": -3}}, "rlimits.nofile: a whole number >= 0 or \"infinity\""),
    ({"user": "no-such-user-13"}, "key 'user': expected a user that exists on this machine"),
    ({"group": "no-such-group-13"}, "key 'group': expected a group that exists on this machine"),
    ({"stop_command": "stop.sh"}, "key 'stop_command': expected a non-empty list of strings"),
    ({"env_file": "missing.env"}, "key 'env_file': cannot read"),
])
def test_bad_execution_settings_are_refused_with_file_manager_and_key(tmp_path, table, message):
    config = write_project(tmp_path, [{"name": "m", "command": ["true"], **table}])
    result = pmon_cli(config, "validate")
    assert result.returncode == 2
    assert f"{config}: manager 'm' (managers[1])" in result.stderr and message in result.stderr, result.stderr


def test_a_bad_line_of_an_env_file_is_named(tmp_path):
    (tmp_path / "bad.env").write_text("GOOD=1\nthis is not an assignment\n")
    config = write_project(tmp_path, [{"name": "m", "command": ["true"], "env_file": "bad.env"}])
    result = pmon_cli(config, "validate")
    assert result.returncode == 2
    assert "bad.env: line 2: expected KEY=VALUE" in result.stderr, result.stderr


@pytest.fixture
def other_user():
    """A throw-away local user (root only), removed afterwards."""
    if os.geteuid() != 0 or not shutil.which("useradd"):
        pytest.skip("needs root and useradd to make a user")
    name = f"pm13{os.getpid() % 100000}"
    subprocess.run(["useradd", "-M", "-s", "/bin/false", name], check=True, capture_output=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], capture_output=True)


def test_root_pmon_drops_privileges_for_a_manager_and_its_log(tmp_path, pmon, other_user):
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("needs a python3 that another user may run (/usr/bin/python3)")
    shared = Path(tempfile.mkdtemp(prefix="pmon13-"))
    shared.chmod(0o777)
    try:
        config = write_project(tmp_path, [
            {"name": "m", "command": [python, REPORT, str(shared / "m")], "user": other_user.pw_name},
        ])
        instance = pmon(config)
        report = _report_of(shared / "m")
        assert (report["uid"], report["gid"]) == (other_user.pw_uid, other_user.pw_gid)
        assert report["env"]["USER"] == other_user.pw_name
        log = instance.config.project.state_dir / "log" / "m.log"
        assert (log.stat().st_uid, log.stat().st_gid) == (other_user.pw_uid, other_user.pw_gid)
        instance.call("stop", target="m")
        instance.wait_state("m", "stopped")
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def _v2_controllers() -> set[str]:
    from pmon.runtime import cgroups

    mount = cgroups.mount_point()
    try:
        return set((mount / "cgroup.controllers").read_text().split()) if mount else set()
    except OSError:
        return set()


@pytest.mark.parametrize(("table", "message"), [
    ({"memory_max": "lots"}, "key 'memory_max': expected a size > 0"),
    ({"cpu_max": 0.5}, "key 'cpu_max': expected a share of one core, e.g. \"50%\""),
    ({"pids_max": 0}, "key 'pids_max': expected a whole number > 0"),
])
def test_bad_cgroup_limits_are_refused(tmp_path, table, message):
    config = write_project(tmp_path, [{"name": "m", "command": ["true"], **table}])
    result = pmon_cli(config, "validate")
    assert result.returncode == 2 and message in result.stderr, result.stderr


@pytest.mark.parametrize("mode", ["process-group", "cgroup"])
def test_a_cgroup_limit_that_cannot_be_applied_refuses_the_start_and_says_why(tmp_path, pmon, mode):
    if mode == "cgroup":
        if why := cgroups_writable():
            pytest.skip(why)
        if "memory" in _v2_controllers():
            pytest.skip("this machine's cgroup v2 has the memory controller: nothing to refuse")
    config = write_project(tmp_path, [
        {"name": "m", "command": [sys.executable, REPORT, str(tmp_path / "m")], "memory_max": "64M",
         "restart_count": 0},
    ])
    instance = pmon(config, wait=False, env={"PMON_NO_CGROUPS": "1"} if mode == "process-group" else {})
    failed = instance.wait_event("spawn-failed", manager="m")
    expected = "memory_max need(s) cgroups" if mode == "process-group" else "controller(s) memory"
    assert expected in failed["message"], failed["message"]
    assert not (tmp_path / "m").exists()  # never ran without its limit


def test_memory_max_and_an_oom_kill_reported_as_such(tmp_path, pmon):
    if why := cgroups_writable():
        pytest.skip(why)
    if not {"memory", "pids"} <= _v2_controllers():
        pytest.skip("the cgroup v2 hierarchy has no memory/pids controller (bound to v1 here)")
    from support import child

    config = write_project(tmp_path, [
        {"name": "hog", "command": child("--allocate-mb", "200"), "memory_max": "32M",
         "pids_max": 20, "restart_count": 0},
    ])
    instance = pmon(config, wait=False)
    exited = instance.wait_event("exited", manager="hog", timeout=20)
    assert exited.get("oom_kill") is True and "OOM killer" in exited["message"], exited
