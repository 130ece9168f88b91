"""Resuming, pure: a saved job reads back as the job it was, nothing in a saved state makes
the decision raise, and the decision resumes what was under way."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from pmon import config as config_module
from pmon.core.adoption import Found, decide
from pmon.core.project import Job, JobKind, Project, ProjectState
from pmon.runtime import statefile
from pmon.states import ManagerState as S

CONFIG = config_module.parse({"project": {"name": "p"}, "managers": [
    {"name": "core", "command": ["c"], "core": True},
    {"name": "a", "command": ["a"]},
    {"name": "man", "command": ["m"], "start": "manual"},
]}, Path("/p/pmon.toml"))


def saved(project_state="running", job=None, **managers):
    return {"project": "p", "project_state": project_state, "stopped_cleanly": False,
            "job": job, "managers": managers}


def test_a_saved_job_reads_back_as_it_was():
    project = Project(CONFIG)
    project.start(0.0)
    job = project.job
    assert job is not None
    again = Job.from_dict(json.loads(json.dumps(job.as_dict())), 99)
    assert again is not None
    assert (again.kind, again.phase, again.order, again.cursor, again.mode, again.final) == (
        job.kind, job.phase, job.order, job.cursor, job.mode, job.final)


def test_a_stop_under_way_is_resumed_and_nothing_it_stopped_counts_as_died_away():
    job = {"kind": "stop", "reason": "operator request", "mode": "replace", "final": "stopped",
           "phase": "stopping", "order": ["man", "a", "core"], "cursor": 1, "skip": []}
    state = saved("stopping", job,
                  core={"state": "running", "pid": 10, "create_time": 1.0},
                  a={"state": "stopping", "pid": 11, "create_time": 1.0, "kill_at": 105.0},
                  man={"state": "stopped", "wanted": False})
    decision = decide(CONFIG, state, [Found("core", 10, 1.0)], wall=100.0)
    assert decision.resume == job and decision.died_away == []
    assert decision.down == {"a": S.STOPPED, "man": S.STOPPED}
    project = Project(CONFIG)
    resumed = Job.from_dict(job, 0)
    assert resumed is not None
    project.adopted("core", 10, 0.0, 1.0)
    project.resume(resumed, 0.0)
    assert project.state is ProjectState.STOPPING
    assert project.managers["core"].state is S.STOPPING  # the stop goes on


def test_a_stopping_manager_is_stopped_on_with_the_time_it_had_left():
    state = saved(a={"state": "stopping", "pid": 11, "create_time": 1.0, "kill_at": 103.0,
                     "then_start": True})
    decision = decide(CONFIG, state, [Found("a", 11, 1.0)], wall=100.0)
    assert decision.stopping == {"a": (3.0, True)} and "a" in decision.skip


def test_a_core_manager_gone_while_away_restarts_the_project():
    state = saved(core={"state": "running", "pid": 10, "create_time": 1.0},
                  a={"state": "running", "pid": 11, "create_time": 1.0})
    decision = decide(CONFIG, state, [Found("a", 11, 1.0)])
    assert decision.resume is not None and decision.resume["kind"] == "restart"
    job = Job.from_dict(decision.resume, 0)
    assert job is not None and job.kind is JobKind.RESTART


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12,
)
FIELDS = st.sampled_from(sorted(statefile.RECORD_TYPES))


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["core", "a", "man", "x"]),
                    st.dictionaries(FIELDS, JSON, max_size=6), max_size=4),
    JSON, st.sampled_from(["running", "starting", "stopping", "restarting", "stopped"]),
)
def test_no_saved_state_makes_the_decision_or_the_resume_raise(records, job, project_state):
    """Randomized: wrong-typed records are dropped (as runtime/adopt.py does), and the rest
    (any job) never makes decide, Job.from_dict or Project.resume raise."""
    for name in list(records):
        if statefile.wrong_fields(records[name], statefile.RECORD_TYPES):
            del records[name]
    state = saved(project_state, job, **records)
    decision = decide(CONFIG, state, [Found("a", 11, 1.0)], wall=100.0)
    if decision.resume is not None:
        resumed = Job.from_dict(decision.resume, 0)
        if resumed is not None:
            Project(CONFIG).resume(resumed, 0.0, decision.skip)
