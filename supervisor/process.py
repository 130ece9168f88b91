"""One OS process of a manager: spawn it in its own process group, capture its output,
signal it, stop-then-kill it, reap it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path
from typing import Mapping

from . import platform
from .config import ManagerSpec
from .logs import RotatingFile

READ_CHUNK = 65536


class ManagedProcess:
    """A spawned manager process and the pipe that carries its stdout and stderr."""

    def __init__(self, popen: subprocess.Popen[bytes] | None, pid: int) -> None:
        self.popen = popen  # None for a process pmon adopted instead of spawning
        self.pid = pid
        self._log: RotatingFile | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pipe_fd: int | None = None

    @classmethod
    def spawn(
        cls,
        spec: ManagerSpec,
        env: Mapping[str, str],
        log: RotatingFile,
        loop: asyncio.AbstractEventLoop,
    ) -> "ManagedProcess":
        """Start the manager. Raises OSError when the program cannot be executed."""
        popen = subprocess.Popen(
            list(spec.command),
            cwd=spec.cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            **platform.popen_kwargs(),
        )
        proc = cls(popen, popen.pid)
        proc._capture(loop, log)
        return proc

    def _capture(self, loop: asyncio.AbstractEventLoop, log: RotatingFile) -> None:
        assert self.popen is not None and self.popen.stdout is not None
        self._log, self._loop = log, loop
        fd = self.popen.stdout.fileno()
        if platform.IS_WINDOWS:  # no add_reader for pipes on Windows: a thread copies
            import threading

            threading.Thread(target=self._copy_thread, daemon=True).start()
            return
        os.set_blocking(fd, False)
        self._pipe_fd = fd
        loop.add_reader(fd, self._on_output)

    # The log file belongs to the manager, not to one process: output still in the pipe of
    # a dead process is written before the pipe closes (EOF), in order, to the same file.
    def _on_output(self) -> None:
        assert self._pipe_fd is not None and self._log is not None
        try:
            data = os.read(self._pipe_fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            try:
                self._log.write(data)
            except OSError:
                pass  # a full disk loses log lines, never the manager
        else:
            self._close_pipe()

    def _copy_thread(self) -> None:
        assert self.popen is not None and self.popen.stdout is not None
        for chunk in iter(lambda: self.popen.stdout.read1(READ_CHUNK), b""):  # type: ignore[union-attr,attr-defined]
            assert self._loop is not None and self._log is not None
            self._loop.call_soon_threadsafe(self._log.write, chunk)

    def _close_pipe(self) -> None:
        if self._pipe_fd is not None and self._loop is not None:
            self._loop.remove_reader(self._pipe_fd)
            self._pipe_fd = None
            if self.popen is not None and self.popen.stdout is not None:
                self.popen.stdout.close()

    def reap(self) -> int | None:
        """The exit code of a dead child (negative: the signal). None if not ours to reap."""
        if self.popen is None:
            return None
        code = self.popen.poll()
        if code is None:  # the pidfd fired, so it is dead: collect it
            code = self.popen.wait()
        return code

    def terminate(self) -> None:
        platform.terminate_group(self.pid)

    def kill(self) -> None:
        platform.kill_group(self.pid)


def manager_env(spec: ManagerSpec, base: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """The environment of a manager: pmon's own, the spec's, then pmon's variables."""
    env = {**base, **spec.env, **extra}
    env.setdefault("PYTHONUNBUFFERED", "1")  # Python managers' lines reach the log at once
    return env


def log_path(state_dir: Path, name: str) -> Path:
    return state_dir / "log" / f"{name}.log"
