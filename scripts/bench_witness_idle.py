#!/usr/bin/env python3
"""Idle CPU of a redundant pair with the etcd witness, and without it for comparison.

    .venv/bin/python scripts/bench_witness_idle.py [--seconds 60] [--without-only]
        [--heartbeat-interval S --timeout S]   (these two with --without-only)

Two real pmon on loopback with the DEFAULT [redundancy] settings (two links) and a core
manager plus a `run_on = "active"` driver each (scripts/bench_failover.py's pair), once
with `witness = { etcd = [a real etcd on loopback], key = ... }` (default ttl 6) and once
without. After the pair settled, the CPU time of each server's pmon + redundancy manager
(and of etcd) over `--seconds` is printed as % of one CPU, and each process's share.
Needs `etcd` (Debian package etcd-server) unless `--without-only`. Not a test: the
figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import psutil
import tomli_w

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_failover import Server, Starts, exit_on_sigterm, free_port, settled, write_pair  # noqa: E402


def start_etcd(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    client, peer = free_port(), free_port()
    url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    proc = subprocess.Popen(
        ["etcd", "--data-dir", str(directory / "data"), "--listen-client-urls", url,
         "--advertise-client-urls", url, "--listen-peer-urls", peer_url,
         "--initial-advertise-peer-urls", peer_url, "--initial-cluster", f"default={peer_url}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, url


def redundancy_pid(server: Server) -> int | None:
    status = server.redu() or {}
    assert server.proc is not None
    for child in psutil.Process(server.proc.pid).children():
        if "pmon.redundancy" in " ".join(child.cmdline()):
            return child.pid
    return status.get("pid")


def cpu_seconds(proc: psutil.Process) -> float:
    """The CPU time of a process so far: on Linux the scheduler's own count (ns, every
    thread: /proc/PID/task/*/schedstat), as psutil's clock ticks (10 ms) are too coarse for a
    process that runs 3 ms a second; elsewhere psutil's user + system time."""
    tasks = Path(f"/proc/{proc.pid}/task")
    if not tasks.is_dir():
        return float(sum(proc.cpu_times()[:2]))
    total = 0
    for task in tasks.iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except FileNotFoundError:
            pass  # a thread that ended meanwhile (its time is lost: a few µs at most here)
    return total / 1e9


def measure(root: Path, seconds: float, etcd_url: str | None,
            etcd: subprocess.Popen[bytes] | None,
            timing: dict[str, float] | None = None) -> tuple[list[float], list[list[float]]]:
    starts = Starts()
    path_a, path_b = write_pair(root, starts.port)
    if timing:  # other heartbeat settings than the defaults
        for path in (path_a, path_b):
            data = tomllib.loads(path.read_text())
            data["redundancy"].update(timing)
            path.write_text(tomli_w.dumps(data))
    if etcd_url is not None:
        for path in (path_a, path_b):
            data = tomllib.loads(path.read_text())
            data["redundancy"]["witness"] = {"etcd": [etcd_url], "key": f"/bench/{root.name}"}
            path.write_text(tomli_w.dumps(data))
    servers = {"a": Server(path_a), "b": Server(path_b)}
    try:
        for server in servers.values():
            server.start()
        settled(servers, quiet=3.0)
        groups = []
        for server in servers.values():
            assert server.proc is not None
            groups.append([psutil.Process(p) for p in (server.proc.pid, redundancy_pid(server)) if p])
        if etcd is not None:
            groups.append([psutil.Process(etcd.pid)])

        def cpu() -> list[list[float]]:
            return [[cpu_seconds(p) for p in group] for group in groups]

        t0, before = time.monotonic(), cpu()
        time.sleep(seconds)  # a measurement window, not a wait for a condition
        elapsed, after = time.monotonic() - t0, cpu()
        each = [[round(100 * (n - b) / elapsed, 3) for n, b in zip(ns, bs)]
                for ns, bs in zip(after, before)]
        return [round(sum(group), 3) for group in each], each
    finally:
        for server in servers.values():
            server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--heartbeat-interval", type=float, help="instead of the default 0.2 s")
    parser.add_argument("--timeout", type=float, help="instead of the default 0.6 s")
    parser.add_argument("--without-only", action="store_true",
                        help="measure only the pair without a witness (no etcd needed)")
    args = parser.parse_args()
    exit_on_sigterm()
    if args.without_only:
        with tempfile.TemporaryDirectory() as tmp:
            timing = {k: v for k, v in (("heartbeat_interval", args.heartbeat_interval),
                                        ("timeout", args.timeout)) if v is not None}
            without, each = measure(Path(tmp), args.seconds, None, None, timing)
        print(f"idle CPU over {args.seconds:g} s, % of one CPU, without a witness: "
              f"a {without[0]} (pmon {each[0][0]} + redundancy manager {each[0][1]}), "
              f"b {without[1]} (pmon {each[1][0]} + redundancy manager {each[1][1]})")
        return 0
    if shutil.which("etcd") is None:
        print("etcd is not installed (Debian package etcd-server)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "etcd").mkdir()
        etcd, url = start_etcd(root / "etcd")
        try:
            (root / "with").mkdir()
            (root / "without").mkdir()
            with_witness, each_with = measure(root / "with", args.seconds, url, etcd)
            without, each_without = measure(root / "without", args.seconds, None, None)
        finally:
            etcd.kill()
            etcd.wait(10)
    load = ", ".join(f"{v:.2f}" for v in psutil.getloadavg())
    print(f"idle CPU over {args.seconds:g} s, % of one CPU (pmon + redundancy manager); "
          f"load average {load} on {psutil.cpu_count()} CPUs")
    print("| pair | server a | server b | etcd |")
    print("| --- | --- | --- | --- |")
    print(f"| with the witness | {with_witness[0]} | {with_witness[1]} | {with_witness[2]} |")
    print(f"| without | {without[0]} | {without[1]} | - |")
    for label, each in (("with the witness", each_with), ("without", each_without)):
        print(f"{label}: pmon + redundancy manager: a {each[0][0]} + {each[0][1]}, "
              f"b {each[1][0]} + {each[1][1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
