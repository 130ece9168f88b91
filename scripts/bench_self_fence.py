#!/usr/bin/env python3
"""Benchmark the self-fence: a frozen redundancy manager on the active server.

    .venv/bin/python scripts/bench_self_fence.py [--rounds 7] [--idle 30]

Two real pmon on loopback with the DEFAULT [redundancy] settings (scripts/bench_failover.py's
pair: a core manager and a `run_on = "active"` driver on each server). Each round SIGSTOPs
the active server's redundancy manager and times, from the freeze:
- until its driver is gone (its process dead or a zombie, polled every 2 ms): pmon's
  self-fence (docs/redundancy.md "Fencing");
- until the partner's driver runs (the driver's datagram, a blocking receive).
The first must come before the second in every round. Then SIGCONT, and the pair settles.

`--idle S` first measures the idle CPU of each server's pmon alone (the process that
receives the beats) over S seconds, from /proc/PID/task/*/schedstat (time on CPU, every
thread), in % of one CPU. Not a test: the figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_failover import Server, exit_on_sigterm, fmt, new_pair, settled, wait  # noqa: E402


def on_cpu_ns(pid: int) -> int:
    """Nanoseconds on CPU of every thread of `pid` (first field of each task's schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that ended meanwhile
    return total


def child_pid(server: Server, word: str) -> int:
    assert server.proc is not None
    for proc in psutil.Process(server.proc.pid).children():
        if word in " ".join(proc.cmdline()):
            return proc.pid
    raise LookupError(f"no child running {word!r}")


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def idle_cpu(servers: dict[str, Server], seconds: float) -> list[float]:
    pids = [s.proc.pid for s in servers.values() if s.proc is not None]
    t0, before = time.monotonic(), [on_cpu_ns(p) for p in pids]
    time.sleep(seconds)  # a measurement window, not a wait for a condition
    elapsed, after = time.monotonic() - t0, [on_cpu_ns(p) for p in pids]
    return [round(100 * (n - b) / 1e9 / elapsed, 3) for n, b in zip(after, before)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="freezes to measure")
    parser.add_argument("--idle", type=float, default=0, help="seconds of idle CPU to measure first")
    parser.add_argument("--freeze", type=float, default=3.0, help="seconds each freeze lasts")
    args = parser.parse_args()
    exit_on_sigterm()
    starts, servers = new_pair("pmon-bench-self-fence-")
    spec = servers["a"].config.redundancy
    assert spec is not None
    stopped: list[float] = []
    started: list[float] = []
    idle: list[float] = []
    try:
        for server in servers.values():
            server.start()
        settled(servers, spec.first_active_change_interval + 3 * spec.timeout)
        if args.idle:
            idle = idle_cpu(servers, args.idle)
            print(f"idle pmon CPU (a, b): {idle} % of one CPU over {args.idle:g} s", file=sys.stderr)
        for i in range(args.rounds):
            active, passive = settled(servers, spec.hold_down + 3 * spec.timeout)
            redundancy, driver = child_pid(active, "pmon.redundancy"), child_pid(active, "sendto")
            t0 = time.monotonic()
            os.kill(redundancy, signal.SIGSTOP)
            try:
                wait(lambda: gone(driver), 10, "the frozen side's driver to stop", step=0.002)
                stopped.append(time.monotonic() - t0)
                started.append(starts.wait_after(passive.config.project.name, t0) - t0)
                time.sleep(max(0.0, args.freeze - (time.monotonic() - t0)))  # the freeze
            finally:
                os.kill(redundancy, signal.SIGCONT)
            print(f"freeze {i + 1}: driver stopped after {stopped[-1]:.3f} s, partner's driver "
                  f"runs after {started[-1]:.3f} s", file=sys.stderr)
    finally:
        for server in servers.values():
            server.stop()

    print(f"\nDefault settings: heartbeat_interval {spec.heartbeat_interval:g} s, timeout "
          f"{spec.timeout:g} s, self_fence {spec.self_fence:g} s (kill after "
          f"{spec.self_fence_kill:g} s), {os.cpu_count()} CPUs.\n")
    print("| measure | median (min, max, n) |")
    print("| --- | --- |")
    print(f"| SIGSTOP of the active's redundancy manager -> its driver stopped | {fmt(stopped)} |")
    print(f"| SIGSTOP of the active's redundancy manager -> partner's driver runs | {fmt(started)} |")
    print(f"| rounds where the partner's driver ran before ours stopped (want 0) | "
          f"{sum(1 for s, p in zip(stopped, started) if p <= s)} |")
    if idle:
        print(f"| idle pmon CPU per server, {args.idle:g} s (schedstat) | {idle} % |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
