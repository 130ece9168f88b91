"""Live reload: the plan (pure) and `pmon reload` / SIGHUP on a real project."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import tomli_w

from pmon import config as config_module
from pmon.errors import CommandError
from pmon.core.change import plan
from support import child, pmon_cli, poll_for, write_project


def cfg(managers: list[dict], path: Path = Path("/p/pmon.toml"), **sections) -> config_module.Config:
    data = {"project": {"name": "p", **sections.pop("project", {})}, **sections,
            "managers": managers}
    return config_module.parse(data, path)


A = {"name": "a", "command": ["a"]}
B = {"name": "b", "command": ["b"]}
C = {"name": "c", "command": ["c"]}


def test_plan_sorts_managers_into_added_removed_changed_updated_unchanged():
    old = cfg([A, B, C, {"name": "d", "command": ["d"]}])
    new = cfg([
        {**A},                                   # unchanged
        {**B, "command": ["b", "--fast"]},        # changed: restarts
        {**C, "restart_count": 9},               # updated in place
        {"name": "e", "command": ["e"]},         # added
    ])
    result = plan(old, new)
    assert result.added == ("e",)
    assert result.removed == ("d",)
    assert dict(result.changed) == {"b": ("command",)}
    assert dict(result.updated) == {"c": ("restart_count",)}
    assert result.unchanged == ("a",)


def test_plan_ignores_reordering_and_sees_defaults_and_env():
    old = cfg([A, B])
    assert plan(old, cfg([B, A])).unchanged == ("b", "a")
    moved = plan(old, cfg([A, B], defaults={"seconds_to_kill": 1}))
    assert set(moved.updated) == {"a", "b"}
    assert plan(old, cfg([{**A, "env": {"X": "1"}}, B])).changed == {"a": ("env",)}


def test_plan_refuses_another_project_and_reports_what_needs_a_pmon_restart():
    with pytest.raises(CommandError, match="name changed"):
        plan(cfg([A]), cfg([A], project={"name": "q"}))
    later = plan(cfg([A]), cfg([A], control={"tcp": "127.0.0.1:7000"}))
    assert later.not_applied == ("[control]",) and later.empty


def test_plan_refuses_to_add_or_remove_the_redundancy_section():
    section = {"name": "a", "partner": "b",
               "links": [{"local": "127.0.0.1:7101", "partner": "127.0.0.1:7201"}]}
    alone, paired = cfg([A]), cfg([A], redundancy=section)
    for old, new, word in ((alone, paired, "added"), (paired, alone, "removed")):
        with pytest.raises(CommandError, match=rf"\[redundancy\] section was {word}.*Restart pmon"):
            plan(old, new)
    assert plan(paired, cfg([A], redundancy={**section, "timeout": 2})).not_applied == (
        "[redundancy]",)


def write(path: Path, managers: list[dict], name: str) -> None:
    path.write_text(tomli_w.dumps({"project": {"name": name, "state_dir": "var"},
                                   "managers": managers}))


def test_reload_touches_only_what_changed_and_an_invalid_file_changes_nothing(tmp_path, pmon):
    managers = [
        {"name": "keep", "command": child()},
        {"name": "change", "command": child()},
        {"name": "drop", "command": child()},
        {"name": "tune", "command": child()},
    ]
    config = write_project(tmp_path, managers)
    instance = pmon(config)
    name = instance.config.project.name
    before = {m["name"]: m["pid"] for m in instance.status()["managers"]}

    config.write_text("[project\nname = ")  # broken TOML
    result = pmon_cli(config, "reload")
    assert result.returncode == 2 and "nothing changed" in result.stderr
    assert {m["name"]: m["pid"] for m in instance.status()["managers"]} == before

    write(config, [
        {"name": "keep", "command": child()},
        {"name": "change", "command": child("--print", "v2")},
        {"name": "tune", "command": child(), "seconds_to_kill": 3},
        {"name": "new", "command": child()},
    ], name)
    dry = pmon_cli(config, "reload", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "add      new" in dry.stdout and "remove   drop" in dry.stdout
    assert "restart  change (command changed)" in dry.stdout
    assert {m["name"]: m["pid"] for m in instance.status()["managers"]} == before

    done = pmon_cli(config, "reload")
    assert done.returncode == 0, done.stderr
    after = {m["name"]: m for m in instance.status()["managers"]}
    assert list(after) == ["keep", "change", "tune", "new"]
    assert after["keep"]["pid"] == before["keep"] and after["tune"]["pid"] == before["tune"]
    assert after["change"]["state"] == "running" and after["change"]["pid"] != before["change"]
    assert after["new"]["state"] == "running"
    poll_for(lambda: not _alive(before["drop"]), what="the removed manager to stop")
    poll_for(lambda: "v2" in (instance.config.project.state_dir / "log" / "change.log").read_text())


def test_sighup_reloads_and_reports_a_bad_file_in_the_event_log(tmp_path, pmon):
    config = write_project(tmp_path, [{"name": "a", "command": child()}])
    instance = pmon(config)
    name = instance.config.project.name
    pid_a = instance.manager("a")["pid"]
    write(config, [{"name": "a", "command": child()}, {"name": "b", "command": child()}], name)
    instance.proc.send_signal(signal.SIGHUP)
    instance.wait_state("b", "running")
    assert instance.manager("a")["pid"] == pid_a

    write(config, [{"name": "a", "command": child(), "start": "sometimes"}], name)
    instance.proc.send_signal(signal.SIGHUP)
    failed = poll_for(lambda: [e for e in instance.events() if e["event"] == "reload-failed"])
    assert "start" in failed[0]["message"] and "nothing changed" in failed[0]["message"]
    assert instance.manager("b")["state"] == "running"


def test_a_changed_core_manager_restarts_the_whole_project(tmp_path, pmon):
    config = write_project(tmp_path, [{"name": "c", "command": child(), "core": True},
                                      {"name": "x", "command": child()}])
    instance = pmon(config)
    before = {m["name"]: m["pid"] for m in instance.status()["managers"]}
    write(config, [{"name": "c", "command": child("--print", "v2"), "core": True},
                   {"name": "x", "command": child()}], instance.config.project.name)
    done = pmon_cli(config, "reload")
    assert done.returncode == 0, done.stderr
    restart = instance.wait_event("project-restart")
    assert restart["reason"] == "reload changed core manager c"
    after = poll_for(lambda: (s := instance.status())["project_state"] == "running" and s)
    assert all(m["state"] == "running" and m["pid"] != before[m["name"]]
               for m in after["managers"])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    import psutil

    return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
