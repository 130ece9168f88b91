"""What the console and the metrics cost, with 500 managers (issue: "A live console for
operators, and metrics for the fleet"). Prints figures; asserts nothing.

  .venv/bin/python scripts/bench_console_metrics.py [--managers 500] [--seconds 20]

1. pmon idle for SECONDS without [metrics]: its CPU (% of one core) and RSS;
2. the same with the console open in a real terminal (tmux): pmon's CPU, and the console's
   own CPU and RSS;
3. how long the console takes to show a change (a manager killed -> its new pid in the
   table), headless (textual's run_test, in this process), n=10;
4. pmon started again (hot restart, adopting every manager) with [metrics], scraped every
   15 s for SECONDS: pmon's CPU and RSS, and the scrape time (median of 10 more scrapes).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import tomli_w

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support import Pmon, poll_for  # noqa: E402


def write(directory: Path, managers: int, metrics: bool) -> Path:
    data: dict[str, Any] = {
        "project": {"name": f"benchcm{os.getpid()}", "state_dir": "var"},
        "managers": [{"name": f"m{i}", "command": ["sleep", "1000000"]} for i in range(managers)],
    }
    if metrics:
        data["metrics"] = {"listen": "127.0.0.1:0"}
    path = directory / "pmon.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def idle(pid: int, seconds: float, also: int | None = None, every: float | None = None,
         action: Any = None) -> tuple[float, float | None]:
    """CPU % of one core of `pid` (and of `also`) over `seconds`; `action` runs every `every` s."""
    proc = psutil.Process(pid)
    other = psutil.Process(also) if also else None
    start, other_start, t0 = cpu_seconds(proc), cpu_seconds(other) if other else 0.0, time.monotonic()
    next_action = t0
    while (now := time.monotonic()) < t0 + seconds:
        if action is not None and every is not None and now >= next_action:
            action()
            next_action += every
        time.sleep(min(0.2, t0 + seconds - now))
    elapsed = time.monotonic() - t0
    mine = 100 * (cpu_seconds(proc) - start) / elapsed
    theirs = 100 * (cpu_seconds(other) - other_start) / elapsed if other else None
    return mine, theirs


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 1048576


def console_latency(config: Path, server: Pmon, rounds: int) -> list[float]:
    from textual.widgets import DataTable

    from pmon.cli.console_app import Console
    from pmon.control.client import Endpoint

    out: list[float] = []

    async def main() -> None:
        app = Console(Endpoint.read(config))
        async with app.run_test(size=(160, 40)) as pilot:
            table = app.query_one("#managers", DataTable)
            deadline = time.monotonic() + 60
            while not (app.connected and app.rows) and time.monotonic() < deadline:
                await pilot.pause(0.01)
            for i in range(rounds):
                name = f"m{i * 7}"
                pid = server.manager(name)["pid"]
                poll = time.monotonic()
                while str(table.get_cell(name, "pid")) != str(pid):
                    await pilot.pause(0.002)
                    if time.monotonic() - poll > 10:
                        raise SystemExit(f"{name}: the table never showed pid {pid}")
                killed = time.monotonic()
                os.kill(pid, signal.SIGKILL)
                while str(table.get_cell(name, "pid")) in (str(pid), ""):
                    await pilot.pause(0.002)
                    if time.monotonic() - killed > 10:
                        raise SystemExit(f"{name}: no restart shown within 10 s")
                out.append(time.monotonic() - killed)
            await pilot.press("q")

    asyncio.run(main())
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--managers", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    tmux = shutil.which("tmux")
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        config = write(directory, args.managers, metrics=False)
        server = Pmon(config)
        second: Pmon | None = None
        session = f"benchcm{os.getpid()}"
        try:
            server.wait_ready(120)
            time.sleep(3)  # let the start settle before measuring idle
            cpu, _ = idle(server.proc.pid, args.seconds)
            print(f"pmon idle, {args.managers} managers, no metrics: {cpu:.3f} % of one core, "
                  f"RSS {rss_mb(server.proc.pid):.1f} MiB")
            if tmux:
                command = f"{sys.executable} -m pmon.cli console -c {config}"
                subprocess.run([tmux, "-L", session, "new-session", "-d", "-x", "160", "-y", "45", command],
                               check=True)
                pane = int(subprocess.run([tmux, "-L", session, "display", "-p", "#{pane_pid}"],
                                          capture_output=True, text=True, check=True).stdout)
                poll_for(lambda: "connected to pmon" in subprocess.run(
                    [tmux, "-L", session, "capture-pane", "-p"], capture_output=True, text=True).stdout,
                    60, "the console")
                time.sleep(3)
                cpu, console_cpu = idle(server.proc.pid, args.seconds, also=pane)
                print(f"pmon idle with the console open: {cpu:.3f} % of one core; the console "
                      f"(tmux, 160x45): {console_cpu:.2f} % of one core, RSS {rss_mb(pane):.1f} MiB")
                subprocess.run([tmux, "-L", session, "kill-server"])
            else:
                print("tmux missing: the console in a terminal not measured")
            latency = console_latency(config, server, 10)
            print(f"console: kill -> new pid drawn in the table (headless, textual run_test, n={len(latency)}): median "
                  f"{statistics.median(latency) * 1000:.1f} ms, max {max(latency) * 1000:.1f} ms")
            subprocess.run([sys.executable, "-m", "pmon.cli", "detach", "-c", str(config)], check=True,
                           capture_output=True)
            server.proc.wait(60)
            config = write(directory, args.managers, metrics=True)
            (directory / "var" / "metrics.addr").unlink(missing_ok=True)
            second = Pmon(config)
            second.wait_ready(120)
            address = poll_for(lambda: (p := directory / "var" / "metrics.addr").exists() and p.read_text(),
                               30, "metrics.addr")

            def scrape() -> float:
                t0 = time.monotonic()
                with urllib.request.urlopen(f"http://{address}/metrics", timeout=30) as reply:
                    reply.read()
                return time.monotonic() - t0

            time.sleep(3)
            cpu, _ = idle(second.proc.pid, args.seconds, every=15.0, action=scrape)
            print(f"pmon idle with metrics scraped every 15 s: {cpu:.3f} % of one core, "
                  f"RSS {rss_mb(second.proc.pid):.1f} MiB")
            times = [scrape() for _ in range(10)]
            size = len(urllib.request.urlopen(f"http://{address}/metrics", timeout=30).read())
            print(f"scrape of {args.managers} managers ({size // 1024} KiB): median "
                  f"{statistics.median(times) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms (n=10, "
                  "back to back: the 2 s tree cache serves all but the first)")
            time.sleep(2.5)
            print(f"one scrape with a fresh process-table scan: {scrape() * 1000:.1f} ms")
            with urllib.request.urlopen(f"http://{address}/metrics", timeout=30) as reply:
                lag = next(line for line in reply.read().decode().splitlines()
                           if line.startswith("pmon_event_loop_lag_seconds "))
            print(f"pmon's loop lag, the largest over the last scrapes: {float(lag.split()[1]) * 1000:.1f} ms "
                  "(pmon_event_loop_lag_seconds)")
        finally:
            for instance in (server, second):
                if instance is not None and instance.proc.poll() is None:
                    subprocess.run([sys.executable, "-m", "pmon.cli", "shutdown", "-c", str(config)],
                                   capture_output=True)
                    instance.proc.wait(120)
            if tmux:
                subprocess.run([tmux, "-L", session, "kill-server"], capture_output=True)
                socket_file = Path(os.environ.get("TMUX_TMPDIR", "/tmp")) / f"tmux-{os.getuid()}" / session
                socket_file.unlink(missing_ok=True)  # kill-server leaves the file


if __name__ == "__main__":
    main()
