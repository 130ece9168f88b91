#!/usr/bin/env python3
"""Benchmark a `systemctl restart`-style hot restart: from the restart signal until the
next pmon has adopted every manager.

    .venv/bin/python scripts/bench_hot_restart.py [--managers 500] [--rounds 3] [--systemd]

Without --systemd this script plays systemd's part: it sends the unit's RestartKillSignal
(SIGUSR2) to pmon, waits for pmon to exit (detached: the managers run on), starts the next
`pmon run` at once and waits until `status` shows every manager running with its old pid.
With --systemd (root, systemd-nspawn) the project is a real unit under a real systemd as
PID 1 of a container, and each round is `systemctl restart pmon-PROJECT.service`, timed
from issuing it until `status` confirms.

Per round: detach (signal -> old pmon gone), adopted (signal -> the new pmon's `adopted`
event), confirmed (signal -> status shows all running with the old pids; includes this
script's 10 ms polling); and checks that no manager was spawned or restarted.
Not a test: numbers depend on the machine and on how many processes it runs.
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
import tomli_w

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from bench_adopt import events, start_pmon, status, wait  # noqa: E402  (its helpers)
from pmon import config as config_module  # noqa: E402


def running_pids(config: Any) -> dict[str, int]:
    """Wait until the project runs; every manager's pid."""
    first = wait(lambda: (s := status(config)) and s["project_state"] == "running" and s,
                 180, "the project to start")
    return {m["name"]: m["pid"] for m in first["managers"]}


def all_adopted(config: Any, pids: dict[str, int]) -> dict[str, Any] | None:
    now = status(config)
    if now and all(m["state"] == "running" and m["pid"] == pids[m["name"]] for m in now["managers"]):
        return now
    return None


def round_figures(config: Any, seen: int, t0: float, now: dict[str, Any], detached: float) -> dict[str, Any]:
    new = events(config)[seen:]
    adopted = [e for e in new if e["event"] == "adopted"]
    return {
        "detach": detached, "adopted": adopted[-1]["ts"] - t0 if adopted else float("nan"),
        "confirmed": time.time() - t0, "count": adopted[-1]["count"] if adopted else 0,
        "started": sum(e["event"] == "started" for e in new),
        "restarts": sum(m["restarts"] for m in now["managers"]),
    }


def bench_signal(path: Path, config: Any, rounds: int) -> list[dict[str, Any]]:
    pmon = start_pmon(path)
    rows = []
    try:
        pids = running_pids(config)
        for _ in range(rounds):
            seen = len(events(config))
            t0 = time.time()
            pmon.send_signal(signal.SIGUSR2)  # RestartKillSignal=
            pmon.wait(120)
            detached = time.time() - t0
            pmon = start_pmon(path)  # what systemd's restart job does next
            now = wait(lambda: all_adopted(config, pids), 120, "every manager to be adopted")
            rows.append(round_figures(config, seen, t0, now, detached))
    finally:
        pmon.send_signal(signal.SIGTERM)
        try:
            pmon.wait(300)
        except subprocess.TimeoutExpired:
            pmon.kill()
    return rows


def bench_systemd(path: Path, config: Any, rounds: int, workdir: Path) -> list[dict[str, Any]]:
    from systemd_box import Container

    box = Container(workdir, sorted({REPO, Path(sys.prefix).resolve(), workdir}))
    unit = f"pmon-{config.project.name}.service"
    rows = []
    try:
        done = box.run(sys.executable, "-m", "pmon.cli", "service", "install", "-c", str(path),
                       "--enable", "--now", timeout=300)
        if done.returncode != 0:
            raise SystemExit(done.stdout + done.stderr)
        pids = running_pids(config)
        for _ in range(rounds):
            seen = len(events(config))
            t0 = time.time()
            done = box.run("systemctl", "restart", unit, timeout=300)  # returns once READY=1
            restarted = time.time() - t0
            if done.returncode != 0:
                raise SystemExit(done.stderr)
            now = wait(lambda: all_adopted(config, pids), 120, "every manager to be adopted")
            rows.append(round_figures(config, seen, t0, now, restarted))
        box.run("systemctl", "stop", unit, timeout=300)
    finally:
        box.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--managers", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--systemd", action="store_true", help="under a real systemd (root, systemd-nspawn)")
    args = parser.parse_args()
    sleep = shutil.which("sleep") or "/bin/sleep"
    workdir = Path(tempfile.mkdtemp(prefix="pmon-bench-hot-"))
    path = workdir / "pmon.toml"
    name = f"bench-hot-{os.getpid()}"
    path.write_text(tomli_w.dumps({
        "project": {"name": name, "state_dir": "var"},
        "defaults": {"seconds_to_kill": 2},
        "managers": [{"name": f"m{i}", "command": [sleep, "100000"]} for i in range(args.managers)],
    }))
    config = config_module.load(path)
    try:
        rows = (bench_systemd(path, config, args.rounds, workdir) if args.systemd
                else bench_signal(path, config, args.rounds))
        procs = len(psutil.pids())
    finally:
        for proc in psutil.process_iter():
            try:
                if proc.environ().get("PMON_PROJECT") == name:
                    proc.kill()
            except psutil.Error:
                continue
        shutil.rmtree(workdir, ignore_errors=True)
    first = "systemctl restart returned" if args.systemd else "old pmon gone"
    how = "systemctl restart under systemd (container)" if args.systemd else "SIGUSR2, then the next pmon"
    print(f"hot restart ({how}) with {args.managers} managers ({procs} processes on this host, "
          f"load {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs), {args.rounds} rounds")
    print(f"| round | signal -> {first} (s) | signal -> all adopted (s) | signal -> status confirms (s) "
          "| adopted | spawned | restarts |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for i, row in enumerate(rows, 1):
        print(f"| {i} | {row['detach']:.3f} | {row['adopted']:.3f} | {row['confirmed']:.3f} | "
              f"{row['count']} | {row['started']} | {row['restarts']} |")
    med = {k: statistics.median(r[k] for r in rows) for k in ("detach", "adopted", "confirmed")}
    print(f"| median | {med['detach']:.3f} | {med['adopted']:.3f} | {med['confirmed']:.3f} | | | |")


if __name__ == "__main__":
    main()
