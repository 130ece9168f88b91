"""The beat: the redundancy manager's heartbeat loop tells its pmon it is alive (WATCHDOG=1
on pmon's notify socket), with every heartbeat it sends to the partner. pmon on the active
server stops its run_on = "active" managers itself when the beat stops for `self_fence`
(docs/redundancy.md "Fencing": the self-fence), so a frozen redundancy manager, whose
partner takes the role after `timeout`, leaves no driver running.

Never blocks: a pmon that is stopped (SIGSTOP) or restarting leaves its socket's queue full
or absent; the beat is then lost, which is what pmon would judge by anyway.
"""

from __future__ import annotations

import os
import socket

MESSAGE = b"WATCHDOG=1"


class Beat:
    def __init__(self, address: str | None) -> None:
        self.address = address
        self.sock: socket.socket | None = None
        if address is not None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.sock.setblocking(False)

    @classmethod
    def from_env(cls) -> "Beat":
        address = os.environ.get("NOTIFY_SOCKET")
        if not address or not hasattr(socket, "AF_UNIX"):
            return cls(None)
        return cls("\0" + address[1:] if address.startswith("@") else address)

    def send(self) -> None:
        self.notify(MESSAGE)

    def notify(self, message: bytes) -> None:
        """Any notify-protocol line (WATCHDOG=1, READY=1) to pmon; never blocks."""
        if self.sock is None or self.address is None:
            return
        try:
            self.sock.sendto(message, self.address)
        except OSError:
            pass  # pmon stopped (queue full) or away (a hot restart): the line is lost

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
