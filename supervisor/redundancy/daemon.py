"""The redundancy manager: a child process of pmon (started first, a core manager).

Its loop, single-threaded, woken only by a datagram or its next deadline:
- every heartbeat interval: sync with its own pmon over the control channel (`redu-sync`:
  report role and partner, get back this server's error state, availability and the
  operators' set-active / prefer requests), step the arbitration, send a heartbeat on every
  link;
- on a partner's heartbeat, a link timing out, or the start-up wait ending: step the
  arbitration; on a change of role, tell pmon and the partner at once.

It sends READY=1 (notify readiness) once it knows its first role, so pmon starts the rest
of the project only then. While its pmon is away it goes on with the last state it knew:
a pmon that is restarted (hot restart) adopts it and the pair never notices. When pmon has
not answered for PMON_GRACE seconds (longer than a hot restart takes), it exits, so that an
orphan does not claim a role it can no longer act on.
"""

from __future__ import annotations

import os
import secrets
import selectors
import signal
import socket
import sys
import time
from typing import Any, Callable

from pmon.config import Config
from pmon.control.client import call
from pmon.errors import PmonError
from pmon.redundancy.arbitration import Arbiter, Choice, Decision, Local
from pmon.redundancy.link import Links
from pmon.redundancy.messages import Heartbeat, Inbox, encode

PMON_GRACE = 5.0  # seconds without an answer from pmon before giving up (min: the timeout)


def _choice(choice: Choice | None) -> dict[str, Any] | None:
    if choice is None:
        return None
    return {"server": choice.server, "seq": choice.seq, "errors": dict(choice.errors)}


class RedundancyManager:
    def __init__(self, config: Config, clock: Callable[[], float] = time.monotonic) -> None:
        spec = config.redundancy
        assert spec is not None
        self.config = config
        self.spec = spec
        self.clock = clock
        self.arbiter = Arbiter(
            me=spec.name, partner=spec.partner, preferred=Choice(spec.preferred, 0),
            first_active_change_interval=spec.first_active_change_interval,
            startup_wait=spec.timeout, reconnect_settle=2.5 * spec.heartbeat_interval,
        )
        self.inbox = Inbox(spec.name, spec.partner)
        self.links = Links.open(spec.links)
        self.boot = secrets.token_hex(6)
        self.seq = 0
        self.heard: Heartbeat | None = None  # the partner's newest heartbeat
        self.local = Local(error=0, available=False)
        self.pmon_breakdown: dict[str, float] = {}
        self.decision = Decision(None)
        self.changed_at: float | None = None
        self.restart_pending = False
        self.pmon_silent_since: float | None = None
        self.ready_sent = False
        self.last_sync: dict[str, Any] = {}
        self.requests_applied = 0

    # --- what this side knows ------------------------------------------------------
    def links_down(self, now: float) -> list[int]:
        return [i for i, link in enumerate(self.links.links, 1) if not link.up(now, self.spec.timeout)]

    def breakdown(self, now: float) -> dict[str, float]:
        out = dict(self.pmon_breakdown)
        if self.spec.link_weight:
            for i in self.links_down(now):
                out[f"link {i}"] = self.spec.link_weight
        return out

    def local_view(self, now: float) -> Local:
        return Local(error=sum(self.breakdown(now).values()), available=self.local.available)

    def partner_view(self, now: float) -> Heartbeat | None:
        if self.heard is None or len(self.links_down(now)) == len(self.links.links):
            return None
        return self.heard

    # --- the loop ------------------------------------------------------------------
    def run(self) -> int:
        selector = selectors.DefaultSelector()
        for link in self.links.links:
            selector.register(link.sock, selectors.EVENT_READ, link)
        interval = self.spec.heartbeat_interval
        next_beat = self.clock()
        self.sync(next_beat)  # the epoch and error state before the first heartbeat
        try:
            while True:
                now = self.clock()
                if now >= next_beat:
                    # The heartbeat first, so a slow pmon cannot delay it; then the sync,
                    # and a second heartbeat at once if it brought an operator's request.
                    next_beat = max(next_beat + interval, now)
                    self.evaluate(now, force_send=True)
                    requests = self.requests_applied
                    if not self.sync(self.clock()):
                        return 1
                    if self.requests_applied > requests:
                        self.evaluate(self.clock(), force_send=True)
                    continue
                wake = [next_beat] + [
                    t for link in self.links.links
                    if (t := link.expires(self.spec.timeout)) is not None and t > now
                ]
                if self.decision.role is None and self.arbiter.started_at is not None:
                    wake.append(self.arbiter.started_at + self.arbiter.startup_wait)
                events = selector.select(max(0.0, min(wake) - now))
                now = self.clock()
                for key, _ in events:
                    self.on_readable(key.data, now)
                self.evaluate(now)
        finally:
            selector.close()
            self.links.close()

    def on_readable(self, link: Any, now: float) -> None:
        for data in link.receive():
            accepted = self.inbox.accept(data)
            if accepted is None:
                continue
            hb, newer = accepted
            link.last_rx = now
            link.received += 1
            if newer:
                self.heard = hb
            if hb.seen > self.arbiter.epoch:  # this side lost its epoch: catch up
                self.arbiter.epoch = hb.seen

    def evaluate(self, now: float, force_send: bool = False) -> None:
        partner = self.partner_view(now)
        decision = self.arbiter.step(now, self.local_view(now), partner.partner() if partner else None)
        self.decision = decision
        if decision.changed:
            self.changed_at = time.time()
            if decision.restart_project:
                self.restart_pending = True
            self.send(now)
            self.sync(now)
            if not self.ready_sent:
                self.ready_sent = True
                _notify("READY=1")
        elif force_send:
            self.send(now)

    def send(self, now: float) -> None:
        self.seq += 1
        local = self.local_view(now)
        data = encode(Heartbeat(
            sender=self.spec.name, to=self.spec.partner, epoch=self.arbiter.epoch,
            boot=self.boot, seq=self.seq, role=self.decision.role, error=local.error,
            available=local.available, target=self.decision.target, seen=max(0, self.inbox.last_epoch),
            forced=self.arbiter.forced, preferred=self.arbiter.preferred,
            breakdown=self.breakdown(now),
        ))
        for link in self.links.links:
            link.send(data)

    # --- pmon ----------------------------------------------------------------------
    def report(self, now: float) -> dict[str, Any]:
        partner = self.partner_view(now)
        local = self.local_view(now)
        return {
            "role": self.decision.role.value if self.decision.role else None,
            "reason": self.arbiter.last_reason.value if self.arbiter.last_reason else None,
            "changed_at": self.changed_at,
            "restart_project": self.restart_pending,
            "epoch": self.arbiter.epoch,
            "error": local.error,
            "breakdown": self.breakdown(now),
            "target": self.decision.target,
            "forced": _choice(self.arbiter.forced_in_force(
                local, partner.partner() if partner else None)),
            "preferred": _choice(self.arbiter.preferred),
            "partner": None if partner is None else {
                "name": partner.sender, "role": partner.role.value if partner.role else None,
                "error": partner.error, "breakdown": partner.breakdown,
                "available": partner.available, "epoch": partner.epoch,
            },
            "links": [link.report(now, self.spec.timeout) for link in self.links.links],
            "dropped": dict(self.inbox.dropped),
            "pid": os.getpid(),
        }

    def sync(self, now: float) -> bool:
        """One exchange with pmon. False when pmon has been gone for longer than the timeout."""
        try:
            reply = call(self.config, "redu-sync", timeout=max(2.0, self.spec.timeout),
                         report=self.report(now))
        except (PmonError, OSError, ValueError):
            if self.pmon_silent_since is None:
                self.pmon_silent_since = now
            return now - self.pmon_silent_since < max(self.spec.timeout, PMON_GRACE)
        self.pmon_silent_since = None
        self.restart_pending = False
        self.last_sync = reply
        self.pmon_breakdown = {k: v for k, v in reply.get("breakdown", {}).items()}
        self.local = Local(error=0, available=bool(reply.get("available")))
        self.arbiter.epoch = max(self.arbiter.epoch, int(reply.get("epoch", 0)))
        partner = self.partner_view(now)
        for request in reply.get("requests", []):
            self.requests_applied += 1
            if request.get("op") == "force":
                self.arbiter.force(request["server"], self.local_view(now),
                                   partner.partner() if partner else None)
            elif request.get("op") == "prefer":
                self.arbiter.prefer(request["server"], partner.partner() if partner else None)
        return True


def _notify(message: str) -> None:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or not hasattr(socket, "AF_UNIX"):
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode(), address)
    except OSError:
        pass


def main(config: Config) -> int:
    def stop(signum: int, _frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        manager = RedundancyManager(config)
    except OSError as exc:
        print(f"redundancy: {exc}", file=sys.stderr)
        return 1
    return manager.run()
