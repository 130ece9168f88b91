"""One project, one pmon, whatever the path: a symlinked or `../` spelling of the project
file finds the same managers after a restart of pmon, and the single-instance lock holds
when its file is deleted or when another pmon still answers on the control socket."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import psutil

from support import child, pmon_cli, poll_for, project_processes, saved_state, write_project


def _pids(instance) -> dict[str, int | None]:
    return {m["name"]: m["pid"] for m in instance.status()["managers"]}


def _saved(instance, name: str) -> int | None:
    return saved_state(instance.config.project.state_dir).get("managers", {}).get(name, {}).get("pid")


def test_symlinked_and_relative_spellings_find_the_same_managers(tmp_path, pmon):
    real = tmp_path / "real"
    real.mkdir()
    (real / "sub").mkdir()
    config = write_project(real, [
        {"name": "a", "command": child()}, {"name": "b", "command": child()},
    ])
    (tmp_path / "link").symlink_to(real)

    first = pmon(tmp_path / "link" / "pmon.toml")  # through the symlink
    running = _pids(first)
    poll_for(lambda: all(_saved(first, n) == p for n, p in running.items()), what="state file")
    first.kill()

    second = pmon(config)  # the real path
    assert _pids(second) == running  # adopted, not started again
    poll_for(lambda: all(_saved(second, n) == p for n, p in running.items()), what="state file")
    second.kill()

    third = pmon(Path("../pmon.toml"), cwd=real / "sub")  # relative, from a subfolder
    assert _pids(third) == running
    for name, pid in running.items():
        copies = project_processes(third.config.project.name, name)
        assert [p.pid for p in copies] == [pid], f"{name} runs {len(copies)} times"
    assert third.config.project.state_dir == (real / "var").resolve()


def test_deleting_the_lock_file_does_not_let_a_second_pmon_in(tmp_path, pmon):
    config = write_project(tmp_path, [{"name": "a", "command": child()}])
    instance = pmon(config)
    (tmp_path / "var" / "pmon.lock").unlink()

    result = pmon_cli(config, "run", timeout=30)
    assert result.returncode != 0
    assert "already runs the project" in result.stderr, result.stderr
    assert instance.manager("a")["restarts"] == 0  # the first pmon still answers, untouched
    assert len(project_processes(instance.config.project.name, "a")) == 1


def test_a_pmon_still_answering_on_the_control_socket_keeps_the_project(tmp_path):
    """An older pmon that locked only a file (or one whose state directory was made again
    under it) still listens on the socket: a new pmon must not take the project over."""
    config = write_project(tmp_path, [{"name": "a", "command": child()}])
    state = tmp_path / "var"
    state.mkdir(mode=0o700)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(state / "pmon.sock"))
        listener.listen()
        result = pmon_cli(config, "run", timeout=30)
    finally:
        listener.close()
    assert result.returncode != 0
    assert "answers on" in result.stderr and "pmon.sock" in result.stderr, result.stderr
    name = f"t{os.getpid()}-{tmp_path.name}"[-40:]
    assert not [p for p in psutil.process_iter() if p.pid != os.getpid()
                and _env(p).get("PMON_PROJECT") == name]  # nothing was started


def _env(proc: psutil.Process) -> dict[str, str]:
    try:
        return proc.environ()
    except psutil.Error:
        return {}
