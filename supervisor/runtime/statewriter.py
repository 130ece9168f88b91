"""The state file's writes, off the loop: write + fsync + rename + directory fsync take a few
ms on a quiet disk and seconds under writeback pressure, and for that time the loop would
see no death, no READY, no WATCHDOG=1, no control request.

One write at a time in a worker thread; a snapshot handed in while one is under way waits,
and a newer one replaces it (the latest state wins: the file is a snapshot, not a log). Each
snapshot has a number, so a command can wait until the one taken after its change is on
disk (the durable acknowledgement) without waiting for later ones.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Callable

from pmon.runtime.statefile import write_atomically


class StateWriter:
    def __init__(self, path: Callable[[], Path], on_done: Callable[[OSError | None], None]) -> None:
        self.path = path  # asked at each write
        self.on_done = on_done  # on the loop, after each write: None, or why it failed
        self.submitted = 0  # the number of the latest snapshot handed in
        self.finished = 0  # the number of the latest snapshot whose write has ended
        self._next: tuple[int, bytes] | None = None
        self._task: asyncio.Task[None] | None = None
        self._ended = asyncio.Event()

    def submit(self, data: bytes) -> int:
        """Write `data` soon (replacing a snapshot not yet begun); returns its number."""
        self.submitted += 1
        self._next = (self.submitted, data)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._drain())
        return self.submitted

    async def written(self, number: int) -> None:
        """Until the write of snapshot `number` (or of a newer one) has ended."""
        while self.finished < number:
            self._ended.clear()
            await self._ended.wait()

    async def idle(self) -> None:
        """Until no write is under way nor waiting (before a write of pmon's own, at exit)."""
        await self.written(self.submitted)

    async def _drain(self) -> None:
        try:
            while self._next is not None:
                number, data = self._next
                self._next = None
                error: OSError | None = None
                try:
                    await asyncio.to_thread(write_atomically, self.path(), data)
                except OSError as exc:
                    error = exc
                self.finished = number
                self._ended.set()
                self.on_done(error)
        finally:
            self._task = None
