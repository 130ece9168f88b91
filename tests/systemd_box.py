"""systemd as PID 1 of a container booted on this machine's own root, for tests and
scripts: systemd-nspawn --volatile=overlay on a bind mount of / in a private mount
namespace (nothing of the host changes); commands run inside with nsenter."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import psutil

from support import poll_for


class Container:
    """systemd as PID 1 of a container on the host's root (TESTING recipe); commands run
    inside with nsenter."""

    def __init__(self, tmp: Path, binds: list[Path]) -> None:
        root = tmp / "root"
        root.mkdir()
        boot = (
            "set -e; mount -t tmpfs tmpfs /run; mount --bind / \"$1\"; shift; "
            "exec systemd-nspawn -q -D \"$0\" --volatile=overlay -b --register=no "
            "--keep-unit --private-network --tmpfs=/etc/systemd/system \"$@\""
        )
        self.proc = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", boot, str(root), str(root),
             *(f"--bind={path}" for path in binds)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        self.pid = poll_for(self._init_pid, 30, "the container's systemd")
        poll_for(lambda: self.run("systemctl", "is-system-running").stdout.strip()
                 in ("running", "degraded"), 60, "the container to boot")

    def _init_pid(self) -> int | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"systemd-nspawn ended: {self.proc.stderr.read().decode()}")
        try:
            return next((c.pid for c in psutil.Process(self.proc.pid).children()
                         if c.name() == "systemd"), None)
        except psutil.Error:
            return None

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["nsenter", "-t", str(self.pid), "-a", *args],
                              capture_output=True, text=True, timeout=timeout)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run("systemctl", "show", unit, *(f"-p{p}" for p in props)).stdout
        return dict(line.partition("=")[::2] for line in out.splitlines())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # nspawn shuts the container down
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc.stderr.close()
