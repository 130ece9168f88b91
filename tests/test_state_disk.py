"""The state file and its disk: a corrupt entry never crashes pmon, a full disk is waited
out (the state file is retried until written), a read-only state directory is one line, an
existing state directory is tightened to 0700."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from support import child, poll_for, project_processes, write_project

needs_root = pytest.mark.skipif(
    os.name != "posix" or os.geteuid() != 0 or shutil.which("mount") is None,
    reason="needs root to mount a tmpfs",
)


def state_path(instance) -> Path:
    return instance.config.project.state_dir / "state.json"


def saved_pids(instance) -> dict[str, int | None]:
    try:
        data = json.loads(state_path(instance).read_text())
    except (OSError, ValueError):
        return {}
    return {name: record["pid"] for name, record in data["managers"].items()}


def kinds(instance) -> list[str]:
    events = [e for e in instance.events()]
    last = max((i for i, e in enumerate(events) if e["event"] == "pmon-started"), default=0)
    return [e["event"] for e in events[last:]]


def test_wrong_typed_fields_are_ignored_with_a_warning_and_nothing_runs_twice(tmp_path, pmon):
    config = write_project(tmp_path, [
        {"name": "a", "command": child()},
        {"name": "b", "command": child()},
        {"name": "c", "command": child()},
    ])
    first = pmon(config)
    pids = {m["name"]: m["pid"] for m in first.status()["managers"]}
    poll_for(lambda: saved_pids(first) == pids, what="the state file")
    first.kill()
    data = json.loads(state_path(first).read_text())
    data["managers"]["a"]["state"] = ["running"]
    data["managers"]["b"]["pid"] = "12"
    data["managers"]["b"]["restarts"] = {"n": 1}
    data["managers"]["c"]["uid"] = "0"  # a string, not the uid (review 2, finding 2)
    state_path(first).write_text(json.dumps(data))

    second = pmon(config)
    assert {m["name"]: m["pid"] for m in second.status()["managers"]} == pids  # adopted
    notes = " ".join(e["message"] for e in second.events() if e["event"] == "adoption")
    assert "entry of 'a' ignored: wrong type (state" in notes
    assert "entry of 'b' ignored" in notes
    assert 'entry of \'c\' ignored: wrong type (uid = "0")' in notes
    for name in pids:
        assert len(project_processes(second.config.project.name, name)) == 1


def test_a_wrong_typed_top_level_field_ignores_the_file(tmp_path, pmon):
    config = write_project(tmp_path, [{"name": "a", "command": child()}])
    first = pmon(config)
    pid = first.manager("a")["pid"]
    poll_for(lambda: saved_pids(first) == {"a": pid}, what="the state file")
    first.kill()
    data = json.loads(state_path(first).read_text())
    data["project_state"] = ["running"]
    data["job"] = "start"
    state_path(first).write_text(json.dumps(data))
    second = pmon(config)
    assert second.manager("a")["pid"] == pid
    assert any("wrong type" in e["message"] for e in second.events() if e["event"] == "adoption")


def test_an_existing_state_directory_is_tightened_to_0700(tmp_path, pmon):
    config = write_project(tmp_path, [{"name": "a", "command": child()}])
    state_dir = tmp_path / "var"
    state_dir.mkdir(mode=0o755)
    os.chmod(state_dir, 0o755)
    instance = pmon(config)
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    assert "state-dir" in kinds(instance)


@pytest.fixture
def tmpfs(tmp_path):
    """A small tmpfs at tmp_path/var (the projects' state directory), unmounted after."""
    mount = tmp_path / "var"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mount)],
                   check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@needs_root
def test_a_full_disk_is_waited_out_and_the_stop_survives_pmon(tmp_path, pmon, tmpfs):
    config = write_project(tmp_path, [
        {"name": "core", "command": child(), "core": True},
        {"name": "man", "command": child(), "start": "manual"},
    ], project={"log_max_bytes": 4096, "log_backups": 1})
    first = pmon(config)
    first.call("start", target="man")
    filler = tmpfs / "filler"
    with open(filler, "wb") as handle:  # fill the disk to the last block
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
    with pytest.raises(Exception) as not_saved:
        first.call("stop", target="man")
    assert "not saved" in str(not_saved.value)
    # the change itself stands: the stop goes on (the reply came when its save failed)
    poll_for(lambda: first.manager("man")["state"] == "stopped", what="man to stop")
    assert json.loads(state_path(first).read_text())["managers"]["man"]["state"] != "stopped"
    filler.unlink()  # room again: the retried write succeeds
    poll_for(lambda: json.loads(state_path(first).read_text())["managers"]["man"]["state"]
             == "stopped", timeout=10, what="the state file written again")
    first.kill()
    second = pmon(config)
    assert second.manager("man")["state"] == "stopped"
    assert second.stop() == 0


@needs_root
def test_a_read_only_state_directory_is_one_line_not_a_traceback(tmp_path, tmpfs):
    config = write_project(tmp_path, [{"name": "a", "command": child()}])
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    result = subprocess.run([sys.executable, "-m", "pmon.cli", "run", "-q", "-c", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot use the state directory" in lines[0], result.stderr
    assert not any(p.info["environ"] and p.info["environ"].get("PMON_PROJECT") ==
                   config.parent.name for p in psutil.process_iter(["environ"]))
