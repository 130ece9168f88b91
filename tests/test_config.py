"""Validation: every error names the file, the manager and the key, exits 2, starts nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from pmon import config
from pmon.errors import ConfigError
from pmon.states import Readiness, StartType
from support import child, pmon_cli, write_project

GOOD = """
[project]
name = "demo"
state_dir = "var"

[defaults]
seconds_to_kill = 4
restart_count = 5

[[managers]]
name = "data"
command = ["python3", "data.py", "-num", "1"]
core = true
ready = "notify"

[[managers]]
name = "redu"
command = ["python3", "redu.py"]
redundancy = true

[[managers]]
name = "driver1"
command = ["python3", "driver.py"]
env = { DRIVER_PORT = "5020" }
seconds_to_kill = 5
start = "manual"
cwd = "sub"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pmon.toml"
    path.write_text(text)
    return path


def test_a_good_file_becomes_a_typed_model(tmp_path):
    cfg = config.load(write(tmp_path, GOOD))
    data, redu, driver = cfg.managers
    assert cfg.project.state_dir == tmp_path / "var"
    assert [m.index for m in cfg.managers] == [1, 2, 3]
    assert data.ready is Readiness.NOTIFY and data.core and data.seconds_to_kill == 4
    assert data.restart_count == 5 and data.reset_after == 300
    assert driver.seconds_to_kill == 5 and driver.env == {"DRIVER_PORT": "5020"}
    assert driver.start is StartType.MANUAL and driver.cwd == tmp_path / "sub"
    assert redu.core, "the redundancy manager is always core"
    assert [m.name for m in cfg.start_order()] == ["redu", "data", "driver1"]


CASES = [
    ("[project\nname=1", "not valid TOML", None),
    (GOOD.replace("seconds_to_kill = 5", "secnds_to_kill = 5"), "did you mean 'seconds_to_kill'", "manager 'driver1' (managers[3]), key 'secnds_to_kill'"),
    (GOOD.replace("seconds_to_kill = 5", 'seconds_to_kill = "ten"'), "expected a number >= 0", "manager 'driver1' (managers[3]), key 'seconds_to_kill'"),
    (GOOD.replace('name = "redu"', 'name = "data"'), "duplicate manager name 'data'", "managers[2]), key 'name'"),
    (GOOD.replace("core = true", 'core = true\nstart = "once"'), 'must have start = "always"', "manager 'data' (managers[1]), key 'start'"),
    (GOOD.replace('command = ["python3", "redu.py"]', "command = []"), "non-empty list of strings", "manager 'redu' (managers[2]), key 'command'"),
    (GOOD.replace('start = "manual"', 'start = "sometimes"'), "one of 'always' | 'once' | 'manual'", "key 'start'"),
    (GOOD.replace('redundancy = true', 'redundancy = true\ncore = false'), "always a core manager", "key 'core'"),
    (GOOD.replace('name = "demo"', ''), "missing", "[project], key 'name'"),
    (GOOD + "\n[extra]\nx = 1\n", "unknown key", "top level, key 'extra'"),
    (GOOD.replace('env = { DRIVER_PORT = "5020" }', "env = { DRIVER_PORT = 5020 }"), "a table of strings", "key 'env'"),
]


@pytest.mark.parametrize("text, message, where", CASES)
def test_each_error_names_file_manager_key_and_exits_2(tmp_path, text, message, where):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert str(path) in str(info.value) and message in str(info.value)
    if where:
        assert where in str(info.value)
    result = pmon_cli(path, "validate")
    assert result.returncode == 2
    assert message in result.stderr and str(path) in result.stderr


def test_all_errors_are_reported_at_once(tmp_path):
    text = GOOD.replace("seconds_to_kill = 5", "secnds = 5").replace("core = true", "core = 1")
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, text))
    assert "'secnds'" in str(info.value) and "key 'core'" in str(info.value)


def test_run_with_a_broken_file_starts_nothing(tmp_path):
    marker = tmp_path / "started"
    path = write_project(tmp_path, [
        {"name": "a", "command": child("--record", str(marker))},
        {"name": "b", "command": child(), "bogus": 1},
    ])
    result = pmon_cli(path, "run", timeout=20)
    assert result.returncode == 2 and "bogus" in result.stderr
    assert not marker.exists()
    assert not (tmp_path / "var" / "pmon.sock").exists()


def test_missing_file_is_a_clear_error(tmp_path):
    result = pmon_cli(tmp_path / "nope.toml", "validate")
    assert result.returncode == 2 and "no such file" in result.stderr


def test_validate_says_valid(tmp_path):
    (tmp_path / "sub").mkdir()  # driver1's cwd: validate checks that it exists
    result = pmon_cli(write(tmp_path, GOOD), "validate")
    assert result.returncode == 0 and "valid" in result.stdout and "3 managers" in result.stdout


def test_notify_readiness_is_refused_where_there_is_no_notify_socket(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "HAS_NOTIFY_SOCKET", False)  # as on Windows
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, GOOD))
    assert "manager 'data' (managers[1]), key 'ready'" in str(info.value)
    assert 'ready = "delay"' in str(info.value)
