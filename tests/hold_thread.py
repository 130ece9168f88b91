"""Stop one thread of a real process, the others running on: the main thread of a
redundancy manager, to hang its loop while its other threads (the sync with pmon, the
etcd store) live. ptrace (PTRACE_SEIZE + PTRACE_INTERRUPT) acts on one thread, where
SIGSTOP stops them all; the thread is caught only while it waits in a select or poll
(without the GIL: caught holding it, it would stop the others too), else let go and
caught again. Linux on x86_64, as root or with CAP_SYS_PTRACE; pytest.skip otherwise."""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import time
from typing import Iterator

import pytest

SEIZE, INTERRUPT, DETACH = 0x4206, 0x4207, 17
WALL = 0x40000000
WAITS = {7, 23, 232, 270, 271, 281}  # poll, select, epoll_wait, pselect6, ppoll, epoll_pwait


def _ptrace(libc: ctypes.CDLL, request: int, tid: int) -> None:
    if libc.ptrace(request, tid, None, None) == -1:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


@contextlib.contextmanager
def main_thread_stopped(pid: int, timeout: float = 10.0) -> Iterator[None]:
    """The main thread of `pid` stopped (in a wait) for the body; running again after."""
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        pytest.skip("stopping one thread: Linux on x86_64 only")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    libc.ptrace.restype = ctypes.c_long
    deadline = time.monotonic() + timeout
    while True:
        try:
            _ptrace(libc, SEIZE, pid)
        except PermissionError:
            pytest.skip("ptrace is not allowed here")
        _ptrace(libc, INTERRUPT, pid)
        os.waitpid(pid, WALL)
        with open(f"/proc/{pid}/task/{pid}/syscall") as f:
            call = f.read().split()[0]
        if call.lstrip("-").isdigit() and int(call) in WAITS:
            break
        _ptrace(libc, DETACH, pid)
        if time.monotonic() > deadline:
            raise AssertionError(f"the main thread of {pid} never waited in a select/poll")
        time.sleep(0.05)
    try:
        yield
    finally:
        _ptrace(libc, DETACH, pid)
