#!/usr/bin/env python3
"""Benchmark hot restart: how long a pmon started again takes to adopt N running managers.

    .venv/bin/python scripts/bench_adopt.py [--managers 500] [--rounds 3]

Starts a project of N managers (`sleep 100000`), waits until all run and the state file
holds them, SIGKILLs pmon, starts it again and measures, per round:
  adopted   from starting the new pmon process until its "adopted" event (every manager
            watched by a pidfd and in the running state): the figure of the issue;
  scan      the part of that spent reading the state file and the process table;
  status    until `status` over the control channel shows every manager running with
            its old pid (includes this script's 10 ms polling);
and checks that no manager was restarted (same pids, no "started" event, restarts 0).
Not a test: numbers depend on the machine and on how many processes it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import tomli_w

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pmon import config as config_module  # noqa: E402
from pmon.control.client import call  # noqa: E402


def wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.01)


def start_pmon(path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "pmon.cli", "run", "-q", "-c", str(path)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def status(config):
    try:
        return call(config, "status", timeout=30)
    except Exception:
        return None


def events(config) -> list[dict]:
    path = config.project.state_dir / "log" / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--managers", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sleep = shutil.which("sleep") or "/bin/sleep"
    workdir = Path(tempfile.mkdtemp(prefix="pmon-bench-adopt-"))
    path = workdir / "pmon.toml"
    name = f"bench-adopt-{os.getpid()}"
    path.write_text(tomli_w.dumps({
        "project": {"name": name, "state_dir": "var"},
        "defaults": {"seconds_to_kill": 2},
        "managers": [{"name": f"m{i}", "command": [sleep, "100000"]}
                     for i in range(args.managers)],
    }))
    config = config_module.load(path)
    pmon = start_pmon(path)
    rows = []
    try:
        first = wait(lambda: (s := status(config)) and s["project_state"] == "running" and s,
                     120, "the project to start")
        pids = {m["name"]: m["pid"] for m in first["managers"]}
        state_file = config.project.state_dir / "state.json"

        def state_complete() -> bool:
            try:
                saved = json.loads(state_file.read_text())["managers"]
            except (OSError, ValueError):
                return False
            return all(saved[n]["pid"] == p for n, p in pids.items())

        wait(state_complete, 30, "the state file")
        for _ in range(args.rounds):
            pmon.kill()
            pmon.wait()
            seen = len(events(config))
            t0 = time.time()
            pmon = start_pmon(path)
            now = wait(lambda: (s := status(config)) and all(
                m["state"] == "running" and m["pid"] == pids[m["name"]] for m in s["managers"]
            ) and s, 60, "every manager to be adopted")
            t_status = time.time() - t0
            new = events(config)[seen:]
            adopted = next(e for e in new if e["event"] == "adopted")
            started = [e for e in new if e["event"] == "started"]
            restarts = sum(m["restarts"] for m in now["managers"])
            rows.append({
                "adopted": adopted["ts"] - t0, "scan": adopted["seconds"], "status": t_status,
                "count": adopted["count"], "started": len(started), "restarts": restarts,
            })
        procs = len(psutil.pids())
    finally:
        pmon.send_signal(signal.SIGTERM)
        try:
            pmon.wait(120)
        except subprocess.TimeoutExpired:
            pmon.kill()
        for proc in psutil.process_iter():
            try:
                if proc.environ().get("PMON_PROJECT") == name:
                    proc.kill()
            except psutil.Error:
                continue
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"hot restart of pmon with {args.managers} running managers "
          f"({procs} processes on this host, {os.cpu_count()} CPUs), {args.rounds} rounds")
    print("| round | start -> all adopted (s) | of which scan+adopt (s) | start -> status confirms (s) | adopted | spawned | restarts |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for i, row in enumerate(rows, 1):
        print(f"| {i} | {row['adopted']:.3f} | {row['scan']:.3f} | {row['status']:.3f} | "
              f"{row['count']} | {row['started']} | {row['restarts']} |")
    med = {k: statistics.median(r[k] for r in rows) for k in ("adopted", "scan", "status")}
    print(f"| median | {med['adopted']:.3f} | {med['scan']:.3f} | {med['status']:.3f} | | | |")


if __name__ == "__main__":
    main()
