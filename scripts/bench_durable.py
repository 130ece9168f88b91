#!/usr/bin/env python3
"""What a durable acknowledgement costs: a command is answered only once what it changed is
in the state file (write, fsync, rename, fsync of the directory).

    .venv/bin/python scripts/bench_durable.py [--managers 50] [--rounds 200] [--dir DIR]

Two figures:
  save      one state-file write of a project of N managers, as pmon does it before a reply
            (write + fsync + rename + directory fsync), against the same write without the
            two fsyncs: the cost of durability itself, on the file system of --dir;
  command   the round trip of `stop` and `start` (wait=False: the reply comes once the
            change is under way and on disk) of a manual manager through the control socket
            of a real pmon, median and 95th percentile.
Not a test: numbers depend on the disk and on what else the machine does.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomli_w

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pmon import config as config_module  # noqa: E402
from pmon.control.client import call  # noqa: E402
from pmon.runtime import statefile  # noqa: E402


def figures(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[int(len(ordered) * 0.95) - 1]
    return f"median {statistics.median(ordered) * 1000:.2f} ms, p95 {p95 * 1000:.2f} ms"


def state_of(managers: int) -> dict[str, object]:
    record = {"pid": 12345, "create_time": 1.0e9, "state": "running", "restarts": 0,
              "recent_restarts": [], "wanted": True, "exit_code": None, "reason": "",
              "kill_at": None, "then_start": False, "ready_failed": False}
    return {"project": "bench", "job": None, "stopped_cleanly": False,
            "managers": {f"m{i}": dict(record) for i in range(managers)}}


def bench_save(directory: Path, managers: int, rounds: int) -> None:
    path = directory / "state.json"
    state = state_of(managers)
    durable, plain = [], []
    for _ in range(rounds):
        began = time.perf_counter()
        statefile.save(path, state)
        durable.append(time.perf_counter() - began)
        began = time.perf_counter()
        tmp = directory / ".plain.tmp"
        import json
        tmp.write_bytes(json.dumps({"version": statefile.VERSION, **state}, indent=1).encode())
        os.replace(tmp, directory / "plain.json")
        plain.append(time.perf_counter() - began)
    print(f"save, {managers} managers, {path.stat().st_size} bytes, {rounds} rounds:")
    print(f"  durable (fsync file + dir): {figures(durable)}")
    print(f"  without fsync:              {figures(plain)}")


def bench_commands(directory: Path, managers: int, rounds: int) -> None:
    sleeper = [sys.executable, "-c", "import time; time.sleep(100000)"]
    data = {
        "project": {"name": f"bench-durable-{os.getpid()}", "state_dir": str(directory / "var")},
        "managers": [{"name": "man", "command": sleeper, "start": "manual",
                      "seconds_to_kill": 2}]
        + [{"name": f"m{i}", "command": sleeper} for i in range(managers - 1)],
    }
    path = directory / "pmon.toml"
    path.write_text(tomli_w.dumps(data))
    config = config_module.load(path)
    proc = subprocess.Popen([sys.executable, "-m", "pmon.cli", "run", "-q", "-c", str(path)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if call(config, "status")["project_state"] == "running":
                    break
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("pmon did not start")
            time.sleep(0.05)
        times: dict[str, list[float]] = {"start": [], "stop": []}
        for _ in range(rounds):
            for verb in ("start", "stop"):
                began = time.perf_counter()
                call(config, verb, target="man", wait=False)
                times[verb].append(time.perf_counter() - began)
                # the next command only once this one settled (not part of the figure)
                want = "running" if verb == "start" else "stopped"
                while next(m for m in call(config, "status")["managers"]
                           if m["name"] == "man")["state"] != want:
                    time.sleep(0.005)
        print(f"commands through the control socket ({managers} managers, {rounds} each):")
        for verb, samples in times.items():
            print(f"  {verb:5} (durable reply): {figures(samples)}")
    finally:
        proc.terminate()
        proc.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--managers", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--dir", type=Path, default=None, help="where the files go (tmp)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        bench_save(Path(tmp), args.managers, args.rounds)
        bench_commands(Path(tmp), args.managers, max(10, args.rounds // 4))


if __name__ == "__main__":
    main()
