"""Wall time of `pmon status` (the CLI, as a user runs it) with N managers.

    python scripts/status_time.py 100 500 [--runs 10]

Each manager is `sleep` (small, so 500 fit on a laptop). Prints, per N: the median, min and
max wall time of `pmon status` (table) and `pmon status --json`, and of the bare control
call (the daemon's share). Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomli_w

from pmon.control.client import Endpoint, call


def measure(n: int, runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pmon.toml"
        sleep = shutil.which("sleep") or "sleep"
        path.write_text(tomli_w.dumps({
            "project": {"name": f"status-time-{n}", "state_dir": "var"},
            "managers": [{"name": f"m{i:03d}", "command": [sleep, "100000"]} for i in range(n)],
        }))
        pmon = subprocess.Popen([sys.executable, "-m", "pmon.cli", "run", "-q", "-c", str(path)])
        try:
            where = Endpoint.read(path)
            deadline = time.monotonic() + 120
            while True:
                try:
                    if call(where, "status", timeout=10)["project_state"] == "running":
                        break
                except Exception:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit(f"{n} managers did not start within 120 s")
                time.sleep(0.2)
            for label, args in (("pmon status", []), ("pmon status --json", ["--json"])):
                times = []
                for _ in range(runs):
                    started = time.perf_counter()
                    subprocess.run([sys.executable, "-m", "pmon.cli", "status", "-c", str(path), *args],
                                   stdout=subprocess.DEVNULL, check=False)
                    times.append(time.perf_counter() - started)
                print(f"{n:4d} managers  {label:20s} median {statistics.median(times)*1000:6.0f} ms"
                      f"  min {min(times)*1000:6.0f}  max {max(times)*1000:6.0f}  ({runs} runs)")
            times = []
            for _ in range(runs):
                started = time.perf_counter()
                call(where, "status", timeout=10)
                times.append(time.perf_counter() - started)
            print(f"{n:4d} managers  {'control call only':20s} median {statistics.median(times)*1000:6.0f} ms"
                  f"  min {min(times)*1000:6.0f}  max {max(times)*1000:6.0f}  ({runs} runs)")
        finally:
            pmon.terminate()
            pmon.wait(120)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("counts", nargs="*", type=int, default=[100, 500])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    for n in args.counts:
        measure(n, args.runs)


if __name__ == "__main__":
    main()
