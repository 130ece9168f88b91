"""A real etcd on loopback for the witness's tests: its data in a temporary folder, on free
ports; kill() and start() again on the same data (its leases survive, as in life)."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Etcd:
    def __init__(self, directory: Path) -> None:
        if shutil.which("etcd") is None:
            pytest.skip("etcd is not installed (Debian package etcd-server)")
        self.directory = directory
        self.client, self.peer = _free_port(), _free_port()
        self.url = f"http://127.0.0.1:{self.client}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self, timeout: float = 20.0) -> None:
        peer = f"http://127.0.0.1:{self.peer}"
        log = open(self.directory / "etcd.log", "ab")
        self.proc = subprocess.Popen(
            ["etcd", "--data-dir", str(self.directory / "data"), "--name", "default",
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"default={peer}"],
            stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"etcd exited: {(self.directory / 'etcd.log').read_text()[-2000:]}")
            try:
                self.post("/v3/kv/range", {"key": _b64("probe")})
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("etcd did not answer within the deadline")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                         method="POST")
        with urllib.request.urlopen(request, timeout=2) as response:
            reply: dict[str, Any] = json.loads(response.read())
            return reply

    def holder(self, key: str) -> str | None:
        """Who holds `key` ("SERVER BOOT"), or None."""
        kvs = self.post("/v3/kv/range", {"key": _b64(key)}).get("kvs", [])
        return base64.b64decode(kvs[0]["value"]).decode() if kvs else None

    def close(self) -> None:
        self.kill()


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[Etcd]:
    """A real etcd for one test (import this fixture into the test module)."""
    (tmp_path / "etcd").mkdir()
    instance = Etcd(tmp_path / "etcd")
    yield instance
    instance.close()
