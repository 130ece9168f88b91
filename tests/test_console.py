"""`pmon console` against a real pmon: driven headless by textual's own Pilot (App.run_test),
and once in a real terminal (tmux) through the `pmon console` command."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest

pytest.importorskip("textual", reason="needs textual (the console extra)")

from textual.pilot import Pilot  # noqa: E402
from textual.widgets import DataTable, Static  # noqa: E402

from pmon.cli.console_app import Confirm, Console  # noqa: E402
from pmon.control.client import Endpoint  # noqa: E402
from support import Pmon, child, pmon_cli, poll_for, write_project  # noqa: E402
from etcd import etcd  # noqa: E402,F401 (the fixture)
from group import write_group  # noqa: E402

WAIT = 15.0


def managers() -> list[dict[str, Any]]:
    return [
        {"name": "data", "command": child(), "core": True},
        {"name": "steady", "command": child("--print-every", "0.2")},
        {"name": "tool", "command": child(), "start": "manual"},
        {"name": "flaky", "command": child("--exit-after", "0.1", "--code", "3"), "restart_count": 1},
    ]


def cell(app: Console, name: str, column: str) -> str:
    return str(app.query_one("#managers", DataTable).get_cell(name, column))


def text_of(app: Console, selector: str) -> str:
    return str(app.query_one(selector, Static).render())


async def until(pilot: Pilot[Any], predicate: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Let the app run until `predicate()` holds; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await pilot.pause(0.02)


def drive(config: Path, scenario: Callable[[Console, Pilot[Any]], Awaitable[None]]) -> Console:
    async def main() -> Console:
        app = Console(Endpoint.read(config))
        async with app.run_test(size=(160, 40)) as pilot:
            await until(pilot, lambda: app.connected and app.rows, "the console to connect")
            await scenario(app, pilot)
        return app

    return asyncio.run(main())


def select(app: Console, name: str) -> None:
    table = app.query_one("#managers", DataTable)
    table.move_cursor(row=table.get_row_index(name))


def test_the_table_follows_a_kill_and_a_key_stops_a_manager(tmp_path, pmon):
    server = pmon(write_project(tmp_path, managers()))
    killed = server.manager("steady")["pid"]

    async def scenario(app: Console, pilot: Pilot[Any]) -> None:
        await until(pilot, lambda: cell(app, "steady", "pid") == str(killed), "steady's pid")
        assert cell(app, "steady", "state") == "running" and cell(app, "tool", "state") == "stopped"
        assert cell(app, "data", "index") == "1" and cell(app, "tool", "start") == "manual"
        assert "running" in text_of(app, "#project")
        await until(pilot, lambda: cell(app, "flaky", "state") == "blocked", "flaky blocked")
        reason = server.manager("flaky")["reason"]
        assert reason and cell(app, "flaky", "reason") == reason  # why it is not running
        assert cell(app, "steady", "reason") == ""
        os.kill(killed, signal.SIGKILL)
        await until(pilot, lambda: cell(app, "steady", "pid") not in ("", str(killed))
                    and cell(app, "steady", "state") == "running"
                    and cell(app, "steady", "restarts") == "1", "the restart in the table")
        assert cell(app, "steady", "pid") == str(server.manager("steady")["pid"])
        # CPU and memory of the tree, the selected manager's log, the event stream
        await until(pilot, lambda: cell(app, "steady", "rss").endswith("M"), "steady's RSS")
        select(app, "steady")
        await until(pilot, lambda: any("steady line" in str(line) for line in app.query_one("#log").lines),
                    "steady's log")
        await until(pilot, lambda: any("exited" in str(line) or "ended" in str(line)
                                       for line in app.query_one("#events").lines), "the exit event")
        app.save_screenshot(filename="console.svg", path=str(tmp_path))
        # a key stops the selected manager
        await pilot.press("x")
        await until(pilot, lambda: cell(app, "steady", "state") == "stopped", "steady stopped in the table")
        assert server.manager("steady")["state"] == "stopped"
        await until(pilot, lambda: "stop steady: done" in app.last_message, "the command's result")
        await pilot.press("s")
        await until(pilot, lambda: cell(app, "steady", "state") == "running", "steady running again")

    drive(server.config_path, scenario)
    assert "steady" in (tmp_path / "console.svg").read_text()


def test_a_refused_action_shows_pmons_words(tmp_path, pmon):
    server = pmon(write_project(tmp_path, managers()))
    refusal = pmon_cli(server.config_path, "stop", "data")
    assert refusal.returncode == 1
    words = refusal.stderr.strip().removeprefix("pmon: ")

    async def scenario(app: Console, pilot: Pilot[Any]) -> None:
        select(app, "data")
        await pilot.press("x")
        await until(pilot, lambda: words in app.last_message, f"the refusal {words!r}")
        assert server.manager("data")["state"] == "running"
        assert not isinstance(app.screen, Confirm)  # no --force can override this one

    drive(server.config_path, scenario)


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_what_needs_force_asks_with_the_same_words(tmp_path, pmon):
    """A server of a pair whose partner never comes: it is active, and stopping its project
    is refused unless forced: the console asks, n leaves it, y stops it."""
    redundancy = {
        "name": "a", "partner": "b", "preferred": "a", "heartbeat_interval": 0.1, "timeout": 0.6,
        "first_active_change_interval": 0,
        "links": [{"local": f"127.0.0.1:{_free_udp_port()}", "partner": f"127.0.0.1:{_free_udp_port()}"}],
    }
    server = pmon(write_project(tmp_path, managers(), redundancy=redundancy), wait=False)
    poll_for(lambda: server.call("redu-status")["role"] == "active", WAIT, "a active alone")
    server.wait_ready(WAIT)
    refusal = pmon_cli(server.config_path, "stop", "--all")
    assert refusal.returncode == 1 and "--force" in refusal.stderr
    words = refusal.stderr.strip().removeprefix("pmon: ")

    async def scenario(app: Console, pilot: Pilot[Any]) -> None:
        await until(pilot, lambda: "this server a: active" in text_of(app, "#pair")
                    and "not connected" in text_of(app, "#pair"), "the pair's line")
        await pilot.press("A")  # the partner cannot be made active: refused, no question
        await until(pilot, lambda: "the partner (b) is not connected" in app.last_message, "the refusal")
        assert not isinstance(app.screen, Confirm)
        await pilot.press("X")
        await until(pilot, lambda: isinstance(app.screen, Confirm), "the question")
        assert words in app.screen.question
        await pilot.press("n")
        await until(pilot, lambda: not isinstance(app.screen, Confirm), "the question to go")
        await until(pilot, lambda: "not done" in app.last_message, "'not done'")
        assert server.status()["project_state"] == "running"
        await pilot.press("X")
        await until(pilot, lambda: isinstance(app.screen, Confirm), "the question again")
        await pilot.press("y")
        await until(pilot, lambda: "stopped" in text_of(app, "#project"), "the project stopped")
        assert server.status()["project_state"] == "stopped"

    drive(server.config_path, scenario)


def test_a_group_member_shows_every_member_and_the_leader(tmp_path, pmon, etcd):
    """A member of a group of three: no partner, no links; every member's role and error
    state, the leader; "partner active" (A) says to name the member instead."""
    servers = {name: pmon(path, wait=False) for name, path in write_group(tmp_path, etcd.url).items()}
    for server in servers.values():
        server.wait_ready(WAIT)

    async def scenario(app: Console, pilot: Pilot[Any]) -> None:
        def shown() -> bool:
            text = text_of(app, "#pair")
            return "this server c: passive" in text and "group of 3, leader a" in text and \
                "a: active, error state 0" in text and "b: passive, error state 0" in text
        await until(pilot, shown, "the group's lines", timeout=30)
        assert "partner" not in text_of(app, "#pair") and "links" not in text_of(app, "#pair")
        await pilot.press("A")
        await until(pilot, lambda: "a group has no one partner" in app.last_message, "the refusal")

    drive(servers["c"].config_path, scenario)


def test_it_reconnects_when_pmon_comes_back_and_q_quits(tmp_path, pmon):
    config = write_project(tmp_path, managers())
    first = pmon(config)
    box: dict[str, Pmon] = {}

    async def scenario(app: Console, pilot: Pilot[Any]) -> None:
        old_pid = app.pmon_pid
        result = await asyncio.to_thread(pmon_cli, config, "detach")
        assert result.returncode == 0, result.stderr
        assert await asyncio.to_thread(first.proc.wait, WAIT) == 0
        await until(pilot, lambda: not app.connected and "reconnecting" in app.last_message, "'reconnecting'")
        assert "not connected" in text_of(app, "#project")
        box["second"] = second = await asyncio.to_thread(pmon, config, False)
        await until(pilot, lambda: app.connected and "reconnected" in app.last_message, "'reconnected'")
        assert app.pmon_pid != old_pid and app.pmon_pid == second.proc.pid
        pid = second.manager("steady")["pid"]
        os.kill(pid, signal.SIGKILL)  # the table is live again
        await until(pilot, lambda: cell(app, "steady", "pid") not in ("", str(pid))
                    and cell(app, "steady", "state") == "running", "a restart after the reconnect")
        await pilot.press("q")
        await until(pilot, lambda: not app.is_running, "q to quit")

    drive(config, scenario)


def test_in_a_real_terminal(tmp_path, pmon):
    tmux = shutil.which("tmux")
    if tmux is None:
        pytest.skip("needs tmux (Debian package tmux)")
    server = pmon(write_project(tmp_path, managers()))
    socket_name = f"pmon-test-{os.getpid()}"
    command = f"{sys.executable} -m pmon.cli console -c {server.config_path}"
    subprocess.run([tmux, "-L", socket_name, "new-session", "-d", "-x", "150", "-y", "40", command],
                   check=True, timeout=WAIT)
    try:
        def screen() -> str:
            return subprocess.run([tmux, "-L", socket_name, "capture-pane", "-p"],
                                  capture_output=True, text=True, timeout=WAIT).stdout

        poll_for(lambda: "steady" in screen() and "running" in screen() and "connected to pmon" in screen(),
                 WAIT, "the console in tmux")
        subprocess.run([tmux, "-L", socket_name, "resize-window", "-x", "90", "-y", "25"], timeout=WAIT)
        poll_for(lambda: len(max(screen().splitlines(), key=len)) <= 90 and "steady" in screen(),
                 WAIT, "the console redrawn at 90 columns")
        subprocess.run([tmux, "-L", socket_name, "send-keys", "q"], timeout=WAIT)
        poll_for(lambda: subprocess.run([tmux, "-L", socket_name, "has-session"],
                                        capture_output=True, timeout=WAIT).returncode != 0,
                 WAIT, "q to end the console (and its tmux session)")
    finally:
        subprocess.run([tmux, "-L", socket_name, "kill-server"], capture_output=True, timeout=WAIT)
        tmux_socket(socket_name).unlink(missing_ok=True)  # kill-server leaves the file


def tmux_socket(name: str) -> Path:
    return Path(os.environ.get("TMUX_TMPDIR", "/tmp")) / f"tmux-{os.getuid()}" / name


def test_without_textual_the_command_says_what_to_install(tmp_path):
    config = write_project(tmp_path, managers())
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "textual").mkdir()
    (blocker / "textual" / "__init__.py").write_text("raise ImportError('textual is not installed')\n")
    env = {**os.environ, "PYTHONPATH": f"{blocker}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = subprocess.run([sys.executable, "-m", "pmon.cli", "console", "-c", str(config)],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2
    assert "pip install 'pmon[console]'" in result.stderr


def test_the_table_converges_to_pmons_status_under_random_operations(tmp_path, pmon):
    """A chaos run (seeded): kills, stops, starts and restarts of random managers, from
    outside and by the console's keys; after each burst, every row of the table must come to
    show what `pmon status` says (state, pid, restarts)."""
    import random

    rng = random.Random(int(os.environ.get("PMON_CHAOS_SEED", "1111")))
    names = [f"w{i}" for i in range(6)]
    server = pmon(write_project(tmp_path, [{"name": n, "command": child(), "restart_count": 50} for n in names]))

    def agrees(app: Console) -> bool:
        status = {m["name"]: m for m in server.status()["managers"]}
        return all(cell(app, n, "state").split(" ")[0] == status[n]["state"]
                   and cell(app, n, "pid") == str(status[n]["pid"] or "")
                   and cell(app, n, "restarts") == str(status[n]["restarts"]) for n in names)

    async def scenario(app: Console, pilot: Pilot[Any]) -> None:
        for _burst in range(6):
            for _ in range(rng.randrange(1, 5)):
                name = rng.choice(names)
                row = server.manager(name)
                how = rng.choice(["kill", "key-x", "key-s", "key-r", "key-k"])
                if how == "kill" and row["pid"]:
                    os.kill(row["pid"], signal.SIGKILL)
                elif how.startswith("key-"):
                    select(app, name)
                    await pilot.press(how[-1])
            await until(pilot, lambda: agrees(app), "the table to agree with pmon status")

    drive(server.config_path, scenario)
