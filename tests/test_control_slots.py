"""The control server's connection slots (review 1, findings 1 and 7): a command in flight is
never evicted by a flood, subscribers cannot take every slot, a wrong token on `subscribe`
is answered late like any other. Real sockets, a real pmon."""

from __future__ import annotations

import json
import socket
import time

from pmon.control import protocol
from pmon.control.server import MAX_CONNECTIONS, MAX_SUBSCRIBERS

from support import child, pmon_cli, poll_for, write_project


def unix_connect(instance) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(15)
    sock.connect(str(protocol.socket_path(instance.config.project.state_dir)))
    return sock


def send(sock: socket.socket, command: str, **fields) -> None:
    sock.sendall(json.dumps({"command": command, **fields}).encode() + b"\n")


def reply(sock: socket.socket) -> dict:
    line = sock.makefile("rb").readline()
    assert line, "the connection was closed without a reply"
    return json.loads(line)


def test_a_command_in_flight_is_not_evicted_by_a_flood_of_new_connections(tmp_path, pmon):
    config = write_project(tmp_path, [
        {"name": "core1", "command": child(), "core": True},
        {"name": "slow", "command": child("--ignore-term", "--ready-after", "0"), "ready": "notify",
         "seconds_to_kill": 3},  # READY=1 comes once it ignores SIGTERM
    ])
    instance = pmon(config)
    stopper = unix_connect(instance)
    flood: list[socket.socket] = []
    try:
        send(stopper, "stop", args={"target": "slow"})
        instance.wait_state("slow", "stopping")  # the stop is in flight: waiting out SIGTERM
        for _ in range(MAX_CONNECTIONS + 8):  # more than the limit, each says nothing
            flood.append(unix_connect(instance))
        answer = reply(stopper)
        assert answer.get("ok") is True, answer
        assert instance.manager("slow")["state"] == "stopped"
    finally:
        stopper.close()
        for sock in flood:
            sock.close()


def test_subscribers_cannot_take_every_slot(tmp_path, pmon):
    config = write_project(tmp_path, [{"name": "a", "command": child()}])
    instance = pmon(config)
    streams: list[socket.socket] = []
    answers = []
    try:
        for _ in range(MAX_CONNECTIONS):
            sock = unix_connect(instance)
            streams.append(sock)
            send(sock, "subscribe", args={})
            answers.append(reply(sock))
        taken = [a for a in answers if a.get("ok")]
        refused = [a for a in answers if not a.get("ok")]
        assert len(taken) == MAX_SUBSCRIBERS
        assert {a["error"]["code"] for a in refused} == {"busy"}
        assert "subscribers are connected" in refused[0]["error"]["message"]
        result = pmon_cli(config, "stop", "a", timeout=30)  # commands still get through
        assert result.returncode == 0, result.stderr
        assert instance.manager("a")["state"] == "stopped"
    finally:
        for sock in streams:
            sock.close()


def test_a_wrong_token_on_subscribe_is_answered_ever_later_then_closed(tmp_path, pmon):
    config = write_project(tmp_path, [{"name": "a", "command": child()}],
                           control={"tcp": "127.0.0.1:0"})
    instance = pmon(config)
    host, _, port = (instance.config.project.state_dir / "control.addr").read_text().rpartition(":")
    with socket.create_connection((host, int(port)), timeout=15) as sock:
        stream = sock.makefile("rb")
        began = time.monotonic()
        replies = []
        for _ in range(5):
            try:
                send(sock, "subscribe", token="guess", args={})
                line = stream.readline()
            except ConnectionError:
                break
            if not line:
                break
            replies.append(json.loads(line))
        took = time.monotonic() - began
    assert [r["error"]["code"] for r in replies] == ["auth"] * 3  # then closed
    assert took >= 0.5 + 1.0 + 1.5  # each wrong token waited for longer than the last
    poll_for(lambda: pmon_cli(config, "status").returncode == 0, 20, "the right token to work")
