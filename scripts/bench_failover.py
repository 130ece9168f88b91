#!/usr/bin/env python3
"""Benchmark the redundant pair: failover time, planned switchover time, flapping.

    .venv/bin/python scripts/bench_failover.py [--rounds 7] [--planned 7]

Two real pmon instances on loopback with the DEFAULT [redundancy] settings (only names,
links and the preference are set), two links, and on each server a core manager plus a
`run_on = "active"` driver. The driver sends one UDP datagram to this script the moment it
runs, so "its run_on = "active" managers run" is timed by a blocking receive, not a poll.

- failover: SIGKILL of the active server's whole pmon process tree (pmon, redundancy
  manager, every manager) -> the passive reports itself active (`redu-status`, polled every
  10 ms) and its driver runs. Then the killed server is started again and the pair settles.
- planned: `redu-set-active` on the passive -> the command returns (it waits for the new
  role) and the driver runs on the new active.
- switchovers per failure: "switchover" events the survivor wrote within 3 s of the kill.

Prints a markdown table. Not a test: the figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import tomli_w

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support import kill_project_processes  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pmon import config as config_module  # noqa: E402
from pmon.control.client import call  # noqa: E402

DRIVER = ("import os, socket, sys, time\n"
          "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
          "s.sendto(os.environ['PMON_PROJECT'].encode(), ('127.0.0.1', int(sys.argv[1])))\n"
          "time.sleep(3600)\n")
SLEEPER = "import time; time.sleep(3600)"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Starts:
    """Receives the drivers' datagrams; remembers when each project's driver last ran."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.last: dict[str, float] = {}
        self.cond = threading.Condition()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            data = self.sock.recv(256)
            with self.cond:
                self.last[data.decode()] = time.monotonic()
                self.cond.notify_all()

    def wait_after(self, project: str, t0: float, timeout: float = 10.0) -> float:
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.last.get(project, 0.0) < t0:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"driver of {project} did not run")
                self.cond.wait(left)
            return self.last[project]


class Server:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.config = config_module.load(path)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pmon.cli", "run", "-q", "-c", str(self.path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO,
        )

    def redu(self) -> dict[str, Any] | None:
        try:
            return call(self.config, "redu-status", timeout=5)
        except Exception:
            return None

    def kill_tree(self) -> None:
        assert self.proc is not None
        root = psutil.Process(self.proc.pid)
        procs = [root, *root.children(recursive=True)]
        for proc in procs:
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass
        self.proc.wait()

    def switchovers_since(self, wall: float) -> int:
        path = self.config.project.state_dir / "log" / "events.jsonl"
        count = 0
        for line in path.read_text().splitlines():
            event = json.loads(line)
            if event["event"] == "switchover" and event.get("at", 0) >= wall:
                count += 1
        return count

    def stop(self) -> None:
        """Shut the server down, and kill whatever its project left running: the managers
        of a pmon that was killed alone (a round's kill, an interrupted bench) outlive it."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                try:
                    call(self.config, "shutdown", timeout=5, force=True)
                    self.proc.wait(20)
                except Exception:
                    self.kill_tree()
                except BaseException:  # a SIGTERM's exit meanwhile (exit_on_sigterm)
                    self.kill_tree()
                    raise
        finally:
            kill_project_processes(self.config.project.name)


def exit_on_sigterm() -> None:
    """A bench stopped by SIGTERM (timeout, kill) runs its `finally` and stops its servers."""
    def leave(*_: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the cleanup
        sys.exit(128 + signal.SIGTERM)
    signal.signal(signal.SIGTERM, leave)


def write_pair(root: Path, report_port: int) -> tuple[Path, Path]:
    ports = {(s, i): free_port() for s in "ab" for i in (1, 2)}
    paths = []
    for me, other in (("a", "b"), ("b", "a")):
        directory = root / me
        directory.mkdir()
        data = {
            "project": {"name": f"bench-{me}-{os.getpid()}", "state_dir": "var"},
            "redundancy": {
                "name": me, "partner": other, "preferred": "a",
                "links": [{"local": f"127.0.0.1:{ports[me, i]}",
                           "partner": f"127.0.0.1:{ports[other, i]}"} for i in (1, 2)],
            },
            "managers": [
                {"name": "data", "command": [sys.executable, "-c", SLEEPER], "core": True},
                {"name": "driver", "command": [sys.executable, "-c", DRIVER, str(report_port)],
                 "run_on": "active"},
            ],
        }
        path = directory / "pmon.toml"
        path.write_text(tomli_w.dumps(data))
        paths.append(path)
    return paths[0], paths[1]


def new_pair(prefix: str) -> tuple[Starts, dict[str, Server]]:
    """The two servers (not started yet), and the receiver of their drivers' datagrams."""
    starts = Starts()
    path_a, path_b = write_pair(Path(tempfile.mkdtemp(prefix=prefix)), starts.port)
    return starts, {"a": Server(path_a), "b": Server(path_b)}


def fmt(values: list[float]) -> str:
    """'median s (min, max, n)' for a table."""
    if not values:
        return "-"
    return (f"{statistics.median(values):.3f} s (min {min(values):.3f}, "
            f"max {max(values):.3f}, n={len(values)})")


def wait(predicate: Any, timeout: float, what: str, step: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise TimeoutError(what)


def settled(servers: dict[str, Server], quiet: float) -> tuple[Server, Server]:
    """Wait until one is active, the other passive, both available, and no change for `quiet` s."""
    def roles() -> tuple[str, str] | None:
        a, b = servers["a"].redu(), servers["b"].redu()
        if not a or not b or not (a["partner_available"] and b["partner_available"]):
            return None
        pair = (a["role"], b["role"])
        return pair if sorted(pair) == ["active", "passive"] else None

    while True:
        first = wait(roles, 60, "the pair to settle", step=0.05)
        time.sleep(quiet)
        if roles() == first:
            active = "a" if first[0] == "active" else "b"
            return servers[active], servers["b" if active == "a" else "a"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="failovers to measure")
    parser.add_argument("--planned", type=int, default=7, help="planned switchovers to measure")
    args = parser.parse_args()
    exit_on_sigterm()
    starts, servers = new_pair("pmon-bench-failover-")
    spec = servers["a"].config.redundancy
    quiet = spec.first_active_change_interval + 3 * spec.timeout
    failover_active: list[float] = []
    failover_driver: list[float] = []
    flaps: list[int] = []
    planned_return: list[float] = []
    planned_driver: list[float] = []
    try:
        for server in servers.values():
            server.start()
        for i in range(args.rounds):
            active, passive = settled(servers, quiet)
            t0 = time.monotonic()
            wall0 = time.time()
            active.kill_tree()
            wait(lambda: (s := passive.redu()) and s["role"] == "active", 10, "failover")
            failover_active.append(time.monotonic() - t0)
            failover_driver.append(starts.wait_after(passive.config.project.name, t0) - t0)
            time.sleep(3)  # any second switchover (flapping) would show up here
            flaps.append(passive.switchovers_since(wall0))
            print(f"failover {i + 1}: active after {failover_active[-1]:.3f} s, driver runs "
                  f"after {failover_driver[-1]:.3f} s, {flaps[-1]} switchover(s)", file=sys.stderr)
            active.start()
        for i in range(args.planned):
            active, passive = settled(servers, 0.5)
            name = passive.config.redundancy.name
            t0 = time.monotonic()
            call(passive.config, "redu-set-active", timeout=30, server=name)
            planned_return.append(time.monotonic() - t0)
            planned_driver.append(starts.wait_after(passive.config.project.name, t0) - t0)
            print(f"planned {i + 1}: set-active returned after {planned_return[-1]:.3f} s, driver "
                  f"runs after {planned_driver[-1]:.3f} s", file=sys.stderr)
    finally:
        for server in servers.values():
            server.stop()

    print(f"\nDefault settings: heartbeat_interval {spec.heartbeat_interval:g} s, timeout "
          f"{spec.timeout:g} s, two links, loopback, {os.cpu_count()} CPUs.\n")
    print("| measure | median (min, max, n) |")
    print("| --- | --- |")
    print(f"| failover: SIGKILL of the active's tree -> passive reports active | {fmt(failover_active)} |")
    print(f"| failover: SIGKILL -> run_on = \"active\" driver runs on the new active | {fmt(failover_driver)} |")
    print(f"| planned set-active: command returns | {fmt(planned_return)} |")
    print(f"| planned set-active: driver runs on the new active | {fmt(planned_driver)} |")
    print(f"| switchovers per failure (want 1) | {flaps} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
