"""The control client: one request, one reply. Deliberately light: no asyncio, no psutil,
so that `pmon status` answers fast.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from pmon.errors import ConfigError, NotRunning, PmonError, ProtocolError
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


def connect(where: Endpoint, timeout: float) -> tuple[socket.socket, str | None]:
    addr_file = protocol.address_path(where.state_dir)
    if where.tcp or addr_file.exists():
        try:
            host, _, port = addr_file.read_text().rpartition(":")
            token = protocol.token_path(where.state_dir).read_text().strip()
            return socket.create_connection((host, int(port)), timeout=timeout), token
        except (OSError, ValueError):
            raise _not_running(where) from None
    path = protocol.socket_path(where.state_dir)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        raise _not_running(where) from None
    return sock, None


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
    request: dict[str, Any] = {"command": command, "args": args}
    if token is not None:
        request["token"] = token
    with sock:
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
