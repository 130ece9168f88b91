"""The `[redundancy]` section: validated into a frozen `RedundancySpec`.

How the section relates to the redundancy manager: with a `[redundancy]` section, the
project needs one manager with `redundancy = true` (a core manager, started first). If the
project lists none, pmon adds it: a manager named "redundancy" running
`python -m pmon.redundancy -c <this file>`, appended after the listed managers so that
their indexes do not move. List it yourself to choose its name, index or command. A
manager with `redundancy = true` but no `[redundancy]` section is only a core manager
started first (as before); the redundancy program itself refuses to run without the section.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from pmon.config import _count as _weight, _positive_number as _seconds
from pmon.states import Readiness, StartType

if TYPE_CHECKING:
    from pmon.config import ManagerSpec, _Errors

AUTO_NAME = "redundancy"
SYNC_IDLE = 1.0  # seconds between syncs with pmon when nothing changes (daemon.py)
RUN_ON = ("both", "active")
# The self-fence (docs/redundancy.md "Fencing"): what it leaves between its end and the
# earliest moment the partner may claim the role by failure (pmon's timer, the kill's
# delivery, the partner's clock).
SELF_FENCE_MARGIN = 0.1
# A fence (fence.py) ends anyway this long after fence_bound, the longest the partner waits for
# it: a process not gone a second after the SIGKILL's share of the bound is not being stopped
# (docs/redundancy.md "Fencing", the fence's own bound).
FENCE_OVERRUN_MARGIN = 1.0
# A partner's timing (its heartbeats say it) is taken up to this many seconds: a forged or
# absurd heartbeat must not make a failover wait for hours (docs/redundancy.md "When the two
# sides' settings differ"). The redundancy manager's start may wait that long for it.
TIMING_MAX = 30.0


@dataclass(frozen=True)
class Link:
    local: tuple[str, int]    # where this server's redundancy manager listens and sends from
    partner: tuple[str, int]  # where the partner's listens

    def label(self) -> str:
        return f"{self.local[0]}:{self.local[1]} -> {self.partner[0]}:{self.partner[1]}"


@dataclass(frozen=True)
class WitnessSpec:
    """`[redundancy] witness`: an etcd key held under a lease; only its holder is active."""

    etcd: tuple[str, ...]   # client URLs of the etcd cluster, e.g. "http://127.0.0.1:2379"
    key: str                # the key both servers compete for
    ttl: float = 6.0        # the lease's time to live (seconds, whole, at least 2)

    @property
    def lost_after(self) -> float:
        """No lease renewal for this long: this server counts the lease lost and fences (or
        stays active in failsafe, docs/redundancy.md "The witness"), well before etcd lets
        it expire (the TTL, counted by etcd from a renewal at least as late)."""
        return self.ttl / 2


@dataclass(frozen=True)
class RedundancySpec:
    name: str                   # this server
    partner: str                # the other one
    links: tuple[Link, ...]
    preferred: str
    heartbeat_interval: float = 0.2
    timeout: float = 0.6
    first_active_change_interval: float = 5.0
    manager_weight: int = 1     # error weight of a manager that should run and does not
    link_weight: int = 1        # error weight of each link that is down
    # Damping (docs/redundancy.md "Damping"): an error-state difference must last this long
    # before it switches; after an automatic switchover, one caused by a newer change of the
    # error states waits hold_down.
    error_state_delay: float = 1.0
    hold_down: float = 5.0
    # pmon not answering the redundancy manager this long is an error source (pmon_weight);
    # on the active server it fences the run_on = "active" managers: SIGTERM, SIGKILL after
    # fence_grace; the partner waits fence_grace + one timeout for that before it takes over.
    pmon_timeout: float = 2.0
    pmon_weight: int = 1
    fence_grace: float = 1.0
    witness: WitnessSpec | None = None  # None: no witness (both active when all links are down)
    # The self-fence: pmon on the active server stops its run_on = "active" managers when
    # its redundancy manager's heartbeat loop has not beaten (WATCHDOG=1) this long. 0: the
    # default, timeout - 2 x SELF_FENCE_MARGIN (0.4 s with the default timeout).
    self_fence_after: float = 0.0
    # A group of three or more (docs/redundancy.md "Groups of three or more"): every member's
    # name, this one's among them; () for a pair. Then partner is "" and links is ().
    group: tuple[str, ...] = ()

    @property
    def preference(self) -> tuple[str, ...]:
        """A group's order of preference: `preferred` first, then the rest in `group` order."""
        return (self.preferred, *(m for m in self.group if m != self.preferred))

    @property
    def fence_bound(self) -> float:
        """How long after the last heartbeat that said "fencing" the fence is surely done."""
        return self.fence_grace + self.timeout

    @property
    def fence_limit(self) -> float:
        """The fence's own bound: it ends then even if a process of it is still alive
        (`Fence.overrun`), so that the pair is not left without an active server for ever."""
        return self.fence_bound + FENCE_OVERRUN_MARGIN

    @cached_property  # read at every beat (a frozen dataclass keeps it in its __dict__)
    def self_fence(self) -> float:
        """Beat silence after which pmon self-fences."""
        return self.self_fence_after or default_self_fence(self.timeout)

    @property
    def self_fence_kill(self) -> float:
        """A self-fence's stop signal -> SIGKILL (at most; a manager's seconds_to_kill if
        shorter): what is left of `timeout` after `self_fence`, less the margin. The last
        beat goes out with (after) the last heartbeat, and the partner claims the role by
        failure `timeout` after the last heartbeat it heard, so the self-fence ends
        (`self_fence + self_fence_kill = timeout - SELF_FENCE_MARGIN` after the last beat)
        before the partner can start its drivers."""
        return round(self.timeout - SELF_FENCE_MARGIN - self.self_fence, 6)


def shared_settings(spec: RedundancySpec) -> dict[str, Any]:
    """What both servers of a pair should be given alike, besides the timing (which each
    side takes the longer of): the heartbeats carry it, and `redu status` names what
    differs (docs/redundancy.md "When the two sides' settings differ")."""
    return {
        "preferred": _short(spec.preferred),
        "witness": _short(spec.witness.key) if spec.witness else None,
        "error_state_delay": spec.error_state_delay, "hold_down": spec.hold_down,
        "first_active_change_interval": spec.first_active_change_interval,
        "manager_weight": spec.manager_weight, "link_weight": spec.link_weight,
        "pmon_weight": spec.pmon_weight, "pmon_timeout": spec.pmon_timeout,
    }


def _short(text: str) -> str:
    """A name as compared: a long one cut, with a digest of the whole (a heartbeat must stay
    one datagram, and the receiver takes strings of up to 200 characters)."""
    if len(text) <= 120:
        return text
    return f"{text[:96]}... ({hashlib.sha256(text.encode()).hexdigest()[:12]})"


def settings_differ(mine: dict[str, Any], theirs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The shared settings the partner has otherwise (those it names: an older one names
    fewer), {key: {"here": ..., "partner": ...}}."""
    return {key: {"here": value, "partner": theirs[key]} for key, value in mine.items()
            if key in theirs and theirs[key] != value}


def differ_text(differ: Mapping[str, Any]) -> str:
    """For people: `witness none here, "pair" on the partner; hold_down 5 here, 7 ...`."""
    def shown(value: Any) -> str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return f"{value:g}" if float(f"{value:g}") == value else repr(value)
        return "none" if value is None else json.dumps(value)
    text = "; ".join(f"{key} {shown(v.get('here'))} here, {shown(v.get('partner'))} on the partner"
                     for key, v in differ.items() if isinstance(v, dict))
    if "witness" in differ:
        text += (" (with a witness on one side only, or two different keys, a partition "
                 "leaves both servers active, and while etcd is away the server with the "
                 "witness cannot take the role it is handed: nobody is active)")
    return text


def default_self_fence(timeout: float) -> float:
    return round(timeout - 2 * SELF_FENCE_MARGIN, 6)


def _address(value: Any) -> tuple[str, int]:
    text = value if isinstance(value, str) else ""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError('an address "HOST:PORT", e.g. "127.0.0.1:7101"')
    return host.strip("[]"), int(port)


# A server's name goes into every heartbeat several times (from, to, target, the choices):
# with the breakdown at its cap, names of a few thousand characters made a datagram longer
# than MAX_DATAGRAM, which the partner drops (a split brain).
NAME_MAX = 64


def _is_server(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= NAME_MAX and \
        not any(c.isspace() for c in value)


def _server(value: Any) -> str:
    if not _is_server(value):
        raise ValueError(f"a server name without spaces, at most {NAME_MAX} characters")
    return str(value)


KEYS: dict[str, Callable[[Any], Any]] = {
    "name": _server,
    "partner": _server,
    "links": lambda v: v,  # checked below, table by table
    "preferred": _server,
    "heartbeat_interval": _seconds,
    "timeout": _seconds,
    "first_active_change_interval": _seconds,
    "manager_weight": _weight,
    "link_weight": _weight,
    "error_state_delay": _seconds,
    "hold_down": _seconds,
    "pmon_timeout": _seconds,
    "pmon_weight": _weight,
    "fence_grace": _seconds,
    "self_fence": _seconds,
    "witness": lambda v: v,  # checked below (_witness)
    "group": lambda v: v,  # checked below (_group)
}
LINK_KEYS: dict[str, Callable[[Any], Any]] = {"local": _address, "partner": _address}


def parse(data: Mapping[str, Any], path: Path, errors: "_Errors") -> RedundancySpec | None:
    table = data.get("redundancy")
    if table is None:
        return None
    if not isinstance(table, dict):
        errors.add("[redundancy]", "expected a table ([redundancy])")
        return None
    errors.unknown_keys("[redundancy]", table, KEYS)
    values = errors.convert("[redundancy]", table, KEYS)
    if "group" in table:
        return _group(table, values, errors)
    for key in ("name", "partner", "links"):
        if key not in table:
            errors.add(f"[redundancy], key '{key}'", _MISSING[key])
    links = []
    raw_links = table.get("links", [])
    if not isinstance(raw_links, list) or not 1 <= len(raw_links) <= 2 or not all(
        isinstance(t, dict) for t in raw_links
    ):
        if "links" in table:
            errors.add("[redundancy], key 'links'", _MISSING["links"])
        raw_links = []
    for i, link in enumerate(raw_links, start=1):
        where = f"[[redundancy.links]] #{i}"
        errors.unknown_keys(where, link, LINK_KEYS)
        converted = errors.convert(where, link, LINK_KEYS)
        for key in LINK_KEYS:
            if key not in link:
                errors.add(f"{where}, key '{key}'", 'missing; e.g. local = "127.0.0.1:7101"')
        if len(converted) == 2:
            links.append(Link(converted["local"], converted["partner"]))
    name, partner = values.get("name"), values.get("partner")
    if name and name == partner:
        errors.add("[redundancy], key 'partner'", "must differ from name (this server)")
    preferred = values.get("preferred") or (min(name, partner) if name and partner else "")
    if name and partner and preferred not in (name, partner):
        errors.add("[redundancy], key 'preferred'", f"must be '{name}' or '{partner}'")
    interval, timeout = _check_times(values, errors)
    self_fence = values.get("self_fence", default_self_fence(timeout))
    if not interval < self_fence < timeout - SELF_FENCE_MARGIN:
        where = "self_fence" if "self_fence" in values else "timeout"
        errors.add(f"[redundancy], key '{where}'", _self_fence_problem(interval, timeout, self_fence))
    if len({link.local for link in links}) < len(links):
        errors.add("[redundancy], key 'links'", "two links share a local address")
    witness = _witness(table["witness"], values.get("fence_grace", RedundancySpec.fence_grace),
                       timeout, name, errors) if "witness" in table else None
    if not (name and partner and links) or errors.lines:
        return None
    return RedundancySpec(
        name=name, partner=partner, links=tuple(links), preferred=preferred,
        heartbeat_interval=interval, timeout=timeout,
        first_active_change_interval=values.get(
            "first_active_change_interval", RedundancySpec.first_active_change_interval),
        manager_weight=values.get("manager_weight", RedundancySpec.manager_weight),
        link_weight=values.get("link_weight", RedundancySpec.link_weight),
        **{key: values[key] for key in ("error_state_delay", "hold_down", "pmon_timeout",
                                        "pmon_weight", "fence_grace") if key in values},
        witness=witness, self_fence_after=values.get("self_fence", 0.0),
    )


def _check_times(values: Mapping[str, Any], errors: "_Errors") -> tuple[float, float]:
    """The heartbeat's and pmon's timing keys (a pair's and a group's); (interval, timeout)."""
    interval = values.get("heartbeat_interval", RedundancySpec.heartbeat_interval)
    timeout = values.get("timeout", RedundancySpec.timeout)
    if "heartbeat_interval" in values and interval <= 0:
        errors.add("[redundancy], key 'heartbeat_interval'", "must be > 0")
    if timeout <= interval:
        errors.add("[redundancy], key 'timeout'",
                   f"must be longer than heartbeat_interval ({interval:g} s), e.g. 3 intervals")
    pmon_timeout = values.get("pmon_timeout", RedundancySpec.pmon_timeout)
    if pmon_timeout < 2 * SYNC_IDLE:
        errors.add("[redundancy], key 'pmon_timeout'",
                   f"must be at least {2 * SYNC_IDLE:g} s (two idle syncs with pmon)")
    return interval, timeout


def _self_fence_problem(interval: float, timeout: float, self_fence: float) -> str:
    """Why `self_fence` cannot hold: it must outlast a heartbeat interval (the redundancy
    manager beats once per heartbeat, at least) and end, with its kill, before `timeout`."""
    room = f"between heartbeat_interval ({interval:g} s) and timeout - {SELF_FENCE_MARGIN:g} s " \
           f"({timeout - SELF_FENCE_MARGIN:g} s)"
    return (f"the self-fence after {self_fence:g} s of silence of the redundancy manager cannot "
            f"hold: it must lie {room}, so that it ends, with the SIGKILL that follows it, before "
            "the partner may take the role by failure (timeout); set self_fence in that range, "
            "or a longer timeout")


WITNESS_KEYS = ("etcd", "ttl", "key")


def _witness(value: Any, fence_grace: float, timeout: float, name: str | None,
             errors: "_Errors") -> WitnessSpec | None:
    where = "[redundancy], key 'witness'"
    example = ('e.g. witness = { etcd = ["http://127.0.0.1:2379"], ttl = 6, '
               'key = "/pmon/PROJECT/active" }')
    if not isinstance(value, dict):
        errors.add(where, f"expected an inline table; {example}")
        return None
    bad = False
    for key in value:
        if key not in WITNESS_KEYS:
            errors.add(f"{where}, key '{key}'", f"unknown; the witness takes {', '.join(WITNESS_KEYS)}")
            bad = True
    urls = value.get("etcd")
    if not isinstance(urls, list) or not urls or not all(
            isinstance(u, str) and u.startswith(("http://", "https://")) and len(u) > 8 for u in urls):
        errors.add(f"{where}, key 'etcd'", f"expected a list of etcd client URLs; {example}")
        bad = True
    ttl = value.get("ttl", int(WitnessSpec.ttl))
    minimum = max(2.0, 2 * (fence_grace + 1))
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < minimum:
        errors.add(f"{where}, key 'ttl'",
                   f"expected whole seconds, at least {minimum:g} (2 x (fence_grace + 1): the "
                   "lease counts lost at half the TTL, then the fence must end before etcd "
                   "lets it expire)")
        bad = True
    elif ttl / 2 <= timeout:
        # A frozen holder's last renewal may be up to ttl / 2 old (older, and it had fenced
        # already); its pmon's self-fence ends within `timeout` of the freeze.
        errors.add(f"{where}, key 'ttl'",
                   f"must be more than 2 x timeout ({2 * timeout:g} s): the self-fence of a "
                   "frozen lease holder ends within timeout of its freeze, and its last renewal "
                   "may be ttl / 2 old by then; the lease must not expire (and go to the "
                   "partner) before that")
        bad = True
    key = value.get("key")
    if not isinstance(key, str) or not key.strip():
        errors.add(f"{where}, key 'key'",
                   "expected the etcd key both servers compete for, the same on both, "
                   'e.g. key = "/pmon/PROJECT/active"')
        bad = True
    if bad or not name:
        return None
    assert isinstance(urls, list)
    return WitnessSpec(etcd=tuple(u.rstrip("/") for u in urls), key=key, ttl=float(ttl))


GROUP_EXAMPLE = ('e.g. group = ["a", "b", "c"] with name = "a" and witness = { etcd = '
                 '["http://127.0.0.1:2379"], key = "/pmon/PROJECT/active" }')


def _group(table: Mapping[str, Any], values: Mapping[str, Any], errors: "_Errors") -> RedundancySpec | None:
    """`group = [...]`: three or more servers arbitrated through the witness alone (no links,
    no partner: every member talks to etcd only)."""
    where = "[redundancy], key 'group'"
    raw = table["group"]
    members: tuple[str, ...] = ()
    if not isinstance(raw, list) or len(raw) < 3 or not all(_is_server(m) for m in raw):
        errors.add(where, "expected a list of three or more server names without spaces, at "
                          f"most {NAME_MAX} characters each (a pair takes partner and links "
                          f"instead); {GROUP_EXAMPLE}")
    elif len(set(raw)) < len(raw):
        errors.add(where, "names a server twice; list each member once")
    else:
        members = tuple(raw)
    name = values.get("name")
    if "name" not in table:
        errors.add("[redundancy], key 'name'", f"missing; this server's name, one of group; {GROUP_EXAMPLE}")
    elif members and name not in members:
        errors.add("[redundancy], key 'name'",
                   f"'{name}' is not in group ({', '.join(members)}); add it there or fix name")
    if "self_fence" in table:
        errors.add("[redundancy], key 'self_fence'",
                   "not with group: a group's pmon stops its drivers when its redundancy "
                   "manager has not synced for pmon_timeout; remove self_fence")
    for key in ("partner", "links"):
        if key in table:
            errors.add(f"[redundancy], key '{key}'",
                       "not with group: the members of a group talk through the witness (etcd) "
                       f"only; remove {key}, or remove group for a pair")
    preferred = values.get("preferred") or (members[0] if members else "")
    if members and preferred not in members:
        errors.add("[redundancy], key 'preferred'",
                   f"must be one of group ({', '.join(members)}); by default the first of group")
    if "witness" not in table:
        errors.add("[redundancy], key 'witness'",
                   "required with group: a group decides who is active through etcd; add "
                   'witness = { etcd = ["http://HOST:2379"], key = "/pmon/PROJECT/active" }')
    fence_grace = values.get("fence_grace", RedundancySpec.fence_grace)
    _interval, timeout = _check_times(values, errors)
    witness = _witness(table["witness"], fence_grace, timeout, name, errors) \
        if "witness" in table else None
    pmon_timeout = values.get("pmon_timeout", RedundancySpec.pmon_timeout)
    if witness is not None and pmon_timeout + fence_grace + 1 > witness.ttl:
        errors.add("[redundancy], key 'witness'",
                   f"ttl must be at least pmon_timeout + fence_grace + 1 "
                   f"({pmon_timeout + fence_grace + 1:g} s) in a group: pmon stops the drivers "
                   "of a silent redundancy manager before its lease can expire")
    if errors.lines or witness is None or not members or not name:
        return None
    return RedundancySpec(
        name=name, partner="", links=(), preferred=preferred, group=members, witness=witness,
        **{key: values[key] for key in (
            "heartbeat_interval", "timeout", "first_active_change_interval", "manager_weight",
            "link_weight", "error_state_delay", "hold_down", "pmon_timeout", "pmon_weight",
            "fence_grace") if key in values})


_MISSING = {
    "name": 'missing; this server\'s name, e.g. name = "a"',
    "partner": 'missing; the partner server\'s name, e.g. partner = "b"',
    "links": 'expected one or two [[redundancy.links]] tables with local = "HOST:PORT" '
             'and partner = "HOST:PORT"',
}


def check_managers(
    managers: tuple["ManagerSpec", ...], spec: RedundancySpec | None, path: Path,
    errors: "_Errors",
) -> tuple["ManagerSpec", ...]:
    """Check the redundancy-related manager keys; add the redundancy manager if missing."""
    from pmon.config import ManagerSpec

    for m in managers:
        where = f"manager '{m.name}' (managers[{m.index}])"
        if m.run_on == "active" and m.core:
            errors.add(f"{where}, key 'run_on'",
                       'a core manager runs on both servers; remove run_on = "active"')
    if spec is None or any(m.redundancy for m in managers):
        return managers
    if any(m.name == AUTO_NAME for m in managers):
        errors.add(f"manager '{AUTO_NAME}'",
                   "this name is taken by the redundancy manager pmon adds for [redundancy]; "
                   "mark this manager redundancy = true or rename it")
        return managers
    auto = ManagerSpec(
        name=AUTO_NAME,
        command=(sys.executable, "-m", "pmon.redundancy", "-c", str(path)),
        index=len(managers) + 1, start=StartType.ALWAYS, core=True, redundancy=True,
        ready=Readiness.NOTIFY, start_timeout=max(spec.timeout, TIMING_MAX) + 10, seconds_to_kill=5.0,
        cwd=path.parent,
    )
    return (*managers, auto)


def release_bound(seconds_to_kill: Iterable[float], spec: RedundancySpec) -> float:
    """How long a handover waits for pmon to report the run_on = "active" managers stopped
    (docs/redundancy.md "Fencing"): the longest of their seconds_to_kill + pmon_timeout.
    pmon sends it at every sync, so a reload that changes seconds_to_kill counts."""
    return max(seconds_to_kill, default=0.0) + spec.pmon_timeout


def judged_errors(mine: Mapping[str, float], theirs: Mapping[str, float]) -> tuple[float, float]:
    """Both error states judged by the same evidence: a link that either side counts down
    would weigh on both alike (the links are the pair's, not one server's), so links cancel
    out of every comparison and are left out: a datagram lost on one side only never makes
    the two differ, and a forced choice does not record (and is not overruled by) a link's
    blink. Link sources are named "link N"; the full error states are still shown.
    Here (a base module), not in arbitration.py: pmon's `stop` guard predicts the
    arbitration with it."""
    def own(breakdown: Mapping[str, float]) -> float:
        return sum(v for k, v in breakdown.items() if not k.startswith("link "))
    return own(mine), own(theirs)
