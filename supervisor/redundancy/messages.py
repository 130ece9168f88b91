"""The heartbeat datagram between the two redundancy managers, and its gatekeeper.

One JSON object per UDP datagram, sent on every link every heartbeat interval and at once
on a role change:

    {"v": 1, "from": "a", "to": "b", "epoch": 3, "boot": "9f1c...", "seq": 17,
     "role": "active" | "passive" | null, "error": 2, "available": true, "target": "a",
     "seen": 2, "forced": {"server": "a", "seq": 4, "errors": [["a", 0], ["b", 1]]} | null,
     "preferred": {"server": "a", "seq": 1}, "breakdown": {"manager worker": 1},
     "timing": [0.2, 0.6, 1.0], "shared": {"preferred": "a", "witness": null, ...}}

`epoch` grows on every activation (of either side: an activation takes max(both) + 1) and
is kept by pmon across restarts of the redundancy manager. `seen` is the partner's epoch as
this side last accepted it: a side that lost its epoch catches up from it. `boot` names one
run of a redundancy manager, `seq` counts its datagrams (the same datagram arrives once per
link; only a newer one changes the partner's view). `timing` is the sender's
heartbeat_interval, timeout and fence_grace: the receiver waits the longer of its own and
these (docs/redundancy.md "When the two sides' settings differ"); `shared`, the sender's
settings that both servers should share (settings.shared_settings), which `redu status`
compares.

The `Inbox` drops, counts and never acts on: garbage (not JSON, wrong version or types), a
message from an unknown server or meant for another, and a stale epoch (lower than one this
side has already accepted from the partner).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from pmon.errors import PmonError
from pmon.redundancy.arbitration import Choice, Partner, Role

VERSION = 1
MAX_DATAGRAM = 8192
BREAKDOWN_BYTES = 4096  # of a heartbeat's breakdown, so the datagram stays within MAX_DATAGRAM
TIMING_NAMES = ("heartbeat_interval", "timeout", "fence_grace")  # a heartbeat's `timing`
KEY_CHARS = 120  # a longer source name is cut: a name is for people, the weight for the pair


class BadMessage(PmonError):
    """The partner (or someone) sent nonsense: the datagram is dropped (the remote side's
    error, in h11's terms; never raised past the Inbox)."""

    code = "peer"


@dataclass(frozen=True)
class Heartbeat:
    sender: str
    to: str
    epoch: int
    boot: str
    seq: int
    role: Role | None
    error: float  # a whole number, unless a plugin's verdict weighs a fraction
    available: bool
    target: str | None
    seen: int = 0
    forced: Choice | None = None
    preferred: Choice | None = None
    breakdown: dict[str, float] = field(default_factory=dict)
    hears: bool = True
    fencing: bool = False
    probe: bool = False
    damp: float = 0.0  # seconds failure stays damped on the sender (after a split brain)
    # the sender's (heartbeat_interval, timeout, fence_grace); () from one that does not say
    timing: tuple[float, ...] = ()
    shared: dict[str, Any] = field(default_factory=dict)  # {} from one that does not say

    def partner(self, error: float | None = None) -> Partner:
        """The partner as the arbitration sees it; `error`: as this side judges it."""
        return Partner(
            name=self.sender, role=self.role, error=self.error if error is None else error,
            available=self.available,
            target=self.target, epoch=self.epoch, forced=self.forced, preferred=self.preferred,
            boot=self.boot, hears=self.hears, fencing=self.fencing,
        )


def _choice_out(choice: Choice | None) -> dict[str, Any] | None:
    if choice is None:
        return None
    out: dict[str, Any] = {"server": choice.server, "seq": choice.seq}
    if choice.errors:
        out["errors"] = [list(pair) for pair in choice.errors]
    for key in ("at", "by", "ended", "ended_at"):
        if getattr(choice, key):
            out[key] = getattr(choice, key)
    return out


def capped(breakdown: dict[str, float], budget: int = BREAKDOWN_BYTES) -> dict[str, float]:
    """The breakdown as a heartbeat carries it: the links' entries, then the heaviest sources
    while they fit in `budget` bytes of JSON, and the rest summed as "others (N)". The sum,
    and the sum without links (what the arbitration compares), stay what they were: 250
    failing managers must not make a datagram the partner drops as too long (a split brain)."""
    order = sorted(breakdown.items(), key=lambda kv: (not kv[0].startswith("link "), -kv[1], kv[0]))
    out: dict[str, float] = {}
    used, rest, left = 2, 0.0, 0
    for key, value in order:
        size = len(json.dumps(key[:KEY_CHARS])) + len(json.dumps(value)) + 2
        if used + size + 40 > budget or key[:KEY_CHARS] in out:  # 40: room for "others"
            rest, left = rest + value, left + 1
            continue
        out[key[:KEY_CHARS]] = value
        used += size
    if left:
        out[f"others ({left})"] = rest
    return out


# A heartbeat's seq: raw `"seq":` is always a key (a quote inside a JSON string is escaped),
# and the top-level one comes first in what `encode` writes (before any nested object).
_SEQ = re.compile(rb'"seq":(0|[1-9][0-9]{0,17})(?=[,}])')  # as JSON writes a number


def _cut(data: bytes, seq: re.Match[bytes]) -> tuple[bytes, bytes]:
    """The datagram before and after its seq's digits."""
    return data[:seq.start(1)], data[seq.end(1):]


def words_of(hb: Heartbeat) -> tuple[Any, ...]:
    """Every field but seq: what makes two heartbeats the same datagram but for its number."""
    return tuple(value for key, value in vars(hb).items() if key != "seq")


class Encoder:
    """`encode`, remembering the last datagram: a heartbeat that says what the last one said
    (at rest, every one) differs only in its seq, which is spliced in; the JSON and the
    breakdown's cap are computed only when something changed."""

    def __init__(self) -> None:
        self.words: tuple[Any, ...] | None = None
        self.head, self.tail = b"", b""

    def __call__(self, hb: Heartbeat) -> bytes:
        words = words_of(hb)
        if words != self.words:
            data = encode(hb)
            found = _SEQ.search(data)
            assert found is not None  # encode writes it
            self.words, (self.head, self.tail) = words, _cut(data, found)
        return self.again(hb.seq)

    def again(self, seq: int) -> bytes:
        """The last datagram, numbered `seq`."""
        return b"%s%d%s" % (self.head, seq, self.tail)


def encode(hb: Heartbeat) -> bytes:
    return json.dumps({
        "v": VERSION, "from": hb.sender, "to": hb.to, "epoch": hb.epoch, "boot": hb.boot,
        "seq": hb.seq, "role": hb.role.value if hb.role else None, "error": hb.error,
        "available": hb.available, "target": hb.target, "seen": hb.seen,
        "forced": _choice_out(hb.forced), "preferred": _choice_out(hb.preferred),
        "breakdown": capped(hb.breakdown), "hears": hb.hears, "fencing": hb.fencing, "probe": hb.probe,
        "damp": hb.damp, **({"timing": list(hb.timing)} if hb.timing else {}),
        **({"shared": hb.shared} if hb.shared else {}),
    }, separators=(",", ":")).encode()


def _get(message: dict[str, Any], key: str, kind: type | tuple[type, ...], optional: bool = False) -> Any:
    value = message.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise BadMessage(f"field {key!r} is missing or of the wrong type")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
        raise BadMessage(f"field {key!r} is negative")
    return value


def _number(value: Any) -> bool:
    return type(value) in (int, float) and value >= 0


def _choice_in(value: Any) -> Choice | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadMessage("a choice must be an object")
    errors = value.get("errors", [])
    if not isinstance(errors, list) or not all(
        isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and _number(p[1])
        for p in errors
    ):
        raise BadMessage("choice errors must be [[name, error], ...]")
    at, ended_at = value.get("at", 0.0), value.get("ended_at", 0.0)
    by, ended = value.get("by", ""), value.get("ended", "")
    if not (_number(at) and _number(ended_at) and isinstance(by, str) and isinstance(ended, str)):
        raise BadMessage("choice at/by/ended/ended_at of the wrong type")
    return Choice(_get(value, "server", str), _get(value, "seq", int),
                  tuple(sorted((name, error) for name, error in errors)),
                  at=float(at), by=by, ended=ended, ended_at=float(ended_at))


def decode(data: bytes) -> Heartbeat:
    """Bytes -> Heartbeat, or BadMessage. Checks form only, not who sent it."""
    if len(data) > MAX_DATAGRAM:
        raise BadMessage("datagram too long")
    try:
        message = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise BadMessage("not JSON") from None
    if not isinstance(message, dict):
        raise BadMessage("not a JSON object")
    if message.get("v") != VERSION:
        raise BadMessage(f"version {message.get('v')!r}, expected {VERSION}")
    role = message.get("role")
    if role is not None and role not in ("active", "passive"):
        raise BadMessage(f"unknown role {role!r}")
    breakdown = message.get("breakdown", {})
    if not isinstance(breakdown, dict) or not all(
        isinstance(k, str) and _number(v) for k, v in breakdown.items()
    ):
        raise BadMessage("breakdown must map names to numbers >= 0")
    return Heartbeat(
        sender=_get(message, "from", str), to=_get(message, "to", str),
        epoch=_get(message, "epoch", int), boot=_get(message, "boot", str),
        seq=_get(message, "seq", int), role=Role(role) if role else None,
        error=_get(message, "error", (int, float)), available=_get(message, "available", bool),
        target=_get(message, "target", str, optional=True), seen=_get(message, "seen", int),
        forced=_choice_in(message.get("forced")), preferred=_choice_in(message.get("preferred")),
        breakdown=dict(breakdown), hears=_flag(message, "hears", True),
        fencing=_flag(message, "fencing", False), probe=_flag(message, "probe", False),
        damp=_damp(message.get("damp", 0.0)), timing=timing_of(message.get("timing")),
        shared=_shared(message.get("shared")),
    )


def _shared(value: Any) -> dict[str, Any]:
    """The partner's shared settings: the entries that are short and flat, up to 16 (what
    is only compared for people is never a reason to drop a heartbeat)."""
    if not isinstance(value, dict):
        return {}
    return dict(list((k, v) for k, v in value.items() if isinstance(k, str) and len(k) <= 40 and (
        v is None or isinstance(v, (bool, int, float)) or isinstance(v, str) and len(v) <= 200))[:16])


def timing_of(value: Any) -> tuple[float, ...]:
    """[heartbeat_interval, timeout, fence_grace] as valid settings have them, else () (the
    heartbeat still counts: a partner whose timing this side cannot read is judged by this
    side's own, as one that does not say it)."""
    if not isinstance(value, list) or len(value) != 3 or not all(
            _number(v) and v <= 3600 for v in value):
        return ()
    interval, timeout, grace = (float(v) for v in value)
    return (interval, timeout, grace) if 0 < interval < timeout else ()


def _damp(value: Any) -> float:
    if not _number(value) or value > 3600:
        raise BadMessage("field 'damp' must be seconds, 0 to 3600")
    return float(value)


def _flag(message: dict[str, Any], key: str, default: bool) -> bool:
    value = message.get(key, default)
    if not isinstance(value, bool):
        raise BadMessage(f"field {key!r} must be true or false")
    return value


@dataclass
class Inbox:
    """Accepts the partner's heartbeats; drops and counts everything else."""

    me: str
    partner: str
    last_epoch: int = -1
    last: tuple[str, int] | None = None  # (boot, seq) of the newest accepted heartbeat
    dropped: dict[str, int] = field(
        default_factory=lambda: {"garbage": 0, "unknown": 0, "stale": 0}
    )
    misaddressed: tuple[str, str] | None = None  # (from, to) of the last one dropped as unknown
    heard: Heartbeat | None = None  # the newest accepted, and its bytes
    last_data: bytes = b""
    last_cut: tuple[bytes, bytes] = (b"", b"")  # its bytes around the seq's digits
    # the last accept's heartbeat says what the one before it said, seq aside (a fast path)
    same_words: bool = False

    def accept(self, data: bytes) -> tuple[Heartbeat, bool] | None:
        """(heartbeat, newer) for a valid message from the partner, else None (counted).

        `newer` is False for a copy of one already seen (the same datagram on another link,
        or an older one overtaken): it proves the link is up, but changes no view.
        """
        self.same_words = True
        if self.heard is not None and self.heard.epoch == self.last_epoch:  # (else: stale)
            if data == self.last_data:
                return self.heard, False  # the other link's copy of the newest: nothing to check
            found = _SEQ.search(data)
            if found is not None and _cut(data, found) == self.last_cut and \
                    len(data) <= MAX_DATAGRAM:
                # the newest heartbeat's words with another seq (at rest, every one): the
                # words were checked when they came first, the number is digits
                return self._took(_renumbered(self.heard, int(found.group(1))), data, self.last_cut)
        self.same_words = False
        return self._decoded(data)

    def _decoded(self, data: bytes) -> tuple[Heartbeat, bool] | None:
        """`accept` by a full decode and every check (what the fast paths must agree with)."""
        try:
            hb = decode(data)
        except BadMessage:
            self.dropped["garbage"] += 1
            return None
        if hb.sender != self.partner or hb.to != self.me:
            self.dropped["unknown"] += 1
            self.misaddressed = (hb.sender, hb.to)  # (for people: two servers named alike)
            return None
        if hb.epoch < self.last_epoch:
            self.dropped["stale"] += 1
            return None
        self.last_epoch = hb.epoch
        # the fast path only after bytes as `encode` writes them (one seq, no spaces): then
        # the seq's digits are the one thing another datagram may change
        found = _SEQ.search(data) if data == encode(hb) else None
        return self._took(hb, data, _cut(data, found) if found is not None else (b"", b""))

    def _took(self, hb: Heartbeat, data: bytes, cut: tuple[bytes, bytes]) -> tuple[Heartbeat, bool]:
        newer = self.last is None or self.last[0] != hb.boot or hb.seq > self.last[1]
        if newer:
            self.last = (hb.boot, hb.seq)
            self.heard, self.last_data, self.last_cut = hb, data, cut
        return hb, newer


def _renumbered(hb: Heartbeat, seq: int) -> Heartbeat:
    """`hb` with another seq, without `dataclasses.replace`'s checks of every field again."""
    out = object.__new__(Heartbeat)
    out.__dict__.update(vars(hb), seq=seq)
    return out
