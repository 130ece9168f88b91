"""The event feed: every record of the event log, and every state change, pushed to the
control clients that subscribed (`pmon events -f`, the live console, metrics).

Why a bounded queue per subscriber: publishing happens on the supervisor's loop, inside the
code that decides; it must never wait for a client. A subscriber that does not read fast
enough loses records, counted, and is told so by one `lost` record when it catches up
(`{"event": "lost", "lost": N, ...}`), so a slow console cannot stall pmon or grow its memory.
"""

from __future__ import annotations

import asyncio
import fnmatch
import time
from collections import deque
from typing import Any, Iterable

QUEUE_LIMIT = 1000  # records held for one subscriber before it starts to lose them


class Subscriber:
    """One client's queue: `put` never blocks, `get` waits for the next record."""

    def __init__(self, managers: Iterable[str] = (), limit: int = QUEUE_LIMIT) -> None:
        self.patterns = tuple(managers)
        self.limit = max(1, limit)
        self._queue: deque[dict[str, Any]] = deque()
        self._ready = asyncio.Event()
        self.lost = 0

    def wants(self, record: dict[str, Any]) -> bool:
        """With patterns, only the records about a matching manager; without, all."""
        if not self.patterns:
            return True
        name = record.get("manager")
        return isinstance(name, str) and any(fnmatch.fnmatchcase(name, p) for p in self.patterns)

    def put(self, record: dict[str, Any]) -> None:
        if not self.wants(record):
            return
        if len(self._queue) >= self.limit:
            self.lost += 1
            return
        if self.lost:  # room again: the marker goes where the records were lost (it takes
            self._queue.append(lost_record(self.lost))  # no slot: at most limit + 1 held)
            self.lost = 0
        self._queue.append(record)
        self._ready.set()

    async def get(self) -> dict[str, Any]:
        """The next record, in order; a `lost` marker where records were dropped."""
        while not self._queue and not self.lost:
            self._ready.clear()
            await self._ready.wait()
        if not self._queue:  # dropped records, and nothing newer yet
            lost, self.lost = self.lost, 0
            return lost_record(lost)
        return self._queue.popleft()


def lost_record(count: int) -> dict[str, Any]:
    return {
        "ts": round(time.time(), 3), "event": "lost", "lost": count,
        "message": f"lost {count} events (this subscriber read too slowly)",
    }


class Feed:
    """The subscribers of one pmon; `publish` hands a record to each of them at once."""

    def __init__(self) -> None:
        self.subscribers: set[Subscriber] = set()

    def subscribe(self, managers: Iterable[str] = (), limit: int = QUEUE_LIMIT) -> Subscriber:
        subscriber = Subscriber(managers, limit)
        self.subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)

    def publish(self, record: dict[str, Any]) -> None:
        for subscriber in self.subscribers:
            subscriber.put(record)
