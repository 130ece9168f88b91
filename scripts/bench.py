#!/usr/bin/env python3
"""Benchmark pmon against supervisord (and circus, if it installs) side by side.

    python scripts/bench.py [--quick] [--only pmon|supervisord|circus]

Run it with the Python of pmon's venv (it needs psutil). supervisord and circus
share or clash with pmon's import name `supervisor`, so each gets a throw-away
venv under /tmp/pmon-bench-venvs/. Every child of every supervisor is the same
tiny program: bash sends "NAME PID" to our UDP port the moment it runs, then
execs `sleep`. The kernel's receive timestamp of that datagram is when the
child *runs*, so we time starts and restarts without polling any supervisor.

Prints one markdown table. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

try:
    import psutil
except ImportError:
    sys.exit("bench.py needs psutil: run it with the Python of pmon's venv")

REPO = Path(__file__).resolve().parent.parent
VENVS = Path("/tmp/pmon-bench-venvs")
BASH = shutil.which("bash") or "/bin/bash"
TOKEN_VAR = "PMON_BENCH_TOKEN"  # marks every process we started, for cleanup
TOKEN = uuid.uuid4().hex
SO_TIMESTAMPNS = 35  # Linux; the socket module does not export it
STOP_WAIT = 30  # seconds a supervisor gets to stop after SIGTERM before killpg


class Skip(Exception):
    """This supervisor cannot be benchmarked here (install failed, ...)."""


# --- child reports over UDP -------------------------------------------------


class Reports:
    """Receives "NAME PID" datagrams; keeps the latest (pid, receive time ns) per name."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # a burst of 500 reports must not overflow the default receive buffer
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        try:  # kernel receive timestamps: immune to this thread's scheduling delay
            self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        except OSError:
            pass
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.latest: dict[str, tuple[int, int]] = {}
        self.pids: set[int] = set()  # every child pid ever reported, for cleanup
        self.cond = threading.Condition()
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while True:
            data, anc, _flags, _addr = self.sock.recvmsg(256, 64)
            t = time.time_ns()
            for level, kind, raw in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("@ll", raw[: struct.calcsize("@ll")])
                    t = sec * 1_000_000_000 + nsec
            try:
                name, pid = data.decode().split()
            except ValueError:
                continue
            with self.cond:
                self.latest[name] = (int(pid), t)
                self.pids.add(int(pid))
                self.cond.notify_all()

    def wait(self, pred, timeout: float, proc: subprocess.Popen) -> bool:
        """Wait until pred(latest) holds; fail fast if the supervisor died."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred(self.latest):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                if proc.poll() is not None:
                    raise RuntimeError(f"supervisor exited with code {proc.returncode}")
                self.cond.wait(min(left, 0.5))
            return True


def child_script(port: int) -> str:
    return f'echo "$NAME $$" > /dev/udp/127.0.0.1/{port}; exec sleep 100000'


# --- the supervisors ----------------------------------------------------------


def ensure_venv(name: str, package: str, binary: str) -> Path:
    """A throw-away venv with `package`, created once and reused."""
    venv = VENVS / name
    if (venv / "bin" / binary).exists():
        return venv
    for cmd in ([sys.executable, "-m", "venv", str(venv)],
                [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", package]):
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            lines = (r.stderr or r.stdout).strip().splitlines() or ["no output"]
            raise Skip(f"{' '.join(cmd[1:])} failed: {lines[-1]}")
    return venv


def package_version(venv: Path, dist: str) -> str:
    r = subprocess.run([str(venv / "bin" / "python"), "-c",
                        f"import importlib.metadata as m; print(m.version({dist!r}))"],
                       capture_output=True, text=True)
    return r.stdout.strip()


class Pmon:
    kind = "pmon"

    def prepare(self) -> None:
        # benchmark this checkout; its dependencies come from the current venv
        self.env = {"PYTHONPATH": os.pathsep.join(
            [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
        self.cli = [sys.executable, "-m", "pmon.cli"]
        r = subprocess.run(self.cli + ["--help"], capture_output=True, text=True,
                           env={**os.environ, **self.env})
        if r.returncode != 0:
            lines = (r.stderr or r.stdout).strip().splitlines() or ["no output"]
            raise Skip(f"`python -m pmon.cli --help` failed: {lines[-1]}")
        self.label = "pmon"

    def write_config(self, d: Path, names: list[str], port: int) -> Path:
        q = json.dumps  # a JSON string of ASCII text is a valid TOML basic string
        lines = ['[project]', 'name = "bench"', 'state_dir = "state"', '',
                 '[defaults]',
                 'restart_count = 1000  # never block a manager during the bench',
                 'reset_after = 1', 'seconds_to_kill = 2', '']
        for n in names:
            lines += ['[[managers]]', f'name = {q(n)}',
                      f'command = [{q(BASH)}, "-c", {q(child_script(port))}]',
                      f'env = {{ NAME = {q(n)} }}', '']
        path = d / "pmon.toml"
        path.write_text("\n".join(lines))
        return path

    def run_cmd(self, conf: Path) -> list[str]:
        return self.cli + ["run", "-c", str(conf)]

    def status_cmd(self, conf: Path) -> list[str]:
        return self.cli + ["status", "--json", "-c", str(conf)]

    def count_running(self, out: str) -> int:
        return sum(m["state"] == "running" for m in json.loads(out)["managers"])


class Supervisord:
    kind = "supervisord"

    def prepare(self) -> None:
        self.venv = ensure_venv("supervisord", "supervisor", "supervisord")
        self.env = {}
        self.label = f"supervisord {package_version(self.venv, 'supervisor')}"

    def write_config(self, d: Path, names: list[str], port: int) -> Path:
        # fair settings: no start grace period, restart at once, never give up;
        # child output goes to per-program log files, supervisord's default
        text = """\
[unix_http_server]
file=%(here)s/supervisor.sock

[supervisord]
logfile=%(here)s/supervisord.log
pidfile=%(here)s/supervisord.pid
childlogdir=%(here)s/logs
loglevel=warn

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://%(here)s/supervisor.sock
"""
        (d / "logs").mkdir(exist_ok=True)
        for n in names:
            text += f"""
[program:{n}]
command={BASH} -c '{child_script(port)}'
environment=NAME="{n}"
startsecs=0
autorestart=true
startretries=1000
stopwaitsecs=2
"""
        path = d / "supervisord.conf"
        path.write_text(text)
        return path

    def run_cmd(self, conf: Path) -> list[str]:
        return [str(self.venv / "bin" / "supervisord"), "-c", str(conf), "-n"]

    def status_cmd(self, conf: Path) -> list[str]:
        return [str(self.venv / "bin" / "supervisorctl"), "-c", str(conf), "status"]

    def count_running(self, out: str) -> int:
        return sum(" RUNNING " in line for line in out.splitlines())


class Circus:
    kind = "circus"

    def prepare(self) -> None:
        self.venv = ensure_venv("circus", "circus", "circusd")
        self.env = {}
        self.label = f"circus {package_version(self.venv, 'circus')}"

    def write_config(self, d: Path, names: list[str], port: int) -> Path:
        # circus finds dead children on a timer, check_delay (default 5 s),
        # which sets its restart latency; we keep the default (1 s makes its
        # manage loop overlap itself with many watchers: ConflictError in the log).
        # Flapping detection is off, like the high restart limits elsewhere.
        # No stats_endpoint: setting one starts the circusd-stats process.
        self.endpoint = f"ipc://{d}/ctl.sock"
        text = f"""\
[circus]
endpoint = {self.endpoint}
pubsub_endpoint = ipc://{d}/pub.sock
"""
        for n in names:
            text += f"""
[watcher:{n}]
cmd = {BASH}
args = -c '{child_script(port)}'
numprocesses = 1
copy_env = True
respawn = True
check_flapping = False
graceful_timeout = 2

[env:{n}]
NAME = {n}
"""
        path = d / "circus.ini"
        path.write_text(text)
        return path

    def run_cmd(self, conf: Path) -> list[str]:
        return [str(self.venv / "bin" / "circusd"), str(conf)]

    def status_cmd(self, conf: Path) -> list[str]:
        return [str(self.venv / "bin" / "circusctl"), "--endpoint", self.endpoint, "status"]

    def count_running(self, out: str) -> int:
        return sum(line.endswith(": active") for line in out.splitlines())


SUPERVISORS = {s.kind: s for s in (Pmon, Supervisord, Circus)}


# --- one running supervisor ---------------------------------------------------


def kill_leftovers(reports: Reports) -> int:
    """Kill every process that carries our token or is a reported child still sleeping."""
    killed = 0
    for p in psutil.process_iter():
        try:
            if p.pid == os.getpid():
                continue
            ours = p.environ().get(TOKEN_VAR) == TOKEN or (
                p.pid in reports.pids and p.name() == "sleep")
            if ours:
                p.kill()
                killed += 1
        except psutil.Error:
            pass
    return killed


class Running:
    """A supervisor with n children, in its own session; stopped and swept on exit."""

    def __init__(self, sup, n: int, reports: Reports, workdir: Path) -> None:
        self.sup, self.reports = sup, reports
        self.names = [f"m{n}-{i:03d}" for i in range(n)]
        self.dir = workdir / f"{sup.kind}-{n}"
        self.dir.mkdir(parents=True)
        self.conf = sup.write_config(self.dir, self.names, reports.port)
        self.env = {**os.environ, **sup.env, TOKEN_VAR: TOKEN}
        self.orphans = 0
        self.hung = False  # did not exit within STOP_WAIT s of SIGTERM

    def __enter__(self) -> Running:
        with self.reports.cond:  # names repeat across supervisors: forget old reports
            self.reports.latest.clear()
        self.log = open(self.dir / "out.log", "wb")
        self.t_launch = time.time_ns()
        self.proc = subprocess.Popen(
            self.sup.run_cmd(self.conf), cwd=self.dir, env=self.env,
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)  # our Ctrl-C must not reach it; killpg reaches it all
        self.ps = psutil.Process(self.proc.pid)
        return self

    def wait_all(self, pred_each, timeout: float) -> bool:
        return self.reports.wait(lambda L: all(pred_each(L, n) for n in self.names),
                                 timeout, self.proc)

    def status(self) -> tuple[float, str]:
        t = time.perf_counter()
        r = subprocess.run(self.sup.status_cmd(self.conf), cwd=self.dir, env=self.env,
                           capture_output=True, text=True, timeout=60)
        return time.perf_counter() - t, r.stdout

    def __exit__(self, *exc) -> None:
        try:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(STOP_WAIT)
        except subprocess.TimeoutExpired:
            self.hung = True
        finally:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
            self.log.close()
            # the children live in process groups of their own: sweep them up
            time.sleep(0.2)
            self.orphans = kill_leftovers(self.reports)

    def report_stop(self) -> None:
        if self.hung:
            print(f"  {self.sup.kind}: still running {STOP_WAIT} s after SIGTERM, "
                  "killed its process group", file=sys.stderr)
        if self.orphans:
            print(f"  {self.sup.kind}: {self.orphans} processes left behind after stop "
                  "(killed)", file=sys.stderr)

    def tail(self) -> str:
        lines = (self.dir / "out.log").read_text(errors="replace").splitlines()
        return "\n".join("    " + line for line in lines[-10:])


# --- the measurements ---------------------------------------------------------


def ms(ns: int) -> float:
    return ns / 1e6


def secs(ns: int) -> float:
    return ns / 1e9


def p95(values: list[float]) -> float:
    s = sorted(values)
    return s[math.ceil(0.95 * len(s)) - 1]  # nearest rank


def bench(sup, reports: Reports, workdir: Path, opts, res: dict) -> None:
    """Fill res as results come in, so a late failure keeps the earlier figures."""
    samples = 10 if opts.quick else 30
    idle = 5.0 if opts.quick else 20.0
    status_runs = 5 if opts.quick else 10

    with Running(sup, 100, reports, workdir) as r:
        if not r.wait_all(lambda L, n: n in L, 60):
            raise RuntimeError(f"only {len(reports.latest)}/100 children started in 60 s\n{r.tail()}")
        res["start100"] = secs(max(reports.latest[n][1] for n in r.names) - r.t_launch)
        time.sleep(1)  # let the supervisor finish its start-up bookkeeping
        res["rss100"] = r.ps.memory_info().rss / 2**20

        _, out = r.status()  # check once that the status command really answers
        try:
            running = sup.count_running(out)
        except (ValueError, KeyError, TypeError):
            running = f"unreadable output {out[:200]!r}"
        if running != 100:
            print(f"  {sup.kind}: status shows {running} of 100 running", file=sys.stderr)
        res["status"] = statistics.median(r.status()[0] for _ in range(status_runs)) * 1000

        # one child at a time, rotating through the 100 so no restart limit kicks in
        lat = []
        for i in range(samples):
            name = r.names[(i * 37) % len(r.names)]
            old = reports.latest[name][0]
            t = time.time_ns()
            os.kill(old, signal.SIGKILL)
            if not reports.wait(lambda L: L[name][0] != old, 10, r.proc):
                raise RuntimeError(f"{name} was not restarted within 10 s")
            lat.append(ms(reports.latest[name][1] - t))
            time.sleep(0.1)
        res["restart"] = (min(lat), statistics.median(lat), p95(lat))

        old_pids = {n: reports.latest[n][0] for n in r.names}
        t = time.time_ns()
        for pid in old_pids.values():
            os.kill(pid, signal.SIGKILL)
        if not r.wait_all(lambda L, n: L[n][0] != old_pids[n], 60):
            raise RuntimeError("not all 100 children came back within 60 s")
        res["recovery"] = secs(max(reports.latest[n][1] for n in r.names) - t)
    r.report_stop()

    with Running(sup, 500, reports, workdir) as r:
        if not r.wait_all(lambda L, n: n in L, 180):
            got = sum(n in reports.latest for n in r.names)
            raise RuntimeError(f"only {got}/500 children started in 180 s\n{r.tail()}")
        time.sleep(2)  # settle before measuring idle
        c0, w0 = r.ps.cpu_times(), time.monotonic()
        time.sleep(idle)
        c1, w1 = r.ps.cpu_times(), time.monotonic()
        used = (c1.user + c1.system) - (c0.user + c0.system)
        res["cpu500"] = 100 * used / (w1 - w0)
        res["rss500"] = r.ps.memory_info().rss / 2**20
    r.report_stop()


def table(results: dict[str, dict], labels: dict[str, str], opts) -> str:
    samples = 10 if opts.quick else 30
    idle = 5 if opts.quick else 20
    status_runs = 5 if opts.quick else 10
    rows = [
        (f"restart latency, min / median / p95 (ms, n={samples})", "restart",
         lambda v: " / ".join(f"{x:.1f}" for x in v)),
        ("start 100 managers (s)", "start100", lambda v: f"{v:.2f}"),
        ("recovery after killing all 100 (s)", "recovery", lambda v: f"{v:.2f}"),
        (f"status command, 100 managers (ms, median of {status_runs})", "status",
         lambda v: f"{v:.0f}"),
        (f"idle CPU, 500 managers (% of one core, {idle} s)", "cpu500", lambda v: f"{v:.2f}"),
        ("RSS, 100 managers (MiB)", "rss100", lambda v: f"{v:.1f}"),
        ("RSS, 500 managers (MiB)", "rss500", lambda v: f"{v:.1f}"),
    ]
    kinds = list(results)
    out = ["| metric | " + " | ".join(labels[k] for k in kinds) + " |",
           "|---|" + "---|" * len(kinds)]
    for title, key, fmt in rows:
        cells = [fmt(results[k][key]) if key in results[k] else "-" for k in kinds]
        out.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer samples, 5 s idle window")
    ap.add_argument("--only", choices=list(SUPERVISORS), help="benchmark one supervisor")
    ap.add_argument("--keep", action="store_true", help="keep the configs and logs")
    opts = ap.parse_args()

    # 500 supervised children need far more descriptors than the usual 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    def interrupted(_signum, _frame):
        raise KeyboardInterrupt  # run the same cleanup as Ctrl-C
    signal.signal(signal.SIGTERM, interrupted)
    # also when started with SIGINT ignored (nohup, `cmd &` in a script)
    signal.signal(signal.SIGINT, signal.default_int_handler)

    reports = Reports()
    workdir = Path(tempfile.mkdtemp(prefix="pmon-bench-"))
    results: dict[str, dict] = {}
    labels: dict[str, str] = {}
    failed = False
    try:
        for kind in [opts.only] if opts.only else list(SUPERVISORS):
            sup = SUPERVISORS[kind]()
            try:
                print(f"{kind}: preparing", file=sys.stderr)
                sup.prepare()
            except Skip as e:
                print(f"{kind}: skipped ({e})", flush=True)
                continue
            labels[kind] = sup.label
            results[kind] = {}
            print(f"{kind}: running", file=sys.stderr)
            try:
                bench(sup, reports, workdir, opts, results[kind])
            except Exception as e:  # one supervisor failing must not stop the others
                if kind == "circus":  # optional: a broken circus is only skipped
                    print(f"circus: skipped ({e})", flush=True)
                    if not results[kind]:
                        del results[kind]
                    continue
                failed = True
                print(f"{kind}: failed ({e})", flush=True)
    except KeyboardInterrupt:
        print("interrupted, cleaning up", file=sys.stderr)
        failed = True
    finally:
        n = kill_leftovers(reports)
        if n:
            print(f"cleanup: killed {n} leftover processes", file=sys.stderr)
        if failed or opts.keep:
            print(f"configs and logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    if results:
        print(f"\nmachine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
              f"{'quick' if opts.quick else 'full'} run\n")
        print(table(results, labels, opts))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
