"""The beat: the redundancy manager's heartbeat loop tells its pmon it is alive (WATCHDOG=1
on pmon's notify socket), with every heartbeat it sends to the partner. pmon on the active
server stops its run_on = "active" managers itself when the beat stops for `self_fence`
(docs/redundancy.md "Fencing": the self-fence), so a frozen redundancy manager, whose
partner takes the role after `timeout`, leaves no driver running.

Never blocks: a pmon that is stopped (SIGSTOP) or restarting leaves its socket's queue full
or absent; the beat is then lost, which is what pmon would judge by anyway.

On Linux the beat also re-arms a timer (beat_timer.py) that expires `self_fence` later;
once pmon says (in its sync reply) that it holds that timer, the datagram is no longer
sent: pmon is then woken only by the timer's expiry, not by every beat.
"""

from __future__ import annotations

import os
import socket

from pmon.redundancy import beat_timer

MESSAGE = b"WATCHDOG=1"


class Beat:
    def __init__(self, address: str | None, timer: int | None = None) -> None:
        self.address = address
        self.sock: socket.socket | None = None
        if address is not None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.sock.setblocking(False)
        self.timer = timer  # the beat's timerfd, or None (the datagram only)
        self.held = False  # pmon said it holds the timer: no datagram needed

    @classmethod
    def from_env(cls, timer: bool = False) -> "Beat":
        """`timer`: make the beat's timer too, where there can be one."""
        address = os.environ.get("NOTIFY_SOCKET")
        if not address or not hasattr(socket, "AF_UNIX"):
            return cls(None)
        fd = None
        if timer and beat_timer.available():
            try:
                fd = beat_timer.create()
            except OSError:
                pass  # the datagram only
        return cls("\0" + address[1:] if address.startswith("@") else address, fd)

    def send(self, expires: float = 0.0) -> None:
        """One beat: the timer expires `expires` from now; the datagram unless pmon holds
        the timer (or the timer failed: then never again)."""
        if self.timer is not None:
            try:
                beat_timer.arm(self.timer, expires)
            except OSError:
                os.close(self.timer)
                self.timer, self.held = None, False
        if not self.held:
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
        if self.timer is not None:
            os.close(self.timer)
            self.timer = None
