"""Durable decisions: what a command changed is on disk before it is acknowledged, and a
project job (or a manager's stop, or its start) under way when pmon is SIGKILLed is carried
on by the next pmon where it stood. Real processes, pmon killed at each point."""

from __future__ import annotations

import os
import signal
import threading
import time

import psutil

from support import child, poll_for, project_processes, saved_state, write_project


def saved(instance) -> dict:
    return saved_state(instance.config.project.state_dir)


def kinds(instance) -> list[str]:
    """The event kinds this pmon wrote (the log is shared with the pmon before it)."""
    events = [e["event"] for e in instance.events()]
    last = max((i for i, kind in enumerate(events) if kind == "pmon-started"), default=0)
    return events[last:]


def alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def ignores_term(pid: int) -> bool:
    """The process ignores SIGTERM now (its SigIgn mask in /proc)."""
    with open(f"/proc/{pid}/status") as handle:
        mask = next(line for line in handle if line.startswith("SigIgn:")).split()[1]
    return bool(int(mask, 16) & (1 << (signal.SIGTERM - 1)))


def answered(instance):
    try:
        return instance.status()
    except Exception:
        return None


def test_a_stop_of_a_term_ignoring_manager_goes_on_after_pmon_is_killed(tmp_path, pmon):
    config = write_project(tmp_path, [
        {"name": "keep", "command": child()},
        {"name": "stub", "command": child("--ignore-term"), "seconds_to_kill": 3},
    ])
    first = pmon(config)
    pid = first.manager("stub")["pid"]
    poll_for(lambda: ignores_term(pid), what="the stub to ignore SIGTERM")
    began = time.monotonic()
    assert first.call("stop", target="stub", wait=False)["state"] == "stopping"
    poll_for(lambda: time.monotonic() - began >= 1.0, what="1 s into the stop")
    first.kill()
    assert alive(pid)

    second = pmon(config, wait=False)
    poll_for(lambda: not alive(pid), timeout=15, what="the stub killed by the new pmon")
    took = time.monotonic() - began
    assert took < 3 + 6, f"killed only after {took:.1f} s"  # at the old deadline, not never
    row = poll_for(lambda: (s := answered(second)) and next(
        m for m in s["managers"] if m["name"] == "stub") or None)
    poll_for(lambda: second.manager("stub")["state"] == "stopped")
    assert "stop-resumed" in kinds(second)
    assert row["pid"] in (pid, None)
    assert not project_processes(second.config.project.name, "stub")


def test_stop_all_under_way_is_finished_by_the_next_pmon(tmp_path, pmon):
    config = write_project(tmp_path, [
        {"name": "a", "command": child()},
        {"name": "b", "command": child()},
        {"name": "slow", "command": child("--ignore-term"), "seconds_to_kill": 3},
    ])
    first = pmon(config)
    before = {m["name"]: m["pid"] for m in first.status()["managers"]}
    poll_for(lambda: ignores_term(before["slow"]), what="slow to ignore SIGTERM")
    first.call("stop-all", wait=False)
    poll_for(lambda: saved(first).get("project_state") == "stopping", what="the stop on disk")
    first.kill()

    second = pmon(config, wait=False)
    done = poll_for(lambda: (s := answered(second)) and s["project_state"] == "stopped" and s,
                    timeout=20, what="the stop finished")
    assert all(m["state"] == "stopped" and m["pid"] is None for m in done["managers"])
    assert not any(alive(pid) for pid in before.values())
    assert "job-resumed" in kinds(second)
    assert "started" not in kinds(second)  # nothing was started again


def test_a_core_death_restart_killed_in_its_stop_phase_restarts_the_whole_project(tmp_path, pmon):
    config = write_project(tmp_path, [
        {"name": "core", "command": child(), "core": True},
        *({"name": f"m{i}", "command": child()} for i in range(4)),
        # stopped first (reverse order) and slowly: the stop phase is under way for ~3 s
        {"name": "slow", "command": child("--ignore-term"), "seconds_to_kill": 3},
    ])
    first = pmon(config)
    before = {m["name"]: m["pid"] for m in first.status()["managers"]}
    poll_for(lambda: ignores_term(before["slow"]), what="slow to ignore SIGTERM")
    os.kill(before["core"], signal.SIGKILL)
    poll_for(lambda: saved(first).get("project_state") == "restarting", what="the restart on disk")
    first.kill()

    second = pmon(config, wait=False)
    done = poll_for(lambda: (s := answered(second)) and s["project_state"] == "running" and s,
                    timeout=30, what="the project running again")
    after = {m["name"]: m["pid"] for m in done["managers"]}
    assert all(after[name] not in (None, before[name]) for name in before), (before, after)
    assert not any(alive(pid) for pid in before.values())
    assert "job-resumed" in kinds(second)


def test_a_notify_manager_not_ready_yet_is_starting_after_a_hot_restart(tmp_path, pmon):
    config = write_project(tmp_path, [
        {"name": "a", "command": child()},
        {"name": "late", "command": child("--ready-after", "6"), "ready": "notify",
         "start_timeout": 30},
    ])
    first = pmon(config, wait=False)
    pid = poll_for(lambda: (s := answered(first)) and next(
        m for m in s["managers"] if m["name"] == "late")["pid"], what="late spawned")
    born = psutil.Process(pid).create_time()
    poll_for(lambda: saved(first).get("managers", {}).get("late", {}).get("pid") == pid)
    first.kill()

    second = pmon(config, wait=False)
    row = poll_for(lambda: (s := answered(second)) and next(
        m for m in s["managers"] if m["name"] == "late"), what="pmon to answer")
    if time.time() - born < 5:  # its READY=1 comes 6 s after its start: not sent yet
        assert row["state"] == "starting" and row["pid"] == pid, row
        assert "not ready yet" in " ".join(
            e["message"] for e in second.events() if e["event"] == "adopt")
    second.wait_state("late", "running", timeout=15)  # its READY=1 reaches the new pmon
    assert second.manager("late")["pid"] == pid
    poll_for(lambda: second.status()["project_state"] == "running")


def test_acknowledged_commands_survive_pmon_killed_right_after_the_reply(tmp_path, pmon):
    config = write_project(tmp_path, [
        {"name": "core", "command": child(), "core": True},
        {"name": "man", "command": child(), "start": "manual"},
    ])
    for attempt in range(4):
        instance = pmon(config)
        want = "stopped" if attempt % 2 else "running"
        verb = "stop" if attempt % 2 else "start"
        instance.call(verb, target="man")
        instance.kill()  # no time for a delayed write
        disk = saved(instance)["managers"]["man"]
        assert disk["state"] == want and disk["wanted"] is (verb == "start"), disk
        second = pmon(config)
        assert second.manager("man")["state"] == want
        assert "died-away" not in kinds(second)
        restarts = second.manager("man")["restarts"]
        second.kill()
        assert restarts == 0


def test_a_stopped_manual_manager_is_not_died_while_pmon_was_away(tmp_path, pmon):
    """pmon killed while an operator's stop of a manual manager is under way, the manager
    gone before the next pmon: it was stopped on purpose, not 'died while pmon was away'."""
    config = write_project(tmp_path, [
        {"name": "a", "command": child()},
        {"name": "man", "command": child("--ignore-term"), "start": "manual",
         "seconds_to_kill": 5},
    ])
    first = pmon(config)
    pid = first.call("start", target="man")["pid"]
    poll_for(lambda: ignores_term(pid), what="man to ignore SIGTERM")
    first.call("stop", target="man", wait=False)
    first.kill()
    os.kill(pid, signal.SIGKILL)
    poll_for(lambda: not alive(pid), what="man gone")
    second = pmon(config)
    row = second.manager("man")
    assert row["state"] == "stopped" and row["restarts"] == 0
    assert "died-away" not in kinds(second)


def test_commands_from_threads_with_pmon_killed_at_random_hold(tmp_path, pmon):
    """Randomized: stops and starts of manual managers from two threads; pmon SIGKILLed at a
    random moment; every acknowledged command holds in the next pmon."""
    import random

    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    names = [f"m{i}" for i in range(4)]
    config = write_project(tmp_path, [
        {"name": "core", "command": child(), "core": True},
        *({"name": n, "command": child(), "start": "manual"} for n in names),
    ])
    instance = pmon(config)
    acked: dict[str, tuple[float, str]] = {}
    in_flight: dict[str, str] = {}  # sent, not answered: either outcome may hold
    lock = threading.Lock()
    stop = threading.Event()

    def operator(own: list[str], r: random.Random) -> None:
        while not stop.is_set():
            name, verb = r.choice(own), r.choice(["start", "stop"])
            with lock:
                in_flight[name] = verb
            try:
                row = instance.call(verb, target=name, wait=r.random() < 0.5)
            except Exception:
                return  # pmon was killed under us: this one was not acknowledged
            with lock:
                acked[name] = (time.monotonic(), "running" if verb == "start" else "stopped")
                del in_flight[name]
            del row

    threads = [threading.Thread(target=operator, args=(names[i::2], random.Random(rng.random())))
               for i in range(2)]
    for thread in threads:
        thread.start()
    poll_for(lambda: len(acked) >= 2, what="some acknowledged commands")
    # a random moment of the commands' flow (the delay is the randomness, not a wait)
    time.sleep(rng.uniform(0, 0.3))  # a random moment (the randomness is the test)
    instance.kill()
    stop.set()
    for thread in threads:
        thread.join(30)
    second = pmon(config)
    for name, (_, want) in acked.items():
        if name in in_flight:
            continue  # a later command was under way: it may or may not have been made
        state = second.manager(name)["state"]
        assert state in ((want,) if want == "stopped" else ("running", "starting")), (
            f"seed {seed}: {name} acknowledged {want}, now {state}")


def test_a_core_death_while_no_pmon_watches_restarts_the_whole_project(tmp_path, pmon):
    config = write_project(tmp_path, [
        {"name": "core", "command": child(), "core": True},
        {"name": "a", "command": child()},
        {"name": "b", "command": child()},
    ])
    first = pmon(config)
    before = {m["name"]: m["pid"] for m in first.status()["managers"]}
    poll_for(lambda: {n: r["pid"] for n, r in saved(first).get("managers", {}).items()} == before,
             what="the state file")
    first.kill()
    os.kill(before["core"], signal.SIGKILL)
    poll_for(lambda: not alive(before["core"]), what="core gone")
    second = pmon(config, wait=False)
    done = poll_for(lambda: (s := answered(second)) and s["project_state"] == "running"
                    and all(m["pid"] for m in s["managers"]) and s, timeout=30)
    after = {m["name"]: m["pid"] for m in done["managers"]}
    assert all(after[name] != before[name] for name in before), (before, after)
    assert not any(alive(pid) for pid in before.values())
    assert "job-resumed" in kinds(second)
