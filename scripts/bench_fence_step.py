#!/usr/bin/env python3
"""What a fence (supervisor/redundancy/fence.py) costs the heartbeat loop that steps it.

    .venv/bin/python scripts/bench_fence_step.py [--idle 2000] [--groups 3] [--steps 100]

Starts --idle idle processes (`sleep`) that have nothing to do with the fence, and --groups
process groups of a stand-in driver (a shell that ignores SIGTERM, with two children), whose
environment carries this run's marks (NOTIFY_SOCKET, PMON_MANAGER), as pmon's managers do.
Then:
  start     Fence.start on those groups (their pids and names, as a sync reports them);
  step      --steps calls of Fence.step 50 ms apart, as the heartbeat loop makes them while
            the fence waits for its SIGKILL (a grace longer than the run): median and max
            ms per step, and the sum of the steps as a share of the time they span;
  to done   a second fence, of groups that die of SIGTERM: from Fence.start until the fence
            is done, stepped every 50 ms (how soon the handover may follow).
Every process it started is killed at the end. Not a test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pmon.redundancy.fence import Fence  # noqa: E402

SLEEP = shutil.which("sleep") or "/bin/sleep"
STUBBORN = "trap '' TERM; sleep 100000 & sleep 100000 & wait"  # its children ignore TERM too
STEP = 0.05  # the heartbeat loop steps a fence every 50 ms


def wait(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.01)
    return value


def members(group: int) -> int:
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) == group:
                    count += 1
            except OSError:
                pass
    return count


def drivers(count: int, script: str, env: dict[str, str]) -> list[subprocess.Popen[bytes]]:
    procs = [subprocess.Popen(["sh", "-c", script], start_new_session=True, env=env)
             for _ in range(count)]
    for proc in procs:  # the shell and its two children, all in the group
        wait(lambda p=proc: members(p.pid) >= (3 if "&" in script else 1), 20, "a driver's group")
    return procs


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[2])
    parser.add_argument("--idle", type=int, default=2000, help="idle processes beside (2000)")
    parser.add_argument("--groups", type=int, default=3, help="fenced process groups (3)")
    parser.add_argument("--steps", type=int, default=100, help="steps timed (100)")
    args = parser.parse_args()
    os.environ["NOTIFY_SOCKET"] = f"/run/pmon-bench-fence-{os.getpid()}.sock"  # the mark
    env = {**os.environ, "PMON_MANAGER": "drv"}
    idle: list[subprocess.Popen[bytes]] = []
    fenced: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(args.idle):
            idle.append(subprocess.Popen([SLEEP, "100000"], stdin=subprocess.DEVNULL))
        total = sum(1 for e in os.listdir("/proc") if e.isdigit())
        print(f"processes on the machine: {total} ({args.idle} idle started), "
              f"fenced groups: {args.groups} x 3 processes")

        fenced = drivers(args.groups, STUBBORN, env)
        fence = Fence(grace=3600.0)
        begin = time.perf_counter()
        fence.start(time.monotonic(), [p.pid for p in fenced], names=["drv"])
        started = time.perf_counter() - begin
        times: list[float] = []
        first = time.perf_counter()
        for _ in range(args.steps):
            t0 = time.perf_counter()
            fence.step(time.monotonic())
            times.append(time.perf_counter() - t0)
            time.sleep(max(0.0, STEP - times[-1]))
        span = time.perf_counter() - first
        assert fence.active, "the stubborn groups must keep the fence under way"
        print(f"start     {ms(started)} ms")
        print(f"step      median {ms(statistics.median(times))} ms, max {ms(max(times))} ms "
              f"over {args.steps} steps; {100 * sum(times) / span:.1f} % of the loop's time")
        for proc in fenced:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        fenced = []

        fenced = drivers(args.groups, f"exec {SLEEP} 100000", env)
        fence = Fence(grace=3600.0)
        begin = time.perf_counter()
        fence.start(time.monotonic(), [p.pid for p in fenced], names=["drv"])
        while fence.active:
            for proc in fenced:
                proc.poll()  # reap them, as pmon would (a zombie counts as dead anyway)
            time.sleep(STEP)
            fence.step(time.monotonic())
            if time.perf_counter() - begin > 30:
                raise SystemExit("the fence did not end within 30 s")
        print(f"to done   {ms(time.perf_counter() - begin)} ms (groups that die of SIGTERM)")
    finally:
        for proc in fenced:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
        for proc in idle + fenced:
            proc.kill()
        for proc in idle + fenced:
            proc.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
