#!/usr/bin/env python3
"""A seeded chaos run against a real pmon: random SIGKILLs of pmon and of managers (the
core manager too) or SIGUSR2 (a hot restart, at any moment), random operator commands
from several threads, random SIGHUPs; after each round the invariants are checked once the project has settled:

  one       at most one process per manager;
  status    `pmon status` equals the processes (a manager alive in status has exactly the
            process it names; one down has none);
  acked     every acknowledged command holds: a manual manager whose last answered
            command was `start` runs, `stop` is stopped (commands still unanswered when
            pmon was killed may go either way);
  core      a core death ends in a whole-project restart: no process from before it lives.

    .venv/bin/python scripts/chaos.py [--seconds 60] [--seed 1] [--threads 3]

The short run (60 s) is part of .ci/run; a long one is `--seconds 1800`. Prints the rounds,
what was done, and every violation with its round; exits 1 on any violation.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import tomli_w

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from pmon import config as config_module  # noqa: E402
from pmon.control.client import RemoteError, call  # noqa: E402
from pmon.errors import NotRunning  # noqa: E402
from support import poll_for  # noqa: E402

CHILD = str(REPO / "tests" / "children" / "child.py")
MANUAL = ["m1", "m2", "m3"]
ALWAYS = ["a1", "a2", "stubborn", "note"]
SETTLE_SECONDS = 40.0
CONSISTENT_SECONDS = 3.0


def project_file(directory: Path, name: str) -> Path:
    py = sys.executable
    data = {
        "project": {"name": name, "state_dir": "var"},
        "defaults": {"seconds_to_kill": 1, "restart_count": 1000, "reset_after": 1,
                     "start_timeout": 5},
        "managers": [
            {"name": "core", "command": [py, CHILD], "core": True},
            {"name": "a1", "command": [py, CHILD]},
            {"name": "a2", "command": [py, CHILD, "--print-every", "0.2"]},
            {"name": "stubborn", "command": [py, CHILD, "--ignore-term"]},
            {"name": "note", "command": [py, CHILD, "--ready-after", "0.3"], "ready": "notify"},
            *({"name": n, "command": [py, CHILD], "start": "manual"} for n in MANUAL),
        ],
    }
    path = directory / "pmon.toml"
    path.write_text(tomli_w.dumps(data))
    return path


class Chaos:
    def __init__(self, args: argparse.Namespace, directory: Path) -> None:
        self.rng = random.Random(args.seed)
        self.args = args
        self.name = f"chaos{os.getpid()}"
        self.path = project_file(directory, self.name)
        self.config = config_module.load(self.path)
        self.proc: subprocess.Popen[bytes] | None = None
        self.lock = threading.Lock()
        # per manual manager: the state its last answered command promises, or None when a
        # command to it was unanswered when pmon died (either outcome may hold)
        self.promise: dict[str, str | None] = {name: "stopped" for name in MANUAL}
        self.in_flight: dict[str, int] = collections.Counter()
        self.counts: collections.Counter[str] = collections.Counter()
        self.violations: list[str] = []
        self.core_victims: set[int] = set()  # processes alive at a core death
        self.hot_restarted = False  # SIGUSR2 in this round
        self.history: dict[str, collections.deque[str]] = collections.defaultdict(
            lambda: collections.deque(maxlen=8))  # the last commands to each, for a report

    # --- pmon -------------------------------------------------------------------------
    def start_pmon(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pmon.cli", "run", "-q", "-c", str(self.path)],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.wait(lambda: self.status() is not None, 30, "pmon to answer")

    def kill_pmon(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(30)
        self.counts["pmon SIGKILL"] += 1

    def hot_restart_pmon(self) -> None:
        """SIGUSR2: pmon detaches once any job is done (exit 0); the next one adopts. An
        early signal must neither kill pmon nor leave the project stopped (review 1)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGUSR2)
        code = self.proc.wait(120)
        if code != 0:
            self.violations.append(f"SIGUSR2: pmon exited {code}, not 0 (a hot restart)")
            print("VIOLATION", self.violations[-1], flush=True)
        self.counts["pmon SIGUSR2"] += 1
        self.hot_restarted = True

    def status(self) -> dict[str, Any] | None:
        try:
            return call(self.config, "status", timeout=10)
        except Exception:
            return None

    def wait(self, predicate: Any, timeout: float, what: str) -> Any:
        return poll_for(predicate, timeout, what)  # AssertionError on timeout

    # --- processes --------------------------------------------------------------------
    def processes(self) -> dict[str, list[int]]:
        """The live (not zombie) session leaders of this project, per manager."""
        found: dict[str, list[int]] = collections.defaultdict(list)
        for proc in psutil.process_iter():
            try:
                env = proc.environ()
                if env.get("PMON_PROJECT") != self.name or os.getsid(proc.pid) != proc.pid:
                    continue
                if proc.status() == psutil.STATUS_ZOMBIE:
                    continue
                found[env.get("PMON_MANAGER", "?")].append(proc.pid)
            except (psutil.Error, OSError):
                continue
        return found

    # --- the operators ------------------------------------------------------------------
    def operator(self, rng: random.Random, until: float, own: list[str]) -> None:
        """One operator: commands to its own manual managers (so that the order of its
        answers is the order its commands were made), restarts of others, status."""
        while time.monotonic() < until:
            roll = rng.random()
            if roll < 0.7 and own:
                name, verb = rng.choice(own), rng.choice(["start", "stop", "kill", "restart"])
                args: dict[str, Any] = {"target": name, "wait": rng.random() < 0.5}
            elif roll < 0.9:
                name, verb, args = "", "restart", {"target": rng.choice(ALWAYS[:2])}
            else:
                name, verb, args = "", "status", {}
            with self.lock:
                if name:
                    self.in_flight[name] += 1
            why, unknown = "", False
            try:
                call(self.config, verb, timeout=30, **args)
                answered = True
            except RemoteError as exc:  # refused: nothing changed (not saved: done)
                answered, why = exc.code == "not-saved", f" (refused: {str(exc)[:60]})"
            except NotRunning:
                answered, why = False, " (not running)"  # never reached pmon
            except Exception as exc:  # pmon died with it: it may have been made, or not
                answered, unknown, why = False, True, f" ({str(exc)[:60]})"
            with self.lock:
                if name and why != " (not running)":
                    self.history[name].append(
                        f"{time.time():.3f} {verb} wait={args.get('wait')} answered={answered}{why}")
                self.counts[f"command {verb}"] += 1
                if name:
                    self.in_flight[name] -= 1
                    if answered:
                        self.promise[name] = "running" if verb in ("start", "restart") else "stopped"
                    elif unknown:
                        self.promise[name] = None
            time.sleep(rng.uniform(0, 0.15))

    # --- one round --------------------------------------------------------------------
    def round(self, number: int) -> None:
        rng = self.rng
        length = rng.uniform(0.5, 2.5)
        until = time.monotonic() + length
        count = self.args.threads
        threads = [threading.Thread(target=self.operator, args=(
            random.Random(rng.random()), until, MANUAL[i::count])) for i in range(count)]
        for thread in threads:
            thread.start()
        killed_pmon = False
        while time.monotonic() < until:
            time.sleep(rng.uniform(0.05, 0.4))
            roll = rng.random()
            live = self.processes()
            if roll < 0.25:
                name = rng.choice([n for n in live if n != "core"] or ["-"])
                for pid in live.get(name, []):
                    _kill(pid)
                    self.counts["manager SIGKILL"] += 1
            elif roll < 0.32 and live.get("core"):
                self.core_victims |= {p for pids in live.values() for p in pids}
                for pid in live["core"]:
                    _kill(pid)
                self.counts["core SIGKILL"] += 1
            elif roll < 0.4:
                assert self.proc is not None
                self.proc.send_signal(signal.SIGHUP)
                self.counts["SIGHUP"] += 1
            elif roll < 0.55 and not killed_pmon:
                if rng.random() < 0.3:
                    self.hot_restart_pmon()  # at any moment, its start-up included
                else:
                    self.kill_pmon()
                killed_pmon = True
                with self.lock:  # unanswered commands may or may not have been made
                    for name in MANUAL:
                        self.history[name].append(f"{time.time():.3f} pmon killed, "
                                                  f"in flight {self.in_flight[name]}")
                    for name, pending in self.in_flight.items():
                        if pending:
                            self.promise[name] = None
        for thread in threads:
            thread.join(60)
        if killed_pmon:
            self.start_pmon()
        if self.hot_restarted:  # nobody stops the project here: after a new pmon it runs
            self.hot_restarted = False
            status = self.status()
            if status is not None and status["project_state"] == "stopped":
                self.violation(number, "hot restart: the next pmon left the project stopped")
        self.check(number)

    def settled(self) -> dict[str, Any] | None:
        status = self.status()
        if status is None or status["project_state"] not in ("running", "stopped", "blocked"):
            return None
        if any(m["state"] in ("starting", "stopping") and not m.get("ready_failed")
               for m in status["managers"]):
            return None
        if any(m["state"] == "backoff" for m in status["managers"]):
            return None
        return status

    def consistent(self) -> tuple[dict[str, Any] | None, dict[str, list[int]], list[str]]:
        """A settled status, the processes, and how they disagree. A death a moment before
        the status was read (a SIGKILL in flight) is not a disagreement: the pair is read
        again until it agrees or CONSISTENT_SECONDS pass."""
        deadline = time.monotonic() + CONSISTENT_SECONDS
        while True:
            status = self.wait(self.settled, SETTLE_SECONDS, "the project to settle")
            live = self.processes()
            problems = []
            for name, pids in live.items():
                if len(pids) > 1:
                    problems.append(f"one: {name} runs {len(pids)} times ({pids})")
            for row in status["managers"]:
                name, pids = row["name"], live.get(row["name"], [])
                alive = row["state"] in ("running", "starting", "stopping")
                if alive and pids != [row["pid"]]:
                    problems.append(f"status: {name} {row['state']} pid {row['pid']}, processes {pids}")
                if not alive and pids:
                    problems.append(f"status: {name} {row['state']}, processes {pids}")
            if not problems or time.monotonic() > deadline:
                return status, live, problems
            time.sleep(0.2)

    def check(self, number: int) -> None:
        try:
            status, live, problems = self.consistent()
        except AssertionError as exc:
            self.violation(number, f"settle: {exc}; last status {self.status()}")
            return
        for problem in problems:
            self.violation(number, problem)
        rows = {m["name"]: m for m in status["managers"]}
        with self.lock:
            for name, promise in self.promise.items():
                state = rows[name]["state"]
                if promise is None:
                    self.promise[name] = "running" if state == "running" else "stopped"
                elif status["project_state"] == "running" and state != promise:
                    self.violation(number, f"acked: {name} was promised {promise}, is {state}; "
                                   f"its last commands: {list(self.history[name])}")
        survivors = self.core_victims & {p for pids in live.values() for p in pids}
        if survivors:
            self.violation(number, f"core: processes from before a core death live on: {sorted(survivors)}")
        self.core_victims = set()
        if status["project_state"] != "running":  # blocked by too many core deaths, say
            call(self.config, "restart-all", timeout=60)
            self.counts["restart-all after " + status["project_state"]] += 1

    def violation(self, number: int, text: str) -> None:
        line = f"round {number} (seed {self.args.seed}): {text}"
        self.violations.append(line)
        print("VIOLATION", line, flush=True)

    def run(self) -> int:
        self.start_pmon()
        self.wait(self.settled, SETTLE_SECONDS, "the first start")
        began = time.monotonic()
        rounds = 0
        try:
            while time.monotonic() - began < self.args.seconds:
                rounds += 1
                self.round(rounds)
        finally:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(60)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
            for pids in self.processes().values():
                for pid in pids:
                    _kill(pid)
        took = time.monotonic() - began
        print(f"chaos: seed {self.args.seed}, {rounds} rounds in {took:.0f} s, "
              f"{len(self.violations)} invariant violations")
        for what, count in sorted(self.counts.items()):
            print(f"  {what}: {count}")
        return 1 if self.violations else 0


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=3)
    args = parser.parse_args()
    parser_keep = os.environ.get("CHAOS_KEEP")  # a folder to keep the project and its logs in
    if parser_keep:
        sys.exit(Chaos(args, Path(parser_keep)).run())
    with tempfile.TemporaryDirectory() as tmp:
        sys.exit(Chaos(args, Path(tmp)).run())


if __name__ == "__main__":
    main()
