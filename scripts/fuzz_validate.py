#!/usr/bin/env python3
"""`pmon validate` over a corpus of mutated project files (tests/mutate_toml.py, seeded):
no traceback on any of them, exit 0 or 2, and (with --start N) N of the accepted files run
by a real `pmon run` that starts every manager it accepted (none left `starting` with no
pid, pmon stops cleanly).

    .venv/bin/python scripts/fuzz_validate.py [--files 10000] [--seed 1] [--start 5]

validate runs in-process (click's test runner: the CLI's own code path, minus a Python
start-up per file); the files are real files in a temporary folder. Prints the counts.
"""

from __future__ import annotations

import argparse
import collections
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from click.testing import CliRunner  # noqa: E402

import mutate_toml  # noqa: E402
from pmon.cli import main as cli  # noqa: E402


def validate(runner: CliRunner, path: Path) -> tuple[int, str]:
    """validate's exit code and, when it raised instead of exiting, the traceback."""
    result = runner.invoke(cli, ["validate", "-c", str(path)])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        return -1, "".join(traceback.format_exception(result.exception))
    return result.exit_code, result.output


def starts(path: Path, timeout: float = 40.0) -> str | None:
    """None when `pmon run` starts the file's project and stops it cleanly; else why not."""
    sys.path.insert(0, str(REPO / "tests"))
    from pmon import config as config_module
    from pmon.control.client import call

    config = config_module.load(path)
    proc = subprocess.Popen([sys.executable, "-m", "pmon.cli", "run", "-q", "-c", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                return f"pmon exited {proc.returncode}: {proc.stderr.read()[-500:]}"
            try:
                status = call(config, "status", timeout=5)
            except Exception:
                status = None
            if status and status["project_state"] in ("running", "blocked"):
                stuck = [m["name"] for m in status["managers"]
                         if m["state"] == "starting" and m["pid"] is None]
                if not stuck:
                    break
            if time.monotonic() > deadline:
                return f"not started within {timeout} s: {status}"
            time.sleep(0.1)
        proc.terminate()
        code = proc.wait(60)
        return None if code == 0 else f"pmon stopped with exit {code}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        from support import kill_project_processes

        kill_project_processes(config.project.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--start", type=int, default=5, help="accepted files to run for real")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    runner = CliRunner()
    counts: collections.Counter[int] = collections.Counter()
    accepted: list[str] = []
    tracebacks: list[str] = []
    began = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pmon.toml"
        for number in range(args.files):
            text = mutate_toml.mutate(rng, f"fuzz{number % 1000}")
            path.write_text(text, encoding="utf-8", errors="surrogateescape")
            code, output = validate(runner, path)
            counts[code] += 1
            if code == 0:
                accepted.append(text)
            elif code != 2:
                tracebacks.append(f"--- file {number}, exit {code}:\n{text}\n{output}")
        elapsed = time.monotonic() - began
        print(f"{args.files} mutated files (seed {args.seed}) in {elapsed:.1f} s:")
        for code, count in sorted(counts.items()):
            label = {0: "valid", 2: "refused (exit 2)", -1: "TRACEBACK"}.get(code, f"exit {code}")
            print(f"  {label}: {count}")
        for report in tracebacks[:3]:
            print(report)
        failed = 0
        sample = random.Random(args.seed).sample(accepted, min(args.start, len(accepted)))
        for number, text in enumerate(sample):
            folder = Path(tmp) / f"run{number}"
            folder.mkdir()
            (folder / "pmon.toml").write_text(text)
            why = starts(folder / "pmon.toml")
            if why:
                failed += 1
                print(f"accepted file {number} does not start: {why}\n{text}")
        print(f"accepted files run for real: {len(sample)}, started: {len(sample) - failed}")
    sys.exit(1 if tracebacks or failed or set(counts) - {0, 2} else 0)


if __name__ == "__main__":
    main()
