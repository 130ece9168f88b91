"""The arbitration, pure: two Arbiters exchange heartbeats in simulated rounds.

hypothesis drives operators and faults (error states, availability, links, set-active,
prefer); after every step the pair is run until it settles and checked against the rules:
at most one active while a link is up, the lower error state active, a forced choice wins
over error states, split brain resolves to the lower error state, no flapping.
"""

from __future__ import annotations

from hypothesis import given, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from pmon.redundancy.arbitration import Arbiter, Choice, Decision, Local, Partner, Reason, Role
from pmon.redundancy.settings import judged_errors

SERVERS = ("a", "b")
ROUND = 0.1  # one heartbeat interval
SETTLE = 25  # rounds (2.5 s): longer than startup_wait and first_active_change_interval


def other(name: str) -> str:
    return "b" if name == "a" else "a"


class Pair:
    """Two arbiters; each round both step on the heartbeat the other sent last round."""

    def __init__(self, preferred: str = "a", change_interval: float = 0.0, **damping: float) -> None:
        self.preferred = preferred
        self.change_interval = change_interval
        self.damping = damping  # error_state_delay, hold_down, fence_bound
        self.now = 0.0
        self.arb = {n: self._fresh(n) for n in SERVERS}
        self.error = {"a": 0, "b": 0}
        self.available = {"a": True, "b": True}
        self.link = True
        self.sent: dict[str, Partner | None] = {"a": None, "b": None}
        self.last: dict[str, Decision] = {}
        self.changes: list[tuple[str, Decision]] = []
        self.restarts: list[str] = []

    def _fresh(self, name: str, epoch: int = 0) -> Arbiter:
        return Arbiter(name, other(name), Choice(self.preferred, 0), self.change_interval,
                       startup_wait=1.0, reconnect_settle=2.5 * ROUND, epoch=epoch,
                       **self.damping)

    def set_link(self, up: bool) -> None:
        if up and not self.link:
            self.sent = {"a": None, "b": None}  # heartbeats sent while cut were lost
        self.link = up

    def view(self, name: str) -> Partner | None:
        return self.sent[other(name)] if self.link else None

    def step(self, name: str) -> None:
        arb = self.arb[name]
        decision = arb.step(self.now, Local(self.error[name], self.available[name]), self.view(name))
        self.last[name] = decision
        if decision.changed:
            self.changes.append((name, decision))
        self.sent[name] = Partner(name, decision.role, self.error[name], self.available[name],
                                  decision.target, arb.epoch, arb.forced, arb.preferred,
                                  boot=str(id(arb)))
        if decision.restart_project:  # the project restarts: a new redundancy manager
            self.restarts.append(name)
            self.arb[name] = self._fresh(name, arb.epoch)
            self.sent[name] = None

    def round(self, order: tuple[str, str] = SERVERS) -> None:
        self.now += ROUND
        for name in order:
            self.step(name)

    def settle(self, rounds: int = SETTLE) -> None:
        for i in range(rounds):
            self.round(SERVERS if i % 2 else SERVERS[::-1])

    def active(self) -> set[str]:
        return {n for n in SERVERS if self.arb[n].role is Role.ACTIVE}

    def expected(self) -> str | None:
        """Who the rules say should be active (both sides agree on forced / preferred).

        None when neither server is available: the active one then stays (no handover to a
        server that is not available), whichever it is.
        """
        forced = self.arb["a"].forced
        errors = tuple(sorted(self.error.items()))
        if forced is not None and not forced.ended and forced.errors == errors:
            return forced.server
        available = [n for n in SERVERS if self.available[n]]
        if not available:
            return None
        if len(available) == 1:
            return available[0]
        if self.error["a"] != self.error["b"]:
            return min(SERVERS, key=lambda n: self.error[n])
        return self.arb["a"].preferred.server


def test_start_up_the_preferred_server_becomes_active_once():
    pair = Pair(preferred="b")
    pair.settle()
    assert pair.active() == {"b"}
    assert [(n, d.role) for n, d in pair.changes] in (
        [("a", Role.PASSIVE), ("b", Role.ACTIVE)], [("b", Role.ACTIVE), ("a", Role.PASSIVE)])


def test_a_lone_server_waits_then_becomes_active_by_failure():
    pair = Pair()
    pair.set_link(False)
    pair.round()
    assert pair.last["a"].role is None  # still listening for the partner
    pair.settle()
    assert pair.active() == {"a", "b"}
    assert all(d.reason is Reason.FAILURE for _, d in pair.changes)


def test_failure_of_the_active_makes_the_passive_active_and_raises_the_epoch():
    pair = Pair()
    pair.settle()
    assert pair.active() == {"a"}
    epoch = pair.arb["a"].epoch
    pair.sent["a"] = None  # a dies: b hears nothing any more
    pair.now += ROUND
    pair.step("b")
    assert pair.last["b"].role is Role.ACTIVE and pair.last["b"].reason is Reason.FAILURE
    assert pair.arb["b"].epoch == epoch + 1


def test_split_brain_resolves_to_the_lower_error_state_and_restarts_the_loser():
    pair = Pair()
    pair.settle()
    pair.set_link(False)
    pair.settle()
    assert pair.active() == {"a", "b"}
    pair.error["a"] = 2  # a got worse while alone
    pair.set_link(True)
    pair.settle()
    assert pair.active() == {"b"}
    assert pair.restarts == ["a"]
    assert any(d.reason is Reason.SPLIT_BRAIN for _, d in pair.changes)


def test_first_active_change_interval_delays_a_switch_after_a_connection_error():
    pair = Pair(change_interval=2.0)
    pair.settle()
    for _ in range(5):  # b's server is down: a hears nothing
        pair.sent["b"] = None
        pair.now += ROUND
        pair.step("a")
    pair.arb["b"] = pair._fresh("b")  # b is back, healthier than a
    pair.error["a"] = 1
    pair.settle(10)  # 1 s after the connection came back: still a
    assert pair.active() == {"a"}
    pair.settle(15)
    assert pair.active() == {"b"}
    assert pair.changes[-1][1].reason is Reason.ERROR_STATE


def test_forced_choice_wins_until_an_error_state_changes():
    pair = Pair()
    pair.error["b"] = 1
    pair.settle()
    assert pair.active() == {"a"}
    pair.arb["a"].force("b", Local(0, True), pair.sent["b"])
    pair.settle()
    assert pair.active() == {"b"}
    pair.error["a"] = 1  # a new fault: priorities 3 and 4 decide again
    pair.error["a"] = 0
    pair.settle()
    assert pair.active() == {"b"}  # errors are back to what they were: the force still holds
    pair.error["b"] = 2
    pair.settle()
    assert pair.active() == {"a"}


def test_an_error_state_difference_shorter_than_the_delay_switches_nothing():
    pair = Pair(error_state_delay=1.0, hold_down=3.0)
    pair.settle()
    start = len(pair.changes)
    for _ in range(5):  # a blip of 0.8 s, five times
        pair.error["a"] = 1
        pair.settle(8)
        pair.error["a"] = 0
        pair.settle(8)
    assert pair.active() == {"a"} and len(pair.changes) == start


@given(st.lists(st.tuples(st.sampled_from(SERVERS), st.integers(1, 9), st.integers(1, 12)),
                max_size=12))
def test_random_error_blips_shorter_than_the_delay_never_switch(blips):
    """Faults on either side, each shorter than error_state_delay (1 s), at random gaps."""
    pair = Pair(error_state_delay=1.0, hold_down=3.0)
    pair.settle()
    start = len(pair.changes)
    for side, length, gap in blips:
        pair.error[side] = 1
        pair.settle(length)  # at most 0.9 s
        pair.error[side] = 0
        pair.settle(gap)
    pair.settle()
    assert pair.active() == {"a"} and len(pair.changes) == start


def test_a_lasting_difference_switches_once_and_the_way_back_waits_the_hold_down():
    pair = Pair(error_state_delay=1.0, hold_down=3.0)
    pair.settle()
    pair.error["a"] = 1
    pair.settle(9)  # 0.9 s: not yet
    assert pair.active() == {"a"}
    pair.settle(4)
    assert pair.active() == {"b"}
    switched = pair.now
    pair.error["a"] = 0  # repaired at once: a is preferred, but the way back is held down
    while pair.active() == {"b"}:
        pair.round()
        assert pair.now - switched < 5
    assert pair.now - switched >= 3.0
    assert pair.changes[-1][1].reason is Reason.PREFERENCE
    pair.settle()
    assert pair.active() == {"a"}


def test_links_one_side_counts_down_never_make_the_error_states_differ():
    assert judged_errors({"link 1": 1, "manager w": 2}, {}) == (2, 0)
    assert judged_errors({"link 2": 1}, {"link 1": 1}) == (0, 0)
    assert judged_errors({}, {"link 1": 1, "plugins": 0.5}) == (0, 0.5)


@given(st.lists(st.tuples(st.sampled_from(SERVERS), st.integers(1, 2)), max_size=30))
def test_links_lost_on_one_side_at_a_time_never_switch(losses):
    """Random link loss seen by one side only (as a lossy network shows it): no switchover."""
    arb = {n: Arbiter(n, other(n), Choice("a", 0), 0.0, startup_wait=0.0,
                      error_state_delay=1.0) for n in SERVERS}
    beats: dict[str, Partner | None] = {"a": None, "b": None}
    down: dict[str, dict[str, float]] = {"a": {}, "b": {}}
    now, changes = 0.0, 0
    for round_ in range(len(losses) * 3 + 20):
        now += ROUND
        if round_ % 3 == 0 and losses:
            side, link = losses.pop()
            down = {"a": {}, "b": {}}
            down[side] = {f"link {link}": 1}
        for name in SERVERS:
            theirs = beats[other(name)]
            mine_e, their_e = judged_errors(down[name], down[other(name)])
            view = None if theirs is None else Partner(**{**theirs.__dict__, "error": their_e})
            d = arb[name].step(now, Local(mine_e, True), view)
            if d.changed and round_ > 15:
                changes += 1
            beats[name] = Partner(name, d.role, 0, True, d.target, arb[name].epoch,
                                  arb[name].forced, arb[name].preferred, boot=name)
    assert changes == 0
    assert {n for n in SERVERS if arb[n].role is Role.ACTIVE} == {"a"}


def test_a_forced_choice_once_overruled_never_comes_back():
    pair = Pair()
    pair.error["b"] = 1
    pair.settle()
    pair.arb["a"].force("b", Local(0, True), pair.sent["b"], by="set-active on a", at=100.0)
    pair.settle()
    assert pair.active() == {"b"} and pair.arb["b"].forced.by == "set-active on a"
    pair.error["b"] = 2  # overruled: a is active by error state
    pair.settle()
    assert pair.active() == {"a"}
    pair.error["b"] = 1  # the states are what they were when it was given: it stays ended
    pair.settle()
    assert pair.active() == {"a"}
    assert pair.arb["a"].forced.ended == pair.arb["b"].forced.ended == "overruled"


def test_a_forced_choice_ends_when_the_forced_server_fails():
    pair = Pair()
    pair.settle()
    pair.arb["b"].force("b", Local(0, True), pair.sent["a"])
    pair.settle()
    assert pair.active() == {"b"}
    pair.arb["b"] = pair._fresh("b", pair.arb["b"].epoch)  # b crashes and comes back
    pair.sent["b"] = None
    for _ in range(8):  # a hears nothing for 0.8 s: b failed
        pair.now += ROUND
        pair.step("a")
    assert pair.arb["a"].forced.ended == "failure"
    pair.settle()
    assert pair.active() == {"a"}  # the restarted b does not take the role back
    assert pair.arb["b"].forced.ended == "failure"


def test_one_way_partition_the_side_that_hears_a_claim_of_active_yields_and_restarts():
    pair = Pair()
    pair.settle()
    assert pair.active() == {"a"}
    b = pair.arb["b"]
    for _ in range(12):  # a -> b lost: b hears nothing (and says so), a hears b
        pair.now += ROUND
        d = b.step(pair.now, Local(0, True), None)
        pair.sent["b"] = Partner("b", d.role, 0, True, d.target, b.epoch, b.forced, b.preferred,
                                 boot=str(id(b)), hears=False)
        pair.step("a")
    assert pair.active() == {"b"}
    assert pair.restarts == ["a"]


def test_a_server_that_cannot_act_hands_over_fenced_and_the_partner_waits_for_its_fence():
    pair = Pair(fence_bound=1.0)
    pair.settle()
    arb_a = pair.arb["a"]
    pair.now += ROUND
    d = arb_a.step(pair.now, Local(1, False, can_act=False), pair.sent["b"])
    assert d.role is Role.PASSIVE and d.reason is Reason.FENCED
    # b heard "fencing" last, then nothing: it waits fence_bound before claiming failure
    b = pair.arb["b"]
    fencing = Partner("a", Role.ACTIVE, 1, False, "b", arb_a.epoch, fencing=True, boot=str(id(arb_a)))
    b.step(pair.now, Local(0, True), fencing)
    t0 = pair.now
    while b.role is not Role.ACTIVE:
        pair.now += ROUND
        b.step(pair.now, Local(0, True), None)
    assert pair.now - t0 >= 1.0


class PairMachine(RuleBasedStateMachine):
    @initialize(preferred=st.sampled_from(SERVERS), change=st.sampled_from([0.0, 0.5, 1.5]))
    def start(self, preferred: str, change: float) -> None:
        self.pair = Pair(preferred, change)
        self.pair.settle()

    @rule(side=st.sampled_from(SERVERS), error=st.integers(0, 3))
    def set_error(self, side: str, error: int) -> None:
        self.pair.error[side] = error

    @rule(side=st.sampled_from(SERVERS), available=st.booleans())
    def set_available(self, side: str, available: bool) -> None:
        self.pair.available[side] = available

    @rule()
    def cut_links(self) -> None:
        self.pair.set_link(False)

    @rule()
    def restore_links(self) -> None:
        self.pair.set_link(True)

    @precondition(lambda self: self.pair.link)
    @rule(side=st.sampled_from(SERVERS), server=st.sampled_from(SERVERS))
    def set_active(self, side: str, server: str) -> None:
        pair = self.pair
        pair.arb[side].force(server, Local(pair.error[side], pair.available[side]), pair.sent[other(side)])

    @rule(side=st.sampled_from(SERVERS), server=st.sampled_from(SERVERS))
    def prefer(self, side: str, server: str) -> None:
        self.pair.arb[side].prefer(server, self.pair.view(side))

    @rule(rounds=st.integers(1, 4), flip=st.booleans())
    def some_rounds(self, rounds: int, flip: bool) -> None:
        for _ in range(rounds):
            self.pair.round(SERVERS[::-1] if flip else SERVERS)

    @invariant()
    def settles_by_the_rules(self) -> None:
        pair = self.pair
        pair.settle()
        before = len(pair.changes)
        if pair.link:
            assert len(pair.active()) == 1, "exactly one active while a link is up"
            assert pair.arb["a"].forced == pair.arb["b"].forced
            assert pair.arb["a"].preferred == pair.arb["b"].preferred
            expected = pair.expected()
            assert expected is None or pair.active() == {expected}
        else:
            assert pair.active() == {"a", "b"}, "split brain: both active"
        pair.settle(10)
        assert len(pair.changes) == before, "no flapping once settled"


TestPair = PairMachine.TestCase
TestPair.settings = settings(max_examples=80, stateful_step_count=10, deadline=None)


class WitnessPair(Pair):
    """The pair with a witness: one lease, given to a side that wants it when free, given
    back by a side that is passive and no longer wants it (what daemon.py and witness.py do
    with etcd)."""

    def __init__(self) -> None:
        super().__init__()
        self.holder: str | None = None

    def step(self, name: str) -> None:
        arb = self.arb[name]
        decision = arb.step(self.now, Local(self.error[name], self.available[name],
                                            lease=self.holder == name), self.view(name))
        self.last[name] = decision
        if decision.changed:
            self.changes.append((name, decision))
        wants = decision.role is Role.ACTIVE or decision.wants_lease
        if self.holder == name and not wants:
            self.holder = None
        elif self.holder is None and wants:
            self.holder = name
        self.sent[name] = Partner(name, decision.role, self.error[name], self.available[name],
                                  decision.target, arb.epoch, arb.forced, arb.preferred,
                                  boot=str(id(arb)))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["cut", "heal", "err-a", "err-b", "fix", "round"]),
                          st.integers(1, 12)), max_size=25))
def test_with_a_witness_only_the_lease_holder_is_ever_active(script):
    pair = WitnessPair()
    pair.settle()
    assert pair.active() == {"a"} and pair.holder == "a"
    for op, rounds in script:
        if op == "cut":
            pair.set_link(False)
        elif op == "heal":
            pair.set_link(True)
        elif op == "err-a":
            pair.error["a"] += 1
        elif op == "err-b":
            pair.error["b"] += 1
        elif op == "fix":
            pair.error = {"a": 0, "b": 0}
        for i in range(rounds):
            pair.round(SERVERS if i % 2 else SERVERS[::-1])
            assert pair.active() <= {pair.holder}, (pair.active(), pair.holder)
    pair.set_link(True)
    pair.settle(60)
    assert len(pair.active()) == 1  # connected again: exactly one active, the holder


def test_an_active_side_without_the_lease_goes_passive_as_fenced_and_a_passive_one_waits():
    arb = Arbiter("a", "b", Choice("a", 0), startup_wait=0.5)
    assert arb.step(0.0, Local(0, True, lease=False), None).role is None
    waiting = arb.step(1.0, Local(0, True, lease=False), None)
    assert (waiting.role, waiting.wants_lease) == (Role.PASSIVE, True)
    assert not arb.alone  # it never was active: nothing diverged
    assert arb.step(1.1, Local(0, True, lease=True), None).role is Role.ACTIVE
    lost = arb.step(1.2, Local(0, True, lease=False), None)
    assert (lost.role, lost.reason, lost.changed) == (Role.PASSIVE, Reason.FENCED, True)


def test_without_etcd_the_active_hands_nothing_over():
    arb = Arbiter("a", "b", Choice("a", 0))
    partner = Partner("b", Role.PASSIVE, 0, True, "a")
    assert arb.step(0.0, Local(0, True), partner).role is Role.ACTIVE
    arb.prefer("b")
    wants_b = Partner("b", Role.PASSIVE, 0, True, "b", preferred=arb.preferred)
    assert arb.step(0.1, Local(0, True, movable=False), wants_b).role is Role.ACTIVE
    assert arb.step(0.2, Local(0, True, movable=True), wants_b).role is Role.PASSIVE
_SOURCES = st.dictionaries(st.sampled_from(["link 1", "link 2", "manager x", "manager y", "plugins"]),
                           st.sampled_from([0.5, 1.0, 2.0, 3.0]), max_size=4)


@given(mine=_SOURCES, theirs=_SOURCES, weight=st.sampled_from([0.5, 1.0, 2.0]),
       preferred=st.sampled_from(SERVERS))
@settings(max_examples=300, deadline=None)
def test_the_stop_guard_predicts_the_arbitration(mine, theirs, weight, preferred):
    """pmon's `stop` guard (commands/managers.py) says "the pair would switch over" exactly
    when the arbitration, given the active a's error sources with the manager stopped, picks
    b: links left out on both sides, a tie decided by preference (review 2, finding 3)."""
    from pmon.commands.managers import stop_would_switch

    arbiter = Arbiter(me="a", partner="b", preferred=Choice(preferred, 0))
    after, partner_error = judged_errors({**mine, "manager w": weight}, theirs)
    target, _ = arbiter.target(Local(after, True), Partner("b", Role.PASSIVE, partner_error, True, "a"))
    predicted = stop_would_switch(mine, theirs, "w", weight, preferred=preferred == "b")
    assert (predicted is not None) == (target == "b"), (mine, theirs, predicted, target)
