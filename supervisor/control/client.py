"""The control client: one request, one reply. Deliberately light: no asyncio, no psutil,
so that `pmon status` answers fast.
"""

from __future__ import annotations

import json
import socket
from typing import Any

from ..config import Config
from ..errors import NotRunning, PmonError, ProtocolError
from . import protocol


class RemoteError(PmonError):
    """The supervisor refused the request; `code` is its error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def connect(config: Config, timeout: float) -> tuple[socket.socket, str | None]:
    addr_file = protocol.address_path(config)
    if config.project.control.tcp or addr_file.exists():
        try:
            host, _, port = addr_file.read_text().rpartition(":")
            token = protocol.token_path(config).read_text().strip()
            return socket.create_connection((host, int(port)), timeout=timeout), token
        except (OSError, ValueError):
            raise _not_running(config) from None
    path = protocol.socket_path(config)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        raise _not_running(config) from None
    return sock, None


def _not_running(config: Config) -> NotRunning:
    return NotRunning(
        f"pmon is not running for project '{config.project.name}' "
        f"(no control channel in {config.project.state_dir}); start it with "
        f"`pmon run -c {config.path}`"
    )


def call(config: Config, command: str, timeout: float = 600.0, **args: Any) -> Any:
    """Send one command and return its result; raises RemoteError when refused."""
    sock, token = connect(config, timeout)
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
