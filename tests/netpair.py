"""A real network between the two servers of a pair: two network namespaces joined by two
veth links (10.200.1.0/24 and 10.200.2.0/24), each server's pmon run inside its namespace.

Faults, per link and per direction (a direction is the sender's side of the link):
- `loss(link, percent, sender)`: a tc clsact egress filter, a classic-BPF program in
  direct-action mode that drops that share of the sender's IPv4 UDP datagrams (the kernel's
  random number, `ld rand`, against a threshold; ARP and everything else pass);
- `cut(link, sender)`: the same filter dropping every UDP datagram; `cut(link)` with no
  sender cuts both ways, `restore()` removes every filter;
- `down(link)` / `up(link)`: the link itself (`ip link set down`), as a pulled cable.
This kernel has no netem, so there is no delay here (tests/relay.py can hold datagrams).

Needs root, iproute2 and tc; `NetPair.unavailable()` says in one line why not. `close()`
kills every process left in the namespaces and deletes them, whatever happened before.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from dataclasses import dataclass

PORT = 7100
_counter = itertools.count()

# Classic BPF, run on the frame from the Ethernet header: IPv4 (ethertype at 12) and UDP
# (protocol at 14 + 9) -> compare `ld rand` with the threshold; pass = 0, drop = 2.
_LOSS = ("8,40 0 0 12,21 0 4 2048,48 0 0 23,21 0 2 17,32 0 0 4294963256,"
         "53 0 1 {threshold},6 0 0 0,6 0 0 2")
_CUT = "6,40 0 0 12,21 0 2 2048,48 0 0 23,21 1 0 17,6 0 0 0,6 0 0 2"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=check)


@dataclass
class NetLink:
    index: int  # 1 or 2

    def address(self, server: str) -> str:
        return f"10.200.{self.index}.{1 if server == 'a' else 2}"

    def config(self, server: str) -> dict[str, str]:
        """The [[redundancy.links]] table of server "a" or "b"."""
        partner = "b" if server == "a" else "a"
        port = PORT + self.index
        return {"local": f"{self.address(server)}:{port}", "partner": f"{self.address(partner)}:{port}"}


class NetPair:
    def __init__(self) -> None:
        tag = f"p15x{os.getpid() % 100000}x{next(_counter)}"
        self.ns = {"a": f"{tag}a", "b": f"{tag}b"}
        self.links = [NetLink(1), NetLink(2)]
        self._made: list[str] = []
        try:
            for server in ("a", "b"):
                _ip("netns", "add", self.ns[server])
                self._made.append(self.ns[server])
                _ip("-n", self.ns[server], "link", "set", "lo", "up")
            for link in self.links:
                a, b = self.device("a", link.index), self.device("b", link.index)
                _ip("-n", self.ns["a"], "link", "add", a, "type", "veth", "peer", "name", b,
                    "netns", self.ns["b"])
                for server, dev in (("a", a), ("b", b)):
                    _ip("-n", self.ns[server], "addr", "add", f"{link.address(server)}/24", "dev", dev)
                    _ip("-n", self.ns[server], "link", "set", dev, "up")
                    self._tc(server, "qdisc", "add", "dev", dev, "clsact")
        except BaseException:
            self.close()
            raise

    @staticmethod
    def unavailable() -> str | None:
        """Why a real network cannot be made here (None: it can)."""
        if os.geteuid() != 0:
            return "needs root for network namespaces"
        for tool in ("ip", "tc"):
            if shutil.which(tool) is None:
                return f"needs {tool} (iproute2)"
        try:
            NetPair().close()
        except (OSError, subprocess.SubprocessError) as exc:
            return f"cannot make network namespaces: {exc}"
        return None

    def device(self, server: str, index: int) -> str:
        return f"{server}{index}"

    def prefix(self, server: str) -> list[str]:
        """Run a command inside `server`'s namespace (ip netns exec execs it: same pid)."""
        return ["ip", "netns", "exec", self.ns[server]]

    def _tc(self, server: str, *args: str, check: bool = True) -> None:
        subprocess.run(["tc", "-n", self.ns[server], *args], capture_output=True, text=True,
                       timeout=10, check=check)

    def _filter(self, link: int, sender: str, bytecode: str | None) -> None:
        dev = self.device(sender, link)
        self._tc(sender, "filter", "del", "dev", dev, "egress", "pref", "1", check=False)
        if bytecode is not None:
            self._tc(sender, "filter", "add", "dev", dev, "egress", "pref", "1", "bpf", "da",
                     "bytecode", bytecode)

    def _senders(self, sender: str | None) -> tuple[str, ...]:
        return ("a", "b") if sender is None else (sender,)

    def _links(self, link: int | None) -> list[int]:
        return [l.index for l in self.links] if link is None else [link]

    def loss(self, link: int | None, percent: float, sender: str | None = None) -> None:
        """Drop `percent` % of the UDP datagrams `sender` sends on `link` (None: both ways /
        every link); 0 removes the filter."""
        threshold = min(int(percent / 100 * 2**32), 2**32 - 1)
        for index in self._links(link):
            for side in self._senders(sender):
                self._filter(index, side, _LOSS.format(threshold=threshold) if percent > 0 else None)

    def cut(self, link: int | None = None, sender: str | None = None) -> None:
        for index in self._links(link):
            for side in self._senders(sender):
                self._filter(index, side, _CUT)

    def restore(self, link: int | None = None, sender: str | None = None) -> None:
        for index in self._links(link):
            for side in self._senders(sender):
                self._filter(index, side, None)

    def down(self, link: int) -> None:
        _ip("-n", self.ns["a"], "link", "set", self.device("a", link), "down")

    def up(self, link: int) -> None:
        for server in ("a", "b"):
            _ip("-n", self.ns[server], "link", "set", self.device(server, link), "up")

    def pids(self) -> list[int]:
        out: list[int] = []
        for ns in self._made:
            result = _ip("netns", "pids", ns, check=False)
            out += [int(p) for p in result.stdout.split()]
        return out

    def close(self) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        for ns in self._made:
            _ip("netns", "del", ns, check=False)
        self._made = []
