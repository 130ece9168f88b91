"""A group member's etcd side (docs/redundancy.md "Groups of three or more"): two threads
beside the group daemon's loop, which only reads their state and sets what it wants.

The keys, under the witness's `key` K:
- K                   the leader key: "NAME BOOT" of the active member, bound to its lease;
- K/members/NAME      each member's record (JSON), bound to that member's lease;
- K/handover          a planned handover's mark (JSON {"from", "to", "reason", "at"}), put by the
                      leader under its lease before it lets go of K; the new leader deletes it;
- K/forced            the last forced choice (JSON), no lease: it outlives its members.

The worker thread (`run`, inherited name from Witness, which it extends): grants this
member's lease and renews it every TTL/6 (/v3/lease/keepalive); puts the record when it
changed; creates K when the loop wants the role (a transaction that succeeds only if K does
not exist: the lock, as the witness takes it); deletes K (only if it is still ours) when
the loop lets go; puts the handover mark and forced choices. `held(now)`, as for the
witness, is true only while the last renewal was *sent* less than TTL/2 ago.

All of that only while the group loop lives (`loop_alive`, as for the witness): a loop that
hangs while this thread runs no longer decides nor syncs with pmon, so this thread grants,
renews and writes nothing any more; the lease expires in etcd (never revoked), K and the
record with it, and another member takes the role. A record kept alive for a hung member
would also keep it in the ranking, and the failure rule (only the best takes K) would wait
on it for ever.

The watch thread (`Watcher`) reads every key under K (/v3/kv/range), then follows
/v3/watch on that range (the gateway streams one JSON object a line) and reads the range
again at every event; so a member at rest costs nothing but its lease's keepalive.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.request
from typing import Any, Callable

from pmon.redundancy.settings import WitnessSpec
from pmon.redundancy.witness import RETRY_FAST, RETRY_SLOW, Witness, _b64

WATCH_IDLE = 60.0  # a watch silent this long is opened again (etcd frozen or gone)


def _prefix_end(key: str) -> str:
    """The range end that covers every key starting with `key` (etcd's prefix rule)."""
    raw = key.encode()
    return (raw[:-1] + bytes([raw[-1] + 1])).decode()


class GroupStore(Witness):
    def __init__(self, spec: WitnessSpec, name: str, boot: str, changed: Callable[[], None],
                 clock: Callable[[], float] = time.monotonic,
                 loop_alive: Callable[[float], bool] = lambda _now: True) -> None:
        super().__init__(spec, f"{name} {boot}", changed, clock, loop_alive)
        self.name = name
        self.record: dict[str, Any] | None = None  # to put (None: put already)
        self.leading = False        # K is ours (the create succeeded, not deleted since)
        self.release = False        # delete K once (the loop lets go)
        self.handover: dict[str, Any] | None = None  # a mark to put
        self.forced: list[dict[str, Any]] = []       # forced choices to put, in order
        self.last_renew = 0.0
        self.last_record: dict[str, Any] | None = None  # put again under a new lease

    # --- set by the group loop (never blocks) -------------------------------------------
    def put_record(self, record: dict[str, Any]) -> None:
        with self.lock:
            self.record = record
        self.wake.set()

    def let_go(self, mark: dict[str, Any] | None = None) -> None:
        """Delete K (after the fence); `mark`: the handover mark, put first."""
        with self.lock:
            self.release = True
            self.handover = mark
        self.wake.set()

    def put_forced(self, choice: dict[str, Any]) -> None:
        with self.lock:
            self.forced.append(choice)
        self.wake.set()

    def is_leader(self) -> bool:
        """K is ours and not being let go (whether the lease still holds is `held(now)`)."""
        with self.lock:
            return self.leading and not self.release

    # --- the worker thread ---------------------------------------------------------------
    def run(self) -> None:
        while not self.stopping:
            self.wake.clear()
            now = self.clock()
            if not self.loop_alive(now):
                # the group loop hangs: let the lease expire (K and the record go with it);
                # look again soon: a loop back from a freeze shorter than TTL/2 renews in time
                self.wake.wait(RETRY_FAST)
                continue
            if not self.lease:
                self._grant(now)
            elif now - self.last_renew >= self.spec.ttl / 6:
                self._renew(self.lease, now)
                self.last_renew = now
                if not self.lease:  # expired in etcd: K and the record went with it
                    with self.lock:
                        self.leading = False
                    self.changed()
                    continue
            if self.lease:
                self._writes(now)
            pause = self.spec.ttl / 6 - (self.clock() - self.last_renew) if self.lease else RETRY_SLOW
            with self.lock:
                if self.wanted and not self.leading and self.lease:
                    pause = min(pause, RETRY_SLOW)  # K held by another: the watch wakes us
            self.wake.wait(max(0.01, pause))

    def _grant(self, sent: float) -> None:
        reply = self._post("/v3/lease/grant", {"TTL": int(self.spec.ttl)})
        lease = int(reply.get("ID", 0)) if reply else 0
        if lease:
            with self.lock:
                self.lease, self.renewed_at, self.leading = lease, sent, False
                if self.record is None and self.last_record is not None:
                    self.record = self.last_record  # the old lease took the record with it
            self.last_renew = sent
            self.changed()

    def _writes(self, sent: float) -> None:
        with self.lock:
            record, forced, mark = self.record, list(self.forced), self.handover
            release, want = self.release, self.wanted and not self.leading and not self.release
        key, lease = _b64(self.spec.key), str(self.lease)
        if record is not None:
            put = {"key": _b64(f"{self.spec.key}/members/{self.name}"),
                   "value": _b64(json.dumps(record)), "lease": lease}
            if self._post("/v3/kv/put", put) is not None:
                with self.lock:
                    self.last_record = record
                    if self.record is record:
                        self.record = None
        for choice in forced:
            if self._post("/v3/kv/put", {"key": _b64(f"{self.spec.key}/forced"),
                                         "value": _b64(json.dumps(choice))}) is not None:
                with self.lock:
                    self.forced.remove(choice)
        mine = {"key": key, "target": "VALUE", "result": "EQUAL", "value": _b64(self.holder)}
        if release:
            ops: list[dict[str, Any]] = [{"request_delete_range": {"key": key}}]
            if mark is not None:  # the mark first (in the same transaction as the delete)
                ops.insert(0, {"request_put": {"key": _b64(f"{self.spec.key}/handover"),
                                               "value": _b64(json.dumps(mark)), "lease": lease}})
            if self._post("/v3/kv/txn", {"compare": [mine], "success": ops}) is not None:
                with self.lock:
                    self.leading, self.release, self.handover = False, False, None
                self.changed()
        elif want:
            txn = self._post("/v3/kv/txn", {
                "compare": [{"key": key, "target": "CREATE", "result": "EQUAL",
                             "create_revision": "0"}],
                "success": [{"request_put": {"key": key, "value": _b64(self.holder), "lease": lease}},
                            {"request_delete_range": {"key": _b64(f"{self.spec.key}/handover")}}],
            })
            if txn is not None and txn.get("succeeded"):
                with self.lock:
                    self.leading = True
                self.changed()


class Watcher(threading.Thread):
    """Every key under K, as etcd has it: `snapshot()` -> ({suffix: value}, fresh)."""

    def __init__(self, store: GroupStore, changed: Callable[[], None]) -> None:
        super().__init__(name="group-watch", daemon=True)
        self.store, self.changed = store, changed
        self.lock = threading.Lock()
        self.values: dict[str, str] = {}
        self.fresh = False  # the last read worked and the watch is open
        self.stopping = False

    def snapshot(self) -> tuple[dict[str, str], bool]:
        with self.lock:
            return dict(self.values), self.fresh

    def run(self) -> None:
        while not self.stopping:
            try:
                self._follow()
            except (OSError, ValueError):
                pass  # the stream ended (etcd gone, or idle for WATCH_IDLE): read again
            if not self.fresh:
                time.sleep(0.2)  # etcd away: try again soon (a refused connect costs little)

    def _read(self) -> int:
        key = self.store.spec.key
        reply = self.store._post("/v3/kv/range", {"key": _b64(key), "range_end": _b64(_prefix_end(key))})
        if reply is None:
            with self.lock:
                self.fresh = False
            self.changed()
            raise OSError("etcd unreachable")
        values = {}
        for kv in reply.get("kvs", []):
            name = base64.b64decode(kv["key"]).decode(errors="replace")
            values[name[len(key):]] = base64.b64decode(kv.get("value", "")).decode(errors="replace")
        with self.lock:
            self.values, self.fresh = values, True
        self.changed()
        return int(reply.get("header", {}).get("revision", 0))

    def _follow(self) -> None:
        revision = self._read()
        key = self.store.spec.key
        body = {"create_request": {"key": _b64(key), "range_end": _b64(_prefix_end(key)),
                                   "start_revision": str(revision + 1)}}
        url = self.store.spec.etcd[self.store.endpoint] + "/v3/watch"
        request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=WATCH_IDLE) as stream:
            for line in stream:
                if self.stopping:
                    return
                result = json.loads(line).get("result", {})
                if result.get("events") or result.get("canceled"):
                    if result.get("canceled"):
                        return
                    self._read()
