"""The control client: one request, one reply (or many over one connection: Session). Deliberately light: no asyncio, no psutil,
so that `pmon status` answers fast.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, NamedTuple, Sequence

from pmon.errors import Busy, ConfigError, NotRunning, PmonError, ProtocolError
from pmon.control import protocol

if TYPE_CHECKING:
    from pmon.config import Config


class Endpoint(NamedTuple):
    """What a client needs to reach a running pmon, and nothing more."""

    project: str
    state_dir: Path
    tcp: str | None
    config_path: Path

    @classmethod
    def of(cls, config: "Config") -> "Endpoint":
        return cls(config.project.name, config.project.state_dir, config.project.control.tcp, config.path)

    @classmethod
    def read(cls, path: Path) -> "Endpoint":
        """Read only what locates the control channel. A file being edited into something
        invalid must not cut the operator off from the pmon that runs the last good one."""
        import tomllib

        path = path.resolve()  # canonical, as config.load: every spelling finds one pmon
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
            project = data.get("project", {})
            name = project["name"]
            state_dir = (path.parent / project.get("state_dir", "var")).resolve()
            tcp = data.get("control", {}).get("tcp")
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file; pass the project file with -c FILE or PMON_CONFIG") from None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{path}: cannot find the project's name and state_dir in it ({exc!r}); check it with `pmon validate -c {path}`") from None
        return cls(str(name), state_dir, tcp if isinstance(tcp, str) else None, path)


class RemoteError(PmonError):
    """The supervisor refused the request; `code` is its error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# A connection refused for want of room (a full backlog: EAGAIN on a Unix socket) while pmon
# lives is retried this long, then reported as busy, not as "not running".
BUSY_SECONDS = 3.0
_NO_ROOM = (errno.EAGAIN, errno.EWOULDBLOCK, errno.ECONNREFUSED, errno.ETIMEDOUT)


def connect(where: Endpoint, timeout: float) -> tuple[socket.socket, str | None]:
    deadline = time.monotonic() + BUSY_SECONDS
    pause = 0.02
    while True:
        try:
            return _connect_once(where, timeout)
        except OSError as exc:
            no_room = exc.errno in _NO_ROOM or isinstance(exc, TimeoutError)
            if not no_room or not _pmon_alive(where.state_dir):
                raise _not_running(where) from None
            if time.monotonic() >= deadline:
                raise Busy(
                    f"pmon is busy: it runs (project '{where.project}') but its control "
                    f"channel took no connection for {BUSY_SECONDS:g} s ({exc.strerror}); "
                    "try again in a moment"
                ) from None
            time.sleep(pause)
            pause = min(pause * 2, 0.3)


def _connect_once(where: Endpoint, timeout: float) -> tuple[socket.socket, str | None]:
    addr_file = protocol.address_path(where.state_dir)
    if where.tcp or addr_file.exists():
        try:
            host, _, port = addr_file.read_text().rpartition(":")
            token = protocol.token_path(where.state_dir).read_text().strip()
            port_number = int(port)
        except (OSError, ValueError):
            raise _not_running(where) from None
        return socket.create_connection((host, port_number), timeout=timeout), token
    path = protocol.socket_path(where.state_dir)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        raise
    return sock, None


def _pmon_alive(state_dir: Path) -> bool:
    """The pid in the project's lock file names a live process (pmon writes it there)."""
    if os.name == "nt":
        return False  # no signal 0 there (os.kill would end the process)
    try:
        pid = int((state_dir / "pmon.lock").read_text().strip())
        os.kill(pid, 0)
    except PermissionError:
        return True  # alive, another user's
    except (OSError, ValueError):
        return False
    return True


def _not_running(where: Endpoint) -> NotRunning:
    return NotRunning(
        f"pmon is not running for project '{where.project}' "
        f"(no control channel in {where.state_dir}); start it with "
        f"`pmon run -c {where.config_path}`"
    )


def call(target: "Config | Endpoint", command: str, /, timeout: float = 600.0, **args: Any) -> Any:
    """Send one command and return its result; raises RemoteError when refused."""
    where = target if isinstance(target, Endpoint) else Endpoint.of(target)
    sock, token = connect(where, timeout)
    with sock:
        return _exchange(sock, token, command, args)


class Session:
    """Many commands over one connection (the redundancy manager's syncs, once a second):
    no connect, accept and close for each. A failure or a refusal closes the connection and
    the next command connects anew: a reply is never read from a connection on which an
    earlier one was late, and pmon closes its side after some refusals (busy, too long)."""

    def __init__(self, target: "Config | Endpoint", timeout: float) -> None:
        self.where = target if isinstance(target, Endpoint) else Endpoint.of(target)
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._token: str | None = None

    def call(self, command: str, /, **args: Any) -> Any:
        if self._sock is None:
            self._sock, self._token = connect(self.where, self.timeout)
        try:
            return _exchange(self._sock, self._token, command, args)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _exchange(sock: socket.socket, token: str | None, command: str, args: dict[str, Any]) -> Any:
    """One request and its reply (one line each) on a connected socket."""
    request: dict[str, Any] = {"command": command, "args": args}
    if token is not None:
        request["token"] = token
    sock.sendall(protocol.encode(request))
    reply = b""
    while not reply.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            raise ProtocolError("pmon closed the connection without a reply")
        reply += chunk
    message = json.loads(reply)
    if not message.get("ok"):
        error = message.get("error", {})
        raise RemoteError(error.get("code", "error"), error.get("message", "refused"))
    return message.get("result")


def subscribe(
    target: "Config | Endpoint", managers: Sequence[str] = (), limit: int | None = None,
    timeout: float = 10.0,
) -> Iterator[dict[str, Any]]:
    """Subscribe to the event feed (docs/control.md): connects and reads pmon's reply now,
    then returns an iterator of its records (dicts, as in events.jsonl, plus `state`,
    `project-state` and `lost` records) that ends when pmon goes away. Closing the iterator
    closes the connection, which ends the subscription."""
    where = target if isinstance(target, Endpoint) else Endpoint.of(target)
    sock, token = connect(where, timeout)
    args: dict[str, Any] = {"managers": list(managers)}
    if limit is not None:
        args["limit"] = limit
    request: dict[str, Any] = {"command": "subscribe", "args": args}
    if token is not None:
        request["token"] = token
    try:
        sock.sendall(protocol.encode(request))
        lines = sock.makefile("rb")
        first = lines.readline()
        if not first:
            raise ProtocolError("pmon closed the connection without a reply")
        message = json.loads(first)
        if not message.get("ok"):
            error = message.get("error", {})
            raise RemoteError(error.get("code", "error"), error.get("message", "refused"))
        sock.settimeout(None)  # a quiet project sends nothing for a long time
    except BaseException:
        sock.close()
        raise
    return _records(sock, lines)


def _records(sock: socket.socket, lines: Any) -> Iterator[dict[str, Any]]:
    with sock, lines:
        for line in lines:
            yield json.loads(line)
