"""The supervisor watchdog: with `stop_on_write_error = true` under [project], pmon stops
the project cleanly when it cannot write its state file or its logs (a full disk, a dead
filesystem) instead of running blind. The reaction is in `Supervisor.write_failed`, which
every write path reports to; this service adds a probe, because a quiet plant writes
nothing for hours: every PROBE_SECONDS it writes the state file once.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pmon.runtime.supervisor import Supervisor

PROBE_SECONDS = 5.0


class WriteProbe:
    def __init__(self, interval: float = PROBE_SECONDS) -> None:
        self.interval = interval
        self._timer: asyncio.TimerHandle | None = None

    async def start(self, sup: "Supervisor") -> None:
        if sup.config.project.stop_on_write_error:
            self._timer = sup.loop.call_later(self.interval, self._probe, sup)

    async def stop(self, sup: "Supervisor") -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _probe(self, sup: "Supervisor") -> None:
        sup._write_state()  # a failure goes to sup.write_failed, which stops the project
        self._timer = sup.loop.call_later(self.interval, self._probe, sup)
