"""The systemd notify protocol, server side: managers send READY=1 / WATCHDOG=1 datagrams.

One datagram socket serves every manager (as systemd's does). The kernel tells who sent a
datagram (SO_PASSCRED), so a manager cannot speak for another; a message from a grandchild
is credited to the manager whose process tree it belongs to.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from pathlib import Path
from typing import Callable

from pmon.runtime import platform

MAX_DATAGRAM = 4096
_UCRED = struct.Struct("3i")  # pid, uid, gid


def parse(datagram: bytes) -> dict[str, str]:
    """'READY=1\\nSTATUS=ok' -> {'READY': '1', 'STATUS': 'ok'}; junk lines are ignored."""
    fields: dict[str, str] = {}
    for line in datagram.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition("=")
        if sep and key:
            fields[key.strip()] = value
    return fields


class NotifyListener:
    """Receives notify datagrams and hands (sender pid, fields) to `on_message`."""

    def __init__(self, path: Path, on_message: Callable[[int, dict[str, str]], None]) -> None:
        self.path = path
        self.on_message = on_message
        self.sock: socket.socket | None = None

    @property
    def address(self) -> str:
        return str(self.path)

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        if not platform.HAS_NOTIFY_SOCKET:  # config refuses ready = "notify" there
            return
        self.path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(self.path))
        os.chmod(self.path, 0o600)  # as the control socket: the owner's managers only
        if hasattr(socket, "SO_PASSCRED"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.setblocking(False)
        self.sock = sock
        loop.add_reader(sock.fileno(), self._on_readable)

    def take(self) -> None:
        """Handle what is queued now (non-blocking), as the loop's reader would."""
        if self.sock is not None:
            self._on_readable()

    def _on_readable(self) -> None:
        assert self.sock is not None
        while True:
            try:
                data, ancdata, _flags, _addr = self.sock.recvmsg(
                    MAX_DATAGRAM, socket.CMSG_SPACE(_UCRED.size)
                )
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            pid = 0
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == getattr(socket, "SCM_CREDENTIALS", -1):
                    pid = _UCRED.unpack(payload[: _UCRED.size])[0]
            if pid:
                self.on_message(pid, parse(data))

    def close(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.sock is not None:
            loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
            self.path.unlink(missing_ok=True)
