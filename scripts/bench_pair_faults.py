#!/usr/bin/env python3
"""The pair on a real network under fault schedules: switchovers per fault, the longest time
with two drivers running, and the idle CPU of each server. Needs root.

    sudo .venv/bin/python scripts/bench_pair_faults.py [--window 20] [--only NAME ...]
         [--idle 30]

Two network namespaces joined by two veth links (tests/netpair.py), one pmon per namespace
with the DEFAULT [redundancy] settings, on each a core manager and a `run_on = "active"`
driver. Every schedule starts a fresh pair, waits until it has settled (a active, b passive),
applies its fault for `--window` seconds (or its own length), then lets the pair settle.
Meanwhile every 50 ms it samples whether each server's driver process lives (from the pids
the drivers stamp at start; a zombie counts as dead). It prints per schedule: switchover
events (both servers' logs), driver starts, and the longest stretch with both drivers alive.

Idle CPU: a settled pair left alone `--idle` seconds; CPU time of each server's pmon and its
redundancy manager together (psutil), as % of one CPU. Not a test: the figures depend on the
machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import psutil
import tomli_w

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from netpair import NetPair  # noqa: E402
from pmon import config as config_module  # noqa: E402
from pmon.control.client import call  # noqa: E402

DRIVER = ("import os, signal, sys, time\n"
          "open(sys.argv[1], 'a').write(f'{os.getpid()} {time.time()}\\n')\n"
          "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
          "while True: time.sleep(3600)\n")
SLEEPER = "import time; time.sleep(3600)"


class Server:
    def __init__(self, root: Path, me: str, net: NetPair) -> None:
        other = "b" if me == "a" else "a"
        directory = root / me
        directory.mkdir(parents=True)
        self.stamps = directory / "driver-starts"
        data = {
            "project": {"name": f"faults-{me}-{os.getpid()}", "state_dir": "var"},
            "redundancy": {"name": me, "partner": other, "preferred": "a",
                           "links": [link.config(me) for link in net.links]},
            "managers": [
                {"name": "data", "command": [sys.executable, "-c", SLEEPER], "core": True},
                {"name": "driver", "command": [sys.executable, "-c", DRIVER, str(self.stamps)],
                 "run_on": "active"},
            ],
        }
        self.path = directory / "pmon.toml"
        self.path.write_text(tomli_w.dumps(data))
        self.config = config_module.load(self.path)
        self.proc = subprocess.Popen(
            [*net.prefix(me), sys.executable, "-m", "pmon.cli", "run", "-q", "-c", str(self.path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)

    def redu(self) -> dict[str, Any] | None:
        try:
            return call(self.config, "redu-status", timeout=5)
        except Exception:
            return None

    def driver_pids(self) -> list[int]:
        if not self.stamps.exists():
            return []
        return [int(line.split()[0]) for line in self.stamps.read_text().splitlines() if line]

    def driver_alive(self) -> bool:
        for pid in self.driver_pids()[-1:]:
            try:
                return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
            except psutil.Error:
                return False
        return False

    def switchovers(self) -> list[str]:
        path = self.config.project.state_dir / "log" / "events.jsonl"
        if not path.exists():
            return []
        return [f"{e['active']} ({e['reason']})" for e in map(json.loads, path.read_text().splitlines())
                if e["event"] == "switchover"]

    def redundancy_pid(self) -> int | None:
        try:
            for child in psutil.Process(self.proc.pid).children():
                if "pmon.redundancy" in " ".join(child.cmdline()):
                    return child.pid
        except psutil.Error:
            pass
        return None


def wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(what)


def settled(a: Server, b: Server) -> bool:
    sa, sb = a.redu(), b.redu()
    return bool(sa and sb and sa["role"] == "active" and sb["role"] == "passive"
                and sa["partner_available"] and sb["partner_available"] and a.driver_alive())


class Sampler:
    """Every 50 ms: are both drivers alive? Keeps the longest stretch where they were."""

    def __init__(self, a: Server, b: Server) -> None:
        self.a, self.b = a, b
        self.longest = 0.0
        self._since: float | None = None

    def sample(self) -> None:
        now = time.monotonic()
        both = self.a.driver_alive() and self.b.driver_alive()
        if both and self._since is None:
            self._since = now
        elif not both and self._since is not None:
            self.longest = max(self.longest, now - self._since)
            self._since = None

    def run_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.sample()
            time.sleep(0.05)
        if self._since is not None:
            self.longest = max(self.longest, time.monotonic() - self._since)


def schedules(window: float) -> dict[str, Callable[[NetPair, Server, Server, Sampler], None]]:
    def loss(percent: float, sender: str | None = None) -> Callable[..., None]:
        def run(net: NetPair, a: Server, b: Server, s: Sampler) -> None:
            net.loss(None, percent, sender)
            s.run_for(window)
            net.loss(None, 0)
        return run

    def flap(links: list[int], period: float) -> Callable[..., None]:
        def run(net: NetPair, a: Server, b: Server, s: Sampler) -> None:
            end = time.monotonic() + window
            while time.monotonic() < end:
                for link in links:
                    net.cut(link)
                s.run_for(period)
                for link in links:
                    net.restore(link)
                s.run_for(period)
        return run

    def stall(seconds: float) -> Callable[..., None]:
        def run(net: NetPair, a: Server, b: Server, s: Sampler) -> None:
            os.kill(a.proc.pid, signal.SIGSTOP)
            s.run_for(seconds)
            os.kill(a.proc.pid, signal.SIGCONT)
            s.run_for(window - seconds)
        return run

    def pmon_killed(net: NetPair, a: Server, b: Server, s: Sampler) -> None:
        a.proc.kill()
        s.run_for(window)

    def one_way(net: NetPair, a: Server, b: Server, s: Sampler) -> None:
        net.cut(None, sender="a")  # a -> b lost on both links
        s.run_for(window / 2)
        net.restore()
        s.run_for(window / 2)

    def cut_all(net: NetPair, a: Server, b: Server, s: Sampler) -> None:
        net.cut()
        s.run_for(window / 2)
        net.restore()
        s.run_for(window / 2)

    return {
        "loss 10% both links": loss(10), "loss 20% both links": loss(20),
        "loss 30% both links": loss(30), "loss 30% toward the active": loss(30, "b"),
        "loss 30% from the active": loss(30, "a"),
        "link 1 flapping 0.6 s": flap([1], 0.6), "both links flapping 0.6 s": flap([1, 2], 0.6),
        "pmon SIGSTOP 1 s": stall(1), "pmon SIGSTOP 3 s": stall(3),
        "pmon SIGKILL alone, left down": pmon_killed,
        "one-way partition a->b": one_way, "every link cut, then back": cut_all,
    }


def run_schedule(name: str, run: Callable[..., None], root: Path) -> dict[str, Any]:
    net = NetPair()
    try:
        a, b = Server(root / name.replace(" ", "_"), "a", net), None
        b = Server(root / name.replace(" ", "_"), "b", net)
        wait(lambda: settled(a, b), 60, "the pair to settle")
        before = len(a.switchovers()) + len(b.switchovers())
        starts = len(a.driver_pids()) + len(b.driver_pids())
        sampler = Sampler(a, b)
        run(net, a, b, sampler)
        sampler.run_for(8)  # the settle after the fault (hold-down, first_active_change_interval)
        events = a.switchovers() + b.switchovers()
        return {"schedule": name, "switchovers": len(events) - before,
                "events": "; ".join(e for e in b.switchovers()),
                "driver starts": len(a.driver_pids()) + len(b.driver_pids()) - starts,
                "two drivers (s)": round(sampler.longest, 2)}
    finally:
        net.close()


def idle_cpu(root: Path, seconds: float) -> list[tuple[float, float]]:
    net = NetPair()
    try:
        a, b = Server(root / "idle", "a", net), None
        b = Server(root / "idle", "b", net)
        wait(lambda: settled(a, b), 60, "the pair to settle")
        time.sleep(3)
        procs = []
        for server in (a, b):
            pids = [server.proc.pid, server.redundancy_pid()]
            procs.append([psutil.Process(p) for p in pids if p])
        def cpu(group: list[psutil.Process]) -> list[float]:
            return [sum(p.cpu_times()[:2]) for p in group]
        t0, before = time.monotonic(), [cpu(g) for g in procs]
        time.sleep(seconds)
        elapsed = time.monotonic() - t0
        return [tuple(round(100 * (n - b0) / elapsed, 3) for n, b0 in zip(cpu(g), b))  # type: ignore[misc]
                for g, b in zip(procs, before)]
    finally:
        net.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--window", type=float, default=20, help="seconds of each fault")
    parser.add_argument("--only", nargs="*", help="run only these schedules (substring)")
    parser.add_argument("--idle", type=float, default=30, help="seconds of idle CPU (0: skip)")
    args = parser.parse_args()
    why = NetPair.unavailable()
    if why:
        print(f"bench_pair_faults: {why}", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="pmon-faults-"))
    print("| schedule | switchovers | driver starts | longest two drivers (s) | b's switchover events |")
    print("| --- | --- | --- | --- | --- |")
    for name, run in schedules(args.window).items():
        if args.only and not any(o in name for o in args.only):
            continue
        r = run_schedule(name, run, root)
        print(f"| {r['schedule']} | {r['switchovers']} | {r['driver starts']} | "
              f"{r['two drivers (s)']} | {r['events']} |", flush=True)
    if args.idle:
        a, b = idle_cpu(root, args.idle)
        print(f"\nidle CPU over {args.idle:g} s, % of one CPU (pmon + redundancy manager): "
              f"a {sum(a):.2f} % ({a[0]} + {a[1]}), b {sum(b):.2f} % ({b[0]} + {b[1]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
