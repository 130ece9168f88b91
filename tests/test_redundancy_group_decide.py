"""group.py's pure decision (who should be active among a group's members), with hypothesis,
and the `[redundancy] group` configuration's checks."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from pmon import config as config_module
from pmon.errors import ConfigError
from pmon.redundancy.group import (
    ERROR_STATE, FAILURE, FORCED, PREFERENCE, Forced, Member, Situation, decide, forced_end, ranking,
)

NAMES = ("a", "b", "c", "d", "e")

member = st.builds(Member, name=st.just(""), error=st.sampled_from([0.0, 1.0, 2.0]),
                   available=st.booleans(), can_act=st.booleans(),
                   joined=st.sampled_from([0.0, 5.0, 9.5]))


@st.composite
def situations(draw: st.DrawFn) -> Situation:
    names = draw(st.lists(st.sampled_from(NAMES), min_size=0, max_size=5, unique=True))
    members = {n: Member(n, *(getattr(draw(member), k) for k in ("error", "available", "can_act", "joined")))
               for n in names}
    leader = draw(st.one_of(st.none(), st.sampled_from(NAMES)))
    forced = draw(st.one_of(st.none(), st.builds(
        Forced, server=st.sampled_from(NAMES),
        errors=st.just(tuple((n, m.error) for n, m in members.items())),
        ended=st.sampled_from(["", "", "overruled"]))))
    pending = draw(st.one_of(st.none(), st.tuples(st.sampled_from(NAMES), st.sampled_from([0.0, 8.0, 9.9]))))
    return Situation(now=10.0, members=members, leader=leader, preference=NAMES, forced=forced,
                     pending=pending, switched_at=draw(st.one_of(st.none(), st.just(3.0), st.just(8.0))),
                     error_state_delay=1.0, hold_down=5.0, first_active_change_interval=0.0)


def key(s: Situation, name: str) -> tuple[bool, bool, float, int]:
    m = s.members[name]
    return (not m.can_act, not m.available, m.error, NAMES.index(name))


@settings(max_examples=400, deadline=None)
@given(situations())
def test_the_target_is_a_member_that_can_act_or_nobody_when_none_can(s: Situation) -> None:
    v = decide(s)
    able = [n for n, m in s.members.items() if m.can_act]
    if v.target is None:
        assert not able
    elif v.target != s.leader:
        assert s.members[v.target].can_act


@settings(max_examples=400, deadline=None)
@given(situations())
def test_without_a_leader_the_best_takes_it_at_once(s: Situation) -> None:
    if s.leader is not None and s.leader in s.members:
        return
    v = decide(s)
    in_force = s.forced is not None and not s.forced.ended and not forced_end(s.forced, s.members)
    if in_force:
        assert s.forced is not None and v.target == s.forced.server and v.reason == FAILURE
    elif v.target is not None:
        able = [n for n, m in s.members.items() if m.can_act]
        assert key(s, v.target) == min(key(s, n) for n in able) and v.reason == FAILURE


@settings(max_examples=400, deadline=None)
@given(situations())
def test_with_a_leader_a_change_by_error_state_or_preference_waits_out_the_damping(s: Situation) -> None:
    if s.leader is None or s.leader not in s.members:
        return
    v = decide(s)
    if v.target in (None, s.leader) or v.reason == FORCED:
        return
    assert v.reason in (ERROR_STATE, PREFERENCE)
    assert key(s, v.target) < key(s, s.leader)  # only ever to a better member
    assert s.pending is not None and s.pending[0] == v.target  # it was the answer before ...
    assert s.now - s.pending[1] >= s.error_state_delay          # ... for error_state_delay
    assert s.switched_at is None or s.now - s.switched_at >= s.hold_down


@settings(max_examples=400, deadline=None)
@given(situations())
def test_a_forced_choice_in_force_moves_the_role_at_once(s: Situation) -> None:
    if s.forced is None or s.leader is None or s.leader not in s.members:
        return
    v = decide(s)
    if not s.forced.ended and not forced_end(s.forced, s.members):
        assert v.target == s.forced.server
        assert v.reason == ("" if s.forced.server == s.leader else FORCED)


@settings(max_examples=200, deadline=None)
@given(situations())
def test_the_decision_settles_one_switchover_then_nothing(s: Situation) -> None:
    """Stepping the same members with the answer applied (the target holds the key) moves the
    role no more: one fault, one switchover."""
    state = s
    moves = 0
    for step in range(6):
        v = decide(state)
        if v.target is not None and v.target != state.leader:
            moves += 1
            state = Situation(now=state.now + 10, members=state.members, leader=v.target,
                              preference=state.preference, forced=state.forced, pending=None,
                              switched_at=state.now if v.reason in (ERROR_STATE, PREFERENCE) else None,
                              error_state_delay=1.0, hold_down=5.0, first_active_change_interval=0.0)
        else:
            state = Situation(now=state.now + 10, members=state.members, leader=state.leader,
                              preference=state.preference, forced=state.forced, pending=v.pending,
                              switched_at=state.switched_at, error_state_delay=1.0, hold_down=5.0,
                              first_active_change_interval=0.0)
    assert moves <= 1, moves


def test_ranking_is_available_then_error_state_then_preference() -> None:
    members = {"a": Member("a", 1), "b": Member("b", 0, available=False), "c": Member("c", 0),
               "d": Member("d", 0, can_act=False)}
    assert ranking(members, ("a", "b", "c", "d")) == ["c", "a", "b"]


def test_a_difference_shorter_than_the_delay_moves_nothing_and_a_new_member_waits() -> None:
    base = dict(members={"a": Member("a", 1), "b": Member("b", 0, joined=9.0)}, leader="a",
                preference=("a", "b"), error_state_delay=1.0, hold_down=5.0,
                first_active_change_interval=0.0)
    first = decide(Situation(now=10.0, **base))  # type: ignore[arg-type]
    assert first.target == "a" and first.pending == ("b", 10.0) and first.due == 11.0
    later = decide(Situation(now=11.0, pending=first.pending, **base))  # type: ignore[arg-type]
    assert later.target == "b" and later.reason == ERROR_STATE
    joined = {**base, "first_active_change_interval": 5.0}
    assert decide(Situation(now=11.0, pending=first.pending, **joined)).target == "a"  # type: ignore[arg-type]


def test_a_forced_choice_ends_by_a_change_of_error_states_or_a_failure_of_its_server() -> None:
    forced = Forced("b", (("a", 0.0), ("b", 0.0), ("c", 0.0)))
    members = {n: Member(n) for n in "abc"}
    assert forced_end(forced, members) == ""
    assert forced_end(forced, {**members, "c": Member("c", 1)}) == "overruled"
    assert forced_end(forced, {"a": members["a"], "c": members["c"]}) == "failure"
    assert forced_end(forced, {**members, "b": Member("b", can_act=False)}) == "failure"
    v = decide(Situation(now=0, members={**members, "c": Member("c", 1)}, leader="b",
                         preference=("a", "b", "c"), forced=forced, error_state_delay=0,
                         first_active_change_interval=0))
    assert v.forced_ended == "overruled" and v.target == "a" and v.reason == PREFERENCE


def write(tmp_path: Path, section: str) -> Path:
    path = tmp_path / "g.toml"
    path.write_text(f'[project]\nname = "g"\n\n[redundancy]\n{section}\n\n'
                    '[[managers]]\nname = "w"\ncommand = ["true"]\n')
    return path


WITNESS = 'witness = { etcd = ["http://127.0.0.1:2379"], key = "/pmon/g/active" }'


def test_a_group_config_takes_group_name_and_witness(tmp_path: Path) -> None:
    spec = config_module.load(write(tmp_path, f'name = "b"\ngroup = ["a", "b", "c"]\n{WITNESS}')).redundancy
    assert spec is not None and spec.group == ("a", "b", "c") and spec.partner == ""
    assert spec.preference == ("a", "b", "c")
    spec = config_module.load(write(tmp_path, f'name = "b"\ngroup = ["a", "b", "c"]\npreferred = "c"\n{WITNESS}')).redundancy
    assert spec is not None and spec.preference == ("c", "a", "b")


@pytest.mark.parametrize("section, message", [
    ('name = "b"\ngroup = ["a", "b", "c"]', "required with group"),
    (f'name = "x"\ngroup = ["a", "b", "c"]\n{WITNESS}', "'x' is not in group"),
    (f'name = "a"\ngroup = ["a", "b"]\n{WITNESS}', "three or more"),
    (f'name = "a"\ngroup = ["a", "b", "a"]\n{WITNESS}', "names a server twice"),
    (f'name = "a"\npartner = "b"\ngroup = ["a", "b", "c"]\n{WITNESS}', "key 'partner': not with group"),
    (f'name = "a"\ngroup = ["a", "b", "c"]\npreferred = "z"\n{WITNESS}', "must be one of group"),
    (f'name = "a"\ngroup = ["a", "b", "c"]\nself_fence = 0.3\n{WITNESS}', "key 'self_fence': not with group"),
    ('name = "a"\ngroup = ["a", "b", "c"]\npmon_timeout = 4\n'
     'witness = { etcd = ["http://127.0.0.1:2379"], key = "/k", ttl = 5 }', "pmon_timeout + fence_grace + 1"),
])
def test_a_bad_group_config_says_what_where_and_how_to_fix(tmp_path: Path, section: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_module.load(write(tmp_path, section))
    assert message in str(caught.value) and "[redundancy]" in str(caught.value), str(caught.value)
