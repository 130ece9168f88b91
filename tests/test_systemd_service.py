"""pmon under systemd as an admin sees it: the unit systemd-analyze accepts for odd paths,
`systemctl restart`'s signal as a hot restart, the exit status that keeps a stopped unit
stopped, STOPPING=1 / STATUS= on a notify socket, priority prefixes in the journal stream,
`service install --user-name`. A real systemd as PID 1 is in test_systemd_container.py."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from pmon import config as config_module
from pmon.service import EXIT_STOPPED, UNIT_ENV, systemd
from support import child, kill_project_processes, pmon_cli, poll_for, write_project

HAVE_ANALYZE = shutil.which("systemd-analyze") is not None
ODD_NAMES = ["my plant", "cost$HOME", "50%done", "Ümläut ß 電", "a\"quote'b", "semi;colon",
             "back\\slash", "  inner  spaces  "[2:-2]]


def verify(unit: Path) -> list[str]:
    """What systemd-analyze verify says about our unit (lines about other units dropped)."""
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True, timeout=60)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    ours = [line for line in lines if unit.name in line or str(unit) in line]
    assert done.returncode == 0 or ours, lines
    return ours


def odd_project(base: Path, folder: str) -> config_module.Config:
    directory = base / folder
    directory.mkdir(parents=True)
    return config_module.load(write_project(directory, [{"name": "a", "command": child()}], name="odd"))


@pytest.mark.skipif(not HAVE_ANALYZE, reason="needs systemd-analyze (Debian package systemd)")
@pytest.mark.parametrize("folder", ODD_NAMES)
def test_systemd_analyze_accepts_the_unit_of_an_odd_project_path(tmp_path, folder):
    config = odd_project(tmp_path, folder)
    unit = systemd.install(config, systemd.UnitOptions(watchdog_sec=10), tmp_path / "units")
    assert verify(unit) == []
    text = unit.read_text()
    directory = str(config.path.parent)
    # WorkingDirectory= is the path itself: no quotes, no $$, only % doubled
    assert f"WorkingDirectory={directory.replace('%', '%%')}\n" in text


@pytest.mark.skipif(not HAVE_ANALYZE, reason="needs systemd-analyze (Debian package systemd)")
def test_systemd_analyze_rejects_what_the_old_quoting_wrote(tmp_path):
    """The check is real: the quoted WorkingDirectory= of before is an error it reports."""
    config = odd_project(tmp_path, "my plant")
    unit = systemd.install(config, systemd.UnitOptions(), tmp_path / "units")
    bad = unit.read_text().replace(
        f"WorkingDirectory={config.path.parent}", f'WorkingDirectory="{config.path.parent}"')
    unit.write_text(bad)
    assert any("not absolute" in line for line in verify(unit))


@pytest.mark.skipif(not HAVE_ANALYZE, reason="needs systemd-analyze (Debian package systemd)")
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(folder=st.text(alphabet=" $%\"'\\;ü電ab-_.{}*?#=", min_size=1, max_size=12))
def test_any_folder_name_gives_a_unit_systemd_accepts_or_a_clear_refusal(tmp_path_factory, folder):
    if folder in (".", "..") or "/" in folder:
        return
    base = tmp_path_factory.mktemp("odd")
    try:
        config = odd_project(base, folder)
    except (OSError, config_module.ConfigError):
        return  # not a folder or project this machine can have
    try:
        unit = systemd.install(config, systemd.UnitOptions(), base / "units")
    except systemd.UnitError as exc:
        assert folder != folder.strip() or folder.endswith("\\"), exc  # only what units cannot say
        return
    assert verify(unit) == []


def test_unit_refuses_what_no_directive_can_express(tmp_path):
    with pytest.raises(systemd.UnitError, match="blank or a backslash"):
        systemd.quote_path("/srv/plant ")
    with pytest.raises(systemd.UnitError, match="control character"):
        systemd.quote("/srv/a\nb")
    with pytest.raises(systemd.UnitError, match="not absolute"):
        systemd.quote_path("srv/plant")
    assert systemd.quote_env("A", 'x "y" $z 5%') == '"A=x \\"y\\" $z 5%%"'


def test_unit_restart_is_hot_and_a_final_stop_stays_stopped(tmp_path):
    path = write_project(tmp_path, [{"name": "a", "command": child()}])
    text = systemd.unit_text(config_module.load(path))
    lines = text.splitlines()
    assert "RestartKillSignal=SIGUSR2" in lines and "KillSignal=SIGTERM" in lines
    assert f"SuccessExitStatus={EXIT_STOPPED}" in lines
    assert f"RestartPreventExitStatus={EXIT_STOPPED} 2" in lines  # shutdown, config error
    assert f"SyslogIdentifier=pmon-{config_module.load(path).project.name}" in lines
    assert any(line.startswith("Environment=") and f"{UNIT_ENV}=%n" in line for line in lines)


# --- the hot-restart signal against a real pmon -------------------------------------------
def test_hot_restart_signal_leaves_every_manager_running_for_the_next_pmon(tmp_path, pmon):
    path = write_project(tmp_path, [{"name": n, "command": child()} for n in ("a", "b", "c")])
    first = pmon(path)
    pids = {m["name"]: m["pid"] for m in first.status()["managers"]}
    first.proc.send_signal(signal.SIGUSR2)  # what systemctl restart sends (RestartKillSignal=)
    assert first.proc.wait(30) == 0  # exit 0 even under the unit: systemd starts it again
    assert all(psutil.pid_exists(pid) for pid in pids.values())
    assert first.wait_event("pmon-stopped")["message"].startswith("pmon stopped; its managers run on")
    second = pmon(path)
    status = second.status()
    assert {m["name"]: m["pid"] for m in status["managers"]} == pids
    assert all(m["state"] == "running" and m["restarts"] == 0 for m in status["managers"])


def test_hot_restart_signal_during_the_start_waits_for_the_start_to_end(tmp_path, pmon):
    path = write_project(tmp_path, [
        {"name": "a", "command": child()},
        {"name": "slow", "command": child("--ready-after", "1.5"), "ready": "notify"},
        {"name": "c", "command": child()},
    ])
    first = pmon(path, wait=False)
    poll_for(lambda: any(e["event"] == "started" and e.get("manager") == "slow"
                         for e in first.events()), 20, "slow to be spawned")
    first.proc.send_signal(signal.SIGUSR2)
    assert first.proc.wait(30) == 0
    kinds = [e["event"] for e in first.events()]
    assert "hot-restart-waits" in kinds
    assert kinds.index("project-started") < kinds.index("pmon-stopped")  # the start finished
    second = pmon(path)
    assert all(m["state"] == "running" and m["restarts"] == 0 for m in second.status()["managers"])


@pytest.mark.parametrize("under_unit", [True, False])
def test_shutdown_exits_with_the_status_that_keeps_the_unit_stopped(tmp_path, pmon, under_unit):
    path = write_project(tmp_path, [{"name": "a", "command": child()}])
    env = {UNIT_ENV: "pmon-test.service"} if under_unit else {}
    instance = pmon(path, env=env)
    pid = instance.manager("a")["pid"]
    env_of_manager = poll_for(lambda: psutil.Process(pid).environ(), what="a's environment")
    assert UNIT_ENV not in env_of_manager
    done = pmon_cli(path, "shutdown")
    assert done.returncode == 0, done.stderr
    assert instance.proc.wait(30) == (EXIT_STOPPED if under_unit else 0)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_detach_under_the_unit_exits_0_so_systemd_starts_the_adopting_pmon(tmp_path, pmon):
    path = write_project(tmp_path, [{"name": "a", "command": child()}])
    instance = pmon(path, env={UNIT_ENV: "pmon-test.service"})
    assert pmon_cli(path, "detach").returncode == 0
    assert instance.proc.wait(30) == 0


# --- STOPPING=1 and STATUS= on a notify socket the test provides ---------------------------
class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.address = str(path)
        self.received: list[tuple[float, dict[str, str]]] = []

    def next(self, timeout: float = 15) -> dict[str, str]:
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096).decode()
        fields = dict(line.partition("=")[::2] for line in data.splitlines())
        self.received.append((time.monotonic(), fields))
        return fields

    def until(self, predicate, timeout: float = 15) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            fields = self.next(max(0.1, deadline - time.monotonic()))
            if predicate(fields):
                return fields
            if time.monotonic() > deadline:
                raise AssertionError(f"no such notify message in {timeout} s: {self.received}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path):
    sock = NotifySocket(tmp_path / "systemd.sock")
    yield sock
    sock.close()


def test_status_follows_the_managers_and_stopping_comes_when_the_stop_begins(
    tmp_path, pmon, notify_socket
):
    path = write_project(tmp_path, [
        {"name": "a", "command": child()},
        {"name": "b", "command": child()},
        {"name": "stubborn", "command": child("--ignore-term"), "seconds_to_kill": 3},
    ])
    instance = pmon(path, wait=False, env={"NOTIFY_SOCKET": notify_socket.address})
    ready = notify_socket.until(lambda f: "READY" in f)
    assert ready["STATUS"] == "running: 3 of 3 managers running"
    assert pmon_cli(path, "stop", "b").returncode == 0
    status = notify_socket.until(lambda f: "STATUS" in f)
    assert status["STATUS"] == "running: 2 of 3 managers running (1 stopped)"
    stubborn = instance.manager("stubborn")["pid"]
    began = time.monotonic()
    instance.proc.send_signal(signal.SIGTERM)  # systemctl stop
    stopping = notify_socket.until(lambda f: "STOPPING" in f)
    assert stopping["STOPPING"] == "1" and stopping["STATUS"].startswith("stopping: ")
    # sent when the stop began: the stubborn manager (3 s to its kill) still runs
    assert time.monotonic() - began < 2.5 and psutil.pid_exists(stubborn)
    last = notify_socket.until(lambda f: f.get("STATUS", "").startswith("stopping: 0 of 3"))
    assert "3 stopped" in last["STATUS"]
    assert instance.proc.wait(30) == 0


def test_status_is_coalesced_over_a_burst_of_changes(tmp_path, pmon, notify_socket):
    names = [f"m{i}" for i in range(12)]
    path = write_project(tmp_path, [{"name": n, "command": child()} for n in names])
    instance = pmon(path, wait=False, env={"NOTIFY_SOCKET": notify_socket.address})
    notify_socket.until(lambda f: "READY" in f)
    began = time.monotonic()
    assert pmon_cli(path, "stop", "--all").returncode == 0  # 12 managers, 24 state changes
    notify_socket.until(lambda f: f.get("STATUS", "").startswith("stopped: 0 of 12"))
    took = time.monotonic() - began
    statuses = [f for _, f in notify_socket.received if "STATUS" in f and "READY" not in f]
    assert len(statuses) <= took / 0.5 + 2, statuses  # at most one per 0.5 s
    lines = [f["STATUS"] for f in statuses]
    assert len(set(lines)) == len(lines)  # only on change
    instance.stop()


# --- the journal stream -------------------------------------------------------------------
def journal_pmon(args: list[str], env: dict[str, str], journal: bool = True):
    """`pmon ARGS` with stderr on a stream socket standing in for journald's (as systemd
    connects it, JOURNAL_STREAM naming that socket when `journal`)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    st = os.fstat(theirs.fileno())
    env = {**os.environ, **env}
    if journal:
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    else:
        env["JOURNAL_STREAM"] = "1:2"  # inherited from somewhere else: not our stderr
    proc = subprocess.Popen([sys.executable, "-m", "pmon.cli", *args], stderr=theirs,
                            stdout=subprocess.DEVNULL, env=env)
    theirs.close()
    return proc, ours


def read_all(sock: socket.socket, timeout: float = 30) -> list[str]:
    sock.settimeout(timeout)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    return data.decode().splitlines()


def test_journal_lines_carry_priorities_and_no_timestamp(tmp_path):
    path = write_project(tmp_path, [
        {"name": "dies", "command": child("--exit-after", "0.2", "--code", "3"),
         "restart_count": 1, "reset_after": 60},
        {"name": "b", "command": child()},
    ])
    config = config_module.load(path)
    proc, stream = journal_pmon(["run", "-c", str(path)], {})
    try:
        events = config.project.state_dir / "log" / "events.jsonl"
        poll_for(lambda: events.exists() and '"state": "blocked"' in events.read_text(),
                 20, "dies to be blocked")
        b = poll_for(lambda: next((m for m in _status(config) if m["name"] == "b" and m["pid"]), None))
        env = poll_for(lambda: psutil.Process(b["pid"]).environ(), what="b's environment")
        for name in ("JOURNAL_STREAM", "INVOCATION_ID", "SYSTEMD_EXEC_PID"):
            assert name not in env
        proc.send_signal(signal.SIGTERM)
        lines = read_all(stream)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        kill_project_processes(config.project.name)
    assert lines and all(line[:3] in ("<3>", "<4>", "<5>", "<6>") for line in lines), lines
    assert not any(line[3:7].isdigit() and line[7] == "-" for line in lines)  # no own clock
    by_level = {level: [line[3:] for line in lines if line.startswith(level)]
                for level in ("<3>", "<4>", "<5>", "<6>")}
    assert any("ended with exit code 3" in line for line in by_level["<4>"])  # a death
    assert any("blocked" in line for line in by_level["<3>"])  # given up: an error
    assert any("runs project" in line for line in by_level["<5>"])
    assert any("b started" in line for line in by_level["<6>"])
    assert any("ended with signal SIGTERM" in line for line in by_level["<6>"])  # our own stop


def _status(config):
    from pmon.control.client import call

    try:
        return call(config, "status", timeout=5)["managers"]
    except Exception:
        return []


def test_config_error_reaches_the_journal_as_an_error(tmp_path):
    path = tmp_path / "pmon.toml"
    path.write_text('[project]\nname = "x"\n[[managers]]\nname = "a"\ncomand = ["true"]\n')
    proc, stream = journal_pmon(["run", "-c", str(path)], {})
    lines = read_all(stream)
    assert proc.wait(30) == 2  # RestartPreventExitStatus= lists it: no restart loop
    # every line of a multi-line message has its prefix (journald splits at newlines)
    assert len(lines) > 1 and lines[0].startswith("<3>pmon: ")
    assert all(line.startswith("<3>") for line in lines), lines
    assert any("comand" in line and "command" in line for line in lines)


def test_without_the_journal_stderr_keeps_its_timestamps(tmp_path):
    path = tmp_path / "pmon.toml"
    path.write_text('[project]\nname = "x"\n[[managers]]\nname = "a"\ncomand = ["true"]\n')
    proc, stream = journal_pmon(["run", "-c", str(path)], {}, journal=False)
    lines = read_all(stream)
    assert proc.wait(30) == 2 and lines[0].startswith("pmon: ")


# --- install --user-name, --enable --------------------------------------------------------
@pytest.fixture
def local_user():
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("needs root and useradd to create a user")
    name = f"pmont{os.getpid() % 100000}"
    subprocess.run(["useradd", "-M", name], check=True, timeout=30)
    yield name
    subprocess.run(["userdel", name], timeout=30)


def test_install_user_name_writes_user_and_hands_over_the_state_dir(tmp_path, local_user):
    import pwd

    path = write_project(tmp_path, [{"name": "a", "command": child()}])
    config = config_module.load(path)
    config.project.state_dir.mkdir(mode=0o700)
    (config.project.state_dir / "log").mkdir()
    (config.project.state_dir / "log" / "events.jsonl").write_text("")  # left by a root pmon
    units = tmp_path / "units"
    done = pmon_cli(path, "service", "install", "--system", "--unit-dir", str(units),
                    "--user-name", local_user)
    assert done.returncode == 0, done.stderr
    unit = units / systemd.unit_name(config)
    assert f"User={local_user}" in unit.read_text().splitlines()
    uid = pwd.getpwnam(local_user).pw_uid
    for item in (config.project.state_dir, config.project.state_dir / "log" / "events.jsonl"):
        assert item.stat().st_uid == uid
    if HAVE_ANALYZE:
        assert verify(unit) == []


def test_install_refuses_an_unknown_user_and_writes_nothing(tmp_path):
    path = write_project(tmp_path, [{"name": "a", "command": child()}])
    units = tmp_path / "units"
    for bad in ("no-such-user-pmon", "9lives", "a b"):
        done = pmon_cli(path, "service", "install", "--system", "--unit-dir", str(units),
                        "--user-name", bad)
        assert done.returncode == 2 and bad in done.stderr and "user" in done.stderr
    assert not units.exists()


def test_enable_without_a_running_systemd_says_what_to_run(tmp_path):
    if systemd.systemd_running(False):
        pytest.skip("systemd runs here: --enable would enable a unit for real")
    path = write_project(tmp_path, [{"name": "a", "command": child()}])
    done = pmon_cli(path, "service", "install", "--unit-dir", str(tmp_path / "u"), "--enable")
    assert done.returncode == 1 and "systemctl daemon-reload" in done.stderr


# --- randomized: the rules under odd timings -----------------------------------------------
def test_chaos_hot_restart_signal_at_random_moments_never_doubles_or_restarts(tmp_path, pmon):
    """SIGUSR2 at a random moment of pmon's life (during the start sequence, while a slow
    manager is not ready yet, while all run), three rounds (seeded): every manager runs
    exactly once afterwards, and whatever ran when the signal came keeps its pid."""
    import random

    from support import project_processes

    seed = int(os.environ.get("PMON_CHAOS_SEED", random.randrange(1 << 30)))
    rnd = random.Random(seed)
    path = write_project(tmp_path, [
        {"name": "a", "command": child()},
        {"name": "slow", "command": child("--ready-after", "0.4"), "ready": "notify"},
        {"name": "c", "command": child()},
    ])
    project = config_module.load(path).project.name
    for round_ in range(3):
        instance = pmon(path, wait=False)
        time.sleep(rnd.uniform(0.0, 1.2))  # the chaos: a random moment, not a wait
        before = {p.environ()["PMON_MANAGER"]: p.pid for p in project_processes(project)}
        instance.proc.send_signal(signal.SIGUSR2)
        # held from pmon's start-up on, honoured once the project started (review 1, 2 and 11)
        assert instance.proc.wait(30) == 0, f"seed {seed}"
        after = pmon(path)
        status = after.status()
        assert status["project_state"] == "running", f"seed {seed} round {round_}: {status}"
        rows = {m["name"]: m for m in status["managers"]}
        for name, pid in before.items():
            assert rows[name]["pid"] == pid, f"seed {seed} round {round_}: {name} replaced"
        counts = {n: len(project_processes(project, n)) for n in rows}
        assert counts == {"a": 1, "slow": 1, "c": 1}, f"seed {seed} round {round_}: {counts}"
        for process in project_processes(project, "a"):  # still supervised: a death restarts
            process.kill()
        poll_for(lambda: (m := after.manager("a"))["state"] == "running" and m["pid"] != rows["a"]["pid"],
                 20, f"seed {seed} round {round_}: a restarted")
        after.proc.send_signal(signal.SIGUSR2)  # leave them running for the next round
        assert after.proc.wait(30) == 0
    kill_project_processes(project)


class _Manager:
    def __init__(self, state: str) -> None:
        self.state = _state(state)


def _state(value: str):
    from pmon.states import ManagerState

    return ManagerState(value)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(st.floats(0, 0.08), st.integers(0, 3), st.sampled_from(
    ["running", "stopped", "stopping", "backoff", "blocked"])), min_size=1, max_size=25))
def test_status_is_sent_at_most_every_interval_only_on_change_and_ends_current(
    tmp_path_factory, monkeypatch, steps
):
    """Random bursts of manager changes: STATUS= datagrams are at least STATUS_SECONDS apart,
    each differs from the one before, and the last one says how things stand."""
    import asyncio

    from pmon.core.project import ProjectState
    from pmon.extensions import sdnotify

    monkeypatch.setattr(sdnotify, "STATUS_SECONDS", 0.1)
    sock_path = tmp_path_factory.mktemp("n") / "s"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(sock_path))
    listener.setblocking(False)
    managers = {f"m{i}": _Manager("running") for i in range(4)}
    got: list[str] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        api = _api_for(loop, managers, ProjectState.RUNNING)
        notifier = sdnotify.SystemdNotifier({"NOTIFY_SOCKET": str(sock_path)})
        await notifier.start(api)
        api.project_ready.set()
        await asyncio.sleep(0)
        for delay, index, state in steps:
            await asyncio.sleep(delay)
            managers[f"m{index}"].state = _state(state)
            notifier.on_manager(managers[f"m{index}"], None)  # type: ignore[arg-type]
        await asyncio.sleep(0.25)  # past the last interval: the last change must be out
        while True:
            try:
                data = listener.recv(4096).decode()
            except BlockingIOError:
                break
            got.append(data)
        await notifier.stop()
        for task in api.tasks:
            task.cancel()

    stamps: list[float] = []
    orig = sdnotify.SystemdNotifier.send

    def timed_send(self, message):
        if message.startswith("STATUS="):
            stamps.append(time.monotonic())
        orig(self, message)

    monkeypatch.setattr(sdnotify.SystemdNotifier, "send", timed_send)
    try:
        asyncio.run(scenario())
    finally:
        listener.close()
    statuses = [d.partition("STATUS=")[2] for d in got if "STATUS=" in d and "READY" not in d]
    assert all(b - a >= 0.1 - 0.01 for a, b in zip(stamps, stamps[1:])), stamps
    assert all(x != y for x, y in zip(statuses, statuses[1:])), statuses
    expected = sdnotify.status_line("running", [m.state.value for m in managers.values()])
    ready_line = next(d for d in got if "READY" in d).partition("STATUS=")[2]
    assert (statuses[-1] if statuses else ready_line) == expected


def _api_for(loop, managers, project_state):
    """What the notifier reads of the supervisor (its input here, not what is tested)."""
    import asyncio

    class Api:
        def __init__(self) -> None:
            self.loop = loop
            self.managers = managers
            self.project_state = project_state
            self.project_ready = asyncio.Event()
            self.tasks: list[asyncio.Task] = []

        def background(self, owner, coro) -> None:
            self.tasks.append(loop.create_task(coro))

    return Api()
