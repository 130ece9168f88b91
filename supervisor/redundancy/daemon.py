"""The redundancy manager: a child process of pmon (started first, a core manager).

Two threads, so that nothing can stall the heartbeats:
- the heartbeat loop (the main thread) never waits on pmon, a disk or a name lookup: it is
  woken only by a datagram, a reply from the sync thread, or its next deadline. Every
  heartbeat interval (a quarter of it while a heartbeat of the partner is overdue: the probe,
  which the partner answers at once) it steps the arbitration and sends a heartbeat on every
  link; on a partner's heartbeat, a link timing out or a reply from pmon it steps the
  arbitration; on a change of role it sends at once and wakes the sync thread. The two
  sides beat in step (one answers the other's heartbeat when its own is nearly due; the
  later name of the pair moves its beat once to get there): a wake-up fewer per beat.
- the sync thread (`PmonSync`) exchanges `redu-sync` with pmon: at once when the report
  changed (a role, the partner's state, a link) or pmon pokes it (SIGUSR2: an operator's
  request or a change of the error state), and every SYNC_IDLE seconds otherwise. pmon's
  reply (this server's error sources, availability, the operators' requests, the pids of the
  run_on = "active" managers) reaches the heartbeat loop through a queue.

pmon owing an answer for `pmon_timeout` (`PmonSync.owed_since`: the oldest request it has
not answered was sent that long ago) is an error source ("pmon", `pmon_weight`) and this
server cannot act: a passive one never takes the role, and an active one fences its
run_on = "active" managers (fence.py) and only then goes passive (at the latest after the
fence's own bound, fence_limit); its heartbeats say "fencing" meanwhile, and the partner gives it `fence_bound` before it would claim the role
by failure. After such a fence the error source stays for hold_down once pmon answers again
(one switchover per fault). A handover while pmon answers is followed by its release
(fence.Release): "fencing" until pmon's reply to a "passive" report (matched by the
report's `seq`) lists no run_on = "active" manager alive, bounded. When pmon has owed an
answer for PMON_GRACE (longer than a hot restart of pmon takes), it exits, so that an
orphan does not hold the links; a freeze of this process (a gap in the loop) restarts the
count.

The beat (beat.py): every heartbeat also beats to pmon (a kernel timer pmon holds, or
WATCHDOG=1), from this loop, so a stuck loop stops both. pmon on the active server self-fences when the beat stops for
`self_fence`; this loop, finding that it has not beaten that long itself (it was frozen),
or told so by pmon, gives the role up (reason "fenced") before it acts on anything.

It sends READY=1 (notify readiness) once it knows its first role, so pmon starts the rest
of the project only then.
"""

from __future__ import annotations

import os
import queue
import secrets
import selectors
import signal
import socket
import sys
import threading
import time
from typing import Any, Callable

from pmon.config import Config
from pmon.control.client import Session
from pmon.errors import PmonError
from pmon.redundancy.arbitration import (
    Arbiter, Choice, Decision, Local, Partner, Reason, Role, newest)
from pmon.redundancy.beat import Beat
from pmon.redundancy.fence import Fence, Release
from pmon.redundancy.link import Links
from pmon.redundancy.messages import TIMING_NAMES, Encoder, Heartbeat, Inbox, timing_of, words_of
from pmon.redundancy.pmon_view import PmonView
from pmon.redundancy.settings import (
    SYNC_IDLE, TIMING_MAX, RedundancySpec, judged_errors, release_bound, settings_differ,
    shared_settings)
from pmon.redundancy.witness import Witness

PMON_GRACE = 5.0  # seconds pmon owes an answer before exiting (at least the fence)
DAMPED_TIMEOUTS = 3  # while failure is damped, the partner is gone after this many timeouts
RETRY = 0.1  # seconds before a failed sync with pmon is tried again
# seconds a fence waits, while pmon answers (a lost lease), for pmon to hear of it first:
# pmon then stops the drivers itself, and does not take the fence's signals for crashes
# that it would restart (a restarted driver in a process group the fence does not know)
FENCE_NOTICE = 0.2
REPHASE_EVERY = 5.0  # seconds: the follower beats early at most this often to get in step


def _choice(choice: Choice | None) -> dict[str, Any] | None:
    if choice is None:
        return None
    return {"server": choice.server, "seq": choice.seq, "errors": dict(choice.errors),
            "at": choice.at or None, "by": choice.by, "ended": choice.ended or None,
            "ended_at": choice.ended_at or None}


class PmonSync(threading.Thread):
    """The exchange with pmon, off the heartbeat path: one `redu-sync` at a time, over one
    connection while pmon answers (client.Session).

    `owed_since` is when the oldest request pmon has not answered yet was sent (None while
    none is outstanding): pmon is judged by the answer it owes, not by the time since its
    last one, so a stall shorter than pmon_timeout is never late, whenever it falls between
    two syncs. A failed call (pmon refused, closed or timed out) is retried after RETRY,
    still owed since the first attempt."""

    def __init__(self, config: Config, timeout: float, report: Callable[[], dict[str, Any]],
                 deliver: Callable[[float, dict[str, Any] | None], None]) -> None:
        super().__init__(name="pmon-sync", daemon=True)
        self.config, self.timeout, self.report, self.deliver = config, timeout, report, deliver
        self.wake = threading.Event()
        # pmon is judged by the answer it owes, not by the time since its last one: when the
        # oldest request it has not answered yet was sent (None while none is out)
        self.owed_since: float | None = None
        self.last_turn = time.monotonic()
        self.session = Session(config, timeout)  # one connection while pmon answers

    def owes(self, now: float) -> float:
        """How long pmon has owed an answer (0: none is out)."""
        owed = self.owed_since
        return 0.0 if owed is None else now - owed

    def thawed(self, now: float) -> None:
        """This process was frozen (or starved) until `now`: a freeze is not pmon's silence,
        so a request out since before it counts from now; ask again at once."""
        if self.owed_since is not None:
            self.owed_since = now
        self.wake.set()

    def orphaned(self, now: float, spec: RedundancySpec, answered: bool, fencing: bool,
                 sleep: float) -> bool:
        """At every turn of the manager's loop (which sleeps at most `sleep`): a gap since the
        last turn (a freeze) restarts the count; True when pmon, which `answered` once, has
        owed an answer for `orphan_after` and no fence is under way."""
        if now - self.last_turn > thaw_gap(sleep):
            self.thawed(now)
        self.last_turn = now
        return answered and not fencing and self.owes(now) > orphan_after(spec)

    def run(self) -> None:
        while True:
            self.wake.clear()
            if self.owed_since is None:
                self.owed_since = time.monotonic()
            try:
                reply: dict[str, Any] | None = self.session.call(
                    "redu-sync", report=self.report())
            except (PmonError, OSError, ValueError):
                reply = None
            if reply is not None and not reply.get("stale"):  # "stale": pmon took it for none
                self.owed_since = None
            self.deliver(time.monotonic(), reply)
            # no answer: soon again, so that a hot restart of pmon (its socket back within
            # a fraction of a second) is heard well before pmon_timeout, not a second later
            self.wake.wait(RETRY if self.owed_since is not None else SYNC_IDLE)


class RedundancyManager(PmonView):
    def __init__(self, config: Config, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()  # pmon's side of the view (pmon_view.py)
        spec = config.redundancy
        assert spec is not None
        self.config = config
        self.spec = spec
        self.clock = clock
        self.arbiter = Arbiter(
            me=spec.name, partner=spec.partner, preferred=Choice(spec.preferred, 0),
            first_active_change_interval=spec.first_active_change_interval,
            startup_wait=spec.timeout, reconnect_settle=2.5 * spec.heartbeat_interval,
            error_state_delay=spec.error_state_delay, hold_down=spec.hold_down,
            fence_bound=spec.fence_bound,
        )
        self.inbox = Inbox(spec.name, spec.partner)
        self.encode = Encoder()
        self.links = Links.open(spec.links)
        self.boot = secrets.token_hex(6)
        self.seq = 0
        self.heard: Heartbeat | None = None  # the partner's newest heartbeat
        # when the last few newer heartbeats came (boot, seq), oldest first
        self.arrivals: dict[tuple[str, int], float] = {}
        self.fence = Fence(spec.fence_grace, spec.fence_limit)
        self.fence_for_pmon = False  # the fence under way began because pmon was late
        self.notice_at: float | None = None  # a fence told to pmon, not begun yet
        self.notice_seq: int | None = None  # the first report that told it
        self.notice_heard = False  # pmon answered such a report
        self.pmon_held_until = 0.0  # after such a fence, "pmon" weighs on until then
        # a handover's second phase: "fencing" until pmon says its drivers stopped
        self.release = Release(release_bound(
            (m.seconds_to_kill for m in config.managers if m.run_on == "active"), spec))
        self.report_seq = 0  # numbers every report to pmon; pmon's reply echoes it
        self.restart_seq: int | None = None  # the first report that carried restart_project
        self.decision = Decision(None)
        self.changed_at: float | None = None
        self.restart_pending = False
        self.ready_sent = False
        self.queries = 0  # general queries owed to this server's managers (split brain won)
        self.dual = False
        self.damped_until = 0.0  # failure damped until then (monotonic)
        self.connected = False
        self.last_sent = 0.0
        # the follower of the pair (the later name) moves its beat to the partner's
        self.follows = spec.name > spec.partner
        self.rephased_at = float("-inf")
        self.signature: tuple[Any, ...] = ()
        self.lock = threading.Lock()  # the sync thread reads the report under it
        self.replies: "queue.SimpleQueue[tuple[float, dict[str, Any] | None]]" = queue.SimpleQueue()
        self.last_said: Any = ()  # the last reply, seq aside (the sync thread's: _deliver)
        self.poked = False
        self.wake_r, self.wake_w = socket.socketpair()
        for sock in (self.wake_r, self.wake_w):
            sock.setblocking(False)
        self.sync = PmonSync(config, spec.pmon_timeout, self._locked_report, self._deliver)
        # The witness (None without one): its own thread; this loop only reads its state.
        # It renews the lease only while this loop sends (a stuck loop: pmon self-fences).
        self.witness = Witness(spec.witness, f"{spec.name} {self.boot}", self._wake,
                               loop_alive=lambda now: now - self.last_sent < spec.self_fence) \
            if spec.witness is not None else None
        self.failsafe = False  # active without the lease: etcd away, the partner agrees
        self.beat = Beat.from_env(timer=True)
        self.beat_at = 0.0  # the last beat
        # the words of the heartbeat a settled step sent (None: not settled): at rest, a beat
        # repeats it instead of a full step (_at_rest)
        self.rest_words: tuple[Any, ...] | None = None
        self.rest_check = bool(os.environ.get("PMON_REST_CHECK"))  # the tests': see evaluate
        self.beats = {"rest": 0, "full": 0}  # how the beats went (redu status --json)
        self.yielding = False  # pmon self-fenced (or surely did): give the role up
        # The pair's timing: this side's, and the longer of it and the partner's once its
        # heartbeats said theirs (learn_timing). The partner is counted lost only after its
        # own timeout too: its self-fence is timed by that (a rollout that changed one side).
        self.timing = (float(spec.heartbeat_interval), float(spec.timeout), float(spec.fence_grace))
        self.partner_timing: tuple[float, ...] = ()
        self.interval, self.timeout = spec.heartbeat_interval, spec.timeout
        # the other settings both should share: compared for people (redu status), not used
        self.shared = shared_settings(spec)
        self.partner_shared: dict[str, Any] = {}
        # None until the partner said its own (an older one never does: nothing to compare)
        self.differ: dict[str, dict[str, Any]] | None = None

    # --- what this side knows ------------------------------------------------------
    def links_down(self, now: float) -> list[int]:
        return [i for i, link in enumerate(self.links.links, 1) if not link.up(now, self.timeout)]

    def learn_timing(self, timing: tuple[float, ...]) -> None:
        """The partner's heartbeats say its timing: wait the longer of the two sides'
        (VRRPv3's backup times the master by the master's advertised interval)."""
        self.partner_timing = timing
        interval, timeout, grace = (min(t, TIMING_MAX) for t in timing or self.timing)
        self.interval = max(self.spec.heartbeat_interval, interval)
        self.timeout = max(self.spec.timeout, timeout)
        self.arbiter.fence_bound = max(self.spec.fence_grace, grace) + self.timeout
        self.arbiter.reconnect_settle = 2.5 * self.interval

    def own_errors(self, now: float) -> dict[str, float]:
        """The links down, beside pmon's error sources (breakdown, in pmon_view.py)."""
        return {f"link {i}": self.spec.link_weight for i in self.links_down(now)} \
            if self.spec.link_weight else {}

    def lease_ok(self, now: float) -> bool:
        """May this server be (or stay) active as far as the witness goes? Without a witness,
        yes. With one: while it holds the lease; or, in failsafe (Patroni's failsafe_mode), an
        active server that lost it (etcd unreachable) while its partner hears it and is
        passive (a passive partner never claims the role while it hears an active one, and
        without etcd this side hands nothing over: `Local.movable`). Sets `failsafe`."""
        self.failsafe = False
        if self.witness is None or self.witness.held(now):
            return True
        heard = self.partner_view(now)
        if self.decision.role is Role.ACTIVE and heard is not None and heard.hears and \
                heard.role is Role.PASSIVE and not self.fence.active:
            self.failsafe = True
            return True
        return False

    def silence(self, now: float) -> float:
        heard = [link.last_rx for link in self.links.links if link.last_rx is not None]
        return now - max(heard) if heard else float("inf")

    def partner_view(self, now: float) -> Heartbeat | None:
        """The partner's last heartbeat, or None when it is gone: silent on every link for
        `timeout`, or DAMPED_TIMEOUTS timeouts while failure is damped (a split brain or a
        near one in the last hold_down: the network flaps, not the partner)."""
        limit = self.timeout * (DAMPED_TIMEOUTS if now < self.damped_until else 1)
        if self.heard is None or self.silence(now) >= limit:
            return None
        return self.heard

    def damp(self, now: float) -> None:
        self.damped_until = max(self.damped_until, now + self.spec.hold_down)

    def views(self, now: float) -> tuple[Local, Partner | None]:
        """Both sides as the arbitration judges them: links by the same evidence."""
        mine = self.breakdown(now)
        heard = self.partner_view(now)
        ok = self.pmon_ok(now)
        # a fence, once begun, ends in a handover: pmon back in the middle of it changes
        # nothing until this side is passive (one switchover per fault); a thawed loop
        # (yielding) gives the role up before anything else
        can_act = not self.yielding and (ok and self.fence.started_at is None or (
            self.decision.role is Role.ACTIVE and not self.fence.done))
        lease = self.lease_ok(now)
        movable = self.witness is None or self.witness.reachable()
        if heard is None:
            return Local(sum(mine.values()), self.available and ok, can_act, lease, movable), None
        error, partner_error = judged_errors(mine, heard.breakdown)
        partner = heard.partner(error=partner_error)
        return Local(error, self.available and ok, can_act, lease, movable), partner

    def probing(self, now: float) -> bool:
        """A heartbeat of the partner is overdue (but it is not given up yet): ask at once,
        four times an interval, as corosync retransmits its token before declaring it lost."""
        heard = [link.last_rx for link in self.links.links if link.last_rx is not None]
        if not heard:
            return False
        silent = now - max(heard)
        return 1.5 * self.interval < silent < self.timeout + self.interval

    # --- the loop ------------------------------------------------------------------
    def run(self) -> int:
        selector = selectors.DefaultSelector()
        for link in self.links.links:
            selector.register(link.sock, selectors.EVENT_READ, link)
        selector.register(self.wake_r, selectors.EVENT_READ, None)
        watching = True  # every link wakes the loop (at rest only the first: see below)
        interval = self.spec.heartbeat_interval
        self.sync.start()
        if self.witness is not None:
            self.witness.start()
        try:  # the epoch and error state before the first heartbeat
            first = self.replies.get(timeout=self.spec.pmon_timeout)
            with self.lock:
                self._on_reply(*first)
        except queue.Empty:
            pass
        next_beat = self.clock()
        try:
            while True:
                now = self.clock()
                if self.sync.orphaned(now, self.spec, self.pmon_ok_at is not None,
                                      self.fence.active, interval):
                    return 1  # an orphan: pmon is gone (and the fence, if any, is done)
                if now >= next_beat:
                    probing = self.probing(now)
                    next_beat = max(next_beat + (interval / 4 if probing else interval), now)
                    with self.lock:
                        if not self.replies.empty():  # one that did not wake the loop
                            self._take_replies()
                        if probing or self.partner_view(now) is None:
                            # overdue: what the partner sent may wait in the sockets (this
                            # process was frozen); judge it by that, not by the silence
                            for link in self.links.links:
                                self.on_readable(link, now)
                        self.evaluate(now, force_send=True, probe=probing)
                    continue
                wake = [next_beat] + [
                    t for link in self.links.links
                    if (t := link.expires(self.timeout)) is not None and t > now
                ]
                if self.decision.role is None and self.arbiter.started_at is not None:
                    wake.append(self.arbiter.started_at + self.arbiter.startup_wait)
                owed = self.sync.owed_since
                if owed is not None and self.pmon_ok(now):
                    wake.append(owed + self.spec.pmon_timeout)
                if now < self.pmon_held_until:
                    wake.append(self.pmon_held_until)
                if self.release.started_at is not None:
                    wake.append(self.release.started_at + self.release.bound)
                if self.fence.active:
                    wake.append(now + 0.05)
                if self.notice_at is not None:
                    wake.append(self.notice_at + FENCE_NOTICE)
                if self.witness is not None and (lost := self.witness.lost_at()) is not None \
                        and lost > now:
                    wake.append(lost)  # the lease counts as lost then: fence at once
                timeout = max(0.0, min(wake) - now)
                if (self.rest_words is None) is not watching:
                    # At rest only the first link wakes the loop: the copies of a heartbeat
                    # on the others, a moment later, are read in the next wake-up (every
                    # wake-up reads every link) instead of costing one each. News then comes
                    # at once on the first link, or at the next beat if it lost it.
                    watching = self.rest_words is None
                    for link in self.links.links[1:]:
                        if watching:
                            selector.register(link.sock, selectors.EVENT_READ, link)
                        else:
                            selector.unregister(link.sock)
                events = selector.select(timeout)
                now = self.clock()
                self._stuck(now)  # before the datagrams: answering a probe would beat
                with self.lock:
                    # a deadline passed (the beat's own is met at the top of the loop)
                    news = not events and now < next_beat
                    beat_heard = self.heard
                    # a deadline too: the select may have come back empty from a signal or
                    # a freeze of this process although the partner's datagrams wait; and at
                    # rest (one link wakes the loop) a wake-up by pmon too; but not a timer's
                    # at rest when every link has brought the partner's newest heartbeat
                    # since this side last sent (no reads for nothing at every beat)
                    if any(key.data is not None for key, _ in events) or (
                            not watching if events else watching or not self._caught_up()):
                        # every link, not only the one that woke the loop: the copy of a
                        # heartbeat on the other link has mostly arrived by now, and is taken
                        # in this wake-up instead of costing one of its own (and before pmon's
                        # reply, which may decide: with what the partner said meanwhile)
                        for link in self.links.links:
                            news = self.on_readable(link, now) or news
                    for key, _ in events:
                        if key.data is None:
                            self._drain_replies()
                            news = True
                    if news:  # a copy of a heartbeat already seen changes nothing
                        self.evaluate(now)
                    if self.heard is not beat_heard and now >= next_beat - interval / 4 and \
                            now - self.last_sent >= interval * 3 / 4:
                        # the partner beat and this side's beat is nearly due: answer now,
                        # so both sides beat in step (a wake-up fewer on each); not when
                        # this side just sent (a probe's answer): a partner that beats
                        # faster must not make this side beat faster too
                        next_beat = now
                    elif self.heard is not beat_heard and self.follows and \
                            now - self.last_sent >= interval / 4 and \
                            now - self.rephased_at >= REPHASE_EVERY:
                        # out of step (the two loops began at any moment): the follower
                        # beats early once, and in step from then on (the rule above)
                        self.rephased_at = now
                        next_beat = now
        finally:
            if self.witness is not None:
                self.witness.stop()
            selector.close()
            self.links.close()
            self.beat.close()

    def poke(self) -> None:
        """From the SIGUSR2 handler: take no lock here (the interrupted main thread may hold
        the one it would wait for); the loop wakes on the socket and wakes the sync."""
        self.poked = True
        try:
            self.wake_w.send(b"p")
        except OSError:
            pass

    def _deliver(self, at: float, reply: dict[str, Any] | None) -> None:
        """From the sync thread: queue pmon's reply and wake the heartbeat loop; at rest, a
        reply that says what the last one said (seq aside: every idle sync) changes nothing a
        step reads and waits for the next beat instead (a wake-up fewer a second)."""
        said = None if reply is None else {k: v for k, v in reply.items() if k != "seq"}
        same, self.last_said = said == self.last_said, said
        self.replies.put((at, reply))
        if not (same and self.rest_words is not None) or reply and reply.get("requests"):
            self._wake()  # (an operator's request, even the same again, at once)

    def _wake(self) -> None:
        """Wake the heartbeat loop (from another thread: the sync, the witness)."""
        try:
            self.wake_w.send(b"x")
        except OSError:
            pass  # the loop is awake already (buffer full)

    def _drain_replies(self) -> None:
        try:
            while self.wake_r.recv(4096):
                pass
        except OSError:
            pass
        if self.poked:
            self.poked = False
            self.sync.wake.set()
        self._take_replies()

    def _take_replies(self) -> None:
        while True:
            try:
                self._on_reply(*self.replies.get_nowait())
            except queue.Empty:
                return

    def on_readable(self, link: Any, now: float) -> bool:
        """Take the link's datagrams; True when one was a newer heartbeat."""
        news = False
        for data in link.receive():
            accepted = self.inbox.accept(data)
            if accepted is None:
                continue
            hb, newer = accepted
            if now < self.damped_until and self.heard is not None and \
                    self.silence(now) >= self.timeout:
                self.damp(now)  # a near failure while damped: the flapping goes on
            if hb.damp > 0:
                self.damped_until = max(self.damped_until, now + hb.damp)
            if self.partner_view(now) is None or not link.up(now, self.timeout):
                news = True  # contact or a link comes back
            # A copy of a heartbeat already taken came about when that one did: read later
            # (at rest, from a link that does not wake the loop), its read time would make
            # the partner look alive for up to an interval longer (a later failover).
            # (one not kept, e.g. overtaken on its link: no later than the newest)
            arrived = now if newer else self.arrivals.get(
                (hb.boot, hb.seq), next(reversed(self.arrivals.values()), now))
            link.last_rx = max(link.last_rx or arrived, arrived)
            link.received += 1
            if newer:
                # Only a heartbeat that says something new (or ends a silence) needs a
                # decision now; the same words again wait for the next beat's step.
                # (the Inbox knows when it only renumbered the last one: at rest, always)
                if self.heard is None or not self.inbox.same_words and _says(hb) != _says(self.heard):
                    news = True
                self.heard = hb
                if hb.timing != self.partner_timing:
                    self.learn_timing(hb.timing)
                if hb.shared is not self.partner_shared:  # (at rest: the same dict again)
                    self.partner_shared = hb.shared
                    self.differ = settings_differ(self.shared, hb.shared) if hb.shared else None
                self.arrivals[hb.boot, hb.seq] = now
                if len(self.arrivals) > 4:  # the last few: a copy comes within an interval
                    del self.arrivals[next(iter(self.arrivals))]
                if hb.probe and now - self.last_sent > self.spec.heartbeat_interval / 8:
                    self.send(now)  # the partner missed heartbeats: answer at once
            if hb.seen > self.arbiter.epoch:  # this side lost its epoch: catch up
                self.arbiter.epoch = hb.seen
        if news:
            self.rest_words = None  # the next step is a full one
        return news

    def _caught_up(self) -> bool:
        """Every link has brought the partner's newest heartbeat since this side last sent
        (a copy counts from its first's arrival): at rest, nothing waits to be read."""
        first = self.links.links[0].last_rx
        return first is not None and first >= self.last_sent and all(
            link.last_rx is not None and link.last_rx >= first for link in self.links.links[1:])

    def _stuck(self, now: float) -> None:
        """This loop has not beaten for self_fence while active (it was frozen): pmon has
        self-fenced, so the role goes (yielding), whatever the loop does first on waking."""
        if self.decision.role is Role.ACTIVE and now - self.beat_at >= self.spec.self_fence:
            self.yielding = True

    def evaluate(self, now: float, force_send: bool = False, probe: bool = False) -> None:
        """One step: the arbitration, the fence, and the heartbeat (always with force_send,
        a beat; else on a change). At rest (_at_rest) the step would change nothing: it is
        skipped, and a beat repeats the settled heartbeat, renumbered. PMON_REST_CHECK=1
        (the tests') takes the full step anyway and stops this manager (exit 70, a line on
        stderr) if it changed anything."""
        claimed = not probe and self._at_rest(now)
        if force_send:
            self.beats["rest" if claimed else "full"] += 1
        if claimed and not self.rest_check:
            if force_send:
                self.send(now, again=True)
            return
        rest = (self.rest_words, self.decision.role, self.signature)
        self._step(now, force_send, probe)
        if claimed:
            self._check_rest(now, *rest)
        elif force_send and not probe:  # what it sent may be repeated while at rest
            self.rest_words = self.encode.words if self._settled(now) else None
        else:
            self.rest_words = None

    def _check_rest(self, now: float, words: Any, role: Role | None, signature: Any) -> None:
        after = words_of(self._heartbeat(now))
        if after != words or self.decision.role is not role or self.signature != signature:
            print(f"redundancy: PMON_REST_CHECK: at rest, the step would have kept {words!r} "
                  f"(role {role}), but the full step made {after!r} (role "
                  f"{self.decision.role})", file=sys.stderr, flush=True)
            raise SystemExit(70)

    def _step(self, now: float, force_send: bool, probe: bool) -> None:
        self._stuck(now)
        ok = self.pmon_ok(now)
        lease = self.lease_ok(now)
        if ok and self.fence.started_at is not None and not self.fence.active and (
                lease or self.decision.role is not Role.ACTIVE):
            # pmon is back (and the lease, or passive): pmon decides again. A fence under
            # way ends first: once begun, it ends in a handover (one switchover per fault)
            if self.fence_for_pmon:  # a fence is a fault: it weighs on for hold_down
                self.pmon_held_until = now + self.spec.hold_down
            self.fence.reset()
            self.fence_for_pmon = False
        releasing = self.release.active and self.decision.role is Role.PASSIVE
        if (not ok or not lease) and self.decision.role is Role.ACTIVE or not ok and releasing:
            # no pmon, or no lease: stop the drivers (their whole cgroups where there are);
            # also when pmon stalls while it stops them after a handover. A pmon that answers
            # hears of it first (FENCE_NOTICE), and stops them itself.
            if self.fence.started_at is None and ok and not self._noticed(now):
                pass  # "fencing" already: the role stays, the partner waits
            else:
                if self.fence.started_at is None:
                    self.fence_for_pmon = not ok
                self.notice_at, self.notice_seq = None, None
                self.fence.start(now, self.fence_pids, self.fence_cgroups, self.fence_pmon,
                                 self.fence_names)
        else:
            self.notice_at, self.notice_seq = None, None  # (the lease came back meanwhile)
        self.fence.step(now)
        if self.release.active and self.fence.done:
            self.release.cancel()  # the fence stopped what pmon was stopping
            force_send = True
        if self.release.expired(now):
            print(f"redundancy: pmon did not confirm within {self.release.bound:g} s that "
                  'its run_on = "active" managers stopped; the partner may take over',
                  file=sys.stderr, flush=True)
            force_send = True
        before = self.decision.role
        if not self.fencing:  # while fencing, the role stays: the partner waits
            local, partner = self.views(now)
            self.decision = self.arbiter.step(now, local, partner, wall=time.time())
        decision = self.decision
        yielded = self.yielding and decision.role is not Role.ACTIVE
        if yielded:
            self.yielding = False  # given up: from now on the arbitration as ever
            # pmon's self-fence is a fault: it weighs on for hold_down (one switchover per
            # fault), and the drivers it stops may still be stopping: the release waits
            self.pmon_held_until = now + self.spec.hold_down
        if decision.role is Role.ACTIVE:
            self.release.cancel()  # active again (the partner waited): pmon keeps its drivers
        elif decision.changed and before is Role.ACTIVE and (
                decision.reason is not Reason.FENCED or yielded):
            self.release.start(now)  # handed over while pmon answers: wait for its word
        if self.witness is not None:  # hold the lease while active, releasing, or waiting
            self.witness.want(decision.role is Role.ACTIVE or decision.wants_lease
                              or self.release.active, now)
        partner_role = self.heard.role if self.partner_view(now) and self.heard else None
        if self.dual and before is Role.ACTIVE and decision.role is Role.ACTIVE and \
                partner_role is Role.PASSIVE:
            self.queries += 1  # a dual active resolved in this server's favour
            self.damp(now)
        connected = partner_role is not None or self.partner_view(now) is not None
        if decision.restart_project or (connected and not self.connected and before is not None):
            self.damp(now)  # contact back, or a split brain lost: the network may flap
        self.connected = connected
        self.dual = decision.role is Role.ACTIVE and partner_role is Role.ACTIVE
        if decision.changed:
            self.changed_at = time.time()
            if decision.restart_project:  # until pmon answers a report that carried it
                self.restart_pending, self.restart_seq = True, None
            self.send(now, probe)
            if not self.ready_sent:
                self.ready_sent = True
                _notify("READY=1")
        elif force_send:
            self.send(now, probe)
        signature = self._signature(now)
        if signature != self.signature:
            self.signature = signature
            self.sync.wake.set()  # pmon hears of it now, not at the next idle sync

    # --- the beat at rest --------------------------------------------------------------
    def _settled(self, now: float) -> bool:
        """After a step that sent: a settled pair, whose next steps give the same decision
        and heartbeat for as long as nothing they read changes. One server active, the
        other passive, both naming it, the arbitration not waiting for a change of the
        error states to last, and nothing under way that a step advances with time: no
        fence, release, notice, self-fence, restart, dual active, damping or witness (whose
        lease the witness thread renews on its own)."""
        decision, heard = self.decision, self.heard
        if decision.changed or decision.role is None or heard is None or self.arbiter.waiting \
                or self.witness is not None or self.fencing or self.fence.started_at is not None \
                or self.release.active or self.yielding or self.restart_pending or self.dual \
                or not self.connected or self.failsafe:
            return False
        active = self.spec.name if decision.role is Role.ACTIVE else self.spec.partner
        return heard.role is not decision.role and heard.role is not None and \
            decision.target == heard.target == active and heard.hears and not heard.probe \
            and not heard.fencing and not heard.damp and self._quiet(now)

    def _quiet(self, now: float) -> bool:
        """No deadline a step reads is near or past, so a step now and one at the next beat
        write the same heartbeat: every link up, pmon answering and not weighing after a
        fence, no damping, and the self-fence's last beat recent."""
        timeout = self.timeout
        if not all(link.up(now, timeout) for link in self.links.links):
            return False
        return self.pmon_ok(now) and now >= self.pmon_held_until \
            and now >= self.damped_until and now - self.beat_at < self.spec.self_fence

    def _at_rest(self, now: float) -> bool:
        """May this beat repeat the settled step's heartbeat? While nothing a step reads has
        changed since (news from the partner or pmon clears `rest_words`, and the last
        datagram encoded is still that heartbeat) and it is still quiet."""
        return self.rest_words is not None and self.encode.words is self.rest_words and \
            self._quiet(now)

    @property
    def fencing(self) -> bool:
        """A fence under way, or told to pmon and about to begin."""
        return self.fence.active or self.notice_at is not None

    def _noticed(self, now: float) -> bool:
        """May the fence begin? Once pmon answered a report that told it, or FENCE_NOTICE
        after the first such report (told from now on)."""
        if self.notice_at is None:
            self.notice_at, self.notice_seq, self.notice_heard = now, None, False
        return self.notice_heard or now - self.notice_at >= FENCE_NOTICE

    def _signature(self, now: float) -> tuple[Any, ...]:
        heard = self.partner_view(now)
        return (self.decision.role, self.restart_pending, self.queries, self.fencing,
                self.release.active,
                tuple(self.links_down(now)), self.arbiter.forced, self.arbiter.preferred,
                None if heard is None else (heard.role, heard.available, heard.error))

    def send(self, now: float, probe: bool = False, again: bool = False) -> None:
        """A heartbeat on every link, then the beat; `again`: the last one, renumbered (at
        rest: what a full step would write)."""
        self.seq += 1
        self.last_sent = now
        data = self.encode.again(self.seq) if again else self.encode(self._heartbeat(now, probe))
        for link in self.links.links:
            link.send(data)
        self._beat_timer(now)

    def _heartbeat(self, now: float, probe: bool = False) -> Heartbeat:
        breakdown = self.breakdown(now)  # (failsafe: as the last evaluate judged it)
        return Heartbeat(
            sender=self.spec.name, to=self.spec.partner, epoch=self.arbiter.epoch,
            boot=self.boot, seq=self.seq, role=self.decision.role, error=sum(breakdown.values()),
            available=self.available and self.pmon_ok(now), target=self.decision.target,
            seen=max(0, self.inbox.last_epoch), forced=self.arbiter.forced,
            preferred=self.arbiter.preferred, breakdown=breakdown,
            hears=self.partner_view(now) is not None, probe=probe,
            # in failsafe, losing the partner means fencing: it waits fence_bound for that
            # releasing: pmon still stops its drivers after a handover; the partner waits
            fencing=self.fencing or self.failsafe or self.release.active,
            damp=round(max(0.0, self.damped_until - now), 3), timing=self.timing,
            shared=self.shared,
        )

    def _beat_timer(self, now: float) -> None:
        """After the heartbeat, so the last beat is never later than the last heartbeat
        (the partner's timeout runs from that); twice per self_fence is enough."""
        if now - self.beat_at >= (self.spec.self_fence - self.spec.heartbeat_interval) / 2:
            self.beat.send(expires=self.spec.self_fence)
            self.beat_at = now

    # --- pmon ----------------------------------------------------------------------
    def _locked_report(self) -> dict[str, Any]:
        with self.lock:
            return self.report(self.clock())

    def report(self, now: float) -> dict[str, Any]:
        partner = self.partner_view(now)
        breakdown = self.breakdown(now)
        self.report_seq += 1
        if self.restart_pending and self.restart_seq is None:
            self.restart_seq = self.report_seq
        if self.decision.role is Role.PASSIVE:
            self.release.reported(self.report_seq)
        if self.notice_at is not None and self.notice_seq is None:
            self.notice_seq = self.report_seq
        return {
            "seq": self.report_seq,
            "role": self.decision.role.value if self.decision.role else None,
            "reason": self.arbiter.last_reason.value if self.arbiter.last_reason else None,
            "changed_at": self.changed_at,
            "restart_project": self.restart_pending,
            "epoch": self.arbiter.epoch,
            "error": sum(breakdown.values()),
            "breakdown": breakdown,
            "target": self.decision.target,
            "forced": _choice(self.arbiter.forced),
            "preferred": _choice(self.arbiter.preferred),
            "queries": self.queries,
            "fencing": self.fencing,
            "fence_overrun": self.fence.overrun,  # the last fence ended by its bound
            "releasing": self.release.active,
            "release_overrun": self.release.overrun,
            "release_bound": self.release.bound,
            "witness": None if self.witness is None else {
                **self.witness.status(now), "failsafe": self.failsafe},
            "beats": dict(self.beats),
            "damp": round(max(0.0, self.damped_until - now), 3),
            "partner": None if partner is None else {
                "name": partner.sender, "role": partner.role.value if partner.role else None,
                "error": partner.error, "breakdown": partner.breakdown,
                "available": partner.available, "epoch": partner.epoch,
                "fencing": partner.fencing,
            },
            "links": [link.report(now, self.timeout) for link in self.links.links],
            "timing": {"heartbeat_interval": self.interval, "timeout": self.timeout,
                       "fence_bound": self.arbiter.fence_bound},
            "partner_timing": dict(zip(TIMING_NAMES, self.partner_timing)) or None,
            "own_timing": dict(zip(TIMING_NAMES, self.timing)),
            "settings_differ": self.differ,  # {key: {here, partner}}
            "dropped": dict(self.inbox.dropped),
            "misaddressed": self.inbox.misaddressed,
            "pid": os.getpid(),
            "beat_timer": self.beat.timer,  # pmon takes it (beat_timer.take) to watch the beat
            "sent": time.monotonic(),  # one clock for every process of the machine
        }

    def _on_reply(self, at: float, reply: dict[str, Any] | None) -> None:
        if reply is None or reply.get("stale"):
            return  # no answer (or pmon found our report too old: no answer to it either)
        before = self._pmon_words()
        bound = self._take_pmon(at, reply)  # error sources, availability, what to fence
        seq = reply.get("seq")
        if self.restart_seq is not None and isinstance(seq, int) and seq >= self.restart_seq:
            # only a reply to a report that carried it: an older one may be in flight
            self.restart_pending, self.restart_seq = False, None
        # pmon watches the beat's timer: the datagram is no longer needed (a new pmon after a
        # hot restart that could not take the timer says "datagram")
        self.beat.held = reply.get("beat") == "timer" and self.beat.timer is not None
        if reply.get("self_fenced") and self.decision.role is Role.ACTIVE:
            self.yielding = True  # pmon stopped the drivers: the role goes with them
        if bound is not None:
            self.release.bound = bound
        if self.notice_seq is not None and isinstance(seq, int) and seq >= self.notice_seq:
            self.notice_heard = True  # pmon knows of the fence (the loop evaluates now)
        if self.release.answered(seq, self.fence_pids):  # pmon: its drivers have stopped
            self.send(self.clock())  # the partner may take the role now
        self.arbiter.epoch = max(self.arbiter.epoch, int(reply.get("epoch", 0)))
        kept = reply.get("preferred")  # an operator's prefer, as pmon kept it across restarts
        if isinstance(kept, dict) and kept.get("server") in (self.spec.name, self.spec.partner) \
                and type(kept.get("seq")) is int:
            self.arbiter.preferred = newest(self.arbiter.preferred, Choice(
                kept["server"], kept["seq"])) or self.arbiter.preferred
        now = self.clock()
        if not self.partner_timing and self.heard is None:  # as the partner last said, to pmon
            self._learn_kept_timing(reply.get("partner_timing"))
        damp = reply.get("damp", 0)
        if isinstance(damp, (int, float)) and damp > 0:  # kept by pmon across a project restart
            self.damped_until = max(self.damped_until, now + damp)
            if self.decision.role is None:  # a restart in a flapping network: listen longer
                self.arbiter.startup_wait = max(self.arbiter.startup_wait,
                                                DAMPED_TIMEOUTS * self.timeout)
        if reply.get("requests") or self._pmon_words() != before:
            self.rest_words = None  # pmon said something new: the next step is a full one
        for request in reply.get("requests", []):
            local, partner = self.views(now)
            if request.get("op") == "force":
                self.arbiter.force(request["server"], local, partner,
                                   by=str(request.get("by", "")), at=time.time())
            elif request.get("op") == "prefer":
                self.arbiter.prefer(request["server"], partner)
        if reply.get("requests"):
            self.evaluate(now, force_send=True)

    def _learn_kept_timing(self, kept: Any) -> None:
        """The partner's timing that pmon kept from this manager's last run: before the first
        heartbeat, the start waits the partner's timeout too (it may beat slower than this
        side's own timeout: a start that did not wait would claim the role beside it)."""
        timing = timing_of([kept.get(k) for k in TIMING_NAMES]) if isinstance(kept, dict) else ()
        if not timing:
            return
        self.learn_timing(timing)
        if self.decision.role is None:
            self.arbiter.startup_wait = max(self.arbiter.startup_wait, self.timeout)

    def _pmon_words(self) -> tuple[Any, ...]:
        """What of pmon's replies a step reads: a reply that changes none of it (at rest,
        every one) leaves the beat at rest."""
        return (self.pmon_ok_at is None, self.pmon_breakdown, self.available,
                self.restart_pending, self.yielding, self.notice_heard, self.arbiter.epoch,
                self.arbiter.preferred, self.arbiter.forced, self.damped_until,
                self.arbiter.startup_wait)


def thaw_gap(sleep: float) -> float:
    """A loop that sleeps at most `sleep` did not run this long: this process was frozen
    (or starved). Shorter than pmon_timeout (at least 2 s) for the pair's loop (a heartbeat
    interval, 0.5 s with the defaults) and a group's (1 s at rest, 1.7 s), so a freeze with a
    request out is not counted against pmon."""
    return max(1.5 * sleep + 0.2, 0.5)


def orphan_after(spec: RedundancySpec) -> float:
    """pmon owing an answer this long: it is gone, this redundancy manager exits."""
    return max(PMON_GRACE, spec.pmon_timeout + spec.fence_grace + 1)


def _says(hb: Heartbeat) -> dict[str, Any]:
    """What a heartbeat says, without what changes at every beat."""
    return {**vars(hb), "seq": 0, "damp": 0.0}


def _notify(message: str) -> None:
    """One notify-protocol line to pmon (READY=1), on a socket of its own."""
    beat = Beat.from_env()
    beat.notify(message.encode())
    beat.close()


def main(config: Config, make: Callable[[Config], Any] | None = None) -> int:
    """Run a redundancy manager: the pair's, or `make(config)` (the group's, which has the
    same `run` and signal-safe `poke`)."""
    def stop(signum: int, _frame: Any) -> None:
        if hasattr(signal, "SIGUSR2"):  # a poke from pmon during the exit must not kill it
            signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        manager = (make or RedundancyManager)(config)
    except OSError as exc:
        print(f"redundancy: {exc}", file=sys.stderr)
        return 1
    if hasattr(signal, "SIGUSR2"):  # pmon's poke: sync now (a request, a new error state)
        signal.signal(signal.SIGUSR2, lambda _s, _f: manager.poke())
    return manager.run()
