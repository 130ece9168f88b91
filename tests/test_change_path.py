"""The one change path (README, "One change path"): every door -- `pmon edit`, `add`,
`remove`, PMON TCP's PROP_PUT / DEL, `pmon reload`, SIGHUP -- against the documented
behaviour, on real pmon processes; and attacks on it: changes at once, a name coming back
while its removal stops it, invalid edits, a change by hand not reloaded yet, plugin
settings a plugin rejects, an unwritable or symlinked project file, [project] limits."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil
import pytest
import tomli_w

from relay import Relay
from pmon import config as config_module
from support import CHILD, Pmon, child, kill_project_processes, pmon_cli, poll_for, write_pair, write_project

WAIT = 15  # deadlines are generous (a shared machine); the tests are fast when it is not


# --- helpers -------------------------------------------------------------------------------
def status_json(config: Path) -> dict[str, Any]:
    """`pmon status --json`, as a script reads it."""
    result = pmon_cli(config, "status", "--json")
    assert result.returncode in (0, 1), result.stderr  # 1: something that should run does not
    return json.loads(result.stdout)


def rows(config: Path) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in status_json(config)["managers"]}


def tables(config: Path) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in tomllib.loads(config.read_text())["managers"]}


def log_of(instance: Pmon, name: str) -> str:
    path = instance.config.project.state_dir / "log" / f"{name}.log"
    return path.read_text() if path.exists() else ""


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def tcp_ask(instance: Pmon, command: str) -> bytes:
    """One PMON TCP request on a connection of its own (see tests/test_pmon_tcp.py)."""
    address = instance.config.project.state_dir / "pmon_tcp.addr"
    host, _, port = poll_for(lambda: address.exists() and address.read_text(),
                             what="the PMON TCP address").rpartition(":")
    with socket.create_connection((host, int(port)), timeout=WAIT) as sock:
        sock.sendall(f"##{command}\n".encode())
        data = sock.recv(65536)
        while data.startswith(b"LIST:") and not data.endswith(b"\n;\n"):
            more = sock.recv(65536)
            if not more:
                break
            data += more
        return data


def index_of(instance: Pmon, name: str) -> int:
    return int(instance.manager(name)["index"])


def live_restart_count(instance: Pmon, name: str) -> int:
    """The running project's restart_count of a manager (PMON TCP's PROP_GET reads the live
    configuration, not the file)."""
    fields = tcp_ask(instance, f"SINGLE_MGR:PROP_GET {index_of(instance, name)}").split()
    return int(fields[2])


# --- the doors -----------------------------------------------------------------------------
def through_edit(instance: Pmon, name: str, changes: dict[str, Any]) -> None:
    settings = [f"{key}={json.dumps(value)}" for key, value in changes.items()]  # TOML values
    result = pmon_cli(instance.config_path, "edit", name, *settings)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{name}: edited, ")


def through_prop_put(instance: Pmon, name: str, changes: dict[str, Any]) -> None:
    """SINGLE_MGR:PROP_PUT n <mode> <secKill> <restartCount> <resetMin> <options...>: the
    program stays, everything else is sent as it is now unless `changes` changes it."""
    table = {"start": "always", "seconds_to_kill": 1, "restart_count": 3, "reset_after": 300,
             **tables(instance.config_path)[name], **changes}
    options = shlex.join(table["command"][1:])
    assert table["command"][0] == tables(instance.config_path)[name]["command"][0]
    reply = tcp_ask(instance, f"SINGLE_MGR:PROP_PUT {index_of(instance, name)} {table['start']} "
                              f"{int(table['seconds_to_kill'])} {table['restart_count']} "
                              f"{int(table['reset_after'] // 60)} {options}")
    assert reply == b"OK", reply


def through_reload(instance: Pmon, name: str, changes: dict[str, Any]) -> None:
    data = tomllib.loads(instance.config_path.read_text())
    for table in data["managers"]:
        if table["name"] == name:
            table.update(changes)
    instance.config_path.write_text(tomli_w.dumps(data))
    result = pmon_cli(instance.config_path, "reload")
    assert result.returncode == 0, result.stderr


DOORS: dict[str, Callable[[Pmon, str, dict[str, Any]], None]] = {
    "edit": through_edit, "prop_put": through_prop_put, "reload": through_reload,
}


@pytest.mark.parametrize("door", DOORS)
def test_the_same_change_has_the_same_outcome_through_every_door(tmp_path, pmon, door):
    apply = DOORS[door]
    config = write_project(tmp_path, [
        {"name": "m", "command": child("--print", "m-v1")},           # -> manual, new command
        {"name": "c", "command": child("--print", "c-v1")},           # -> new command
        {"name": "l", "command": child()},                            # -> restart_count only
        {"name": "x", "command": child("--exit-after", "0", "--code", "1"),
         "restart_count": 0},                                         # blocked -> fixed
    ], defaults={"seconds_to_kill": 1}, pmon_tcp={"port": 0})
    instance = pmon(config)
    instance.wait_state("x", "blocked")
    before = rows(config)

    # a running `always` manager turned manual with a new command: stopped, since no
    # operator started it as manual
    apply(instance, "m", {"start": "manual", "command": child("--print", "m-v2")})
    m = rows(config)["m"]
    assert (m["state"], m["pid"], m["start"]) == ("stopped", None, "manual"), m
    assert not alive(before["m"]["pid"])
    assert tables(config)["m"]["command"] == child("--print", "m-v2")
    assert "m-v2" not in log_of(instance, "m")
    assert pmon_cli(config, "start", "m").returncode == 0  # ... and an operator's start runs the new one
    poll_for(lambda: "m-v2" in log_of(instance, "m"), WAIT, "m's new command")

    # a command-only change of a running manager: restarted with a new pid
    apply(instance, "c", {"command": child("--print", "c-v2")})
    c = rows(config)["c"]
    assert c["state"] == "running" and c["pid"] not in (None, before["c"]["pid"]), c
    assert not alive(before["c"]["pid"])
    poll_for(lambda: "c-v2" in log_of(instance, "c"), WAIT, "c's new command")

    # a limit-only change: applied in place, the process keeps its pid
    apply(instance, "l", {"restart_count": 7})
    l_row = rows(config)["l"]
    assert (l_row["state"], l_row["pid"]) == ("running", before["l"]["pid"]), l_row
    assert live_restart_count(instance, "l") == 7 and tables(config)["l"]["restart_count"] == 7

    # a blocked manager whose command changed is started again at once: the change is its fix
    apply(instance, "x", {"command": child("--print", "x-fixed")})
    x = instance.wait_state("x", "running")
    assert x["pid"] is not None
    poll_for(lambda: "x-fixed" in log_of(instance, "x"), WAIT, "x's fixed command")

    after = rows(config)
    assert after["l"]["pid"] == before["l"]["pid"]  # nothing else was touched meanwhile
    assert status_json(config)["project_state"] == "running"


# --- 2. an added manager that its condition holds back -------------------------------------
@pytest.fixture
def relay() -> Iterator[Relay]:
    instance = Relay(links=2)
    yield instance
    instance.close()


def redu(server: Pmon) -> dict[str, Any]:
    return server.call("redu-status")


def test_add_on_the_passive_server_waits_for_the_active_role_then_starts(tmp_path, pmon, relay):
    config_a, config_b = write_pair(tmp_path, relay, lambda server: [
        {"name": "w", "command": child(), "run_on": "both"},
    ])
    for path in (config_a, config_b):  # every manager of the file runs only on the active
        data = tomllib.loads(path.read_text())
        data["defaults"] = {"run_on": "active", "seconds_to_kill": 1}
        path.write_text(tomli_w.dumps(data))
    a, b = pmon(config_a, wait=False), pmon(config_b, wait=False)
    a.wait_ready(WAIT)
    b.wait_ready(WAIT)
    poll_for(lambda: (redu(a)["role"], redu(b)["role"]) == ("active", "passive")
             and redu(b)["partner_available"], WAIT, "a active, b passive")
    b_before = config_b.read_text()

    result = pmon_cli(config_b, "add", "drv", "--", *child("--print", "drv-on-b"))
    assert result.returncode == 0, result.stderr
    assert "drv: added as #2, stopped; it waits: drv runs only on the active server" in result.stdout
    assert "this server (b) is passive" in result.stdout, result.stdout
    assert tables(config_b)["drv"]["command"] == child("--print", "drv-on-b")
    assert config_b.read_text() != b_before
    drv = rows(config_b)["drv"]
    assert (drv["state"], drv["pid"]) == ("stopped", None)
    assert b.manager("drv")["held"]  # the row says why it waits
    assert "drv-on-b" not in log_of(b, "drv")

    result = pmon_cli(config_b, "redu", "set-active", "b")
    assert result.returncode == 0, result.stderr
    running = b.wait_state("drv", "running", WAIT)
    assert running["held"] is None and running["pid"]
    poll_for(lambda: "drv-on-b" in log_of(b, "drv"), WAIT, "drv's output on b")
    assert redu(b)["role"] == "active"


# --- 3. every door is refused while the project is starting --------------------------------
def test_every_change_is_refused_and_nothing_written_while_the_project_is_starting(tmp_path, pmon):
    config = write_project(tmp_path, [
        {"name": "tool", "command": child(), "start": "manual"},
        {"name": "hang", "command": child(), "ready": "notify", "start_timeout": 60},
        {"name": "later", "command": child()},
    ], defaults={"seconds_to_kill": 1}, pmon_tcp={"port": 0})
    instance = pmon(config, wait=False)
    instance.wait_ready(WAIT, project_state="starting")
    instance.wait_state("hang", "starting")
    original = config.read_text()
    # the file as a user would change it for the reload: a new manager, one fewer
    data = tomllib.loads(original)
    data["managers"] = [t for t in data["managers"] if t["name"] != "tool"] + [
        {"name": "new", "command": child()}]

    attempts = [
        ("add", "extra", "--", *child()),
        ("remove", "tool"),
        ("edit", "tool", "restart_count=5"),
    ]
    for args in attempts:
        result = pmon_cli(config, *args)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert "the project is starting; nothing changed" in result.stderr, (args, result.stderr)
        assert config.read_text() == original, args
    config.write_text(tomli_w.dumps(data))
    changed = config.read_text()
    result = pmon_cli(config, "reload")
    assert result.returncode == 1 and "the project is starting; nothing changed" in result.stderr
    assert config.read_text() == changed
    instance.proc.send_signal(signal.SIGHUP)  # the same refusal, in the event log
    failed = instance.wait_event("reload-failed")
    assert "the project is starting; nothing changed" in failed["message"]
    config.write_text(original)
    reply = tcp_ask(instance, f"SINGLE_MGR:PROP_PUT 1 always 1 3 5 {shlex.quote(CHILD)}")
    assert reply.startswith(b"ERROR errProp :the project is starting; nothing changed"), reply
    assert tcp_ask(instance, "SINGLE_MGR:DEL 1").startswith(b"ERROR errDel :the project is starting")
    assert config.read_text() == original

    status = status_json(config)
    assert status["project_state"] == "starting"
    assert [m["name"] for m in status["managers"]] == ["tool", "hang", "later"]
    assert {m["name"]: m["state"] for m in status["managers"]} == {
        "tool": "stopped", "hang": "starting", "later": "stopped"}


# --- 4. a removed manager's log leaves the rotation ----------------------------------------
def test_a_removed_managers_log_leaves_the_rotation_and_a_kept_ones_is_rotated(tmp_path, pmon):
    config = write_project(tmp_path, [
        {"name": "gone", "command": child("--print", "gone here")},
        {"name": "kept", "command": child("--print", "kept here")},
    ], project={"log_max_bytes": 2000, "log_backups": 2}, defaults={"seconds_to_kill": 1})
    instance = pmon(config)
    logs = instance.config.project.state_dir / "log"
    poll_for(lambda: "gone here" in log_of(instance, "gone"), WAIT, "gone's output")
    assert pmon_cli(config, "stop", "gone").returncode == 0
    result = pmon_cli(config, "remove", "gone")
    assert result.returncode == 0 and "gone: removed" in result.stdout, result.stderr
    assert "gone" not in tables(config) and "gone" not in rows(config)

    # Both grow past log_max_bytes. `gone` was started first, so it comes first in every
    # rotation pass: once `kept` is rotated, a pass went over `gone` too, had it stayed.
    for name in ("gone", "kept"):
        with open(logs / f"{name}.log", "a") as handle:
            handle.write("x" * 9000 + "\n")
    poll_for(lambda: (logs / "kept.log.1").exists() and (logs / "kept.log").stat().st_size < 2000,
             12, "the kept manager's log to be rotated (every 5 s)")
    assert (logs / "gone.log").stat().st_size > 9000
    assert not (logs / "gone.log.1").exists()
    assert "x" * 9000 in (logs / "kept.log.1").read_text()


# --- 5. a plugin's restart goes through the manager machine --------------------------------
RESTARTER = """
    from pmon.hookspecs import PluginSetup, Verdict, hookimpl

    @hookimpl
    def pmon_configure(settings):
        return PluginSetup(tables=("restarter",), interval=0.1)

    @hookimpl
    def pmon_monitor_check(project):
        # a new finding for every new process of `victim`: one restart per process
        return [Verdict(m.name, "error", f"pid {m.pid} is bad", action="restart", key=str(m.pid))
                for m in project.managers if m.name == "victim" and m.pid and m.state == "running"]
"""


def test_a_plugins_restarts_count_and_end_blocked(tmp_path, pmon):
    folder = tmp_path / "plugins.d"
    folder.mkdir()
    (folder / "restarter.py").write_text(textwrap.dedent(RESTARTER))
    config = write_project(tmp_path, [
        {"name": "victim", "command": child(), "restart_count": 2, "reset_after": 60,
         "seconds_to_kill": 1},
        {"name": "bystander", "command": child()},
    ], plugins={"paths": ["plugins.d"], "restarter": {}})
    instance = pmon(config)
    bystander = instance.manager("bystander")["pid"]
    blocked = instance.wait_state("victim", "blocked", WAIT)
    assert blocked["restarts"] == 2 and blocked["pid"] is None

    events = [e for e in instance.events() if e.get("manager") == "victim"
              and e["event"] in ("started", "plugin-restart", "exited")]
    kinds = [e["event"] for e in events]
    assert kinds == ["started", "plugin-restart", "exited"] * 3, kinds
    pids = [e["pid"] for e in events if e["event"] == "started"]
    assert len(set(pids)) == 3
    for pid, (start, restart, exited) in zip(pids, zip(*[iter(events)] * 3)):
        assert start["pid"] == restart["pid"] == exited["pid"] == pid
        assert exited["exit_code"] == -signal.SIGTERM
    actions = [e["action"] for e in events if e["event"] == "exited"]
    assert actions[0] == "restarted"
    assert actions[1].startswith("restarting in ")  # the second in the window: backoff
    assert actions[2] == "blocked: 2 restarts within 60 s"
    assert [e["state"] for e in events if e["event"] == "exited"] == ["starting", "backoff", "blocked"]

    # blocked means blocked: the monitor goes on checking, nothing starts victim again
    calls = lambda: next(p for p in instance.call("plugins")["plugins"]  # noqa: E731
                         if p["name"] == "restarter")["calls"]
    seen = calls()
    poll_for(lambda: calls() >= seen + 5, WAIT, "five more checks")
    assert [e["pid"] for e in instance.events() if e["event"] == "started"
            and e["manager"] == "victim"] == pids
    assert rows(config)["victim"]["state"] == "blocked"
    assert instance.manager("bystander")["pid"] == bystander


# --- 6. a once manager's exit code outlives pmon ---------------------------------------------
@pytest.mark.parametrize("how", ["detach", "sigkill"])
def test_a_once_managers_exit_code_survives_a_new_pmon(tmp_path, pmon, how):
    config = write_project(tmp_path, [
        {"name": "job", "command": child("--exit-after", "0", "--code", "3"), "start": "once"},
        {"name": "svc", "command": child()},
    ], defaults={"seconds_to_kill": 1})
    first = pmon(config)
    first.wait_state("job", "exited")
    svc = first.manager("svc")["pid"]
    state_file = first.config.project.state_dir / "state.json"
    poll_for(lambda: state_file.exists()
             and json.loads(state_file.read_text())["managers"]["job"]["exit_code"] == 3,
             WAIT, "the state file to hold job's exit code")
    if how == "detach":
        assert pmon_cli(config, "detach").returncode == 0
        poll_for(lambda: first.proc.poll() is not None, WAIT, "pmon to exit")
    else:
        first.kill()
    assert alive(svc)

    pmon(config)
    after = rows(config)
    assert (after["job"]["state"], after["job"]["exit_code"], after["job"]["pid"]) == ("exited", 3, None)
    assert after["svc"]["pid"] == svc  # adopted, not restarted
    assert "exited (3)" in pmon_cli(config, "status").stdout


# --- attacks -------------------------------------------------------------------------------
HOLD = child("--ignore-term", "--ready-after", "0")
POLITE = child("--ready-after", "0")  # the same readiness, but SIGTERM ends it


def holder_project(tmp_path: Path, **sections: Any) -> Path:
    """`hold` ignores SIGTERM once it is ready (READY=1 comes after it ignores it), and has a
    long seconds_to_kill: a change that stops it holds the change path (which waits for what
    a change touched to settle) until the test kills the old process."""
    return write_project(tmp_path, [
        {"name": "hold", "command": HOLD, "ready": "notify", "seconds_to_kill": 10},
        {"name": "a", "command": child()},
        {"name": "b", "command": child()},
    ], defaults={"seconds_to_kill": 1}, **sections)


def background(config: Path, *args: str) -> subprocess.Popen[str]:
    cut = args.index("--") if "--" in args else len(args)
    return subprocess.Popen(
        [sys.executable, "-m", "pmon.cli", *args[:cut], "-c", str(config), *args[cut:]],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def finished(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=WAIT)
    return proc.returncode, out, err


def pmon_connections(instance: Pmon) -> int:
    """How many control connections pmon has open (each command waiting holds one)."""
    sock = str(instance.config.project.state_dir / "pmon.sock")
    return sum(1 for c in psutil.Process(instance.proc.pid).net_connections("unix")
               if c.laddr == sock) - 1  # the listening socket


def test_changes_at_once_are_applied_one_after_the_other_and_none_is_lost(tmp_path, pmon):
    config = holder_project(tmp_path, pmon_tcp={"port": 0})
    instance = pmon(config)
    old_hold = instance.manager("hold")["pid"]
    pid_a, pid_b = instance.manager("a")["pid"], instance.manager("b")["pid"]
    # a change that restarts hold: it waits for the old process, which ignores SIGTERM
    holding = background(config, "edit", "hold", f"command={json.dumps(POLITE)}")
    instance.wait_state("hold", "stopping")
    # meanwhile: an edit of a, an edit of b and a reload, all in pmon's hands before the
    # first change ends
    waiting = []
    for n, args in enumerate([("edit", "a", "restart_count=5"), ("edit", "b", "restart_count=7"),
                              ("reload",), ("add", "dup", "--", *child()),
                              ("add", "dup", "--", *child("--print", "second"))], start=2):
        waiting.append(background(config, *args))
        poll_for(lambda: pmon_connections(instance) >= n, WAIT, f"{args} to reach pmon")
    os.kill(old_hold, signal.SIGKILL)  # the first change ends now

    for proc in (holding, *waiting[:-1]):
        code, out, err = finished(proc)
        assert code == 0, (proc.args, out, err)
    code, out, err = finished(waiting[-1])  # the second add of one name, made after the first
    assert code == 1 and "duplicate manager name 'dup'" in err, (out, err)
    saved = tables(config)
    assert (saved["a"].get("restart_count"), saved["b"].get("restart_count")) == (5, 7), saved
    assert saved["hold"]["command"] == POLITE
    # the running project agrees with its file: nothing reverted, no process touched
    assert (live_restart_count(instance, "a"), live_restart_count(instance, "b")) == (5, 7)
    assert instance.manager("a")["pid"] == pid_a and instance.manager("b")["pid"] == pid_b
    assert instance.manager("hold")["state"] == "running"
    assert [t["name"] for t in tables(config).values()] == ["hold", "a", "b", "dup"]
    assert "second" not in log_of(instance, "dup")
    dry = pmon_cli(config, "reload", "--dry-run")
    assert dry.returncode == 0 and dry.stdout.splitlines()[1:] == ["  keep     hold, a, b, dup"], dry.stdout


def test_a_name_coming_back_while_its_removal_stops_it(tmp_path, pmon):
    config = holder_project(tmp_path)
    instance = pmon(config)
    old = instance.manager("hold")["pid"]
    without = tomllib.loads(config.read_text())
    without["managers"] = [t for t in without["managers"] if t["name"] != "hold"]
    config.write_text(tomli_w.dumps(without))
    removing = background(config, "reload")  # stops hold; it ignores SIGTERM
    poll_for(lambda: "hold" not in rows(config), WAIT, "hold removed from the project")
    assert alive(old)

    # add of the same name while the removed one is still stopping: the add waits for it
    # (never two copies), then the new one runs
    adding = background(config, "add", "hold", "--", *child("--print", "hold-v2"))
    poll_for(lambda: pmon_connections(instance) >= 2, WAIT, "the add to reach pmon")
    assert alive(old) and "hold" not in rows(config)
    os.kill(old, signal.SIGKILL)
    code, out, err = finished(removing)
    assert code == 0 and "remove   hold" in out, (out, err)
    code, out, err = finished(adding)
    assert code == 0, (out, err)
    assert "hold: added as #3, running" in out
    new = rows(config)["hold"]
    assert new["state"] == "running" and new["pid"] != old and not alive(old)
    events = [e for e in instance.events() if e.get("manager") == "hold"]
    gone = next(i for i, e in enumerate(events) if e["event"] == "exited" and e["pid"] == old)
    came = next(i for i, e in enumerate(events) if e["event"] == "started" and e["pid"] == new["pid"])
    assert gone < came
    assert tables(config)["hold"]["command"] == child("--print", "hold-v2")


def test_reload_while_a_removed_manager_is_still_stopping(tmp_path, pmon):
    config = holder_project(tmp_path)
    instance = pmon(config)
    old = instance.manager("hold")["pid"]
    original = tomllib.loads(config.read_text())
    without = {**original, "managers": original["managers"][1:]}
    config.write_text(tomli_w.dumps(without))
    removing = background(config, "reload")
    poll_for(lambda: "hold" not in rows(config), WAIT, "hold removed")
    # the operator changes their mind while it still stops: hold comes back (politer)
    back = {**original, "managers": [{**original["managers"][0], "command": POLITE},
                                     *original["managers"][1:]]}
    config.write_text(tomli_w.dumps(back))
    again = background(config, "reload")
    poll_for(lambda: pmon_connections(instance) >= 2 or again.poll() is not None, WAIT,
             "the second reload to reach pmon")
    assert again.poll() is None, finished(again)  # it waits for the first one (not refused)
    assert alive(old) and "hold" not in rows(config)
    os.kill(old, signal.SIGKILL)
    assert finished(removing)[0] == 0
    code, out, err = finished(again)
    assert code == 0 and "add      hold" in out, (out, err)
    new = instance.wait_state("hold", "running")
    assert new["pid"] != old and not alive(old)
    assert [m["name"] for m in status_json(config)["managers"]] == ["hold", "a", "b"]


def test_invalid_edits_say_why_change_nothing_and_touch_no_process(tmp_path, pmon):
    config = write_project(tmp_path, [
        {"name": "core1", "command": child(), "core": True},
        {"name": "a", "command": child()},
    ], defaults={"seconds_to_kill": 1})
    instance = pmon(config)
    original = config.read_text()
    pids = {m["name"]: m["pid"] for m in instance.status()["managers"]}
    cases = [
        (("a", "restart_count=-1"), "key 'restart_count': expected a whole number >= 0, got -1"),
        (("a", "restart_cuont=5"), "unknown key (did you mean 'restart_count'?)"),
        (("a", "start=sometimes"), "key 'start': expected one of 'always' | 'once' | 'manual'"),
        (("a", "command="), "key 'command': missing"),
        (("a", 'command=[]'), "key 'command': expected a non-empty list of strings"),
        (("a", "env={X = 1}"), "key 'env': expected a table of strings"),
        (("a", "name=b"), "a cannot be renamed"),
        (("core1", "start=manual"), 'a core manager must have start = "always"'),
        (("nobody", "restart_count=1"), "no manager 'nobody'"),
        # pmon run (and pmon validate) refuse a monitor.NAME that no loaded plugin reads
        (("a", "monitor={memroy = {max_rss_mb = 10}}"),
         "key 'monitor.memroy': no loaded plugin reads it (did you mean 'memory'?)"),
    ]
    for args, message in cases:
        result = pmon_cli(config, "edit", *args)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert config.read_text() == original, args
    assert {m["name"]: m["pid"] for m in instance.status()["managers"]} == pids
    assert pmon_cli(config, "validate").returncode == 0

    data = tomllib.loads(original)  # the same typo by hand, then reload: refused too
    data["managers"][1]["monitor"] = {"memroy": {"max_rss_mb": 10}}
    config.write_text(tomli_w.dumps(data))
    result = pmon_cli(config, "reload")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "reload refused, nothing changed" in result.stderr and "'monitor.memroy'" in result.stderr
    assert {m["name"]: m["pid"] for m in instance.status()["managers"]} == pids
    data["managers"][1]["monitor"] = {"memory": {"max_rss_mb": 10}}  # a plugin that runs: fine
    config.write_text(tomli_w.dumps(data))
    assert pmon_cli(config, "reload").returncode == 0
    assert pmon_cli(config, "validate").returncode == 0


class LimitedPmon(Pmon):
    """`pmon run` that may write no file bigger than `max_bytes` (RLIMIT_FSIZE, which holds
    for root too; Python ignores SIGXFSZ, so the write fails with EFBIG)."""

    def __init__(self, config: Path, max_bytes: int) -> None:
        import resource  # POSIX only

        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

        self.config_path = config
        self.config = config_module.load(config)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pmon.cli", "run", "-q", "-c", str(config)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=limit,
        )


def test_an_unwritable_project_file_refuses_the_change_and_touches_nothing(tmp_path):
    # A full disk, simulated: pmon may write no file bigger than 64 KiB (RLIMIT_FSIZE holds
    # for root too), and the project file is bigger than that.
    config = write_project(tmp_path, [
        {"name": "a", "command": child()},
        {"name": "pad", "command": child(), "start": "manual", "env": {"PAD": "p" * 80_000}},
        {"name": "tool", "command": child(), "start": "manual"},
    ], defaults={"seconds_to_kill": 1})
    instance = LimitedPmon(config, 64 * 1024)
    try:
        instance.wait_ready(WAIT)
        original = config.read_text()
        pid = instance.manager("a")["pid"]
        for args in (("edit", "a", "restart_count=5"), ("edit", "a", 'command=["true"]'),
                     ("add", "extra", "--", *child()), ("remove", "tool")):
            result = pmon_cli(config, *args)
            assert result.returncode == 1, (args, result.stdout, result.stderr)
            assert f"cannot write {config}" in result.stderr, (args, result.stderr)
            assert config.read_text() == original
        assert [m["name"] for m in instance.status()["managers"]] == ["a", "pad", "tool"]
        assert instance.manager("a")["pid"] == pid
        assert not list(tmp_path.glob(".pmon.toml.*"))  # no temporary file left behind
    finally:
        instance.stop()
        kill_project_processes(instance.config.project.name)


def test_a_change_to_the_file_not_yet_reloaded_is_not_overwritten_by_add_remove_or_edit(tmp_path, pmon):
    config = write_project(tmp_path, [
        {"name": "a", "command": child()},
        {"name": "b", "command": child()},
        {"name": "tool", "command": child(), "start": "manual"},
    ], defaults={"seconds_to_kill": 1}, pmon_tcp={"port": 0})
    instance = pmon(config)
    data = tomllib.loads(config.read_text())
    data["managers"][1]["restart_count"] = 9  # by hand, not reloaded (yet)
    config.write_text(tomli_w.dumps(data))
    by_hand = config.read_text()
    for args in (("edit", "a", "restart_count=5"), ("add", "extra", "--", *child()),
                 ("remove", "tool")):
        result = pmon_cli(config, *args)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert "was changed since pmon read it; nothing changed" in result.stderr, result.stderr
        assert "pmon reload" in result.stderr
        assert config.read_text() == by_hand, args
    reply = tcp_ask(instance, f"SINGLE_MGR:PROP_PUT 1 always 1 4 5 {shlex.quote(CHILD)}")
    assert reply.startswith(b"ERROR errProp :") and b"was changed since pmon read it" in reply
    config.write_text("[project\nname = ")  # half-way through an edit by hand
    reply = tcp_ask(instance, f"SINGLE_MGR:PROP_PUT 1 always 1 4 5 {shlex.quote(CHILD)}")
    assert reply.startswith(b"ERROR errProp :") and b"nothing changed" in reply, reply
    assert config.read_text() == "[project\nname = "  # (the CLI cannot even find pmon in it)
    assert [m["name"] for m in instance.status()["managers"]] == ["a", "b", "tool"]

    config.write_text(by_hand)
    assert pmon_cli(config, "reload").returncode == 0  # the change by hand is applied ...
    assert pmon_cli(config, "edit", "a", "restart_count=5").returncode == 0  # ... then this one
    saved = tables(config)
    assert (saved["a"]["restart_count"], saved["b"]["restart_count"]) == (5, 9)
    assert (live_restart_count(instance, "a"), live_restart_count(instance, "b")) == (5, 9)


def test_a_change_through_a_symlinked_project_file_writes_the_file_and_keeps_the_link(tmp_path, pmon):
    real = tmp_path / "deploy"
    real.mkdir()
    target = write_project(real, [{"name": "a", "command": child()}], name=f"sl{os.getpid()}")
    link = tmp_path / "pmon.toml"  # e.g. /etc/pmon.toml -> the deployed project file
    link.symlink_to(target)
    instance = pmon(link)
    assert pmon_cli(link, "edit", "a", "restart_count=5").returncode == 0
    assert link.is_symlink() and link.resolve() == target
    assert tomllib.loads(target.read_text())["managers"][0]["restart_count"] == 5
    assert not list(tmp_path.glob(".pmon.toml.*")) and not list(real.glob(".pmon.toml.*"))
    assert instance.call("reload", dry_run=True)["unchanged"] == ["a"]  # pmon reads it back


def test_monitor_settings_a_plugin_rejects_are_refused_and_the_monitor_goes_on(tmp_path, pmon):
    config = write_project(tmp_path, [
        {"name": "a", "command": child()},
        {"name": "big", "command": child("--allocate-mb", "40"),
         "monitor": {"memory": {"max_rss_mb": 10}}},
    ], defaults={"seconds_to_kill": 1}, plugins={"memory": {"interval": 0.1, "max_rss_mb": 500}})
    instance = pmon(config)
    poll_for(lambda: any(v["target"] == "big" for v in instance.status()["verdicts"]), WAIT,
             "big's memory verdict")
    original = config.read_text()
    pid = instance.manager("a")["pid"]

    def memory() -> dict[str, Any]:
        return next(p for p in instance.call("plugins")["plugins"] if p["name"] == "memory")

    result = pmon_cli(config, "edit", "a", 'monitor={memory = {max_rss_mb = "lots"}}')
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "the change would make the project invalid" in result.stderr
    assert "monitor.memory, key 'max_rss_mb': expected a number >= 0" in result.stderr, result.stderr
    assert str(config) in result.stderr and ".check-" not in result.stderr
    assert config.read_text() == original and instance.manager("a")["pid"] == pid
    calls = memory()["calls"]
    poll_for(lambda: memory()["calls"] >= calls + 3, WAIT, "three more memory checks")
    assert memory()["failures"] == 0  # it still watches every manager
    assert not list(tmp_path.glob(".pmon.toml.*"))

    result = pmon_cli(config, "edit", "a", "monitor={memory = {max_rss_mb = 300}}")
    assert result.returncode == 0, result.stderr  # a good one applies in place
    assert instance.manager("a")["pid"] == pid
    assert tables(config)["a"]["monitor"] == {"memory": {"max_rss_mb": 300}}
    assert pmon_cli(config, "validate").returncode == 0


def test_reloaded_log_limits_of_the_project_apply_to_the_running_managers(tmp_path, pmon):
    config = write_project(tmp_path, [{"name": "a", "command": child()}],
                           defaults={"seconds_to_kill": 1})
    instance = pmon(config)
    data = tomllib.loads(config.read_text())
    data["project"].update(log_max_bytes=2000, log_backups=1)
    config.write_text(tomli_w.dumps(data))
    dry = pmon_cli(config, "reload", "--dry-run")
    assert "update   [project] (log_max_bytes, log_backups; applies in place)" in dry.stdout, dry.stdout
    assert pmon_cli(config, "reload").returncode == 0
    logs = instance.config.project.state_dir / "log"
    with open(logs / "a.log", "a") as handle:
        handle.write("x" * 9000 + "\n")
    assert pmon_cli(config, "restart", "a").returncode == 0  # a start rotates its log if too big
    assert (logs / "a.log.1").exists() and (logs / "a.log").stat().st_size < 2000
    assert not (logs / "a.log.2").exists()  # log_backups = 1
