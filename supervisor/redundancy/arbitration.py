"""Who is active: the pair's arbitration as a small pure state machine (no I/O, no clock).

Everything that decides this server's role lives here. The redundancy manager feeds an
`Arbiter` what it knows at time `now` (this server's error state and availability, the
partner's last heartbeat or None when no link has heard it within the timeout) and gets a
`Decision` back; it never changes the role by itself. Both servers run the same code on
(nearly) the same data, so they reach the same answer.

The priorities, highest first (DESIGN.md "How the pair decides who is active"):
1. failure: no heartbeat on any link -> this server becomes active (both do: split brain);
2. forced: an operator's set-active names the server to be active, whatever the errors;
3. error state: the lower one is active;
4. preference: with equal error states, the preferred server is active.

How the two sides agree without a third party: the active side hands over (goes passive)
only when both sides name the partner as the target, and a passive side becomes active only
when the partner is passive too (or gone) and both name it. So while a link is up, two
actives can only arise from views that changed at the same instant; they are resolved at the
next heartbeat like a split brain, without a project restart (nothing diverged).

A forced choice is a one-time switch: it holds while both error states stay what they were
when it was given; any change of either (a new fault, a repair) hands the decision back to
priorities 3 and 4. Operator choices (forced, preferred) carry a sequence number; each side
adopts the newer one it hears, so a choice made on either server reaches both.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace


class Role(str, enum.Enum):
    ACTIVE = "active"
    PASSIVE = "passive"

    def __str__(self) -> str:
        return self.value


class Reason(str, enum.Enum):
    START = "start"                  # first decision of a server that found its partner
    FAILURE = "failure"              # priority 1: partner gone
    FORCED = "forced"                # priority 2: set-active
    ERROR_STATE = "error state"      # priority 3
    PREFERENCE = "preference"        # priority 4
    SPLIT_BRAIN = "split-brain resolution"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Choice:
    """An operator's choice of server. Newer (higher seq, then name) wins on both sides.

    `errors` (forced only): both error states when it was given, as sorted (name, error).
    """

    server: str
    seq: int = 0
    errors: tuple[tuple[str, float], ...] = ()

    def newer_than(self, other: "Choice | None") -> bool:
        return other is None or (self.seq, self.server) > (other.seq, other.server)


def newest(*choices: "Choice | None") -> "Choice | None":
    best: Choice | None = None
    for choice in choices:
        if choice is not None and choice.newer_than(best):
            best = choice
    return best


@dataclass(frozen=True)
class Local:
    """What this server knows of itself."""

    error: float
    available: bool  # project fully started, no blocked manager


@dataclass(frozen=True)
class Partner:
    """The partner's last heartbeat (valid, not stale)."""

    name: str
    role: Role | None  # None: still deciding (starting)
    error: float
    available: bool
    target: str | None  # whom the partner thinks should be active
    epoch: int = 0
    forced: Choice | None = None
    preferred: Choice | None = None
    boot: str = ""  # one run of the partner's redundancy manager


@dataclass(frozen=True)
class Decision:
    role: Role | None           # None: still waiting for the partner at start-up
    changed: bool = False       # the role differs from the previous step's
    reason: Reason | None = None
    restart_project: bool = False  # lost a split brain: the project diverged, restart it
    target: str | None = None   # whom this side thinks should be active (sent to the partner)


@dataclass
class Arbiter:
    me: str
    partner: str
    preferred: Choice
    first_active_change_interval: float = 0.0
    startup_wait: float = 1.0  # how long a starting server listens before claiming failure
    # After contact returns, views are stale for a heartbeat or two (each side counts its
    # links as down until it hears the partner on them): decisions that compare error
    # states wait this long (about two heartbeat intervals).
    reconnect_settle: float = 0.0
    role: Role | None = None
    epoch: int = 0
    forced: Choice | None = None
    started_at: float | None = None
    contact: bool = False
    reconnected_at: float | None = None  # end of the last connection error
    alone: bool = False  # active while out of contact: a split brain may have diverged
    partner_boot: str = ""
    last_reason: Reason | None = field(default=None)

    # --- the target: who should be active, by priorities 2..4 ------------------------
    def forced_in_force(self, local: Local, partner: Partner | None) -> Choice | None:
        """The forced choice, while both error states are what they were when it was given."""
        if self.forced is None or partner is None:
            return None
        errors = {self.me: local.error, partner.name: partner.error}
        return self.forced if self.forced.errors == _errors_key(errors) else None

    def target(self, local: Local, partner: Partner) -> tuple[str, Reason]:
        errors = {self.me: local.error, partner.name: partner.error}
        forced = self.forced_in_force(local, partner)
        if forced is not None:
            return forced.server, Reason.FORCED
        available = [n for n in (self.me, partner.name) if {self.me: local.available,
                                                              partner.name: partner.available}[n]]
        if len(available) == 1:
            return available[0], Reason.ERROR_STATE
        if local.error != partner.error:
            lower = self.me if local.error < partner.error else partner.name
            return lower, Reason.ERROR_STATE
        if self.preferred.server in errors:
            return self.preferred.server, Reason.PREFERENCE
        return min(errors), Reason.PREFERENCE

    def force(self, server: str, local: Local, partner: Partner | None) -> Choice:
        """An operator's set-active (on this server); returns the choice to send."""
        seq = max(c.seq for c in (self.forced, self.preferred, _c(partner, "forced"),
                                  _c(partner, "preferred")) if c is not None) + 1
        errors = {self.me: local.error}
        if partner is not None:
            errors[partner.name] = partner.error
        self.forced = Choice(server, seq, _errors_key(errors))
        return self.forced

    def prefer(self, server: str, partner: Partner | None = None) -> Choice:
        seq = max(c.seq for c in (self.forced, self.preferred, _c(partner, "forced"),
                                  _c(partner, "preferred")) if c is not None) + 1
        self.preferred = Choice(server, seq)
        return self.preferred

    # --- one step ----------------------------------------------------------------------
    def step(self, now: float, local: Local, partner: Partner | None) -> Decision:
        if self.started_at is None:
            self.started_at = now
        before = self.role
        if partner is None:
            decision = self._alone(now)
        else:
            decision = self._together(now, local, partner)
        changed = decision.role is not before and decision.role is not None
        if changed:
            if decision.role is Role.ACTIVE:
                self.epoch = max(self.epoch, partner.epoch if partner else 0) + 1
            self.last_reason = decision.reason
        self.role = decision.role
        return replace(decision, changed=changed)

    def _alone(self, now: float) -> Decision:
        if self.contact:
            self.contact = False
        if self.role is Role.ACTIVE:
            self.alone = True
            return Decision(Role.ACTIVE, reason=self.last_reason)
        assert self.started_at is not None
        if self.role is None and now - self.started_at < self.startup_wait:
            return Decision(None)  # start-up: listen a little before claiming failure
        self.alone = True
        return Decision(Role.ACTIVE, reason=Reason.FAILURE)  # priority 1

    def _together(self, now: float, local: Local, partner: Partner) -> Decision:
        restarted = partner.boot != self.partner_boot and self.partner_boot != ""
        self.partner_boot = partner.boot
        if not self.contact or restarted:
            self.contact = True
            if self.role is not None:  # contact back after a connection error (or a restart)
                self.reconnected_at = now
        self.epoch = max(self.epoch, partner.epoch)  # one epoch for the pair
        self.forced = newest(self.forced, partner.forced)
        self.preferred = newest(self.preferred, partner.preferred) or self.preferred
        target, reason = self.target(local, partner)
        agreed = partner.target == target

        if self.role is Role.ACTIVE and partner.role is Role.ACTIVE:
            # Two actives: the higher error state loses; ties: the one not preferred.
            if self.reconnected_at is not None and now - self.reconnected_at < self.reconnect_settle:
                return Decision(Role.ACTIVE, reason=self.last_reason, target=target)
            loser = self._loser(local, partner)
            if loser == self.me:
                diverged, self.alone = self.alone, False
                return Decision(Role.PASSIVE, reason=Reason.SPLIT_BRAIN if diverged else reason,
                                restart_project=diverged, target=target)
            return Decision(Role.ACTIVE, reason=self.last_reason, target=target)

        self.alone = False
        if self.role is Role.ACTIVE:
            ready = partner.available or reason is Reason.FORCED
            if target == partner.name and agreed and ready and not self._settling(now, reason):
                return Decision(Role.PASSIVE, reason=reason, target=target)  # hand over
            return Decision(Role.ACTIVE, reason=self.last_reason, target=target)

        if partner.role is Role.ACTIVE:
            return Decision(Role.PASSIVE, reason=self.last_reason or Reason.START, target=target)
        # Nobody is active: the target takes over once both sides name it.
        if target == self.me and agreed:
            return Decision(Role.ACTIVE, reason=reason if self.role is not None else Reason.START,
                            target=target)
        return Decision(Role.PASSIVE if self.role is not None or partner.role is not None
                        else None, reason=self.last_reason, target=target)

    def _loser(self, local: Local, partner: Partner) -> str:
        if local.error != partner.error:
            return self.me if local.error > partner.error else partner.name
        preferred = self.preferred.server if self.preferred.server in (self.me, partner.name) \
            else min(self.me, partner.name)
        return partner.name if preferred == self.me else self.me

    def _settling(self, now: float, reason: Reason) -> bool:
        """first_active_change_interval: no switch by priority 3/4 right after a connection error."""
        if reason is Reason.FORCED or self.reconnected_at is None:
            return False
        delay = max(self.first_active_change_interval, self.reconnect_settle)
        return now - self.reconnected_at < delay


def _errors_key(errors: dict[str, float]) -> tuple[tuple[str, float], ...]:
    return tuple(sorted(errors.items()))


def _c(partner: Partner | None, attr: str) -> Choice | None:
    return getattr(partner, attr) if partner is not None else None
