"""Clients that would starve pmon: a flood of idle connections, password guessing, a full
backlog, a project too big for its fd limit. Real sockets, a real pmon."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time

import pytest

from support import child, pmon_cli, poll_for, write_project


def control_address(instance) -> tuple[str, int]:
    host, _, port = (instance.config.project.state_dir / "control.addr").read_text().rpartition(":")
    return host, int(port)


def closed(sock: socket.socket, timeout: float = 15.0) -> bool:
    """The peer closed the connection (EOF or reset) within `timeout`."""
    sock.settimeout(timeout)
    try:
        while sock.recv(4096):
            pass
    except ConnectionError:
        return True
    except socket.timeout:
        return False
    return True


def test_idle_token_less_connections_cannot_shut_out_status_or_spawns(tmp_path, pmon):
    config = write_project(tmp_path, [{"name": "a", "command": child()}],
                           control={"tcp": "127.0.0.1:0"})
    instance = pmon(config)
    address = control_address(instance)
    flood = []
    try:
        for _ in range(300):  # far more than the limit: each says nothing
            flood.append(socket.create_connection(address, timeout=10))
        result = pmon_cli(config, "status", timeout=30)
        assert result.returncode == 0, result.stderr
        assert "running" in result.stdout
        # the oldest idle ones made room; the rest are dropped when their time is up
        assert closed(flood[0], timeout=5)
        os.kill(instance.manager("a")["pid"], signal.SIGKILL)  # a restart finds its fds
        poll_for(lambda: (m := instance.manager("a"))["state"] == "running" and m["restarts"] == 1,
                 what="a restarted")
        assert closed(flood[-1], timeout=15)  # no first request within its time: dropped
    finally:
        for sock in flood:
            sock.close()


def test_wrong_tokens_are_answered_ever_later_then_the_connection_is_closed(tmp_path, pmon):
    config = write_project(tmp_path, [{"name": "a", "command": child()}],
                           control={"tcp": "127.0.0.1:0"})
    instance = pmon(config)
    with socket.create_connection(control_address(instance), timeout=15) as sock:
        began = time.monotonic()
        replies = []
        stream = sock.makefile("rb")
        for _ in range(5):
            try:
                sock.sendall(json.dumps({"command": "status", "token": "guess"}).encode() + b"\n")
            except ConnectionError:
                break
            try:
                line = stream.readline()
            except ConnectionError:
                break
            if not line:
                break
            replies.append(json.loads(line))
        took = time.monotonic() - began
    assert [r["error"]["code"] for r in replies] == ["auth"] * 3  # then closed
    assert took >= 0.5 + 1.0 + 1.5  # each wrong token waited for longer than the last
    assert pmon_cli(config, "status").returncode == 0  # the right token still works


def test_pmon_tcp_closes_a_connection_that_guesses_passwords(tmp_path, pmon):
    config = write_project(tmp_path, [{"name": "a", "command": child()}],
                           pmon_tcp={"port": 0, "password": "secret"})
    instance = pmon(config)
    host, _, port = (instance.config.project.state_dir / "pmon_tcp.addr").read_text().rpartition(":")
    with socket.create_connection((host, int(port)), timeout=15) as sock:
        answers = 0  # replies carry no terminator: one recv per lockstep reply
        for guess in range(10):
            try:
                sock.sendall(f"#guess{guess}#MGRLIST:LIST\n".encode())
                reply = sock.recv(4096)
            except ConnectionError:
                break
            if not reply:
                break
            assert reply.startswith(b"ERROR errAuth")
            answers += 1
        assert answers == 3
        assert closed(sock)
    with socket.create_connection((host, int(port)), timeout=15) as sock:
        sock.sendall(b"#secret#MGRLIST:LIST\n")
        assert sock.recv(4096).startswith(b"LIST:")


def test_a_full_backlog_is_busy_not_not_running(tmp_path, pmon):
    config = write_project(tmp_path, [{"name": "a", "command": child()}])
    instance = pmon(config)
    path = str(instance.config.project.state_dir / "pmon.sock")
    os.kill(instance.proc.pid, signal.SIGSTOP)  # accepts nothing: the backlog fills
    pending = []
    try:
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                sock.connect(path)
            except BlockingIOError:
                sock.close()
                break  # the backlog is full
            pending.append(sock)
            assert len(pending) < 5000
        result = pmon_cli(config, "status", timeout=60)
        assert result.returncode == 1, (result.returncode, result.stderr)
        assert "pmon is busy" in result.stderr
    finally:
        os.kill(instance.proc.pid, signal.SIGCONT)
        for sock in pending:
            sock.close()
    poll_for(lambda: pmon_cli(config, "status").returncode == 0, what="pmon answering again")


@pytest.mark.skipif(os.name != "posix", reason="RLIMIT_NOFILE is POSIX")
def test_a_project_too_big_for_its_fd_limit_is_said_by_validate_and_run(tmp_path):
    managers = [{"name": f"m{i}", "command": child(), "start": "manual"} for i in range(60)]
    config = write_project(tmp_path, managers)

    def small_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (120, 120))

    result = subprocess.run([sys.executable, "-m", "pmon.cli", "validate", "-c", str(config)],
                            capture_output=True, text=True, timeout=60, preexec_fn=small_limit)
    assert result.returncode == 0 and "needs about 232 file descriptors" in result.stderr, result
    assert "RLIMIT_NOFILE is 120" in result.stderr
    proc = subprocess.Popen([sys.executable, "-m", "pmon.cli", "run", "-q", "-c", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=small_limit)
    try:
        events = tmp_path / "var" / "log" / "events.jsonl"
        record = poll_for(lambda: events.exists() and next(
            (json.loads(line) for line in events.read_text().splitlines()
             if '"fd-limit"' in line), None), timeout=30, what="the fd-limit event")
        assert record["needed"] == 232 and "RLIMIT_NOFILE is 120" in record["message"]
        assert pmon_cli(config, "status").returncode == 0
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
