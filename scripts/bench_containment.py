#!/usr/bin/env python3
"""Containment figures, with cgroups and without (PMON_NO_CGROUPS=1), side by side.

    .venv/bin/python scripts/bench_containment.py [--spawn 100,2000] [--adopt 500]
        [--rounds 3] [--idle-seconds 10] [--modes cgroup,process-group]

Per mode:
  start N     from launching `pmon run` until its "project ... started" event, N managers
              (`sleep`), and the spawn phase alone (first to last "started" event);
  idle        pmon's CPU over --idle-seconds with the largest N running (% of one core);
  stop 50     `stop` of one manager that left 50 descendants behind (half in sessions of
              their own, half double-forked daemons), until the command returns with
              everything down; checked: none of the 50 is left;
  adopt N     SIGKILL pmon with N managers running, start it again: until its "adopted"
              event (median of --rounds), checked: nothing started again.
cgroup mode needs root (a writable cgroup2 hierarchy). Not a test: figures depend on the
machine and its load.
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

SLEEP = shutil.which("sleep") or "/bin/sleep"
# 25 helpers in sessions of their own, 25 double-forked daemons (each leaves the group).
FIFTY = (
    "for i in $(seq 25); do setsid sleep 100000 & done; "
    "for i in $(seq 25); do ( setsid sh -c 'sleep 100000 &' & ) ; done; "
    "echo ready > \"$1\"; exec sleep 100000"
)


def wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.01)


class Run:
    def __init__(self, mode: str, managers: list[dict], tag: str) -> None:
        self.env = {k: v for k, v in os.environ.items() if k != "PMON_NO_CGROUPS"}
        if mode == "process-group":
            self.env["PMON_NO_CGROUPS"] = "1"
        self.dir = Path(tempfile.mkdtemp(prefix=f"pmon-bench-cont-{tag}-"))
        self.path = self.dir / "pmon.toml"
        self.name = f"bc-{tag}-{os.getpid()}"
        self.path.write_text(tomli_w.dumps({
            "project": {"name": self.name, "state_dir": "var"},
            "defaults": {"seconds_to_kill": 5},
            "managers": managers,
        }))
        self.config = config_module.load(self.path)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        self.seen = len(self.events())
        began = time.time()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pmon.cli", "run", "-q", "-c", str(self.path)],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.env,
        )
        return began

    def status(self):
        try:
            return call(self.config, "status", timeout=60)
        except Exception:
            return None

    def running(self, timeout: float = 300):
        return wait(lambda: (s := self.status()) and s["project_state"] == "running" and s,
                    timeout, "the project to run")

    def events(self) -> list[dict]:
        path = self.config.project.state_dir / "log" / "events.jsonl"
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:  # the line pmon is writing right now
                continue
        return out

    def new_events(self, kind: str, timeout: float = 120) -> list[dict]:
        def found():
            new = [e for e in self.events()[self.seen:] if e["event"] == kind]
            return new or None
        return wait(found, timeout, f"event {kind}")

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(180)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        for proc in psutil.process_iter():
            try:
                if proc.environ().get("PMON_PROJECT") == self.name:
                    proc.kill()
            except psutil.Error:
                continue
        shutil.rmtree(self.dir, ignore_errors=True)


def sleepers(n: int) -> list[dict]:
    return [{"name": f"m{i}", "command": [SLEEP, "100000"]} for i in range(n)]


def bench_start(mode: str, n: int, idle_seconds: float) -> dict:
    run = Run(mode, sleepers(n), f"s{n}")
    try:
        began = run.start()
        status = run.running()
        # (an older pmon, run for comparison through PYTHONPATH, says nothing of it)
        assert status.get("containment", {"kind": mode})["kind"] == mode, status["containment"]
        started = run.new_events("started")
        project = run.new_events("project-started")[0]
        out = {"total": project["ts"] - began, "spawn": started[-1]["ts"] - started[0]["ts"],
               "count": len(started)}
        if idle_seconds:
            time.sleep(2)  # let the start's aftermath (state file, first rotation check) pass
            ps = psutil.Process(run.proc.pid)
            before = ps.cpu_times()
            t0 = time.monotonic()
            time.sleep(idle_seconds)
            after = ps.cpu_times()
            used = (after.user + after.system) - (before.user + before.system)
            out["idle"] = 100 * used / (time.monotonic() - t0)
        return out
    finally:
        run.close()


def bench_stop50(mode: str) -> dict:
    run = Run(mode, [], "stop")
    try:
        ready = run.dir / "ready"
        data = tomli_w.dumps({
            "project": {"name": run.name, "state_dir": "var"},
            "managers": [{"name": "fifty", "command": ["bash", "-c", FIFTY, "bash", str(ready)]}],
        })
        run.path.write_text(data)
        run.config = config_module.load(run.path)
        run.start()
        run.running()
        wait(ready.exists, 30, "50 descendants")
        time.sleep(0.5)  # the double-forks' middle shells end
        mine = [p for p in psutil.process_iter() if _env(p).get("PMON_MANAGER") == "fifty"]
        began = time.perf_counter()
        call(run.config, "stop", timeout=60, target="fifty")
        took = time.perf_counter() - began
        left = [p for p in mine if _alive(p)]
        return {"stop": took, "descendants": len(mine) - 1, "left": len(left)}
    finally:
        run.close()


def bench_adopt(mode: str, n: int, rounds: int) -> dict:
    run = Run(mode, sleepers(n), f"a{n}")
    try:
        run.start()
        first = run.running()
        pids = {m["name"]: m["pid"] for m in first["managers"]}
        state = run.config.project.state_dir / "state.json"

        def complete() -> bool:
            try:
                saved = json.loads(state.read_text())["managers"]
            except (OSError, ValueError):
                return False
            return all(saved[k]["pid"] == v for k, v in pids.items())

        wait(complete, 60, "the state file")
        figures, scans, spawned = [], [], 0
        for _ in range(rounds):
            run.proc.kill()
            run.proc.wait()
            began = run.start()
            adopted = run.new_events("adopted")[0]
            run.running()
            figures.append(adopted["ts"] - began)
            scans.append(adopted["seconds"])
            spawned += len([e for e in run.events()[run.seen:] if e["event"] == "started"])
            assert adopted["count"] == n, adopted
        return {"adopt": statistics.median(figures), "scan": statistics.median(scans),
                "spawned": spawned}
    finally:
        run.close()


def _env(proc: psutil.Process) -> dict:
    try:
        return proc.environ()
    except psutil.Error:
        return {}


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spawn", default="100,2000")
    parser.add_argument("--adopt", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle-seconds", type=float, default=10)
    parser.add_argument("--modes", default="cgroup,process-group")
    args = parser.parse_args()
    sizes = [int(x) for x in args.spawn.split(",") if x]
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the start")
    for mode in args.modes.split(","):
        for n in sizes:
            r = bench_start(mode, n, args.idle_seconds if n == max(sizes) else 0)
            idle = f", idle {r['idle']:.3f} % of a core" if "idle" in r else ""
            print(f"{mode}: start {n}: {r['total']:.3f} s to 'project started' "
                  f"(spawn phase {r['spawn']:.3f} s, {r['count']} started){idle}", flush=True)
        r = bench_stop50(mode)
        print(f"{mode}: stop of a manager with {r['descendants']} descendants: "
              f"{r['stop']:.3f} s, {r['left']} left", flush=True)
        r = bench_adopt(mode, args.adopt, args.rounds)
        print(f"{mode}: adopt {args.adopt}: {r['adopt']:.3f} s to 'adopted' (median of "
              f"{args.rounds}; scan+adopt {r['scan']:.3f} s), {r['spawned']} spawned", flush=True)


if __name__ == "__main__":
    main()
