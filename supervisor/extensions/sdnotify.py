"""pmon as a systemd Type=notify service: READY=1 once the start sequence is done,
WATCHDOG=1 at half the WatchdogSec systemd asked for, STOPPING=1 the moment pmon's own stop
begins (so `systemctl status` says deactivating during the ordered stop), and STATUS= kept
current: what `systemctl status` shows on its Status: line.

STATUS= is coalesced: a change of a manager or of the project arms one timer; when it
fires the line is sent if it differs from the last one. A burst of 500 state changes is
one datagram, an idle project sends none.

The keepalive comes from pmon's event loop itself: if the loop hangs, systemd stops hearing
it and restarts pmon, which then adopts its managers (hot restart). Outside systemd
(no $NOTIFY_SOCKET) this service does nothing.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections import Counter
from typing import TYPE_CHECKING, Mapping

from pmon.runtime.api import Api, Extension

if TYPE_CHECKING:
    from pmon.core.manager import Manager
    from pmon.core.project import ProjectState
    from pmon.states import ManagerState

STATUS_SECONDS = 0.5  # at most one STATUS= per this interval


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


def status_line(project_state: str, states: list[str], stopping: str | None = None) -> str:
    """'running: 3 of 4 managers running (1 stopped)': the project and its managers in
    one line; `stopping` names pmon's own way out ('stopping', 'detaching')."""
    counts = Counter(states)
    running = counts.pop("running", 0)
    others = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    line = f"{stopping or project_state}: {running} of {len(states)} managers running"
    return f"{line} ({others})" if others else line


class SystemdNotifier(Extension):
    """An extension that talks the notify protocol to systemd."""

    name = "systemd notifier"

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.env = dict(os.environ if env is None else env)
        self.address = notify_address(self.env)
        self.sock: socket.socket | None = None
        self._api: Api | None = None
        self._ready = False
        self._stopping: str | None = None  # set once pmon's own stop began
        self._sent_status: str | None = None
        self._status_timer: asyncio.TimerHandle | None = None

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
        self._api = api
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        api.background(self, self._ready_when_started(api))
        interval = watchdog_interval(self.env, os.getpid())
        if interval:
            api.background(self, self._keepalive(interval))

    def current_status(self) -> str:
        assert self._api is not None
        api = self._api
        states = [m.state.value for m in api.managers.values()]
        return status_line(api.project_state.value, states, self._stopping)

    async def _ready_when_started(self, api: Api) -> None:
        await api.project_ready.wait()
        if self._stopping:
            return  # systemd must not see READY=1 after STOPPING=1
        self._ready = True
        self._sent_status = self.current_status()
        self.send(f"READY=1\nSTATUS={self._sent_status}")

    async def _keepalive(self, interval: float) -> None:
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(interval)

    # --- STATUS=, coalesced ---------------------------------------------------------------
    def _changed(self) -> None:
        if self._api is None or self.sock is None or self._status_timer is not None:
            return
        self._status_timer = self._api.loop.call_later(STATUS_SECONDS, self._flush_status)

    def _flush_status(self) -> None:
        self._status_timer = None
        if self.sock is None or not (self._ready or self._stopping):
            return  # before READY=1 the start sequence speaks for itself
        line = self.current_status()
        if line != self._sent_status:
            self._sent_status = line
            self.send(f"STATUS={line}")

    def on_manager(self, manager: "Manager", old: "ManagerState | None") -> None:
        self._changed()

    def on_project(self, state: "ProjectState") -> None:
        self._changed()

    def on_shutdown(self, reason: str, managers_run_on: bool) -> None:
        if self.sock is None or self._stopping:
            return
        self._stopping = "detaching, the managers run on" if managers_run_on else "stopping"
        self._sent_status = self.current_status()
        self.send(f"STOPPING=1\nSTATUS={self._sent_status}")

    async def stop(self) -> None:
        if self._status_timer is not None:
            self._status_timer.cancel()
            self._status_timer = None
        if self.sock is not None and not self._stopping:
            self.send("STOPPING=1")
        if self.sock is not None:
            self._flush_status()  # what pmon leaves behind: `systemctl status` keeps it
            self.sock.close()
            self.sock = None
