"""The links to the partner: one UDP socket per configured link, and what each has heard.

A link is up while a valid heartbeat from the partner arrived on it within the timeout. A
datagram that does not come from the partner's host (the address this side sends to; the
port may differ, as behind a NAT) is dropped unread and counted, with the last such sender
(pmon writes an event for each new one: this loop writes to no disk), as keepalived's
check_unicast_src drops a VRRP advert from an address that is not a unicast peer: a third
server that sends here by mistake, say a neighbouring pair whose servers have the same
names, never speaks for the partner. A forged source address is not caught: the links
belong on a network only the pair uses. A send error (network unreachable, no route,
refused) is counted and forgotten: the next heartbeat simply tries again. The partner's
address is resolved once, when the link opens, so that no heartbeat ever waits on a name
lookup.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from pmon.redundancy.messages import MAX_DATAGRAM
from pmon.redundancy.settings import Link

# The receive buffer, which each call allocates (also when nothing waits), so not 64 KiB: a
# datagram longer than a heartbeat may be is cut to one byte more, and dropped as too long.
RECEIVE_BYTES = MAX_DATAGRAM + 1


@dataclass
class LinkState:
    spec: Link
    sock: socket.socket
    address: tuple[str, int] = ("", 0)  # the partner's, resolved at open
    last_rx: float | None = None
    received: int = 0
    sent: int = 0
    send_errors: int = 0
    last_error: str = ""
    strangers: int = 0  # datagrams from another host than the partner's, dropped
    stranger: str = ""  # the last such sender, HOST:PORT

    def up(self, now: float, timeout: float) -> bool:
        return self.last_rx is not None and now - self.last_rx < timeout

    def expires(self, timeout: float) -> float | None:
        return None if self.last_rx is None else self.last_rx + timeout

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendto(data, self.address)
            self.sent += 1
        except OSError as exc:  # unreachable, no route, refused: keep trying next beat
            self.send_errors += 1
            self.last_error = str(exc)

    def receive(self) -> list[bytes]:
        """Every datagram from the partner's address waiting on the socket (non-blocking)."""
        out: list[bytes] = []
        while True:
            try:
                data, source = self.sock.recvfrom(RECEIVE_BYTES)
            except (BlockingIOError, InterruptedError):
                return out
            except OSError as exc:  # e.g. an ICMP error reported on receive
                self.last_error = str(exc)
                return out
            if source[0] != self.address[0]:
                self.strangers += 1
                self.stranger = host_port(source[0], source[1])
                continue
            out.append(data)

    def report(self, now: float, timeout: float) -> dict[str, object]:
        return {
            "link": self.spec.label(),
            "up": self.up(now, timeout),
            "last_heard": None if self.last_rx is None else round(now - self.last_rx, 3),
            "received": self.received, "sent": self.sent, "send_errors": self.send_errors,
            "last_error": self.last_error, "strangers": self.strangers, "stranger": self.stranger,
            "partner_address": host_port(*self.address),  # as resolved, what is compared
        }


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class Links:
    links: list[LinkState] = field(default_factory=list)

    @classmethod
    def open(cls, specs: tuple[Link, ...]) -> "Links":
        links: list[LinkState] = []
        for spec in specs:
            family = socket.AF_INET6 if ":" in spec.local[0] else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            try:
                sock.bind(spec.local)
                found = socket.getaddrinfo(*spec.partner, family, socket.SOCK_DGRAM)
            except OSError as exc:
                sock.close()
                for link in links:
                    link.sock.close()
                raise OSError(f"link {spec.label()}: {exc}") from None
            links.append(LinkState(spec, sock, address=(str(found[0][4][0]), int(found[0][4][1]))))
        return cls(links)

    def close(self) -> None:
        for link in self.links:
            link.sock.close()
