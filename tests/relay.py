"""A UDP relay between the two servers of a pair, so a test can cut and restore each link.

Link i: server A sends to `a_side`, server B to `b_side`; the relay forwards each datagram
to the other server's local address, from the socket that server knows as its partner.
One thread serves every link; `cut(i)` drops link i's datagrams until `restore(i)`, and a
link's `delay` (seconds, both ways) holds each datagram that long before it is forwarded
(in order while the delay stays the same: a slow link, as a full queue makes it).
"""

from __future__ import annotations

import heapq
import itertools
import selectors
import socket
import threading
import time


def _bound() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


class RelayLink:
    def __init__(self, a_local: tuple[str, int], b_local: tuple[str, int]) -> None:
        self.a_local = a_local  # where server A listens
        self.b_local = b_local
        self.a_side, self.b_side = _bound(), _bound()  # A's and B's "partner" addresses
        self.up = True
        self.deaf: set[str] = set()  # servers ("a", "b") that get nothing on this link (one way)
        self.delay = 0.0
        self.forwarded = 0

    def address(self, sock: socket.socket) -> str:
        host, port = sock.getsockname()
        return f"{host}:{port}"

    def config(self, server: str) -> dict[str, str]:
        """The [[redundancy.links]] table of server "a" or "b"."""
        if server == "a":
            return {"local": "%s:%d" % self.a_local, "partner": self.address(self.a_side)}
        return {"local": "%s:%d" % self.b_local, "partner": self.address(self.b_side)}


class Relay:
    def __init__(self, links: int = 2) -> None:
        # The servers' listening ports stay reserved (probes held open) until every relay
        # socket is bound: otherwise one of those could take a port a server needs.
        probes = [_bound() for _ in range(2 * links)]
        ports = [probe.getsockname() for probe in probes]
        self.links = [RelayLink(ports[2 * i], ports[2 * i + 1]) for i in range(links)]
        for probe in probes:
            probe.close()
        self._selector = selectors.DefaultSelector()
        for link in self.links:
            self._selector.register(link.a_side, selectors.EVENT_READ, (link, link.b_side, link.b_local))
            self._selector.register(link.b_side, selectors.EVENT_READ, (link, link.a_side, link.a_local))
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def cut(self, *indexes: int) -> None:
        for i in indexes or range(len(self.links)):
            self.links[i].up = False

    def restore(self, *indexes: int) -> None:
        for i in indexes or range(len(self.links)):
            self.links[i].up = True

    def _run(self) -> None:
        held: list[tuple[float, int, RelayLink, socket.socket, bytes, tuple[str, int]]] = []
        order = itertools.count()
        while not self._stop:
            timeout = max(0.0, held[0][0] - time.monotonic()) if held else None
            for key, _ in self._selector.select(timeout):
                if key.data is None:
                    continue
                link, out, to = key.data
                try:
                    data = key.fileobj.recv(65536)
                except OSError:
                    continue
                if self._passes(link, to):  # (a cut drops what comes in meanwhile)
                    heapq.heappush(held, (time.monotonic() + link.delay, next(order), link, out, data, to))
            while held and held[0][0] <= time.monotonic():
                _, _, link, out, data, to = heapq.heappop(held)
                if self._passes(link, to):
                    try:
                        out.sendto(data, to)
                        link.forwarded += 1
                    except OSError:
                        pass  # the server on the other side is down: like a real network

    @staticmethod
    def _passes(link: RelayLink, to: tuple[str, int]) -> bool:
        return link.up and ("b" if to == link.b_local else "a") not in link.deaf

    def close(self) -> None:
        self._stop = True
        self._wake_w.send(b"x")
        self._thread.join(5)
        for link in self.links:
            link.a_side.close()
            link.b_side.close()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()
