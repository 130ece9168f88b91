"""Who is active in a group of three or more servers: one pure decision (no I/O, no clock).

A group's members talk through etcd only (docs/redundancy.md "Groups of three or more"):
each keeps a record there (error state, availability, whether its pmon answers), and the
active one holds the leader key. Every member runs `decide` on the same records, so all
agree on the answer; but only two kinds of member act on it, which keeps a fault to one
switchover:
- while a leader holds the key, only the leader moves the role (a planned handover to the
  `target`, after a change of error states has lasted `error_state_delay`);
- while nobody holds it (the leader's lease expired: failure), only the `target` takes it.

The priorities, highest first (the pair's, DESIGN.md):
1. failure: no leader -> the best member takes the key at once (3 and 4 choose it; a forced
   choice still in force chooses its server);
2. forced: an operator's set-active names a member; the leader hands over at once. It ends
   as the pair's does: overruled by the first change of the error state of a member that was
   there when it was given, or by a failure of the forced member (its record gone, or its
   pmon silent);
3. error state: lower wins; a member that is not available (project not fully started,
   blocked managers) ranks after every available one;
4. preference: `preference` order (the config's `preferred` first, then `group` order).

Damping (3 and 4 only): the same better member must have been the answer for
`error_state_delay`; after an automatic switchover (by error state or preference), the
next waits until `hold_down` after it; a member that joined (a new boot) less than
`first_active_change_interval` ago is not handed the role by 3 or 4.

A member whose pmon does not answer (`can_act` false) is never chosen: it could not start
its drivers (nor stop them: the daemon fences it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

FAILURE, FORCED, ERROR_STATE, PREFERENCE = "failure", "forced", "error state", "preference"
AUTOMATIC = frozenset({ERROR_STATE, PREFERENCE})  # hold_down follows these (as for the pair)


@dataclass(frozen=True)
class Member:
    name: str
    error: float = 0.0       # its error state (a group has no links: nothing to leave out)
    available: bool = True   # project fully started, no blocked manager, pmon answers
    can_act: bool = True     # its pmon answers
    joined: float = 0.0      # when this boot of it was first seen (the deciding side's clock)


@dataclass(frozen=True)
class Forced:
    server: str
    errors: tuple[tuple[str, float], ...]  # every member's error state when it was given
    ended: str = ""                        # "" while in force; "overruled" / "failure"


@dataclass(frozen=True)
class Situation:
    """What a member knows at `now` (its own clock)."""

    now: float
    members: Mapping[str, Member]          # the live records (their leases not expired)
    leader: str | None                     # who holds the leader key (None: nobody)
    preference: Sequence[str]
    forced: Forced | None = None
    pending: tuple[str, float] | None = None  # the better member, and since when (damping)
    switched_at: float | None = None          # the leader's last automatic switchover
    error_state_delay: float = 1.0
    hold_down: float = 5.0
    first_active_change_interval: float = 5.0


@dataclass(frozen=True)
class Verdict:
    target: str | None                        # who should be active now
    reason: str                               # why, when target is not the leader ("" else)
    forced_ended: str = ""                    # the forced choice ends now, for this reason
    pending: tuple[str, float] | None = None  # carry into the next Situation
    due: float | None = None                  # when the pending change may fire


def ranking(members: Mapping[str, Member], preference: Sequence[str]) -> list[str]:
    """The members that can act, best first: available, lower error state, preferred."""
    order = {name: i for i, name in enumerate(preference)}
    return sorted((m.name for m in members.values() if m.can_act),
                  key=lambda n: (not members[n].available, members[n].error,
                                 order.get(n, len(order)), n))


def forced_end(forced: Forced | None, members: Mapping[str, Member]) -> str:
    """Why a forced choice in force ends now ("" : it holds)."""
    if forced is None or forced.ended:
        return ""
    server = members.get(forced.server)
    if server is None or not server.can_act:
        return "failure"
    if any(name in members and members[name].error != error for name, error in forced.errors):
        return "overruled"
    return ""


def decide(s: Situation) -> Verdict:
    ended = forced_end(s.forced, s.members)
    forced = s.forced.server if s.forced and not s.forced.ended and not ended else None
    best = ranking(s.members, s.preference)
    if s.leader is None or s.leader not in s.members:  # priority 1 (and start)
        target = forced or (best[0] if best else None)
        return Verdict(target, FAILURE if target else "", ended)
    if forced is not None:  # priority 2
        return Verdict(forced, "" if forced == s.leader else FORCED, ended)
    if not best or best[0] == s.leader:
        return Verdict(s.leader, "", ended)
    candidate, leader = s.members[best[0]], s.members[s.leader]
    better = not leader.can_act or (  # (a leader whose pmon is silent fences itself too)
        (not candidate.available, candidate.error) < (not leader.available, leader.error))
    reason = ERROR_STATE if better else PREFERENCE
    since = s.pending[1] if s.pending and s.pending[0] == candidate.name else s.now
    due = max(since + s.error_state_delay, candidate.joined + s.first_active_change_interval)
    if s.switched_at is not None:
        due = max(due, s.switched_at + s.hold_down)
    pending = (candidate.name, since)
    if s.now >= due:
        return Verdict(candidate.name, reason, ended, pending, due)
    return Verdict(s.leader, "", ended, pending, due)
