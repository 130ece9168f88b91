"""The beat as a kernel timer (Linux): the redundancy manager's heartbeat loop re-arms a
timerfd at every beat (it expires `self_fence` later), and pmon, holding the same timer
(taken with pidfd_getfd), is woken only when it expires: when the loop has not beaten for
`self_fence`. A healthy beat then wakes pmon not at all; a datagram per beat (beat.py) woke
it five times a second, which was most of an idle pair's CPU in pmon.

Where there is no timerfd or pmon may not take another process's file (Windows, macOS, a
kernel before 5.6, Yama's ptrace_scope for a pmon that is not root and not the redundancy
manager's parent: after a hot restart), the beat stays a datagram. PMON_NO_BEAT_TIMER=1
forces the datagram (to test that path on kernels that have both).

Imported by both processes (pmon's extension and the redundancy manager): the standard
library only. Every call raises OSError on failure; none blocks.
"""

from __future__ import annotations

import ctypes
import os
import sys

CLOCK_MONOTONIC = 1
SYS_PIDFD_GETFD = 438  # the same number on every Linux architecture (the generic table)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_libc: ctypes.CDLL | None = None


def _c() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def available() -> bool:
    """A timerfd can be made here (Linux, not switched off)."""
    if not sys.platform.startswith("linux") or os.environ.get("PMON_NO_BEAT_TIMER"):
        return False
    try:
        return hasattr(_c(), "timerfd_create")
    except OSError:
        return False


def _check(result: int) -> int:
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    return result


def create() -> int:
    """A one-shot monotonic timer, disarmed, non-blocking, not inherited by children."""
    return _check(_c().timerfd_create(CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC))


# arm's one struct: five times a second in an idle loop, building it each time was most of
# the call's cost. One thread arms (the redundancy manager's heartbeat loop).
_ARM = _Itimerspec()
_ARM_REF = ctypes.byref(_ARM)


def arm(fd: int, seconds: float) -> None:
    """Expire `seconds` from now (a re-arm moves the expiry and clears a past one)."""
    whole = int(seconds)
    _ARM.it_value.tv_sec, _ARM.it_value.tv_nsec = whole, int((seconds - whole) * 1e9)
    _check(_c().timerfd_settime(fd, 0, _ARM_REF, None))


def remaining(fd: int) -> float:
    """Seconds until it expires; 0 once expired (or never armed)."""
    spec = _Itimerspec()
    _check(_c().timerfd_gettime(fd, ctypes.byref(spec)))
    return float(spec.it_value.tv_sec + spec.it_value.tv_nsec / 1e9)


def clear(fd: int) -> None:
    """Take the expiry, so that the file is no longer readable (until it expires again)."""
    try:
        os.read(fd, 8)
    except BlockingIOError:
        pass


def take(pid: int, fd: int) -> int:
    """A copy of process `pid`'s file `fd` (pidfd_getfd), close-on-exec; OSError unless it
    is a timerfd (a pid reused since it was named: some other process's file)."""
    pidfd = os.pidfd_open(pid)
    try:
        copy = _check(_c().syscall(SYS_PIDFD_GETFD, pidfd, fd, 0))
    finally:
        os.close(pidfd)
    try:
        kind = os.readlink(f"/proc/self/fd/{copy}")
    except OSError:
        kind = ""
    if kind != "anon_inode:[timerfd]":
        os.close(copy)
        raise OSError(f"file {fd} of process {pid} is not a timer ({kind or 'unknown'})")
    return copy
