"""The control server: answers control messages on the supervisor's loop.

A Unix socket with owner-only permissions (inside an owner-only state directory), or
loopback TCP where every request must carry the token from an owner-only file. A client's
nonsense gets an error reply; it never reaches the supervisor's state, never kills the loop.

No client can starve it: at most MAX_CONNECTIONS at once (a new one takes the place of the
oldest that has not yet sent a good request: a flood of idle, token-less connections cannot
shut the operator out; a connection counts as good from the moment its request passes the
token check, so a command in flight is never evicted), at most MAX_SUBSCRIBERS of them
streams (the rest stay free for commands), a first request within FIRST_REQUEST_SECONDS, at
most IDLE_SECONDS of silence after it, and a wrong token (on any request, `subscribe` too)
answered late and, after MAX_AUTH_FAILURES, not at all.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING, Any, cast

from pmon import commands
from pmon.runtime import fdbudget, platform
from pmon.runtime.api import Api, Extension
from pmon.errors import Busy, PmonError, ProtocolError
from pmon.runtime.statefile import write_atomically
from pmon.control import protocol
from pmon.control.feed import QUEUE_LIMIT, Feed

STREAM_BUFFER = 16 * 1024  # bytes a subscriber's connection buffers beyond its queue

if TYPE_CHECKING:
    from pmon.core.manager import Manager
    from pmon.core.project import ProjectState
    from pmon.runtime.supervisor import Supervisor
    from pmon.states import ManagerState

MAX_CONNECTIONS = fdbudget.CONTROL_CONNECTIONS  # bounds the fds clients hold
MAX_SUBSCRIBERS = MAX_CONNECTIONS // 4  # streams never take the slots commands need
FIRST_REQUEST_SECONDS = 5.0
IDLE_SECONDS = 300.0
AUTH_DELAY = 0.5  # seconds, times the failures so far on the connection
MAX_AUTH_FAILURES = 3


class ControlServer(Extension):
    """An extension by its lifetime (first in the app's list: up before the project starts,
    down after everything else), a face of the command registry by what it does: so it
    holds the supervisor itself, which the commands take."""

    name = "control server"

    def __init__(self) -> None:
        self.server: asyncio.AbstractServer | None = None
        self.token: str | None = None
        # every connection's task -> whether it has sent a good request (oldest first)
        self._clients: dict[asyncio.Task[Any], bool] = {}
        self.feed = Feed()  # `subscribe`: the event log and state changes, pushed

    async def start(self, api: Api) -> None:
        self.sup = cast("Supervisor", api)
        self.sup.events.listeners.append(self.feed.publish)
        config = self.sup.config
        tcp = config.project.control.tcp or ("127.0.0.1:0" if platform.IS_WINDOWS else None)
        if tcp:
            host, _, port = tcp.rpartition(":")
            import secrets  # here: the Unix socket needs no token (nor hashlib, libcrypto)

            self.token = secrets.token_urlsafe(32)
            token_file = protocol.token_path(config.project.state_dir)
            token_file.unlink(missing_ok=True)
            fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(self.token)
            self.server = await asyncio.start_server(
                self._serve, host.strip("[]"), int(port), limit=protocol.MAX_LINE
            )
            bound = self.server.sockets[0].getsockname()
            write_atomically(protocol.address_path(config.project.state_dir), f"{bound[0]}:{bound[1]}".encode())
        else:
            path = protocol.socket_path(config.project.state_dir)
            path.unlink(missing_ok=True)
            old_mask = os.umask(0o177)  # created owner-only, no window with wider rights
            try:
                self.server = await asyncio.start_unix_server(
                    self._serve, str(path), limit=protocol.MAX_LINE
                )
            finally:
                os.umask(old_mask)
            os.chmod(path, 0o600)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for task in list(self._clients):
                task.cancel()
            await self.server.wait_closed()
        config = self.sup.config
        state_dir = config.project.state_dir
        for path in (
            protocol.socket_path(state_dir), protocol.token_path(state_dir), protocol.address_path(state_dir)
        ):
            path.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if not self._make_room():
            writer.write(protocol.encode(protocol.error_reply(
                "busy", f"{MAX_CONNECTIONS} clients are connected; try again in a moment")))
            writer.close()
            return
        self._clients[task] = False
        failures = 0
        try:
            while True:
                wait = IDLE_SECONDS if self._clients[task] else FIRST_REQUEST_SECONDS
                try:
                    async with asyncio.timeout(wait):
                        line = await reader.readuntil(b"\n")
                except (asyncio.IncompleteReadError, TimeoutError):
                    return  # the client went away, or said nothing for too long
                except asyncio.LimitOverrunError:
                    writer.write(protocol.encode(protocol.error_reply(
                        "protocol", f"message longer than {protocol.MAX_LINE} bytes")))
                    await writer.drain()
                    return
                try:
                    message = self._authenticate(line)
                except PmonError as exc:
                    if exc.code == "auth":
                        failures += 1
                        await asyncio.sleep(AUTH_DELAY * failures)  # guessing costs time
                    reply = protocol.error_reply(exc.code, str(exc))
                else:
                    # past the token check: a client of ours, never evicted as an idle one,
                    # also while its command runs
                    self._clients[task] = True
                    if message.get("command") == "subscribe":
                        await self._stream(message, writer, reader)
                        return
                    reply = await self._answer(message)
                writer.write(protocol.encode(reply))
                await writer.drain()
                if failures >= MAX_AUTH_FAILURES:
                    return
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._clients.pop(task, None)
            writer.close()

    def on_manager(self, manager: "Manager", old: "ManagerState | None") -> None:
        if not self.feed.subscribers:
            return
        snap = manager.snapshot()
        record: dict[str, Any] = {
            "ts": round(time.time(), 3), "event": "state", "manager": snap.name,
            "state": snap.state, "old": old.value if old is not None else None,
            "reason": snap.reason,
            "message": f"{snap.name}: {old.value if old else 'new'} -> {snap.state}"
                       + (f" ({snap.reason})" if snap.reason else ""),
        }
        if snap.pid is not None:
            record["pid"] = snap.pid
        self.feed.publish(record)

    def on_project(self, state: "ProjectState") -> None:
        if self.feed.subscribers:
            reason = self.sup.project.reason
            self.feed.publish({
                "ts": round(time.time(), 3), "event": "project-state", "state": state.value,
                "reason": reason,
                "message": f"project {self.sup.config.project.name}: {state.value}"
                           + (f" ({reason})" if reason else ""),
            })

    async def _stream(
        self, message: dict[str, Any], writer: asyncio.StreamWriter, reader: asyncio.StreamReader
    ) -> None:
        """`subscribe`: one reply, then every record as a JSON line until the client goes.
        The client sends nothing more; anything it sends (or its EOF) ends the stream."""
        try:
            managers, limit = _subscribe_args(message.get("args", {}))
            if len(self.feed.subscribers) >= MAX_SUBSCRIBERS:
                raise Busy(f"{MAX_SUBSCRIBERS} subscribers are connected (the limit); "
                           "close one (`pmon events -f`, a console) or try again later")
        except PmonError as exc:
            writer.write(protocol.encode(protocol.error_reply(exc.code, str(exc))))
            await writer.drain()
            return
        _small_buffers(writer)
        subscriber = self.feed.subscribe(managers, limit)
        gone = asyncio.ensure_future(reader.read(1))
        try:
            writer.write(protocol.encode({"ok": True, "result": {"subscribed": managers, "limit": limit}}))
            await writer.drain()
            while not gone.done():
                record = asyncio.ensure_future(subscriber.get())
                await asyncio.wait((record, gone), return_when=asyncio.FIRST_COMPLETED)
                if not record.done():
                    record.cancel()
                    return
                writer.write(protocol.encode(record.result()))
                await writer.drain()
        finally:
            self.feed.unsubscribe(subscriber)
            gone.cancel()
    def _make_room(self) -> bool:
        """Room for one more connection: at the limit, the oldest one that has not sent a
        good request yet is closed. False when every connection is a good one."""
        if len(self._clients) < MAX_CONNECTIONS:
            return True
        idle = next((task for task, good in self._clients.items() if not good), None)
        if idle is None:
            return False
        del self._clients[idle]
        idle.cancel()
        return True

    def _authenticate(self, line: bytes) -> dict[str, Any]:
        """The decoded request, if it carries the right token (only loopback TCP has one)."""
        message = protocol.decode(line)
        if self.token is not None and not _same_token(str(message.get("token", "")), self.token):
            raise AuthFailed("wrong or missing token")
        return message

    async def _answer(self, message: dict[str, Any]) -> dict[str, Any]:
        try:
            result = await commands.execute(
                self.sup, message.get("command"), message.get("args", {})
            )
            return {"ok": True, "result": result}
        except PmonError as exc:
            return protocol.error_reply(exc.code, str(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug answers as an error; the daemon goes on
            self.sup.events.write(
                "control-error", f"control command failed: {exc!r}", error=repr(exc)
            )
            return protocol.error_reply("internal", f"internal error: {exc!r}")


def _small_buffers(writer: asyncio.StreamWriter) -> None:
    """A stuck subscriber holds little in buffers: what it cannot take waits in its bounded
    queue (counted when dropped) instead of piling up in the kernel or the transport."""
    import socket

    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_BUFFER)
        except OSError:
            pass
    writer.transport.set_write_buffer_limits(high=STREAM_BUFFER)


class AuthFailed(PmonError):
    code = "auth"


def _subscribe_args(args: Any) -> tuple[list[str], int]:
    if not isinstance(args, dict) or set(args) - {"managers", "limit"}:
        raise ProtocolError("'subscribe' takes the arguments: managers (list of names or globs), limit (int)")
    managers = args.get("managers", [])
    limit = args.get("limit", QUEUE_LIMIT)
    if not isinstance(managers, list) or not all(isinstance(m, str) for m in managers):
        raise ProtocolError("argument 'managers' of 'subscribe' must be a list of names or globs")
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 100_000:
        raise ProtocolError("argument 'limit' of 'subscribe' must be an int from 1 to 100000")
    return managers, limit


def _same_token(given: str, token: str) -> bool:
    """Constant-time comparison of a client's token (only loopback TCP has one)."""
    import hmac

    return hmac.compare_digest(given, token)
