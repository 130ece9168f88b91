#!/usr/bin/env python3
"""Benchmark: the supervisor's own CPU with the memory/CPU monitor on many managers.

    python scripts/bench_monitors.py [--managers 500] [--seconds 20] [--interval 1]

Runs a real `pmon run` twice on a project of N cheap managers (`sleep 100000`): once with
the bundled memory monitor watching every manager (max_rss_mb and max_cpu_percent, checked
every --interval seconds), once without plugins at all, and prints the CPU pmon itself used
(user + system, children excluded) as % of one core, measured over --seconds once the
project runs. Run it with the Python of pmon's venv. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import signal
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


def write_project(folder: Path, managers: int, interval: float, monitor: bool) -> Path:
    data: dict = {
        "project": {"name": f"bench-monitors-{os.getpid()}-{int(monitor)}", "state_dir": "var"},
        "managers": [{"name": f"m{i}", "command": ["sleep", "100000"]} for i in range(managers)],
    }
    if monitor:
        data["plugins"] = {"memory": {
            "interval": interval, "max_rss_mb": 500, "max_cpu_percent": 90, "checks": 3,
        }}
    else:
        data["plugins"] = {"disable": ["alive", "command", "memory", "port", "server"]}
    path = folder / "pmon.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def measure(managers: int, seconds: float, interval: float, monitor: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="pmon-bench-monitors-") as tmp:
        path = write_project(Path(tmp), managers, interval, monitor)
        config = config_module.load(path)
        proc = subprocess.Popen(
            [sys.executable, "-m", "pmon.cli", "run", "-q", "-c", str(path)],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        try:
            began = time.monotonic()
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"pmon exited: {proc.stderr.read() if proc.stderr else ''}")
                try:
                    status = call(config, "status", timeout=30)
                    if status["project_state"] == "running":
                        break
                except Exception:
                    pass
                time.sleep(0.2)
            started = time.monotonic() - began
            running = sum(m["state"] == "running" for m in status["managers"])
            time.sleep(max(3.0, 2 * interval))  # settle: the first checks, the state file
            me = psutil.Process(proc.pid)
            cpu0, t0 = me.cpu_times(), time.monotonic()
            time.sleep(seconds)
            cpu1, t1 = me.cpu_times(), time.monotonic()
            used = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
            plugins = {p["name"]: p for p in call(config, "plugins", timeout=30)["plugins"]}
            memory = plugins.get("memory", {})
            return {
                "monitor": monitor, "managers": running, "start_s": started,
                "cpu_percent": 100.0 * used / (t1 - t0), "rss_mb": me.memory_info().rss / 2**20,
                "check_ms": (memory.get("check_seconds") or 0) * 1000 if monitor else None,
                "checks": memory.get("calls"), "failures": memory.get("failures"),
                "verdicts": len(call(config, "status", timeout=30)["verdicts"]),
            }
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
            for child in psutil.process_iter():  # anything left of this project
                try:
                    if child.environ().get("PMON_PROJECT") == config.project.name:
                        child.kill()
                except psutil.Error:
                    continue


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--managers", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()
    rows = [measure(args.managers, args.seconds, args.interval, monitor) for monitor in (True, False)]
    print(f"pmon supervisor CPU, {args.managers} managers (`sleep 100000`), measured over "
          f"{args.seconds:g} s, {os.cpu_count()} CPUs, {sys.platform}\n")
    print("| scenario | managers running | start s | pmon CPU % of one core | pmon RSS MB "
          "| memory check ms | checks | plugin failures | verdicts |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        name = f"memory/CPU monitor every {args.interval:g} s" if r["monitor"] else "no plugins"
        check = f"{r['check_ms']:.1f}" if r["check_ms"] is not None else "-"
        print(f"| {name} | {r['managers']} | {r['start_s']:.1f} | {r['cpu_percent']:.2f} "
              f"| {r['rss_mb']:.0f} | {check} | {r['checks'] or '-'} | {r['failures'] or 0} "
              f"| {r['verdicts']} |")


if __name__ == "__main__":
    main()
