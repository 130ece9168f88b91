"""The adoption decision, pure: saved state + marked processes -> what a new pmon does."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pmon import config as config_module
from pmon.core.adoption import Found, decide, restore
from pmon.core.manager import Manager
from pmon.states import ManagerState as S, StartType

CONFIG = config_module.parse({"project": {"name": "p"}, "managers": [
    {"name": "a", "command": ["a"]},
    {"name": "once", "command": ["o"], "start": "once"},
    {"name": "b", "command": ["b"]},
]}, Path("/p/pmon.toml"))


def saved(project_state="running", **managers):
    return {"project": "p", "project_state": project_state, "stopped_cleanly": False,
            "managers": managers}


def record(state, pid=None, create_time=None, restarts=0):
    return {"state": state, "pid": pid, "create_time": create_time, "restarts": restarts,
            "recent_restarts": [], "wanted": True}


def test_the_process_whose_start_time_matches_the_state_file_is_kept_and_a_copy_stopped():
    original, copy = Found("a", 10, 100.0), Found("a", 11, 50.0)
    decision = decide(CONFIG, saved(a=record("running", 10, 100.0)), [copy, original])
    assert decision.adopt == {"a": original} and decision.strays == [copy]


def test_a_pid_reused_by_another_process_of_ours_is_not_taken_for_the_saved_one():
    # pid 10 now carries the marks of `b`: it is adopted as b, and `a` is not running.
    decision = decide(CONFIG, saved(a=record("running", 10, 100.0)), [Found("b", 10, 300.0)])
    assert decision.adopt == {"b": Found("b", 10, 300.0)}
    assert decision.died_away == ["a"]
    assert any("pid 10" in note and "not adopted" in note for note in decision.notes)


def test_dead_managers_follow_their_start_type_and_deliberate_states_are_kept():
    decision = decide(CONFIG, saved(
        a=record("running", 10, 1.0), once=record("running", 11, 1.0), b=record("blocked"),
    ), [])
    assert decision.died_away == ["a"]
    assert decision.down == {"once": S.EXITED, "b": S.BLOCKED}
    assert decision.start_project


def test_stopped_managers_stay_down_only_when_the_project_was_running():
    running = decide(CONFIG, saved(b=record("stopped")), [])
    assert running.down == {"b": S.STOPPED}
    starting = decide(CONFIG, saved("starting", b=record("stopped")), [])
    assert starting.down == {}  # not started yet: the start sequence starts it


def test_a_stopped_project_stays_stopped_and_a_clean_stop_is_a_fresh_start():
    stopped = decide(CONFIG, saved("stopped", a=record("stopped")), [])
    assert not stopped.start_project and stopped.project_state == "stopped"
    clean = {**saved(a=record("blocked", restarts=3)), "stopped_cleanly": True}
    fresh = decide(CONFIG, clean, [])
    assert fresh.start_project and not fresh.down and not fresh.restore


def test_without_a_state_file_marked_processes_are_adopted_and_unknown_ones_stopped():
    gone = Found("removed", 12, 1.0)
    decision = decide(CONFIG, None, [Found("a", 10, 1.0), gone])
    assert set(decision.adopt) == {"a"} and decision.strays == [gone]
    assert not decision.restore


def test_a_stopped_active_only_manager_is_left_to_the_gate_not_kept_down():
    # stopped on the passive server: kept down, it would never start on becoming active
    config = config_module.parse({"project": {"name": "p"}, "managers": [
        {"name": "drv", "command": ["d"], "run_on": "active"},
        {"name": "b", "command": ["b"]},
    ]}, Path("/p/pmon.toml"))
    decision = decide(config, saved(drv=record("stopped"), b=record("stopped")), [])
    assert decision.down == {"b": S.STOPPED}


def test_only_a_manual_manager_gets_its_saved_wish_back():
    # `wanted: false` saved while `a` was manual; the file now says always: it must start
    always = CONFIG.managers[0]
    manual = dataclasses.replace(always, start=StartType.MANUAL)
    kept, restored = Manager(always), Manager(manual)
    for manager in (kept, restored):
        restore(manager, {**record("stopped"), "wanted": False, "restarts": 2}, 0.0)
    assert kept.wanted and kept.restarts == 2
    assert not restored.wanted


CORE = config_module.parse({"project": {"name": "p"}, "managers": [
    {"name": "core", "command": ["c"], "core": True},
    {"name": "a", "command": ["a"]},
]}, Path("/p/pmon.toml"))


def test_a_core_death_while_pmon_was_away_restarts_the_project_also_mid_restart():
    """Found by scripts/chaos.py (seed 1, in CI): the core died while pmon was away in the
    start phase of a project restart; the next pmon resumed that restart, started a new
    core and kept `a`, started after the old core: an old process beside a new core."""
    job = {"id": 3, "kind": "restart", "reason": "r", "mode": "replace", "final": "running",
           "phase": "starting", "order": ["core", "a"], "cursor": 2, "skip": []}
    for project_state, resume in (("running", None), ("restarting", job)):
        state = {**saved(project_state, core=record("running", 10, 1.0),
                         a=record("running", 11, 2.0)), "job": resume}
        decision = decide(CORE, state, [Found("a", 11, 2.0)])
        assert decision.died_away == ["core"]
        assert decision.resume is not None and decision.resume["kind"] == "restart" and \
            decision.resume["phase"] == "stopping", (project_state, decision.resume)
        assert "died while pmon was away" in decision.resume["reason"]
