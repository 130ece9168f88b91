"""The PMON TCP listener: an extension beside the supervisor, on the supervisor's loop.

Lockstep per connection: read one line, answer it in one write, wait for the next.
Connections stay open across commands. What a client cannot do to pmon: run anything
without the credentials, hold a connection while saying nothing (dropped after
idle_timeout), send an endless line (an error, then dropped), open more than max_clients
connections (the surplus is closed at once), guess passwords fast (each wrong one is
answered later than the last; the third closes the connection), or crash the loop with a
command (a failure answers as an error).
"""

from __future__ import annotations

import asyncio
import hmac
import time
from typing import TYPE_CHECKING, Any, cast

from pmon.config import PmonTcpSpec
from pmon.errors import PmonError
from pmon.runtime.statefile import write_atomically
from pmon.runtime.api import Api, Extension
from pmon.extensions.pmon_tcp import face
from pmon.extensions.pmon_tcp import protocol as p

if TYPE_CHECKING:
    from pmon.runtime.supervisor import Supervisor

DISCARD_SECONDS = 2.0  # how long the rest of an overlong line is read before closing
NOTE_EVERY = 10.0  # seconds between two notes of the same kind in the event log
AUTH_DELAY = 0.5  # a wrong password is answered this many seconds late, times the failures
MAX_AUTH_FAILURES = 3  # ... and after this many on one connection, it is closed


class PmonTcpService(Extension):
    """An extension by its lifetime, a face of the command registry by what it does (like
    the control server): so it holds the supervisor itself, which the commands take."""

    name = "PMON TCP"

    def __init__(self, spec: PmonTcpSpec) -> None:
        self.spec = spec
        self.server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.Task[Any]] = set()
        self._noted: dict[str, tuple[float, int]] = {}  # kind -> (last note, suppressed since)

    def address_file(self, sup: "Supervisor") -> Any:
        """Where the bound address is written (the port may be 0 = any free one)."""
        return sup.state_dir / "pmon_tcp.addr"

    async def start(self, api: Api) -> None:
        self.sup = sup = cast("Supervisor", api)
        host = self.spec.address.strip("[]")
        try:
            self.server = await asyncio.start_server(
                self._serve, host, self.spec.port, limit=p.MAX_LINE,
                backlog=max(128, self.spec.max_clients),
            )
        except OSError as exc:
            # The project matters more than this face of it: say so loudly and run on.
            sup.events.write(
                "pmon-tcp-failed",
                f"PMON TCP cannot listen on {self.spec.address} port {self.spec.port}: "
                f"{exc.strerror or exc}; pmon runs without it (change [pmon_tcp] in "
                f"{sup.config.path} and restart pmon)",
                address=self.spec.address, port=self.spec.port, error=str(exc),
            )
            return
        bound = self.server.sockets[0].getsockname()
        write_atomically(self.address_file(sup), f"{bound[0]}:{bound[1]}".encode())
        sup.events.write(
            "pmon-tcp-listening",
            f"PMON TCP listens on {bound[0]} port {bound[1]}"
            + ("" if self.spec.password else " (no password: loopback only)"),
            address=bound[0], port=bound[1],
        )

    async def stop(self) -> None:
        sup = self.sup
        if self.server is not None:
            self.server.close()
            for task in list(self._clients):
                task.cancel()
            await self.server.wait_closed()
        self.address_file(sup).unlink(missing_ok=True)

    # --- one connection ----------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if len(self._clients) >= self.spec.max_clients:
            self._note("pmon-tcp-refused", f"PMON TCP: {self.spec.max_clients} clients "
                       f"connected; connection from {peer} closed", peer=str(peer))
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        failures = 0
        try:
            while True:
                last = False
                try:
                    line = await asyncio.wait_for(reader.readuntil(b"\n"), self.spec.idle_timeout)
                except asyncio.TimeoutError:
                    return  # silent for too long: dropped
                except asyncio.IncompleteReadError as exc:
                    if not exc.partial.strip():
                        return  # the client went away
                    line, last = exc.partial, True  # its last request, without a newline
                except asyncio.LimitOverrunError:
                    await self._send(writer, p.ERR_TOO_LONG)
                    await self._discard(reader, writer)
                    return
                reply = await self._answer(line, peer)
                if reply is p.ERR_AUTH:  # guessing costs time, then the connection
                    failures += 1
                    await asyncio.sleep(AUTH_DELAY * failures)
                if not await self._send(writer, reply) or last or failures >= MAX_AUTH_FAILURES:
                    return
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._clients.discard(task)
            writer.close()

    async def _send(self, writer: asyncio.StreamWriter, reply: bytes) -> bool:
        """One write per reply; False when the client does not take it in time."""
        writer.write(reply)
        try:
            await asyncio.wait_for(writer.drain(), self.spec.idle_timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def _discard(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """End our side after the reply, and read what is still coming for a moment: closing
        with unread input would reset the connection, and the client could lose the reply."""
        writer.write_eof()
        try:
            async with asyncio.timeout(DISCARD_SECONDS):
                while await reader.read(p.MAX_LINE):
                    pass
        except (TimeoutError, ConnectionError):
            pass

    async def _answer(self, line: bytes, peer: Any) -> bytes:
        try:
            request = p.parse(line)
        except p.Malformed as exc:
            return exc.reply
        # Both compared, in constant time: the reply tells nothing about which was wrong.
        user_ok = hmac.compare_digest(request.user.encode(), self.spec.user.encode())
        password_ok = hmac.compare_digest(request.password.encode(), self.spec.password.encode())
        if not (user_ok and password_ok):
            self._note("pmon-tcp-auth-failed", f"PMON TCP: wrong credentials from {peer}",
                       peer=str(peer))
            return p.ERR_AUTH
        try:
            return await face.answer(self.sup, request)
        except PmonError as exc:
            return face.refusal(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug answers as an error; pmon goes on
            self.sup.events.write(
                "pmon-tcp-error", f"PMON TCP command {request.command} failed: {exc!r}",
                command=request.command, error=repr(exc),
            )
            return p.error("errCmd", f"internal error: {exc!r}")

    def _note(self, kind: str, message: str, **fields: Any) -> None:
        """An event, at most once per NOTE_EVERY seconds per kind: a flood fills no log."""
        now = time.monotonic()
        last, suppressed = self._noted.get(kind, (float("-inf"), 0))
        if now - last < NOTE_EVERY:
            self._noted[kind] = (last, suppressed + 1)
            return
        if suppressed:
            message += f" ({suppressed} more like it not logged)"
        self._noted[kind] = (now, 0)
        self.sup.events.write(kind, message, **fields)
