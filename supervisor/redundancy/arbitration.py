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
when it was given; the first change of either (a new fault, a repair) ends it for good
(`ended = "overruled"`), and so does a failure or restart of the forced server ("failure",
"restart"). An ended choice stays, so that both sides know it ended and neither revives it.
Operator choices (forced, preferred) carry a sequence number; each side adopts the newer one
it hears (an ended copy is newer than the live one), so a choice made on either server
reaches both.

Damping (priorities 3 and 4 only; failure and forced are never delayed): the outcome of the
comparison of the two error states (and availabilities) must have held `error_state_delay`
before it moves the role; after an automatic switchover, an outcome that changed after it
waits until `hold_down` has passed since that switchover (a hold-down, as routing protocols
damp a flapping route). Both sides judge links by the same evidence: the daemon passes error
states in which links, which would weigh on both sides alike, are left out (`judged_errors`,
in settings.py).

Dual active: a server that hears its partner claim "active" while it is active itself
resolves it at once (after the short settle that follows a reconnection): the higher error
state loses, ties the one not preferred; but when the partner does not hear this server at
all (a one-way partition), this server loses, since it is the only one that can act. The
loser restarts its project when either side was alone meanwhile (both ran the drivers).

With a witness (docs/redundancy.md "The witness"), being active needs the witness's lease
(`Local.lease`): a decision to become active waits for it (`Decision.wants_lease` asks the
daemon to get it), and an active side that lost it (and is not in failsafe) goes passive,
reason "fenced", once the daemon has fenced its run_on = "active" managers.

A server whose pmon does not answer cannot act (`Local.can_act`): it never becomes active,
and an active one goes passive (reason "fenced") once the daemon has stopped its
`run_on = "active"` managers. A partner that last said it was fencing is given
`fence_bound` before this side claims the role by failure; a passive partner that says it
is fencing (its drivers are still stopping after a handover: the release) is never
replaced while it is heard.
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
    FENCED = "fenced"                # this server's pmon stopped answering

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
    at: float = 0.0          # wall clock when given (for people)
    by: str = ""             # who gave it, e.g. "uid 0 on a"
    ended: str = ""          # why it ended: "overruled", "failure", "restart"; "" in force
    ended_at: float = 0.0

    def newer_than(self, other: "Choice | None") -> bool:
        return other is None or (self.seq, bool(self.ended), self.server) > (
            other.seq, bool(other.ended), other.server)

    def end(self, why: str, at: float) -> "Choice":
        return self if self.ended else replace(self, ended=why, ended_at=at)


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
    can_act: bool = True  # pmon answers (False: it cannot start or stop managers)
    lease: bool = True  # holds the witness's lease (always True without a witness)
    movable: bool = True  # the role can be handed over (False: the witness is unreachable,
                          # the partner could not take the lease: no switchover by 2..4)


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
    hears: bool = True  # the partner hears this server on some link
    fencing: bool = False  # the partner is stopping its run_on = "active" managers


@dataclass(frozen=True)
class Decision:
    role: Role | None           # None: still waiting for the partner at start-up
    changed: bool = False       # the role differs from the previous step's
    reason: Reason | None = None
    restart_project: bool = False  # lost a split brain: the project diverged, restart it
    target: str | None = None   # whom this side thinks should be active (sent to the partner)
    wants_lease: bool = False   # would be active, but waits for the witness's lease


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
    error_state_delay: float = 0.0
    hold_down: float = 0.0
    fence_bound: float = 0.0
    wall: float = 0.0  # the wall clock of the current step (for a choice's ended_at)
    partner_fencing_at: float | None = None
    _outcome: tuple[object, ...] | None = None  # the comparison of errors and availability
    _outcome_since: float = 0.0
    # the last step held the role back (a change of the error states not lasted long enough
    # yet): a later step with the same inputs may move it, so the daemon may not skip one
    waiting: bool = False
    _auto_switch_at: float | None = None  # the last switchover by priority 3 or 4

    # --- the target: who should be active, by priorities 2..4 ------------------------
    def forced_in_force(self, local: Local, partner: Partner | None) -> Choice | None:
        """The forced choice, while both error states are what they were when it was given."""
        if self.forced is None or self.forced.ended or partner is None:
            return None
        errors = {self.me: local.error, partner.name: partner.error}
        return self.forced if self.forced.errors == _errors_key(errors) else None

    def _end_forced(self, why: str, server: str | None = None) -> None:
        if self.forced is not None and not self.forced.ended and server in (None, self.forced.server):
            self.forced = self.forced.end(why, self.wall)

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

    def force(self, server: str, local: Local, partner: Partner | None, by: str = "",
              at: float = 0.0) -> Choice:
        """An operator's set-active (on this server); returns the choice to send."""
        seq = max(c.seq for c in (self.forced, self.preferred, _c(partner, "forced"),
                                  _c(partner, "preferred")) if c is not None) + 1
        errors = {self.me: local.error}
        if partner is not None:
            errors[partner.name] = partner.error
        self.forced = Choice(server, seq, _errors_key(errors), at=at, by=by)
        return self.forced

    def prefer(self, server: str, partner: Partner | None = None) -> Choice:
        seq = max(c.seq for c in (self.forced, self.preferred, _c(partner, "forced"),
                                  _c(partner, "preferred")) if c is not None) + 1
        self.preferred = Choice(server, seq)
        return self.preferred

    # --- one step ----------------------------------------------------------------------
    def step(self, now: float, local: Local, partner: Partner | None, wall: float = 0.0) -> Decision:
        if self.started_at is None:
            self.started_at = now
        self.wall = wall
        self.waiting = False
        before, alone = self.role, self.alone
        if partner is None:
            decision = self._alone(now, local)
        else:
            decision = self._together(now, local, partner)
        if decision.role is Role.ACTIVE and not local.lease:
            # The witness: being active needs its lease. Becoming active waits for it; an
            # active side without it (and not in failsafe, which the daemon decides and
            # passes as lease=True) has been fenced by the daemon and goes passive.
            if before is Role.ACTIVE:
                decision = Decision(Role.PASSIVE, reason=Reason.FENCED, target=decision.target)
            else:
                self.alone = alone  # not active: nothing diverged
                # At start, the lease comes in a round trip to etcd: stay undecided that
                # long, so the first role is "active (start)", not "passive" and then a
                # switchover by preference (a false event, a general query, a hold-down).
                assert self.started_at is not None
                first = before is None and now - self.started_at < 2 * self.startup_wait
                decision = Decision(None if first else Role.PASSIVE,
                                    reason=None if first else self.last_reason or Reason.START,
                                    target=decision.target, wants_lease=True)
        changed = decision.role is not before and decision.role is not None
        if changed:
            if decision.role is Role.ACTIVE:
                self.epoch = max(self.epoch, partner.epoch if partner else 0) + 1
            self.last_reason = decision.reason
            if decision.reason in (Reason.ERROR_STATE, Reason.PREFERENCE):
                self._auto_switch_at = now
        self.role = decision.role
        return replace(decision, changed=changed)

    def _alone(self, now: float, local: Local) -> Decision:
        if self.contact:
            self.contact = False
            self._end_forced("failure", self.partner)  # the forced server failed
        if not local.can_act:  # pmon does not answer: this server cannot drive anything
            if self.role is Role.ACTIVE:
                return Decision(Role.PASSIVE, reason=Reason.FENCED)
            return Decision(self.role, reason=self.last_reason)
        if self.role is Role.ACTIVE:
            self.alone = True
            return Decision(Role.ACTIVE, reason=self.last_reason)
        assert self.started_at is not None
        if self.role is None and now - self.started_at < self.startup_wait:
            return Decision(None)  # start-up: listen a little before claiming failure
        if self.partner_fencing_at is not None and now - self.partner_fencing_at < self.fence_bound:
            return Decision(self.role, reason=self.last_reason)  # its fence is not done yet
        self.alone = True
        return Decision(Role.ACTIVE, reason=Reason.FAILURE)  # priority 1

    def _together(self, now: float, local: Local, partner: Partner) -> Decision:
        restarted = partner.boot != self.partner_boot and self.partner_boot != ""
        self.partner_boot = partner.boot
        self.forced = newest(self.forced, partner.forced)
        if restarted:
            self._end_forced("restart", partner.name)  # the forced server restarted
        if not self.contact or restarted:
            self.contact = True
            if self.role is not None:  # contact back after a connection error (or a restart)
                self.reconnected_at = now
        self.partner_fencing_at = now if partner.fencing else None
        self.epoch = max(self.epoch, partner.epoch)  # one epoch for the pair
        self.preferred = newest(self.preferred, partner.preferred) or self.preferred
        if self.forced is not None and not self.forced.ended and \
                self.forced_in_force(local, partner) is None:
            self._end_forced("overruled")  # an error state changed: back to priorities 3, 4
        target, reason = self._damped(now, local, partner)
        agreed = partner.target == target

        if self.role is Role.ACTIVE and not local.can_act:
            return Decision(Role.PASSIVE, reason=Reason.FENCED, target=target)

        if self.role is Role.ACTIVE and partner.role is Role.ACTIVE:
            # Two actives: the higher error state loses; ties: the one not preferred; but a
            # partner that does not hear this server cannot yield: this one does.
            if self.reconnected_at is not None and now - self.reconnected_at < self.reconnect_settle:
                return Decision(Role.ACTIVE, reason=self.last_reason, target=target)
            loser = self._loser(local, partner) if partner.hears else self.me
            if loser == self.me:
                diverged = self.alone or not partner.hears
                self.alone = False
                return Decision(Role.PASSIVE, reason=Reason.SPLIT_BRAIN if diverged else reason,
                                restart_project=diverged, target=target)
            return Decision(Role.ACTIVE, reason=self.last_reason, target=target)

        self.alone = False
        if self.role is Role.ACTIVE:
            ready = partner.available or reason is Reason.FORCED
            if target == partner.name and agreed and ready and local.movable and \
                    not self._settling(now, reason):
                return Decision(Role.PASSIVE, reason=reason, target=target)  # hand over
            return Decision(Role.ACTIVE, reason=self.last_reason, target=target)

        if not local.can_act:
            return Decision(Role.PASSIVE if self.role is not None or partner.role is not None
                            else None, reason=self.last_reason, target=target)
        if partner.role is Role.ACTIVE:
            return Decision(Role.PASSIVE, reason=self.last_reason or Reason.START, target=target)
        if partner.fencing:  # handed over, but its drivers are still stopping: not yet
            return Decision(Role.PASSIVE if self.role is not None or partner.role is not None
                            else None, reason=self.last_reason, target=target)
        # Nobody is active: the target takes over once both sides name it.
        if target == self.me and agreed:
            return Decision(Role.ACTIVE, reason=reason if self.role is not None else Reason.START,
                            target=target)
        return Decision(Role.PASSIVE if self.role is not None or partner.role is not None
                        else None, reason=self.last_reason, target=target)

    def _damped(self, now: float, local: Local, partner: Partner) -> tuple[str, Reason]:
        """The target, but a change of the error states moves the role only once it has
        lasted error_state_delay, and (after an automatic switchover) hold_down."""
        target, reason = self.target(local, partner)
        outcome = (_sign(local.error - partner.error), local.available, partner.available,
                   local.can_act)
        if outcome != self._outcome:
            self._outcome, self._outcome_since = outcome, now
        current = self.me if self.role is Role.ACTIVE else (
            partner.name if partner.role is Role.ACTIVE else None)
        if reason not in (Reason.ERROR_STATE, Reason.PREFERENCE) or current in (None, target):
            return target, reason
        wait = self.error_state_delay
        if self._auto_switch_at is not None and self._outcome_since >= self._auto_switch_at:
            wait = max(wait, self._auto_switch_at + self.hold_down - self._outcome_since)
        if now - self._outcome_since < wait:
            self.waiting = True
            return current, reason  # not yet: the role stays where it is
        return target, reason

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


def _sign(value: float) -> int:
    return (value > 0) - (value < 0)


def _errors_key(errors: dict[str, float]) -> tuple[tuple[str, float], ...]:
    return tuple(sorted(errors.items()))


def _c(partner: Partner | None, attr: str) -> Choice | None:
    return getattr(partner, attr) if partner is not None else None
