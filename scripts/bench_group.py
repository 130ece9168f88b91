#!/usr/bin/env python3
"""A group of three (docs/redundancy.md "Groups of three or more"): failover time, set-active
time and idle CPU per member, on loopback with a real etcd.

    .venv/bin/python scripts/bench_group.py [--rounds 5] [--planned 5] [--idle 30] [--ttl 6] [--freezes 3]

Three real pmon ("a", "b", "c"), each with a manager and a run_on = "active" driver that
stamps its start, the default [redundancy] settings but `ttl` (default 6, the default) and
first_active_change_interval 5. Each failover round SIGKILLs the active member's whole
process tree and times until another member reports itself active and until its driver
runs; the killed member is started again and the group left to settle. Each planned round
runs `pmon redu set-active X` for a passive X and times the command and until X's driver
runs. Each freeze round SIGSTOPs the active member's whole tree (pmon, redundancy manager,
driver) until another member's driver runs, then SIGCONTs it and times how long its thawed
driver runs beside the new one (until the thawed redundancy manager's fence stops it; the
stop stamp's time less the thaw's). Idle CPU: after settling, the CPU time of each member's pmon + redundancy manager
over `--idle` seconds, read from /proc/PID/task/*/schedstat, as % of one CPU (and etcd's).
Needs `etcd` (Debian package etcd-server). Not a test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))
from etcd import Etcd  # noqa: E402
from group import MEMBERS, driver_runs, stamp_path, write_group  # noqa: E402
from support import Pmon, kill_project_processes, kill_tree, pmon_cli, poll_for  # noqa: E402


def role(server: Pmon) -> dict[str, Any] | None:
    try:
        status: dict[str, Any] = server.call("redu-status")
        return status
    except Exception:
        return None


def settled(servers: dict[str, Pmon], root: Path) -> str:
    """Wait until one member is active with its driver, the others passive and available."""
    def check() -> str | None:
        views = {n: role(s) for n, s in servers.items()}
        if any(v is None for v in views.values()):
            return None
        active = [n for n, v in views.items() if v and v["role"] == "active"]
        running = [n for n in MEMBERS if driver_runs(stamp_path(root, n))]
        ready = all(m.get("live") and m.get("available")
                    for v in views.values() for m in (v or {})["group"]["members"])
        return active[0] if len(active) == 1 and running == active and ready else None
    return poll_for(check, 60, "the group to settle")


def cpu_ns(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    return total


def member_pids(server: Pmon) -> list[int]:
    pids = [server.proc.pid]
    for child in psutil.Process(server.proc.pid).children():
        if "pmon.redundancy" in " ".join(child.cmdline()):
            pids.append(child.pid)
    return pids


def summary(values: list[float]) -> str:
    return (f"{statistics.median(values):.3f} s (min {min(values):.3f}, max {max(values):.3f}, "
            f"n={len(values)})") if values else "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--planned", type=int, default=5)
    parser.add_argument("--idle", type=float, default=30)
    parser.add_argument("--ttl", type=int, default=6)
    parser.add_argument("--freezes", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("etcd") is None:
        print("etcd is not installed (Debian package etcd-server)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "etcd").mkdir()
        etcd = Etcd(root / "etcd")
        paths = write_group(root, etcd.url, ttl=args.ttl, first_active_change_interval=5)
        servers = {n: Pmon(p) for n, p in paths.items()}
        try:
            return run(args, root, etcd, paths, servers)
        finally:
            for server in servers.values():
                server.stop()
                kill_project_processes(server.config.project.name)
            etcd.close()


def run(args: argparse.Namespace, root: Path, etcd: Etcd, paths: dict[str, Path],
        servers: dict[str, Pmon]) -> int:
    active = settled(servers, root)
    idle: dict[str, float] = {}
    pids = {n: member_pids(s) for n, s in servers.items()}
    pids.update({f"{n} (redundancy manager)": member_pids(s)[1:] for n, s in servers.items()})
    pids["etcd"] = [etcd.proc.pid] if etcd.proc else []
    before, t0 = {n: cpu_ns(p) for n, p in pids.items()}, time.monotonic()
    time.sleep(args.idle)  # a measurement window, not a wait for a condition
    elapsed = time.monotonic() - t0
    idle = {n: 100 * (cpu_ns(p) - before[n]) / 1e9 / elapsed for n, p in pids.items()}
    to_active, to_driver, switched = [], [], []
    for _ in range(args.rounds):
        active = settled(servers, root)
        others = {n: s for n, s in servers.items() if n != active}
        ends_before = {n: len([e for e in s.events() if e["event"] == "switchover"]) for n, s in others.items()}
        t0 = time.monotonic()
        kill_tree(servers[active].proc.pid)
        new = poll_for(lambda: next((n for n, s in others.items()
                                     if (role(s) or {}).get("role") == "active"), None), 60, "a new active")
        to_active.append(time.monotonic() - t0)
        poll_for(lambda: driver_runs(stamp_path(root, new)), 30, "its driver")
        to_driver.append(time.monotonic() - t0)
        servers[active].proc.wait(10)
        kill_project_processes(servers[active].config.project.name)
        servers[active] = Pmon(paths[active])
        settled(servers, root)
        switched.append(sum(len([e for e in s.events() if e["event"] == "switchover"]) - ends_before[n]
                            for n, s in others.items() if n == new))
    command, driver = [], []
    for i in range(args.planned):
        active = settled(servers, root)
        target = [n for n in MEMBERS if n != active][i % 2]
        t0 = time.monotonic()
        result = pmon_cli(paths[active], "redu", "set-active", target)
        command.append(time.monotonic() - t0)
        if result.returncode != 0:
            print(f"set-active {target} failed: {result.stderr.strip()}", file=sys.stderr)
            return 1
        poll_for(lambda: driver_runs(stamp_path(root, target)), 30, "the new driver")
        driver.append(time.monotonic() - t0)
    overlap = []
    for _ in range(args.freezes):  # the whole tree of the active frozen, then thawed
        active = settled(servers, root)
        tree = [servers[active].proc.pid] + [
            p.pid for p in psutil.Process(servers[active].proc.pid).children(recursive=True)]
        for pid in tree:
            os.kill(pid, signal.SIGSTOP)
        try:
            poll_for(lambda: [n for n in MEMBERS if n != active and driver_runs(stamp_path(root, n))],
                     60, "another driver")
        finally:
            thawed = time.time()
            for pid in tree:
                os.kill(pid, signal.SIGCONT)
        poll_for(lambda: not driver_runs(stamp_path(root, active)), 30, "the thawed driver fenced")
        stops = [float(line.split()[1]) for line in stamp_path(root, active).read_text().splitlines()
                 if line.startswith("stop")]
        overlap.append(max(0.0, stops[-1] - thawed) if stops else float("nan"))
    load = ", ".join(f"{v:.2f}" for v in psutil.getloadavg())
    print(f"group of three, ttl {args.ttl} s; load average {load} on {psutil.cpu_count()} CPUs")
    print("| measure | median (min, max, n) |")
    print("| --- | --- |")
    print(f"| failover: SIGKILL of the active's tree -> another member reports active | {summary(to_active)} |")
    print(f"| failover: SIGKILL -> its run_on = \"active\" driver runs | {summary(to_driver)} |")
    print(f"| set-active: command returns | {summary(command)} |")
    print(f"| set-active: the named member's driver runs | {summary(driver)} |")
    print(f"| switchovers of the new active per failure (want 1) | {switched} |")
    print(f"| whole tree of the active frozen: its thawed driver runs beside the new one for | {summary(overlap)} |")
    print(f"idle CPU over {args.idle:g} s, % of one CPU (pmon + redundancy manager, schedstat): " +
          ", ".join(f"{n} {v:.2f} %" for n, v in idle.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
