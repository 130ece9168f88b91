"""Hot restart: pmon killed (even with SIGKILL) and started again adopts its running managers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import psutil

from support import child, pmon_cli, poll_for, project_processes, saved_state, write_project


def pids(instance) -> dict[str, int | None]:
    return {m["name"]: m["pid"] for m in instance.status()["managers"]}


def saved(instance) -> dict:
    """The state file as pmon last wrote it ({} while it is not written yet)."""
    return saved_state(instance.config.project.state_dir)


def saved_pid(instance, name: str) -> int | None:
    return saved(instance).get("managers", {}).get(name, {}).get("pid")


def messages(instance, event: str) -> list[str]:
    return [e["message"] for e in instance.events() if e["event"] == event]


def test_sigkill_pmon_then_start_again_adopts_and_keeps_supervising(tmp_path, pmon):
    config = write_project(tmp_path, [
        {"name": "talker", "command": child("--print-every", "0.05")},
        {"name": "quiet", "command": child()},
        {"name": "job", "command": child(), "start": "once"},
    ])
    first = pmon(config)
    before = first.wait_state("talker", "running")
    os.kill(before["pid"], signal.SIGKILL)  # one restart, to see the counter survive
    talker = poll_for(lambda: (m := first.manager("talker"))["pid"] not in (None, before["pid"])
                      and m["state"] == "running" and m)
    assert talker["restarts"] == 1
    running = pids(first)
    poll_for(lambda: saved_pid(first, "talker") == talker["pid"], what="the state file")

    first.kill()
    log = first.config.project.state_dir / "log" / "talker.log"
    size = log.stat().st_size
    poll_for(lambda: log.stat().st_size > size, what="output while pmon is dead")  # no SIGPIPE
    assert all(psutil.pid_exists(pid) for pid in running.values())

    second = pmon(config)
    assert pids(second) == running  # adopted, nothing restarted
    assert second.manager("talker")["restarts"] == 1
    assert len(messages(second, "adopt")) == 3
    for name in running:
        assert len(project_processes(second.config.project.name, name)) == 1

    os.kill(running["talker"], signal.SIGKILL)  # an adopted manager dies: restarted as before
    again = poll_for(lambda: (m := second.manager("talker"))["pid"] not in (None, running["talker"])
                     and m["state"] == "running" and m)
    assert again["restarts"] == 2
    assert any("cannot know (adopted)" in m for m in messages(second, "exited"))
    size = log.stat().st_size
    poll_for(lambda: log.stat().st_size > size, what="the new talker's output")


def test_managers_that_died_while_pmon_was_away_follow_their_start_type(tmp_path, pmon):
    config = write_project(tmp_path, [
        {"name": "always", "command": child()},
        {"name": "once", "command": child(), "start": "once"},
        {"name": "tool", "command": child(), "start": "manual"},
    ])
    first = pmon(config)
    first.call("start", target="tool")
    running = pids(first)
    poll_for(lambda: saved_pid(first, "tool") == running["tool"], what="the state file")
    first.kill()
    for pid in running.values():
        os.killpg(pid, signal.SIGKILL)
    poll_for(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
                             for p in running.values()), what="managers to die")

    second = pmon(config)
    status = {m["name"]: m for m in second.status()["managers"]}
    assert status["always"]["state"] == "running" and status["always"]["pid"] != running["always"]
    assert status["always"]["restarts"] == 1
    assert status["once"]["state"] == "exited"  # once: never restarted
    assert status["tool"]["state"] == "running"  # an operator-started manual one is kept
    assert len(messages(second, "died-away")) == 2


def _restart_with_state(tmp_path, pmon, spoil) -> tuple[object, dict[str, int | None]]:
    config = write_project(tmp_path, [{"name": "a", "command": child()},
                                      {"name": "b", "command": child()}])
    first = pmon(config)
    running = pids(first)
    poll_for(lambda: saved_pid(first, "b") == running["b"], what="the state file")
    first.kill()
    spoil(first.config.project.state_dir / "state.json")
    second = pmon(config)
    assert pids(second) == running  # found by their environment: no second copies
    for name in running:
        assert len(project_processes(second.config.project.name, name)) == 1
    return second, running


def test_missing_state_file_still_adopts_and_says_so(tmp_path, pmon):
    second, _ = _restart_with_state(tmp_path, pmon, lambda path: path.unlink())
    assert any("no state file" in m for m in messages(second, "adoption"))


def test_truncated_state_file_is_reported_and_no_manager_runs_twice(tmp_path, pmon):
    def truncate(path):
        path.write_bytes(path.read_bytes()[:40])
    second, _ = _restart_with_state(tmp_path, pmon, truncate)
    assert any("unreadable state file" in m for m in messages(second, "adoption"))


def test_state_file_of_another_project_is_ignored(tmp_path, pmon):
    def foreign(path):
        data = json.loads(path.read_text())
        data["project"] = "someone-else"
        path.write_text(json.dumps(data))
    second, _ = _restart_with_state(tmp_path, pmon, foreign)
    assert any("belongs to project 'someone-else'" in m for m in messages(second, "adoption"))


def test_a_process_with_forged_marks_is_never_adopted(tmp_path, pmon):
    """Marks in the environment are not an identity: a process started outside pmon with a
    manager's exact environment is neither adopted nor taken for (and stopped as) a copy."""
    config = write_project(tmp_path, [{"name": "a", "command": child()}])
    first = pmon(config)
    running = pids(first)
    poll_for(lambda: saved_pid(first, "a") == running["a"], what="the state file")
    first.kill()
    env = psutil.Process(running["a"]).environ()
    copy = subprocess.Popen(child(), env=env, start_new_session=True)
    try:
        second = pmon(config)
        assert pids(second) == running
        assert not any(str(copy.pid) in m for m in messages(second, "stray"))
        assert not any(str(copy.pid) in m for m in messages(second, "adopt"))
        assert copy.poll() is None
    finally:
        if copy.poll() is None:
            copy.kill()
        copy.wait()


def test_a_pid_that_now_belongs_to_an_unrelated_process_is_not_adopted(tmp_path, pmon):
    config = write_project(tmp_path, [{"name": "a", "command": child()}])
    first = pmon(config)
    poll_for(lambda: saved_pid(first, "a"), what="the state file")
    first.kill()
    for proc in project_processes(first.config.project.name):
        proc.kill()
    # The state file names a live process with its true start time, but it is not ours.
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                start_new_session=True)
    try:
        path = first.config.project.state_dir / "state.json"
        data = json.loads(path.read_text())
        data["managers"]["a"].update(pid=stranger.pid,
                                     create_time=psutil.Process(stranger.pid).create_time())
        path.write_text(json.dumps(data))
        second = pmon(config)
        a = second.wait_state("a", "running")
        assert a["pid"] != stranger.pid
        assert stranger.poll() is None  # left alone
        assert any(f"pid {stranger.pid}" in m and "not adopted" in m
                   for m in messages(second, "adoption"))
    finally:
        stranger.kill()
        stranger.wait()


def test_detach_leaves_the_managers_running_for_the_next_pmon(tmp_path, pmon):
    config = write_project(tmp_path, [{"name": "a", "command": child()}])
    first = pmon(config)
    running = pids(first)
    result = pmon_cli(config, "detach")
    assert result.returncode == 0, result.stderr
    assert first.proc.wait(20) == 0
    assert psutil.pid_exists(running["a"])
    second = pmon(config)
    assert pids(second) == running


def test_a_stopped_project_stays_stopped_and_a_clean_stop_means_a_fresh_start(tmp_path, pmon):
    config = write_project(tmp_path, [{"name": "a", "command": child()}])
    first = pmon(config)
    pid = first.manager("a")["pid"]
    os.kill(pid, signal.SIGKILL)
    poll_for(lambda: first.manager("a")["restarts"] == 1 and first.manager("a")["pid"])
    first.call("stop-all")
    poll_for(lambda: saved(first).get("project_state") == "stopped", what="the state file")
    first.kill()
    second = pmon(config, wait=False)
    stopped = poll_for(lambda: _status(second), what="pmon to answer")
    assert stopped["project_state"] == "stopped"
    assert stopped["managers"][0]["state"] == "stopped"
    assert stopped["managers"][0]["restarts"] == 1

    assert second.stop() == 0  # a clean stop: the next start is a fresh one
    third = pmon(config)
    assert third.manager("a")["state"] == "running" and third.manager("a")["restarts"] == 0


def _status(instance):
    try:
        return instance.status()
    except Exception:
        return None
