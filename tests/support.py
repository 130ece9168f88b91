"""Shared test helpers: write a project, run a real pmon, wait with deadlines, clean up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import psutil
import tomli_w

from pmon import config as config_module
from pmon.control.client import call as control_call

CHILD = str(Path(__file__).parent / "children" / "child.py")
T = TypeVar("T")


def saved_state(state_dir: Path) -> dict[str, Any]:
    """The state file as pmon last wrote it; {} before its first write (it is replaced
    atomically, so never seen half-written; ValueError only for a hand-made one)."""
    import json

    try:
        data = json.loads((state_dir / "state.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def poll_for(predicate: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll `predicate` until it returns a true value; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def child(*flags: str) -> list[str]:
    """The command of a test manager (tests/children/child.py with flags)."""
    return [sys.executable, CHILD, *flags]


def write_project(
    directory: Path, managers: list[dict[str, Any]], name: str | None = None, **sections: Any
) -> Path:
    """Write a project TOML into `directory`; the project name is unique per test."""
    project = {"name": name or f"t{os.getpid()}-{directory.name}"[-40:], "state_dir": "var"}
    project.update(sections.pop("project", {}))
    data = {"project": project, **sections, "managers": managers}
    path = directory / "pmon.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def _with_config(args: tuple[str, ...], config: Path) -> list[str]:
    """`-c FILE` goes before a `--` (after which everything is the manager's command)."""
    cut = args.index("--") if "--" in args else len(args)
    return [*args[:cut], "-c", str(config), *args[cut:]]


def pmon_cli(config: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the `pmon` command as a user would, and capture what it prints."""
    return subprocess.run(
        [sys.executable, "-m", "pmon.cli", *_with_config(args, config)],
        capture_output=True, text=True, timeout=timeout,
    )


class Pmon:
    """A real `pmon run` in the background, for one test."""

    def __init__(
        self, config: Path, env: dict[str, str] | None = None, cwd: Path | None = None,
        prefix: list[str] | None = None,
    ) -> None:
        """`config` as `pmon run -c` gets it; relative to `cwd` (pmon's working directory);
        `prefix`: e.g. `ip netns exec NS` (which execs: the same pid)."""
        self.config_path = config
        self.config = config_module.load(config if cwd is None else cwd / config)
        self.proc = subprocess.Popen(
            [*(prefix or []), sys.executable, "-m", "pmon.cli", "run", "-q", "-c", str(config)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=None if env is None else {**os.environ, **env}, cwd=cwd,
        )

    def call(self, command: str, **args: Any) -> Any:
        return control_call(self.config, command, timeout=60, **args)

    def status(self) -> dict[str, Any]:
        return self.call("status")

    def manager(self, name: str) -> dict[str, Any]:
        return next(m for m in self.status()["managers"] if m["name"] == name)

    def wait_ready(self, timeout: float = 20, project_state: str | None = "running") -> dict[str, Any]:
        """Wait until the control channel answers (and the project is in `project_state`)."""
        def ready() -> dict[str, Any] | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"pmon exited {self.proc.returncode}: {self.proc.stderr.read()}")
            try:
                status = self.status()
            except Exception:
                return None
            return status if project_state in (None, status["project_state"]) else None
        return poll_for(ready, timeout, f"pmon to answer with the project {project_state}")

    def wait_state(self, name: str, state: str, timeout: float = 10) -> dict[str, Any]:
        return poll_for(
            lambda: (m := self.manager(name))["state"] == state and m,
            timeout, f"{name} to be {state}",
        )

    def wait_event(self, event: str, timeout: float = 10, **fields: Any) -> dict[str, Any]:
        """The first event-log record of this kind whose fields match; waits for it."""
        def match() -> dict[str, Any] | None:
            for record in self.events():
                if record["event"] == event and all(record.get(k) == v for k, v in fields.items()):
                    return record
            return None
        return poll_for(match, timeout, f"event {event} {fields}")

    def events(self) -> list[dict[str, Any]]:
        import json

        path = self.config.project.state_dir / "log" / "events.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line]

    def kill(self) -> None:
        """SIGKILL pmon itself (not its managers), as a crash would."""
        self.proc.kill()
        self.proc.wait(10)

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.communicate()
        return self.proc.returncode


def project_processes(project: str, manager: str | None = None) -> list[psutil.Process]:
    """The running session leaders started for `project` (optionally: of one manager)."""
    found = []
    for proc in psutil.process_iter():
        try:
            env = proc.environ()
            if env.get("PMON_PROJECT") != project or os.getsid(proc.pid) != proc.pid:
                continue
            if manager is None or env.get("PMON_MANAGER") == manager:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def write_pair(
    tmp_path: Path, relay: Any, managers: Callable[[str], list[dict[str, Any]]],
    only: Mapping[str, Mapping[str, Any]] | None = None, **redundancy: Any
) -> tuple[Path, Path]:
    """Write the two projects of a redundant pair ("a", "b") linked through `relay`
    (tests/relay.py). Short heartbeats keep tests fast; any key can be overridden, for both
    or, in `only` ({"a": {...}}), for one server."""
    paths = []
    for server, partner in (("a", "b"), ("b", "a")):
        directory = tmp_path / server
        directory.mkdir()
        section = {
            "name": server, "partner": partner, "preferred": "a", "heartbeat_interval": 0.1,
            "timeout": 0.6, "first_active_change_interval": 0,
            "links": [link.config(server) for link in relay.links], **redundancy,
            **(only or {}).get(server, {}),
        }
        paths.append(write_project(directory, managers(server), redundancy=section))
    return paths[0], paths[1]


def kill_tree(pid: int) -> None:
    """SIGKILL a process and everything under it at once (a crashed server)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass


def kill_project_processes(project: str) -> list[int]:
    """Kill every process started for `project` (found by PMON_PROJECT in its environment)."""
    killed = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("PMON_PROJECT") == project:
                proc.kill()
                killed.append(proc.pid)
        except psutil.Error:
            continue
    return killed


def cgroups_writable() -> str | None:
    """None when this machine lets pmon make cgroups (root, a cgroup2 hierarchy), else why
    not: the one-line reason a test that needs them skips with."""
    from pmon.runtime import cgroups

    mount = cgroups.mount_point()
    if mount is None or cgroups.own_cgroup() is None:
        return "no cgroup2 hierarchy mounted"
    if not os.access(mount / "cgroup.procs", os.W_OK):
        return "needs root (a writable cgroup2 hierarchy)"
    return None


def remove_project_cgroups(config: Any) -> None:
    """Kill and remove what a test's pmon left in its cgroups (a pmon killed as in a crash
    cannot remove them itself; the next pmon of the project would)."""
    from pmon.runtime import cgroups

    mount = cgroups.mount_point()
    if mount is None:
        return
    base = mount / "pmon" / cgroups.project_key(config.project.name, config.project.state_dir)
    if not base.is_dir():
        return
    for cgroup in base.glob(f"{cgroups.PREFIX}*"):
        cgroups.kill_and_wait(cgroup)
        cgroups.remove(cgroup)
    cgroups.remove(base)


def driver_runs(path: Path) -> bool:
    """The driver whose stamps (tests/children/child.py --stamp) are in `path` runs: started,
    not stopped since, its process alive and not frozen (a SIGKILL leaves no stop stamp; a
    SIGSTOP freezes it)."""
    if not path.exists():
        return False
    lines = [line.split() for line in path.read_text().splitlines()]
    if not lines or lines[-1][0] != "start":
        return False
    try:
        status = psutil.Process(int(lines[-1][2])).status()
    except psutil.NoSuchProcess:
        return False
    return status not in (psutil.STATUS_ZOMBIE, psutil.STATUS_STOPPED, psutil.STATUS_DEAD)
