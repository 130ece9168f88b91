"""pmon as a systemd Type=notify service: READY=1 once the start sequence is done,
WATCHDOG=1 at half the WatchdogSec systemd asked for, STOPPING=1 when it goes down.

The keepalive comes from pmon's event loop itself: if the loop hangs, systemd stops hearing
it and restarts pmon, which then adopts its managers (hot restart). Outside systemd
(no $NOTIFY_SOCKET) this service does nothing.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Mapping

from pmon.runtime.api import Api, Extension


def notify_address(env: Mapping[str, str]) -> str | None:
    address = env.get("NOTIFY_SOCKET")
    if not address or not hasattr(socket, "AF_UNIX"):
        return None
    return "\0" + address[1:] if address.startswith("@") else address


def watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds between keepalives (half of WATCHDOG_USEC), or None when none is wanted."""
    usec = env.get("WATCHDOG_USEC", "")
    owner = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (owner.isdigit() and int(owner) != pid):
        return None
    return int(usec) / 2e6


class SystemdNotifier(Extension):
    """An extension that talks the notify protocol to systemd."""

    name = "systemd notifier"

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.env = dict(os.environ if env is None else env)
        self.address = notify_address(self.env)
        self.sock: socket.socket | None = None

    def send(self, message: str) -> None:
        if self.sock is None or self.address is None:
            return
        try:
            self.sock.sendto(message.encode(), self.address)
        except OSError:
            pass  # systemd gone or busy: pmon supervises on regardless

    async def start(self, api: Api) -> None:
        if self.address is None:
            return
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        api.background(self, self._ready_when_started(api))
        interval = watchdog_interval(self.env, os.getpid())
        if interval:
            api.background(self, self._keepalive(interval))

    async def _ready_when_started(self, api: Api) -> None:
        await api.project_ready.wait()
        running = sum(1 for m in api.managers.values() if m.alive)
        self.send(f"READY=1\nSTATUS=project {api.config.project.name}: {running} managers running")

    async def _keepalive(self, interval: float) -> None:
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(interval)

    async def stop(self) -> None:
        self.send("STOPPING=1")
        if self.sock is not None:
            self.sock.close()
            self.sock = None
