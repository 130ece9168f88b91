"""The platform seam: every call that differs between POSIX and Windows sits here.

POSIX: a manager runs in its own session and process group, so one signal reaches it and
every grandchild; its death is noticed through a pidfd (Linux) or SIGCHLD. Windows: a Job
object per manager (its whole tree is killed with it), a named stop event for the polite
stop (a service has no console for CTRL_BREAK), and a thread blocked on the process handle
(winproc.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from typing import TYPE_CHECKING, Any, Callable, Mapping

from pmon.config import HAS_NOTIFY_SOCKET as HAS_NOTIFY_SOCKET  # config checks it too

if TYPE_CHECKING:  # asyncio costs ~50 ms to import; `pmon status` needs none of it
    import asyncio

IS_WINDOWS = os.name == "nt"
# PMON_NO_PIDFD=1 forces the SIGCHLD path (for old kernels, and to test that path on new ones).
HAS_PIDFD = hasattr(os, "pidfd_open") and not os.environ.get("PMON_NO_PIDFD")


def popen_kwargs() -> dict[str, Any]:
    """Popen arguments that put the child in a process group of its own."""
    if IS_WINDOWS:
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}  # type: ignore[attr-defined]
    return {"start_new_session": True}


def spawn_env(env: Mapping[str, str]) -> dict[str, str]:
    """What a manager about to start needs from the platform: on Windows the names of its
    stop event and its job (winproc.py); nothing on POSIX."""
    if IS_WINDOWS:
        from pmon.runtime import winproc

        return winproc.names(env)
    return {}


def contain(pid: int, env: Mapping[str, str]) -> None:
    """Right after the spawn: on Windows, the manager's own Job object (POSIX: its session
    and process group did it already)."""
    if IS_WINDOWS:  # pragma: no cover (Windows only)
        from pmon.runtime import winproc

        try:
            winproc.contain(pid, env, winproc.kernel32())
        except OSError:
            pass  # no job: the kill walks the process tree instead


def terminate_group(pid: int) -> None:
    """The polite stop: SIGTERM to the whole group (Windows: the manager's stop event, and
    CTRL_BREAK where pmon has a console)."""
    try:
        if IS_WINDOWS:  # pragma: no cover (Windows only)
            from pmon.runtime import winproc

            winproc.stop_politely(pid, winproc.kernel32())
        else:
            os.killpg(pid, signal.SIGTERM)
    except OSError:  # gone, not ours, or (Windows) no console to deliver CTRL_BREAK
        pass


def kill_group(pid: int) -> None:
    """Kill the manager's whole process group, grandchildren included (Windows: its job)."""
    if IS_WINDOWS:  # pragma: no cover (Windows only)
        from pmon.runtime import winproc

        try:
            winproc.kill_tree(pid, winproc.kernel32())
        except OSError:
            pass
        return
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def signal_group(pid: int, sig: int) -> None:
    """An operator's signal to the manager's whole group (`pmon signal`). Windows has no
    signals to send but CTRL_BREAK: refused there with a clear message."""
    if IS_WINDOWS:
        raise OSError("pmon signal works only on POSIX systems; use pmon stop or kill")
    os.killpg(pid, sig)


def add_signal_handler(
    loop: asyncio.AbstractEventLoop, sig: int, callback: Callable[..., Any], *args: Any
) -> bool:
    """Handle `sig` on the loop; False where the loop cannot (Windows, or a loop outside the
    main thread, as in a Windows service): the caller then relies on its other stop paths."""
    try:
        loop.add_signal_handler(sig, callback, *args)
    except (NotImplementedError, RuntimeError, ValueError):
        return False
    return True


def lock_exclusively(handle: Any) -> bool:
    """Take a lock on an open file without waiting; False when another process holds it.
    The lock lasts as long as the file stays open (it dies with the process)."""
    if IS_WINDOWS:
        import msvcrt

        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def raise_fd_limit() -> None:
    """Each manager holds a pidfd: lift the soft limit to the hard one."""
    if IS_WINDOWS:
        return
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class ExitWatcher:
    """Calls `on_exit(pid)` as soon as a watched process ends: no polling loop.

    Linux: a pidfd per process becomes readable at its death. Other POSIX: SIGCHLD wakes the
    loop and every watched child is checked. Windows: a thread waits on the process handle.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, on_exit: Callable[[int], None]) -> None:
        self.loop = loop
        self.on_exit = on_exit
        self._pidfds: dict[int, int] = {}
        self._sigchld_children: dict[int, subprocess.Popen[bytes]] = {}
        self._also_on_sigchld: Callable[[], None] | None = None
        if not HAS_PIDFD and not IS_WINDOWS:
            loop.add_signal_handler(signal.SIGCHLD, self._on_sigchld)

    def on_sigchld(self, callback: Callable[[], None]) -> None:
        """Also call `callback` at every SIGCHLD (the subreaper reaps orphans there)."""
        if IS_WINDOWS:
            return
        self._also_on_sigchld = callback
        if HAS_PIDFD:
            self.loop.add_signal_handler(signal.SIGCHLD, callback)

    def watch(self, pid: int, popen: subprocess.Popen[bytes] | None = None) -> None:
        if HAS_PIDFD:
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                self.loop.call_soon(self.on_exit, pid)
                return
            self._pidfds[pid] = fd
            self.loop.add_reader(fd, self._on_pidfd, pid)
        elif IS_WINDOWS:
            threading.Thread(target=self._wait_thread, args=(pid, popen), daemon=True).start()
        else:
            assert popen is not None, "adopting a process needs pidfd (Linux 5.3+)"
            self._sigchld_children[pid] = popen
            self._on_sigchld()

    def forget(self, pid: int) -> None:
        fd = self._pidfds.pop(pid, None)
        if fd is not None:
            self.loop.remove_reader(fd)
            os.close(fd)
        self._sigchld_children.pop(pid, None)

    def close(self) -> None:
        for pid in list(self._pidfds):
            self.forget(pid)

    def _on_pidfd(self, pid: int) -> None:
        self.forget(pid)
        self.on_exit(pid)

    def _on_sigchld(self) -> None:
        for pid, popen in list(self._sigchld_children.items()):
            if popen.poll() is not None:
                self.forget(pid)
                self.on_exit(pid)
        if self._also_on_sigchld is not None:
            self._also_on_sigchld()

    def _wait_thread(self, pid: int, popen: subprocess.Popen[bytes] | None) -> None:
        if popen is not None:
            popen.wait()
        else:  # adopted: not our child, but its handle can still be waited on
            import psutil

            try:
                psutil.Process(pid).wait()
            except psutil.Error:
                pass
        self.loop.call_soon_threadsafe(self.on_exit, pid)
