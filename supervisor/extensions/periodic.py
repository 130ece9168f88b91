"""Periodic housekeeping, each an extension: log rotation and the write probe.

LogRotation checks the managers' output files every CHECK_SECONDS (and the supervisor at
every start of a manager) and rotates big ones (runtime/output.py says how).

WriteProbe is the supervisor watchdog's probe: with `stop_on_write_error = true` under
[project], pmon stops the project cleanly when it cannot write its state file or its logs
(a full disk, a dead filesystem) instead of running blind. The reaction is in
`Supervisor.write_failed`, which every write path reports to; the probe is needed because a
quiet plant writes nothing for hours: every PROBE_SECONDS it writes the state file once.
"""

from __future__ import annotations

import asyncio

from pmon.runtime.api import Api, Extension
from pmon.runtime.output import CHECK_SECONDS

PROBE_SECONDS = 5.0


class Periodic(Extension):
    """Calls `tick` every `interval` seconds for as long as pmon runs."""

    def __init__(self, interval: float) -> None:
        self.interval = interval

    async def start(self, api: Api) -> None:
        api.background(self, self._every(api))

    async def _every(self, api: Api) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.tick(api)

    def tick(self, api: Api) -> None:
        raise NotImplementedError


class LogRotation(Periodic):
    name = "log rotation"

    def __init__(self, interval: float = CHECK_SECONDS) -> None:
        super().__init__(interval)

    def tick(self, api: Api) -> None:
        api.rotate_logs()


class WriteProbe(Periodic):
    name = "write probe"

    def __init__(self, interval: float = PROBE_SECONDS) -> None:
        super().__init__(interval)

    def tick(self, api: Api) -> None:
        if api.config.project.stop_on_write_error:  # as it is now: a reload may change it
            api.save_state()  # a failure goes to write_failed, which stops the project
