"""The witness: an etcd key held under a lease; only the holder may be active
(docs/redundancy.md "The witness").

A thread of its own talks to etcd's v3 HTTP/JSON gateway with urllib (no client library):
- while the heartbeat loop `want`s the role and the lease is not held: grant a lease
  (/v3/lease/grant) and create the key bound to it in one transaction that succeeds only
  if the key does not exist (/v3/kv/txn, compare create_revision == 0); on failure, revoke
  the unused lease and try again soon;
- while held: renew it (/v3/lease/keepalive) every TTL/6, as long as the heartbeat loop
  lives (`loop_alive`): a stuck loop (its pmon self-fences) must not keep the lease alive,
  or the partner could never take it; it is left to expire, never revoked;
- once not wanted any more: revoke it (/v3/lease/revoke), which deletes the key.
Every call has a timeout well under the TTL, and tries the next endpoint on failure.

The heartbeat loop never waits on this thread: it reads `held(now)`, which is true only
while the last successful grant or renewal was *sent* less than `lost_after` (TTL/2) ago.
etcd counts the TTL from when it received that request, so this server always counts the
lease lost before etcd lets it expire and the partner can take it.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable

from pmon.redundancy.settings import WitnessSpec

RETRY_FAST = 0.1   # while wanting the role, just after a change: the holder is letting go
RETRY_SLOW = 1.0   # while wanting the role for longer (e.g. a partition: the partner holds it)
FAST_FOR = 2.0


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class Witness(threading.Thread):
    def __init__(self, spec: WitnessSpec, holder: str, changed: Callable[[], None],
                 clock: Callable[[], float] = time.monotonic,
                 loop_alive: Callable[[float], bool] = lambda _now: True) -> None:
        super().__init__(name="witness", daemon=True)
        self.spec, self.holder, self.changed, self.clock = spec, holder, changed, clock
        self.request_timeout = min(1.0, spec.ttl / 6)
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.wanted = False
        self.wanted_since = 0.0
        self.loop_alive = loop_alive
        self.lease = 0           # the lease id held (0: none)
        self.renewed_at: float | None = None  # when the last successful grant/renewal was sent
        self.error = ""          # the last failure, for people ("" when the last call worked)
        self.endpoint = 0        # the etcd URL tried first
        self.stopping = False

    # --- read by the heartbeat loop (never blocks on etcd) -----------------------------
    def held(self, now: float) -> bool:
        with self.lock:
            return self.lease != 0 and self.renewed_at is not None and \
                now - self.renewed_at < self.spec.lost_after

    def lost_at(self) -> float | None:
        """When the held lease counts as lost unless renewed first (None: none held): the
        heartbeat loop wakes then, to fence at once, not at its next beat."""
        with self.lock:
            return None if not self.lease or self.renewed_at is None else \
                self.renewed_at + self.spec.lost_after

    def reachable(self) -> bool:
        """The last call to etcd worked (a partner could take the lease if handed over)."""
        return not self.error

    def want(self, wanted: bool, now: float) -> None:
        with self.lock:
            if wanted == self.wanted:
                return
            self.wanted = wanted
            self.wanted_since = now
        self.wake.set()

    def status(self, now: float) -> dict[str, Any]:
        with self.lock:
            return {"key": self.spec.key, "held": self.lease != 0 and self.renewed_at is not None
                    and now - self.renewed_at < self.spec.lost_after,
                    "wanted": self.wanted, "error": self.error or None}

    def stop(self) -> None:
        self.stopping = True
        self.wake.set()

    # --- the thread --------------------------------------------------------------------
    def run(self) -> None:
        while not self.stopping:
            self.wake.clear()
            try:
                pause = self._turn()
            except (ValueError, TypeError, AttributeError, KeyError) as exc:
                # etcd (or a proxy before it) answered something unexpected: the thread
                # must live on, or the lease would never be renewed nor taken again; the
                # next try starts at the next endpoint
                self.error = f"unexpected reply from {self.spec.etcd[self.endpoint]}: {exc!r}"
                self.endpoint = (self.endpoint + 1) % len(self.spec.etcd)
                pause = RETRY_FAST
            self.wake.wait(pause)
        # Stopping (the redundancy manager exits) does not revoke a held lease: the
        # run_on = "active" managers may still be stopping; the partner gets it once it expired.

    def _turn(self) -> float:
        """One step: acquire, renew or release as wanted; returns the pause until the next."""
        with self.lock:
            wanted, lease, since = self.wanted, self.lease, self.wanted_since
        now = self.clock()
        if lease and not wanted:
            self._release(lease)
            return RETRY_SLOW
        if lease and not self.loop_alive(now):
            return self.spec.ttl / 6  # the heartbeat loop is stuck: let the lease expire
        if lease:
            self._renew(lease, now)
            return self.spec.ttl / 6
        if wanted:
            self._acquire(now)
            return self.spec.ttl / 6 if self.lease else (
                RETRY_FAST if now - since < FAST_FOR else RETRY_SLOW)
        return 3600.0  # nothing to do until wanted

    def _acquire(self, sent: float) -> None:
        reply = self._post("/v3/lease/grant", {"TTL": int(self.spec.ttl)})
        lease = int(reply["ID"]) if reply is not None else 0  # no ID: a KeyError, for run()
        if not lease:
            return
        key = _b64(self.spec.key)
        txn = self._post("/v3/kv/txn", {
            "compare": [{"key": key, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}],
            "success": [{"request_put": {"key": key, "value": _b64(self.holder), "lease": str(lease)}}],
        })
        if txn is not None and txn.get("succeeded"):
            with self.lock:
                self.lease, self.renewed_at = lease, sent
            self.changed()  # the heartbeat loop may become active now
            return
        self._post("/v3/lease/revoke", {"ID": str(lease)})  # someone else holds the key

    def _renew(self, lease: int, sent: float) -> None:
        reply = self._post("/v3/lease/keepalive", {"ID": str(lease)})
        if reply is None:
            return  # etcd unreachable: held() turns false after lost_after
        result = reply.get("result", reply)
        if int(result.get("TTL", 0)) <= 0:  # expired (or revoked) in etcd: the key is gone
            with self.lock:
                self.lease, self.renewed_at = 0, None
            self.error = "the lease expired in etcd"
            return
        with self.lock:
            if self.lease == lease:
                self.renewed_at = sent

    def _release(self, lease: int) -> None:
        with self.lock:
            self.lease, self.renewed_at = 0, None  # counted lost at once, even if etcd is away
        self._post("/v3/lease/revoke", {"ID": str(lease)})

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """POST to the first etcd endpoint that answers; None when none does."""
        data = json.dumps(body).encode()
        urls = self.spec.etcd
        for i in range(len(urls)):
            index = (self.endpoint + i) % len(urls)
            request = urllib.request.Request(urls[index] + path, data=data, method="POST",
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=self.request_timeout) as response:
                    reply: dict[str, Any] = json.loads(response.read() or b"{}")
            except urllib.error.HTTPError as exc:
                self.error = f"{urls[index]}{path}: HTTP {exc.code}"
                if exc.code >= 500:  # that member is unwell (no leader, overloaded): next one
                    continue
                return None  # etcd answered: an error of the request itself
            except (OSError, ValueError) as exc:
                self.error = f"{urls[index]}: {exc}"
                continue
            if not isinstance(reply, dict):
                self.error = f"{urls[index]}{path}: not a JSON object"
                continue
            self.endpoint = index
            self.error = ""
            return reply
        return None
