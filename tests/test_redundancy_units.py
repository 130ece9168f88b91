"""Heartbeat messages and the [redundancy] section: pure checks, no processes."""

from __future__ import annotations

import sys
import time

import pytest
from hypothesis import given, settings, strategies as st

from pmon import config as config_module
from pmon.errors import ConfigError
from pmon.redundancy.arbitration import Choice, Role
from pmon.redundancy.messages import (
    MAX_DATAGRAM, Encoder, Heartbeat, Inbox, decode, encode, words_of)

from support import write_project


def beat(**changes) -> Heartbeat:
    fields = dict(sender="b", to="a", epoch=3, boot="x1", seq=1, role=Role.ACTIVE, error=0,
                  available=True, target="b", seen=2, forced=Choice("b", 4, (("a", 0), ("b", 1))),
                  preferred=Choice("a", 1), breakdown={"manager w": 1})
    fields.update(changes)
    return Heartbeat(**fields)


def test_a_heartbeat_survives_the_round_trip():
    assert decode(encode(beat())) == beat()
    full = beat(hears=False, fencing=True, probe=True, damp=2.5, timing=(0.2, 0.6, 1.0),
                shared={"preferred": "a", "witness": None, "hold_down": 5.0},
                forced=Choice("b", 4, (("a", 0),), at=10.5, by="set-active on a",
                              ended="overruled", ended_at=11.0))
    assert decode(encode(full)) == full


def test_a_version_1_heartbeat_without_the_new_fields_reads_with_their_defaults():
    import json
    old = json.loads(encode(beat()))
    for key in ("hears", "fencing", "probe", "damp"):
        del old[key]
    hb = decode(json.dumps(old).encode())
    assert (hb.hears, hb.fencing, hb.probe, hb.damp) == (True, False, False, 0.0)
    with pytest.raises(Exception, match="damp"):
        decode(json.dumps({**old, "damp": 1e9}).encode())
    assert hb.timing == ()  # a partner that does not say its timing: this side's own
    # fence_grace = 0 is a valid setting (a review found such heartbeats dropped as garbage)
    assert decode(json.dumps({**old, "timing": [0.2, 0.6, 0]}).encode()).timing == (0.2, 0.6, 0.0)
    for bad in ([0.2, 0.6], [0.2, 0, 1], [0.2, "0.6", 1], [0.2, 0.6, 1e9], [5, 0.1, 1],
                {"timeout": 1}, [0.2, 0.6, True]):
        # a timing this side cannot read is left out; the heartbeat still counts
        assert decode(json.dumps({**old, "timing": bad}).encode()).timing == (), bad
    shared = {"preferred": "a", "witness": None, "hold_down": 5.0, "manager_weight": 1}
    assert decode(json.dumps({**old, "shared": shared}).encode()).shared == shared
    for bad in ([1], "x", None):
        assert decode(json.dumps({**old, "shared": bad}).encode()).shared == {}, bad
    # only the entries this side cannot compare are left out
    odd = {"k": [1], "n": {"x": 1}, "long": "x" * 201, **{str(i): i for i in range(20)}}
    assert decode(json.dumps({**old, "shared": odd}).encode()).shared == {str(i): i for i in range(16)}


def test_the_shared_settings_that_differ_are_named_with_both_values():
    from pmon.redundancy.settings import differ_text, settings_differ
    mine = {"preferred": "a", "witness": "k", "hold_down": 5.0, "pmon_weight": 1}
    theirs = {"preferred": "a", "witness": None, "hold_down": 7, "pmon_weight": 1.0}  # no newer key
    differ = settings_differ({**mine, "newer": 1}, theirs)
    assert differ == {"witness": {"here": "k", "partner": None}, "hold_down": {"here": 5.0, "partner": 7}}
    text = differ_text(differ)
    assert text.startswith('witness "k" here, none on the partner; hold_down 5 here, 7 on')
    assert "a partition leaves both servers active" in text
    assert "partition" not in differ_text({"hold_down": differ["hold_down"]})
    assert differ_text({"hold_down": {"here": 1.0000001, "partner": 1}}) == \
        "hold_down 1.0000001 here, 1 on the partner"  # not "1 here, 1 on the partner"


def test_the_longest_heartbeat_the_settings_allow_fits_one_datagram(tmp_path):
    """Names at their longest (64 characters, in from, to, target and both choices), a
    witness key of 5,000 characters, and 300 failing sources with long names (the
    breakdown at its cap): still one datagram the partner takes."""
    from pmon.redundancy.settings import shared_settings
    a, b = "a" * 64, "é" * 64  # (an é is written as six bytes)
    spec = load(tmp_path, name=a, partner=b, preferred=b,
                witness={"etcd": ["http://127.0.0.1:2379"], "key": "/" + "é" * 5000}).redundancy
    hb = beat(sender=b, to=a, target=b, forced=Choice(b, 10**15, ((a, 10**6), (b, 10**6))),
              preferred=Choice(b, 10**15), shared=shared_settings(spec), timing=(0.2, 0.6, 1.0),
              breakdown={f"manager {'é' * 100} {i}": 10**6 for i in range(300)},
              error=3 * 10**8, damp=3600.0, seq=10**15, epoch=10**15, seen=10**15)
    data = encode(hb)
    assert len(data) <= MAX_DATAGRAM, len(data)
    assert Inbox(a, b).accept(data) is not None


def test_the_renumbered_heartbeat_takes_the_fast_path_whatever_the_shared_settings_hold(tmp_path):
    """A long witness key is cut with a digest (a review: the receiver dropped a whole
    `shared` with one long string, and every heartbeat then took the full decode)."""
    from pmon.redundancy.settings import shared_settings
    witness = {"etcd": ["http://127.0.0.1:2379"], "key": "/plant/" + "k" * 300}
    spec = load(tmp_path, witness=witness).redundancy
    shared = shared_settings(spec)
    assert len(shared["witness"]) <= 120 and shared["witness"].startswith("/plant/kkk")
    for variant in (shared, {"witness": 'k "é" \u2028 🙂', "x": 1e300, "n": None}):
        inbox, encoder = Inbox("a", "b"), Encoder()
        first = inbox.accept(encoder(beat(shared=variant)))
        assert first is not None and first[0].shared == variant
        second = inbox.accept(encoder.again(2))
        assert second is not None and second[0].seq == 2 and inbox.same_words, variant


@given(st.binary(max_size=300))
def test_garbage_is_dropped_and_counted_never_raised(data):
    inbox = Inbox("a", "b")
    assert inbox.accept(data) is None
    assert inbox.dropped["garbage"] == 1


def test_the_inbox_drops_unknown_senders_stale_epochs_and_garbage():
    inbox = Inbox("a", "b")
    assert inbox.accept(encode(beat(epoch=5)))[1] is True
    assert inbox.accept(encode(beat(epoch=5)))[1] is False  # the same datagram on link 2
    assert inbox.accept(encode(beat(epoch=4, seq=9))) is None
    assert inbox.accept(encode(beat(sender="c"))) is None
    assert inbox.accept(encode(beat(to="c"))) is None
    assert inbox.accept(b"\xff\x00 not json") is None
    assert inbox.accept(encode(beat()).replace(b'"v":1', b'"v":2')) is None
    assert inbox.accept(encode(beat()).replace(b'"error":0', b'"error":"0"')) is None
    assert inbox.dropped == {"garbage": 3, "unknown": 2, "stale": 1}
    # a new run of the partner's redundancy manager (new boot) starts its seq again
    assert inbox.accept(encode(beat(epoch=5, boot="x2", seq=1)))[1] is True


class Reference(Inbox):
    """The inbox without its fast paths: every datagram decoded in full."""

    def accept(self, data):
        return self._decoded(data)


changes = st.fixed_dictionaries({}, optional={
    "seq": st.integers(0, 30) | st.just(10**15), "epoch": st.integers(2, 4), "boot": st.sampled_from(["x1", "x2"]),
    "sender": st.sampled_from(["b", "c"]), "role": st.sampled_from([Role.ACTIVE, Role.PASSIVE, None]),
    "error": st.integers(0, 3), "damp": st.sampled_from([0.0, 1.5]),
    "timing": st.sampled_from([(), (0.2, 0.6, 1.0), (1.0, 3.0, 0.5)]),
    "shared": st.sampled_from([{}, {"preferred": "a", "witness": None, "hold_down": 5.0},
                               {"witness": 'k "é" \u2028 🙂', "pmon_weight": 1, "x": 1e300}]),
    "breakdown": st.sampled_from([{}, {"manager w": 1}, {'odd "seq":1, name': 2}]),
    "preferred": st.builds(Choice, st.sampled_from(["a", "b"]), st.integers(0, 20)),
})


GARBLES = [  # what another sender might write: not JSON, or JSON that `encode` never writes
    lambda data: data,
    lambda data: data.replace(b'"seq":', b'"seq":-', 1),  # negative
    lambda data: data.replace(b'"seq":', b'"seq":0', 1),  # a leading zero: not JSON
    lambda data: data.replace(b'"seq":', b'"seq": ', 1),  # a space
    lambda data: data.replace(b'{"v":1,', b'{"v":1,"seq":3,', 1),  # twice: JSON takes the last
    lambda data: data[:-1] + b" " * (MAX_DATAGRAM - len(data) + 1) + b"}",  # too long
]


@settings(max_examples=400)
@given(st.lists(st.tuples(changes, st.sampled_from(GARBLES), st.booleans()), max_size=40))
def test_the_fast_paths_read_and_write_what_a_full_encode_and_decode_would(steps):
    """A datagram that differs from the newest only in its seq skips the decode, and the
    sender splices its seq into the last datagram's bytes: whatever the partner sends (a
    copy, an older one, another epoch or boot, a garbled one), both sides see the same."""
    fast, slow, encoder = Inbox("a", "b"), Reference("a", "b"), Encoder()
    for change, garble, copy in steps:
        hb = beat(**change)
        data = encoder(hb)
        assert data == encode(hb)
        data = garble(data)
        for datagram in (data, data) if copy else (data,):
            newest = slow.heard
            taken = fast.accept(datagram)
            assert taken == slow.accept(datagram)
            assert (fast.dropped, fast.last_epoch, fast.last, fast.heard) == \
                (slow.dropped, slow.last_epoch, slow.last, slow.heard)
            if taken is not None and fast.same_words:  # the loop then skips comparing them
                assert newest is not None and words_of(taken[0]) == words_of(newest)


def test_the_fast_path_takes_only_what_encode_writes():
    """JSON that `encode` never writes (found by a review): a second top-level seq (JSON
    takes the last), a space after the key (the first raw `"seq":` is then a choice's), an
    overlong datagram. Each pair of datagrams differs only where the fast path would look."""
    hb = beat(seq=20, preferred=Choice("a", 1))
    plain = encode(hb)
    twice = plain.replace(b'{"v":1,', b'{"v":1,"seq":%d,', 1)
    spaced = plain.replace(b'"seq":20', b'"seq": 20', 1).replace(b'"seq":1}', b'"seq":%d}', 1)
    long = plain[:-1] + b" " * (MAX_DATAGRAM - len(plain)) + b"}"
    cases = [(twice % 5, twice % 8), (spaced % 5, spaced % 8), (long, long.replace(b'"seq":20', b'"seq":21'))]
    for first, second in cases:
        fast, slow = Inbox("a", "b"), Reference("a", "b")
        for datagram in (first, second):
            assert fast.accept(datagram) == slow.accept(datagram), datagram[:80]
            assert (fast.dropped, fast.last, fast.heard) == (slow.dropped, slow.last, slow.heard)


LINK = {"local": "127.0.0.1:7101", "partner": "127.0.0.1:7201"}


def load(tmp_path, managers=None, **redundancy):
    section = {"name": "a", "partner": "b", "links": [LINK], **redundancy}
    path = write_project(tmp_path, managers or [{"name": "w", "command": ["true"]}],
                         redundancy=section)
    return config_module.load(path)


def test_pmon_adds_the_redundancy_manager_first_in_start_order_keeping_indexes(tmp_path):
    config = load(tmp_path)
    auto = config.manager("redundancy")
    assert auto.redundancy and auto.core and auto.index == 2
    assert auto.command[:3] == (sys.executable, "-m", "pmon.redundancy")
    assert config.start_order()[0].name == "redundancy"
    assert config.manager("w").index == 1
    assert config.redundancy.preferred == "a" and config.redundancy.links[0].partner == ("127.0.0.1", 7201)


def test_a_listed_redundancy_manager_is_used_as_is(tmp_path):
    config = load(tmp_path, [{"name": "redu", "command": ["x"], "redundancy": True}])
    assert [m.name for m in config.managers] == ["redu"]


@pytest.mark.parametrize("redundancy, managers, message", [
    ({"timeout": 0.1, "heartbeat_interval": 0.2}, None, "must be longer than heartbeat_interval"),
    ({"preferred": "c"}, None, "must be 'a' or 'b'"),
    ({"partner": "a"}, None, "must differ from name"),
    ({"partner": "b" * 65}, None, "at most 64 characters"),
    ({"links": []}, None, "one or two [[redundancy.links]]"),
    ({"links": [{"local": "nowhere", "partner": "127.0.0.1:1"}]}, None, 'expected an address "HOST:PORT"'),
    ({"heartbeat": 1}, None, "did you mean 'heartbeat_interval'"),
    ({}, [{"name": "d", "command": ["x"], "core": True, "run_on": "active"}], "a core manager runs on both"),
    ({}, [{"name": "d", "command": ["x"], "run_on": "passive"}], "expected one of 'both' | 'active'"),
    ({}, [{"name": "redundancy", "command": ["x"]}], "this name is taken"),
    ({"witness": "etcd"}, None, "key 'witness': expected an inline table"),
    ({"witness": {"etcd": [], "key": "/k"}}, None, "key 'witness', key 'etcd': expected a list of etcd client URLs"),
    ({"witness": {"etcd": ["127.0.0.1:2379"], "key": "/k"}}, None, "key 'etcd': expected a list"),
    ({"witness": {"etcd": ["http://127.0.0.1:2379"], "key": "/k", "ttl": 3}}, None,
     "key 'ttl': expected whole seconds, at least 4"),
    ({"witness": {"etcd": ["http://127.0.0.1:2379"], "key": "/k", "ttl": 6.5}}, None, "whole seconds"),
    ({"witness": {"etcd": ["http://127.0.0.1:2379"]}}, None, "key 'witness', key 'key': expected the etcd key"),
    ({"witness": {"etcd": ["http://x:1"], "key": "/k", "lease": 5}}, None, "key 'lease': unknown"),
    ({"self_fence": 0.1, "heartbeat_interval": 0.2}, None,
     "key 'self_fence': the self-fence after 0.1 s of silence of the redundancy manager cannot hold"),
    ({"self_fence": 0.55}, None, "between heartbeat_interval (0.2 s) and timeout - 0.1 s (0.5 s)"),
    ({"timeout": 0.35}, None, "key 'timeout': the self-fence after 0.15 s"),
    ({"timeout": 2.5, "witness": {"etcd": ["http://x:1"], "key": "/k", "ttl": 4}}, None,
     "key 'ttl': must be more than 2 x timeout (5 s)"),
])
def test_bad_redundancy_settings_name_the_key(tmp_path, redundancy, managers, message):
    with pytest.raises(ConfigError) as error:
        load(tmp_path, managers, **redundancy)
    assert message in str(error.value)
    assert str(tmp_path / "pmon.toml") in str(error.value)


def test_the_witness_is_off_by_default_and_read_when_given(tmp_path):
    assert load(tmp_path).redundancy.witness is None
    other = tmp_path / "other"
    other.mkdir()
    witness = load(other, witness={"etcd": ["http://127.0.0.1:2379/", "http://10.0.0.2:2379"],
                                   "key": "/pmon/p/active"}).redundancy.witness
    assert witness.etcd == ("http://127.0.0.1:2379", "http://10.0.0.2:2379")
    assert (witness.key, witness.ttl, witness.lost_after) == ("/pmon/p/active", 6.0, 3.0)


def test_the_self_fence_ends_before_the_partner_may_take_over(tmp_path):
    spec = load(tmp_path).redundancy
    assert (spec.self_fence, spec.self_fence_kill) == (0.4, 0.1)  # defaults
    assert spec.self_fence + spec.self_fence_kill < spec.timeout
    other = tmp_path / "other"
    other.mkdir()
    spec = load(other, self_fence=0.3, timeout=1.0).redundancy
    assert (spec.self_fence, spec.self_fence_kill) == (0.3, 0.6)


def test_a_standalone_project_is_unchanged(tmp_path):
    path = write_project(tmp_path, [{"name": "w", "command": ["true"], "run_on": "active"}])
    config = config_module.load(path)
    assert config.redundancy is None and [m.name for m in config.managers] == ["w"]


def test_a_heartbeat_sender_survives_send_errors():
    import socket

    from pmon.redundancy.link import LinkState
    from pmon.redundancy.settings import Link

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    # broadcast without SO_BROADCAST: the kernel refuses every send (EACCES), deterministically
    link = LinkState(Link(sock.getsockname(), ("255.255.255.255", 9)), sock)
    with sock:
        link.send(b"x")
        link.send(b"x")
    assert link.send_errors == 2 and link.sent == 0 and link.last_error


def test_a_datagram_longer_than_a_heartbeat_is_read_cut_and_dropped_as_garbage():
    """A link reads into a buffer one byte longer than a heartbeat may be (each read
    allocates it): a longer datagram arrives cut, is counted as garbage, and the next
    heartbeat on the same socket is read whole."""
    import socket

    from pmon.redundancy.link import LinkState
    from pmon.redundancy.settings import Link

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        sender.bind(("127.0.0.1", 0))
        link = LinkState(Link(sock.getsockname(), sender.getsockname()), sock,
                         address=sender.getsockname())
        heartbeat = encode(beat(epoch=5))
        sender.sendto(b"{" + b" " * 20000 + b"}", sock.getsockname())
        sender.sendto(heartbeat, sock.getsockname())
        got: list[bytes] = []
        deadline = time.monotonic() + 5
        while len(got) < 2 and time.monotonic() < deadline:  # loopback: at once, as a rule
            got += link.receive()
        inbox = Inbox("a", "b")
        assert [len(d) for d in got] == [MAX_DATAGRAM + 1, len(heartbeat)]
        assert inbox.accept(got[0]) is None and inbox.dropped["garbage"] == 1
        assert inbox.accept(got[1]) is not None


def test_a_link_takes_datagrams_from_its_partners_host_only_and_names_the_stranger():
    """A datagram from another host than the link's partner (a neighbouring pair's server
    with the same names, sent here by a wrong address in its config) is dropped unread,
    counted, and its sender kept for `redu status`; the partner's pass, also from another
    port of its host (a NAT may change it)."""
    import socket

    from pmon.redundancy.link import LinkState
    from pmon.redundancy.settings import Link

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as partner, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as translated:
        for s in (sock, partner, translated):
            s.bind(("127.0.0.1", 0))
        stranger.bind(("127.0.0.2", 0))  # (all of 127/8 is this machine's)
        sock.setblocking(False)
        link = LinkState(Link(sock.getsockname(), partner.getsockname()), sock,
                         address=partner.getsockname())
        ours, theirs = encode(beat(seq=1)), encode(beat(seq=99, epoch=10**6))
        for _ in range(3):
            stranger.sendto(theirs, sock.getsockname())
        partner.sendto(ours, sock.getsockname())
        translated.sendto(ours, sock.getsockname())
        got: list[bytes] = []
        deadline = time.monotonic() + 5
        while len(got) < 2 and time.monotonic() < deadline:  # (the partner's are sent last)
            got += link.receive()
        assert got == [ours, ours]
        assert link.strangers == 3
        assert link.stranger == "127.0.0.2:%d" % stranger.getsockname()[1]
        report = link.report(time.monotonic(), 1.0)
        assert (report["strangers"], report["stranger"]) == (3, link.stranger)


def test_a_release_ends_once_and_later_replies_end_nothing():
    """The second phase of a handover ends on pmon's reply to the first report that said
    "passive". Before, a later reply ended it again and again: the passive side sent an
    extra heartbeat at every sync with pmon, for ever after its first handover."""
    from pmon.redundancy.fence import Release

    release = Release(bound=5.0)
    release.start(10.0)
    release.reported(7)
    assert not release.answered(6, [])  # a reply to an older report
    assert not release.answered(7, [4321])  # a driver still alive
    assert release.answered(8, []) and not release.active
    assert not release.answered(9, []) and not release.answered(10, [])
    release.start(20.0)
    assert not release.answered(11, [])  # the new release waits for its own report
    release.reported(12)
    assert release.expired(25.0) and release.overrun and not release.answered(13, [])
