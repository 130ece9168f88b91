"""Supervision with real processes: start order, start types, restarts, project restarts,
restart limits, stopping with seconds_to_kill, readiness, logs."""

from __future__ import annotations

import os
import signal
import stat

import psutil
import pytest

from support import child, poll_for, write_project


def records(path):
    if not path.exists():
        return []
    return [line.split()[0] for line in path.read_text().splitlines()]


def test_start_order_waits_for_readiness_and_redundancy_goes_first(tmp_path, pmon):
    log = tmp_path / "order"
    rec = ("--record", str(log))
    config = write_project(tmp_path, [
        {"name": "data", "command": child(*rec, "--ready-after", "0.4"), "core": True, "ready": "notify"},
        {"name": "event", "command": child(*rec), "core": True, "ready": "delay", "ready_seconds": 0.3},
        {"name": "redu", "command": child(*rec), "redundancy": True, "ready": "delay", "ready_seconds": 0.3},
        {"name": "driver", "command": child(*rec)},
    ])
    instance = pmon(config)
    poll_for(lambda: len(records(log)) == 4, what="every manager to run")
    assert records(log) == ["redu", "data", "event", "driver"]
    events = [e for e in instance.events() if e["event"] in ("started", "ready")]
    order = [(e["event"], e["manager"]) for e in events]
    assert [m for kind, m in order if kind == "started"] == ["redu", "data", "event", "driver"]
    # the driver started only after data said READY=1
    assert order.index(("ready", "data")) < order.index(("started", "event")) < order.index(("started", "driver"))
    assert all(m["state"] == "running" for m in instance.status()["managers"])


def test_start_timeout_holds_the_start_then_goes_on(tmp_path, pmon):
    config = write_project(tmp_path, [
        {"name": "mute", "command": child(), "ready": "notify", "start_timeout": 0.5},
        {"name": "next", "command": child()},
    ])
    instance = pmon(config)
    mute = instance.manager("mute")
    assert mute["state"] == "starting" and mute["ready_failed"]
    assert instance.manager("next")["state"] == "running"
    assert any(e["event"] == "not-ready" and e["manager"] == "mute" for e in instance.events())
    assert "not ready" in __import__("support").pmon_cli(instance.config_path, "status").stdout


def test_start_types(tmp_path, pmon):
    config = write_project(tmp_path, [
        {"name": "always", "command": child()},
        {"name": "once", "command": child("--exit-after", "0", "--code", "4"), "start": "once"},
        {"name": "manual", "command": child(), "start": "manual"},
    ])
    instance = pmon(config)
    once = instance.wait_state("once", "exited")
    assert once["exit_code"] == 4 and once["restarts"] == 0
    assert instance.manager("manual")["state"] == "stopped"
    instance.call("start", target="manual")
    pid = instance.wait_state("manual", "running")["pid"]
    os.kill(pid, signal.SIGKILL)
    poll_for(lambda: instance.manager("manual")["pid"] not in (None, pid), what="manual kept alive")
    instance.call("stop", target="manual")
    assert instance.manager("manual")["state"] == "stopped"


@pytest.mark.parametrize("watcher", ["pidfd", "sigchld"])
def test_ordinary_death_restarts_only_that_manager(tmp_path, pmon, watcher):
    config = write_project(tmp_path, [
        {"name": "core", "command": child(), "core": True},
        {"name": "a", "command": child()},
        {"name": "b", "command": child()},
    ])
    instance = pmon(config, env={"PMON_NO_PIDFD": "1"} if watcher == "sigchld" else {})
    before = {m["name"]: m["pid"] for m in instance.status()["managers"]}
    os.kill(before["a"], signal.SIGKILL)
    after = poll_for(lambda: (s := {m["name"]: m["pid"] for m in instance.status()["managers"]})["a"] not in (None, before["a"]) and s)
    assert after["core"] == before["core"] and after["b"] == before["b"]
    exited = [e for e in instance.events() if e["event"] == "exited" and e["manager"] == "a"]
    assert exited[-1]["exit_code"] == -9 and exited[-1]["action"] == "restarted"
    assert "signal SIGKILL" in exited[-1]["message"]


def test_core_death_restarts_the_whole_project_in_order(tmp_path, pmon):
    log = tmp_path / "order"
    rec = ("--record", str(log))
    config = write_project(tmp_path, [
        {"name": "data", "command": child(*rec), "core": True},
        {"name": "a", "command": child(*rec)},
        {"name": "b", "command": child(*rec)},
    ])
    instance = pmon(config)
    poll_for(lambda: len(records(log)) == 3, what="every manager to run")
    before = {m["name"]: m["pid"] for m in instance.status()["managers"]}
    os.kill(before["data"], signal.SIGKILL)
    poll_for(lambda: len(records(log)) == 6 and instance.status()["project_state"] == "running",
             what="project restart")
    assert sorted(records(log)[3:]) == ["a", "b", "data"]
    events = instance.events()
    restart_at = next(i for i, e in enumerate(events) if e["event"] == "project-restart")
    assert [e["manager"] for e in events[restart_at:] if e["event"] == "started"] == ["data", "a", "b"]
    after = {m["name"]: m["pid"] for m in instance.status()["managers"]}
    assert not set(after.values()) & set(before.values())
    for pid in before.values():
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    kinds = [e["event"] for e in instance.events()]
    assert "project-restart" in kinds
    stops = [e["manager"] for e in instance.events() if e["event"] == "exited" and e["action"] == "stopped"]
    assert stops == ["b", "a"], "stopped in reverse order"


def test_restart_limit_blocks_until_an_operator_starts(tmp_path, pmon):
    config = write_project(tmp_path, [
        {"name": "crash", "command": child("--exit-after", "0", "--code", "3"),
         "restart_count": 2, "reset_after": 60},
    ])
    instance = pmon(config)
    blocked = instance.wait_state("crash", "blocked")
    assert blocked["restarts"] == 2 and blocked["exit_code"] == 3
    assert any("blocked" in e.get("action", "") for e in instance.events())
    row = instance.call("start", target="crash")
    assert row["restarts"] >= 2
    instance.wait_state("crash", "blocked")


def test_core_manager_dying_too_often_blocks_the_project(tmp_path, pmon):
    config = write_project(tmp_path, [
        {"name": "data", "command": child("--exit-after", "0.2", "--code", "1"), "core": True,
         "restart_count": 1},
        {"name": "driver", "command": child()},
    ])
    instance = pmon(config, wait=False)
    poll_for(lambda: instance.status()["project_state"] == "blocked", 20, "project blocked")
    status = {m["name"]: m["state"] for m in instance.status()["managers"]}
    assert status == {"data": "blocked", "driver": "stopped"}
    assert any(e["event"] == "project-blocked" for e in instance.events())


def test_stop_kills_a_manager_that_ignores_sigterm_and_its_grandchild(tmp_path, pmon):
    grand = tmp_path / "grandchild.pid"
    config = write_project(tmp_path, [
        {"name": "stubborn", "command": child("--ignore-term", "--grandchild", str(grand)),
         "seconds_to_kill": 0.5},
    ])
    instance = pmon(config)
    grandchild_pid = int(poll_for(lambda: grand.exists() and grand.read_text(), what="grandchild"))
    pid = instance.manager("stubborn")["pid"]
    row = instance.call("stop", target="stubborn")
    assert row["state"] == "stopped"
    poll_for(lambda: not psutil.pid_exists(grandchild_pid), 5, "grandchild gone")
    assert not psutil.pid_exists(pid)
    assert any(e["event"] == "kill" and e["manager"] == "stubborn" for e in instance.events())


def test_sigterm_stops_everything_in_reverse_order_and_exits_0(tmp_path, pmon):
    config = write_project(tmp_path, [
        {"name": "a", "command": child()},
        {"name": "b", "command": child()},
        {"name": "c", "command": child()},
    ])
    instance = pmon(config)
    pids = [m["pid"] for m in instance.status()["managers"]]
    assert instance.stop() == 0
    assert not any(psutil.pid_exists(p) for p in pids)
    stops = [e["manager"] for e in instance.events() if e["event"] == "exited"]
    assert stops == ["c", "b", "a"]
    assert instance.events()[-1]["event"] == "pmon-stopped"


def test_output_is_captured_and_rotated(tmp_path, pmon):
    # Managers write their log file themselves (it outlives pmon); pmon rotates it by
    # copy-truncate when it is over log_max_bytes at a check (every 5 s, and at each start).
    config = write_project(tmp_path, [
        {"name": "talker", "command": child("--print", "x" * 300, "--exit-after", "0"),
         "restart_count": 6, "reset_after": 60},
    ], project={"log_max_bytes": 500, "log_backups": 2})
    instance = pmon(config, wait=False)
    log = tmp_path / "var" / "log" / "talker.log"
    instance.wait_state("talker", "blocked", timeout=30)
    poll_for(lambda: (log.parent / "talker.log.2").exists(), what="rotation")
    assert "x" * 300 in log.read_text()
    assert "x" * 300 in (log.parent / "talker.log.1").read_text()
    assert not (log.parent / "talker.log.3").exists(), "only log_backups files are kept"
    for kept in log.parent.glob("talker.log*"):  # copy-truncate cut no line in half
        lines = kept.read_text().splitlines()  # the manager's lines and pmon's own, whole
        assert {l for l in lines if not l.startswith("-- pmon ")} <= {"x" * 300}
        assert all(l == "x" * 300 or (l.startswith("-- pmon 20") and ": " in l) for l in lines)


def test_control_socket_and_state_dir_are_owner_only(tmp_path, pmon):
    config = write_project(tmp_path, [{"name": "a", "command": child()}])
    pmon(config)
    sock = tmp_path / "var" / "pmon.sock"
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "var").stat().st_mode) & 0o077 == 0


def test_a_second_pmon_on_the_same_project_is_refused(tmp_path, pmon):
    from support import pmon_cli

    config = write_project(tmp_path, [{"name": "a", "command": child()}])
    instance = pmon(config)
    result = pmon_cli(config, "run", timeout=20)
    assert result.returncode != 0 and "already runs" in result.stderr
    assert instance.manager("a")["restarts"] == 0


def test_state_file_names_every_running_manager(tmp_path, pmon):
    import json

    config = write_project(tmp_path, [{"name": "a", "command": child()}, {"name": "b", "command": child()}])
    instance = pmon(config)
    pids = {m["name"]: m["pid"] for m in instance.status()["managers"]}
    state_file = tmp_path / "var" / "state.json"
    saved = poll_for(lambda: state_file.exists() and json.loads(state_file.read_text()))
    assert {n: m["pid"] for n, m in saved["managers"].items()} == pids
    for name, pid in pids.items():
        assert saved["managers"][name]["create_time"] == psutil.Process(pid).create_time()


def test_a_core_death_during_the_start_sequence_replaces_it(tmp_path, pmon):
    # data dies before it is ready: the project restart must cancel the start sequence that
    # waits for it, so `late` is never started by a sequence that no longer counts
    config = write_project(tmp_path, [
        {"name": "data", "command": child("--exit-after", "0.2", "--code", "1"), "core": True,
         "ready": "notify", "restart_count": 1},
        {"name": "late", "command": child()},
    ])
    instance = pmon(config, wait=False)
    poll_for(lambda: instance.status()["project_state"] == "blocked", 20, "project blocked")
    kinds = [(e["event"], e.get("manager")) for e in instance.events()]
    assert ("started", "late") not in kinds and ("project-started", None) not in kinds
    assert kinds.count(("started", "data")) == 2
