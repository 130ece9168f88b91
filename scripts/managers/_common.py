"""Shared helpers for the demo managers (stdlib only).

A demo manager calls ``setup()`` once (argument parsing, signal handlers), then
does its work inside ``run_forever()``, which sleeps in blocking waits between
jobs so an idle manager costs ~0 % CPU. SIGTERM/SIGINT end it with exit code 0.
"""

from __future__ import annotations

import argparse
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable
from datetime import datetime

_name = os.path.splitext(os.path.basename(sys.argv[0] or "manager"))[0]


def log(msg: str) -> None:
    """Print one timestamped line; flushed at once so pmon's log capture sees it live."""
    stamp = datetime.now().isoformat(sep=" ", timespec="milliseconds")
    print(f"{stamp} {_name}: {msg}", flush=True)


def _log_from_signal(msg: str) -> None:
    # A handler may interrupt a print() in progress; a second print() on the
    # same buffer then raises "reentrant call". Fall back to a raw write.
    try:
        log(msg)
    except RuntimeError:
        stamp = datetime.now().isoformat(sep=" ", timespec="milliseconds")
        os.write(1, f"{stamp} {_name}: {msg}\n".encode())


def notify(msg: str) -> None:
    """Send one sd_notify datagram to $NOTIFY_SOCKET; a no-op when it is unset."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr or not hasattr(socket, "AF_UNIX"):
        return
    if addr.startswith("@"):  # '@' names a socket in the abstract namespace
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(msg.encode(), addr)
    except OSError as e:  # the supervisor may be gone; the manager lives on
        log(f"notify {msg!r} failed: {e}")


def ready() -> None:
    notify("READY=1")


def watchdog() -> None:
    notify("WATCHDOG=1")


def setup(
    description: str,
    on_switchover: Callable[[], None] | None = None,
    add_args: Callable[[argparse.ArgumentParser], None] | None = None,
    argv: list[str] | None = None,
) -> argparse.Namespace:
    """Parse ``-num N`` (plus any extra arguments) and install the signal handlers.

    SIGTERM/SIGINT log a line and exit 0. SIGUSR1 means "a switchover happened":
    it logs the general-query line, then calls ``on_switchover`` if given.
    """
    global _name
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("-num", type=int, default=1, help="manager number")
    if add_args:
        add_args(parser)
    args = parser.parse_args(argv)
    _name = f"{_name}#{args.num}"

    def stop(signum, _frame):
        _log_from_signal(f"{signal.Signals(signum).name} received, exiting cleanly")
        raise SystemExit(0)  # unwinds any blocking wait at once

    def switchover(_signum, _frame):
        _log_from_signal("switchover: running general query")
        if on_switchover:
            on_switchover()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if hasattr(signal, "SIGUSR1"):  # POSIX only
        signal.signal(signal.SIGUSR1, switchover)
    return args


def run_forever(
    jobs: list[tuple[float, Callable[[], None]]],
    sel: selectors.BaseSelector | None = None,
) -> None:
    """Run each ``(interval_s, fn)`` job every interval until a signal ends the process.

    With ``sel``, waits in ``sel.select()`` between jobs and calls each ready
    key's ``data(fileobj)``. Never polls: it blocks until the next job is due.
    """
    now = time.monotonic()
    due = [now + interval for interval, _ in jobs]
    while True:
        now = time.monotonic()
        for i, (interval, fn) in enumerate(jobs):
            if now >= due[i]:
                fn()
                due[i] += interval
                if due[i] <= now:  # keep the cadence, but skip missed ticks
                    due[i] = now + interval
        timeout = max(0.0, min(due) - time.monotonic()) if due else 3600.0
        if sel is not None:
            for key, _events in sel.select(timeout):
                key.data(key.fileobj)
        else:
            time.sleep(timeout)
