"""PMON TCP against a real pmon over real sockets, replies compared byte for byte with
docs/pmon_tcp.md (the wire format WinCC OA's tools expect)."""

from __future__ import annotations

import shlex
import socket
import sys
import tomllib
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import pytest

from support import CHILD, Pmon, child, poll_for, write_project

PY = sys.executable
ERR_AUTH = b"ERROR errAuth :authentication failed"
ERR_CMD = b"ERROR errCmd :unknown command"
ERR_INV_IDX = b"ERROR errInvIdx :invalid manager index given"
ERR_STOP = b"ERROR errStop :STOP of this manager not possible"
ERR_INS = b"ERROR errIns :insertion at this position not allowed"
ERR_START_ALL = b"ERROR errStartAll :START_ALL in this mode not allowed"


class Client:
    """A PMON TCP client as WinCC OA tools are: one line out, one reply in, lockstep."""

    def __init__(self, instance: Pmon, credentials: str = "##") -> None:
        address = instance.config.project.state_dir / "pmon_tcp.addr"
        host, _, port = poll_for(lambda: address.exists() and address.read_text(),
                                 what="the PMON TCP address").rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=20)
        self.credentials = credentials

    def ask(self, command: str) -> bytes:
        self.sock.sendall(f"{self.credentials}{command}\n".encode())
        return self.reply()

    def reply(self) -> bytes:
        # A list ends in ";\n"; any other reply is one write without a terminator, so the
        # exact replies of the commands that follow prove nothing else was sent.
        data = self.sock.recv(65536)
        while data.startswith(b"LIST:") and not data.endswith(b"\n;\n"):
            more = self.sock.recv(65536)
            if not more:
                break
            data += more
        return data

    def at_end(self) -> bytes:
        """Everything until the server closes (b"" when it closed without a word)."""
        data = b""
        while chunk := self.sock.recv(65536):
            data += chunk
        return data

    def close(self) -> None:
        self.sock.close()


def once(instance: Pmon, command: str, credentials: str = "##") -> bytes:
    """One command on a connection of its own."""
    client = Client(instance, credentials)
    try:
        return client.ask(command)
    finally:
        client.close()


def answered(instance: Pmon, command: str) -> bytes:
    """once(), where a refused connection counts as no answer."""
    try:
        return once(instance, command)
    except OSError:
        return b""


def stamp(timestamp: float | None) -> str:
    text = datetime.fromtimestamp(timestamp or 0).isoformat(sep=" ", timespec="milliseconds")
    return text.replace("-", ".")


def expected_stati(instance: Pmon, numbers: list[int], mode: str) -> bytes:
    status = instance.status()
    pmon_pid = status["pmon_pid"]
    rows = [f"2;{pmon_pid:5d};0;{stamp(psutil.Process(pmon_pid).create_time())};  1"]
    for m, number in zip(status["managers"], numbers):
        state = 3 if m.get("why", "").startswith("hung:") else {"starting": 1, "running": 2}.get(m["state"], 0)
        pid = m["pid"] or (-2 if m["state"] in ("backoff", "blocked") else -1)
        start = ["manual", "once", "always"].index(m["start"])
        rows.append(f"{state};{pid:5d};{start};{stamp(m['started_at'])};{number:3d}")
    return ("\n".join([f"LIST:{len(rows)}", *rows, mode, ";"]) + "\n").encode()


MANAGERS: list[dict[str, Any]] = [
    {"name": "a", "command": child("-num", "3"), "seconds_to_kill": 2, "restart_count": 4,
     "reset_after": 120},
    {"name": "m", "command": child(), "start": "manual"},
    {"name": "o", "command": child("--exit-after", "0"), "start": "once", "num": 7},
]
LIST = (
    "LIST:4\n"
    "pmon;0;0;0;0;\n"
    f"{PY};2;2;4;2;{shlex.quote(CHILD)} -num 3\n"
    f"{PY};0;10;3;5;{shlex.quote(CHILD)}\n"
    f"{PY};1;10;3;5;{shlex.quote(CHILD)} --exit-after 0\n"
    ";\n"
).encode()


def start(tmp_path: Path, pmon: Any, **pmon_tcp: Any) -> Pmon:
    config = write_project(tmp_path, MANAGERS, pmon_tcp={"port": 0, **pmon_tcp})
    instance = pmon(config)
    instance.wait_state("o", "exited")
    return instance


def test_one_connection_many_commands(tmp_path, pmon):
    instance = start(tmp_path, pmon)
    client = Client(instance)
    assert client.ask("PROJECT:") == instance.config.project.name.encode()
    assert client.ask("MGRLIST:LIST") == LIST
    assert client.ask("MGRLIST:STATI") == expected_stati(instance, [3, 1, 7], "2 MONITOR_MODE 0 0")
    assert client.ask("SINGLE_MGR:PROP_GET 1") == f"always 2 4 2 {shlex.quote(CHILD)} -num 3".encode()
    assert client.ask("SINGLE_MGR:PROP_GET 0") == b"manual 0 0 0"
    for spelling in ("START_ALL", "START_ALL:", "START_ALL: ", "START_ALL:\r"):
        assert client.ask(spelling) == ERR_START_ALL  # the project runs already
    assert client.ask("PROJECT:") == instance.config.project.name.encode()
    client.sock.shutdown(socket.SHUT_WR)
    assert client.at_end() == b""  # nothing was sent beyond the replies


def test_one_connection_per_command_drives_the_project(tmp_path, pmon):
    instance = start(tmp_path, pmon)
    first = instance.manager("a")["pid"]
    assert once(instance, "SINGLE_MGR:STOP 1") == b"OK"
    poll_for(lambda: instance.manager("a")["state"] == "stopped", what="a stopped")
    assert once(instance, "SINGLE_MGR:STOP 1") == ERR_STOP  # stopped already
    assert once(instance, "MGRLIST:STATI").splitlines()[2].startswith(b"0;   -1;2;")
    assert once(instance, "SINGLE_MGR:START 1") == b"OK"
    poll_for(lambda: instance.manager("a")["state"] == "running", what="a running")

    assert once(instance, "STOP_ALL:") == b"OK"
    poll_for(lambda: instance.status()["project_state"] == "stopped", what="the project stopped")
    assert once(instance, "MGRLIST:STATI") == expected_stati(instance, [3, 1, 7], "0 WAIT_MODE 0 0")
    assert once(instance, "START_ALL:") == b"OK"
    poll_for(lambda: instance.status()["project_state"] == "running", what="the project to run")
    second = instance.manager("a")["pid"]
    assert once(instance, "RESTART_ALL:") == b"OK"
    poll_for(lambda: instance.manager("a")["pid"] not in (None, second)
             and instance.status()["project_state"] == "running", what="the restart")
    assert len({first, second, instance.manager("a")["pid"]}) == 3
    last = Client(instance)  # a last request without its newline, then the end
    last.sock.sendall(b"##PROJECT:")
    last.sock.shutdown(socket.SHUT_WR)
    assert last.at_end() == instance.config.project.name.encode()
    assert once(instance, "WAIT_MODE:") == b"OK"
    poll_for(lambda: instance.status()["project_state"] == "stopped", what="the wait mode")


def test_two_clients_interleaved(tmp_path, pmon):
    instance = start(tmp_path, pmon)
    one, two = Client(instance), Client(instance)
    assert one.ask("SINGLE_MGR:START 2") == b"OK"
    assert two.ask("PROJECT:") == instance.config.project.name.encode()
    poll_for(lambda: two.ask("MGRLIST:STATI").splitlines()[3].startswith(b"2;"), what="m running")
    assert one.ask("MGRLIST:LIST") == LIST
    assert two.ask("SINGLE_MGR:KILL 2") == b"OK"
    poll_for(lambda: one.ask("MGRLIST:STATI").splitlines()[3].startswith(b"0;   -1;0;"),
             what="m killed")
    assert instance.manager("m")["exit_code"] == -9  # SIGKILL, no polite stop first
    assert one.ask("SINGLE_MGR:KILL 2") == ERR_STOP
    assert two.ask("MGRLIST:STATI") == one.ask("MGRLIST:STATI")


def test_ins_prop_put_del_change_the_list_and_the_file(tmp_path, pmon):
    instance = start(tmp_path, pmon)
    client = Client(instance)

    def tables() -> list[dict[str, Any]]:
        return tomllib.loads(instance.config_path.read_text())["managers"]

    assert client.ask("SINGLE_MGR:INS 6 WCCOAui once 30 3 1 -num 6") == ERR_INS  # 1..4
    assert client.ask("SINGLE_MGR:INS 0 WCCOAui once 30 3 1 -num 6") == ERR_INS
    assert client.ask(f'SINGLE_MGR:INS 2 {PY} manual 30 3 1 "{CHILD} --print hi -num 6"') == b"OK"
    row = f"{PY};0;30;3;1;{shlex.quote(CHILD)} --print hi -num 6"
    assert client.ask("MGRLIST:LIST").splitlines()[3] == row.encode()
    assert [t["name"] for t in tables()] == ["a", Path(PY).name, "m", "o"]  # named after its program
    added = tables()[1]
    assert added["command"] == [PY, CHILD, "--print", "hi", "-num", "6"]
    assert (added["start"], added["seconds_to_kill"], added["restart_count"], added["reset_after"]) == (
        "manual", 30, 3, 60)

    assert client.ask(f"SINGLE_MGR:PROP_PUT 2 always 5 2 3 {CHILD} -num 8") == b"OK"
    assert client.ask("SINGLE_MGR:PROP_GET 2") == f"always 5 2 3 {shlex.quote(CHILD)} -num 8".encode()
    assert tables()[1]["command"] == [PY, CHILD, "-num", "8"]
    assert tables()[1]["reset_after"] == 180
    assert client.ask("SINGLE_MGR:PROP_PUT 2 sometimes 5 2 3") == (
        b"ERROR errProp :start mode 'sometimes' is not manual, once, always (or 0, 1, 2)")
    assert client.ask("SINGLE_MGR:PROP_PUT 2 once -30 2 3") == (
        b"ERROR errProp :secKill '-30' is not a whole number >= 0")

    assert client.ask("SINGLE_MGR:START 2") == b"OK"
    poll_for(lambda: client.ask("MGRLIST:STATI").splitlines()[3].startswith(b"2;"), what="running")
    assert client.ask("MGRLIST:STATI").splitlines()[3].endswith(b";  8")  # -num 8
    refused = client.ask("SINGLE_MGR:DEL 2")
    assert refused.startswith(b"ERROR errDel :") and b"stop it first" in refused
    assert client.ask("SINGLE_MGR:STOP 2") == b"OK"
    poll_for(lambda: client.ask("MGRLIST:STATI").splitlines()[3].startswith(b"0;   -1;"), what="stopped")
    assert client.ask("SINGLE_MGR:DEL 2") == b"OK"
    assert client.ask("MGRLIST:LIST") == LIST
    assert [t["name"] for t in tables()] == ["a", "m", "o"]
    assert client.ask("SINGLE_MGR:DEL 0") == ERR_INV_IDX
    assert client.ask("SINGLE_MGR:DEL 4") == ERR_INV_IDX


def test_every_bad_request_gets_its_error_and_harms_nothing(tmp_path, pmon):
    instance = start(tmp_path, pmon, user="op", password="s3cret", idle_timeout=1.0)
    for credentials in ("##", "op##", "op#wrong#", "Op#s3cret#", "#s3cret#"):
        assert once(instance, "STOP_ALL:", credentials) == ERR_AUTH
    stati = once(instance, "MGRLIST:STATI", "op#s3cret#")
    assert stati.endswith(b"\n2 MONITOR_MODE 0 0\n;\n")  # nothing was stopped
    assert instance.manager("a")["state"] == "running"

    def ask(command: str) -> bytes:
        return once(instance, command, "op#s3cret#")

    assert ask("") == ERR_CMD
    assert ask("MGRLIST:FOO") == ERR_CMD
    assert ask("SINGLE_MGR:DEBUG 1") == ERR_CMD
    assert ask("PROJECT: extra") == b"ERROR errCmd :this command takes no arguments, got 'extra'"
    for command in ("SINGLE_MGR:START 4", "SINGLE_MGR:START x", "SINGLE_MGR:START", "SINGLE_MGR:STOP -1",
                    "SINGLE_MGR:PROP_GET 99", "SINGLE_MGR:PROP_PUT 0 once 1 1 1"):
        assert ask(command) == ERR_INV_IDX, command
    assert ask("SINGLE_MGR:STOP 0") == ERR_STOP
    assert ask("SINGLE_MGR:KILL 0") == ERR_STOP

    # Nonsense on a connection, then a good request on the same one (idle_timeout is short:
    # these follow each other at once).
    good = Client(instance, "op#s3cret#")
    good.sock.sendall(b"hello\n")
    assert good.reply() == b"ERROR errCmd :malformed request; expected user#password#COMMAND"
    good.sock.sendall(b"\x00\xff\xfe#\x01#\x02\n")
    assert good.reply() == b"ERROR errCmd :request is not text"
    assert good.ask("PROJECT:") == instance.config.project.name.encode()  # still served

    huge = Client(instance, "op#s3cret#")
    huge.sock.sendall(b"op#s3cret#PROJECT: " + b"x" * 100_000 + b"\n")
    assert huge.at_end() == b"ERROR errCmd :request longer than 65536 bytes"  # then closed
    huge.close()

    silent = Client(instance)
    assert silent.at_end() == b""  # dropped after idle_timeout, without a word
    assert good.at_end() == b""  # so is a client idle between two commands

    assert once(instance, "MGRLIST:STATI", "op#s3cret#") == expected_stati(
        instance, [3, 1, 7], "2 MONITOR_MODE 0 0")
    assert any(e["event"] == "pmon-tcp-auth-failed" for e in instance.events())


def test_a_hundred_clients_at_once(tmp_path, pmon):
    instance = start(tmp_path, pmon, max_clients=100)
    name = instance.config.project.name.encode()
    clients = [Client(instance) for _ in range(100)]
    for client in clients:
        client.sock.sendall(b"##PROJECT:\n")
    assert [client.reply() for client in clients] == [name] * 100
    for client in reversed(clients):  # and again, in the other order, on the same connections
        client.sock.sendall(b"##MGRLIST:LIST\n")
    assert {client.reply() for client in clients} == {LIST}

    surplus = Client(instance)
    assert surplus.at_end() == b""  # the 101st is closed at once
    clients.pop().close()
    poll_for(lambda: answered(instance, "PROJECT:") == name, what="a free place")
    for client in clients:
        client.close()
    assert instance.status()["project_state"] == "running"
    assert instance.manager("a")["state"] == "running"


def test_a_taken_port_is_reported_and_the_project_runs_without_the_listener(tmp_path, pmon):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        config = write_project(tmp_path, MANAGERS[:1], pmon_tcp={"port": holder.getsockname()[1]})
        instance = pmon(config)
        instance.wait_state("a", "running")
        failed = poll_for(lambda: [e for e in instance.events() if e["event"] == "pmon-tcp-failed"],
                          what="the pmon-tcp-failed event")
        assert "pmon runs without it" in failed[0]["message"]
        assert not (instance.config.project.state_dir / "pmon_tcp.addr").exists()


def test_the_registry_commands_it_added_serve_the_control_channel_too(tmp_path, pmon):
    from pmon.control.client import RemoteError

    instance = start(tmp_path, pmon)
    row = instance.call("edit", target="m", changes={"seconds_to_kill": 1, "start": None})
    assert row["start"] == "always"  # the key removed: back to the default
    assert tomllib.loads(instance.config_path.read_text())["managers"][1] == {
        "name": "m", "command": child(), "seconds_to_kill": 1}
    with pytest.raises(RemoteError, match="cannot be renamed"):
        instance.call("edit", target="m", changes={"name": "n"})
    with pytest.raises(RemoteError, match="invalid"):
        instance.call("edit", target="m", changes={"restart_count": -1})
    added = instance.call("add", manager={"name": "first", "command": child()}, position=1)
    assert (added["index"], instance.manager("a")["index"]) == (1, 2)
    with pytest.raises(RemoteError, match=r"position 9 is outside 1\.\.5"):
        instance.call("add", manager={"name": "x", "command": child()}, position=9)
    killed = instance.call("kill", target="first")
    assert (killed["state"], killed["exit_code"]) == ("stopped", -9)


def test_a_blocked_manager_is_state_0_pid_minus_2_and_a_hung_one_state_3(tmp_path, pmon):
    """WinCC OA's meaning: 3 is "no alive sign"; a manager pmon gave up on is 0 with pid -2."""
    config = write_project(tmp_path, [
        {"name": "quits", "command": child("--exit-after", "0", "--code", "1"), "restart_count": 1},
        {"name": "stalls", "command": child("--watchdog-every", "0.1", "--watchdog-for", "0.5"),
         "monitor": {"alive": {"alive_seconds": 0.6}}},
    ], pmon_tcp={"port": 0}, plugins={"alive": {"interval": 0.1, "alive_seconds": 0.6}})
    instance = pmon(config, wait=False)
    instance.wait_state("quits", "blocked", timeout=15)
    instance.wait_event("verdict", plugin="alive", target="stalls", timeout=15)
    client = Client(instance)
    rows = client.ask("MGRLIST:STATI").decode().splitlines()
    quits, stalls = rows[2].split(";"), rows[3].split(";")
    assert (quits[0], quits[1].strip()) == ("0", "-2")
    assert (stalls[0], stalls[1].strip()) == ("3", str(instance.manager("stalls")["pid"]))
