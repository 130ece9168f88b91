#!/usr/bin/env python3
"""How fast pmon answers PMON TCP, and what a flood of clients costs the supervisor.

    python scripts/bench_pmon_tcp.py [--managers 50] [--seconds 3] [--clients 100]

Run it with the Python of pmon's venv. Starts a real pmon on a throw-away project of
`sleep` managers with [pmon_tcp] on a free port, then measures, each for --seconds:
MGRLIST:STATI round trips on one connection (lockstep, as WinCC OA's tools poll), the same
from --clients connections at once (one thread each), and pmon's CPU time meanwhile. Prints
one markdown table. Not a test: the figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import tomli_w

SLEEP = shutil.which("sleep") or "/bin/sleep"


def ask(sock: socket.socket, line: bytes) -> bytes:
    sock.sendall(line)
    data = sock.recv(1 << 20)
    while not data.endswith(b"\n;\n"):
        data += sock.recv(1 << 20)
    return data


def poll(sock: socket.socket, until: float, latencies: list[float]) -> None:
    while (start := time.perf_counter()) < until:
        ask(sock, b"##MGRLIST:STATI\n")
        latencies.append(time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--managers", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=100)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="pmon-bench-tcp-") as tmp:
        project = Path(tmp) / "pmon.toml"
        project.write_text(tomli_w.dumps({
            "project": {"name": "bench-tcp", "state_dir": "var"},
            "pmon_tcp": {"port": 0, "max_clients": args.clients + 1},
            "managers": [{"name": f"m{i}", "command": [SLEEP, "3600"]} for i in range(args.managers)],
        }))
        proc = subprocess.Popen([sys.executable, "-m", "pmon.cli", "run", "-q", "-c", str(project)])
        try:
            address = Path(tmp) / "var" / "pmon_tcp.addr"
            deadline = time.monotonic() + 30
            while not address.exists():
                if time.monotonic() > deadline or proc.poll() is not None:
                    print("pmon did not start", file=sys.stderr)
                    return 1
                time.sleep(0.05)
            host, _, port = address.read_text().rpartition(":")
            me = psutil.Process(proc.pid)
            rows = []
            for clients in (1, args.clients):
                socks = [socket.create_connection((host, int(port)), timeout=30) for _ in range(clients)]
                latencies: list[list[float]] = [[] for _ in socks]
                cpu = me.cpu_times()
                until = time.perf_counter() + args.seconds
                threads = [threading.Thread(target=poll, args=(s, until, lat)) for s, lat in zip(socks, latencies)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                used = sum(me.cpu_times()[:2]) - sum(cpu[:2])
                for sock in socks:
                    sock.close()
                every = sorted(x for lat in latencies for x in lat)
                rows.append((clients, len(every), len(every) / args.seconds,
                             statistics.median(every) * 1e3, every[int(len(every) * 0.99) - 1] * 1e3,
                             used / args.seconds * 100))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)

    print(f"PMON TCP, MGRLIST:STATI of {args.managers} managers, {args.seconds:g} s each "
          f"(python {sys.version.split()[0]}, {psutil.cpu_count()} cores)\n")
    print("| clients | replies | replies/s | median ms | p99 ms | pmon CPU % |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for clients, count, rate, median, p99, cpu in rows:
        print(f"| {clients} | {count} | {rate:.0f} | {median:.2f} | {p99:.2f} | {cpu:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
