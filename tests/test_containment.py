"""Containment with real processes, in both modes: cgroups (root, a writable cgroup2
hierarchy) and the fallback (PMON_NO_CGROUPS=1: process groups and the subreaper).

The manager is tests/children/daemonizer.py: it leaves a helper in a session of its own and a
double-forked daemon behind, as real managers do. None of them may outlive a stop, the
manager's death, or pmon's shutdown; across a hot restart the helper is never taken for the
manager, and a running manager's helpers are left alone. A seeded chaos run (SIGKILL of pmon
at random moments, restarts through random spellings of the path) checks the two rules:
never two copies of a manager, no stray descendants."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sys
from pathlib import Path

import psutil
import pytest

from pmon.runtime import cgroups
from support import cgroups_writable, poll_for, saved_state, write_project

DAEMONIZER = str(Path(__file__).parent / "children" / "daemonizer.py")


@pytest.fixture(params=["cgroup", "process-group"])
def mode(request) -> str:
    if request.param == "cgroup" and (why := cgroups_writable()):
        pytest.skip(why)
    return request.param


def _env(mode: str) -> dict[str, str]:
    return {"PMON_NO_CGROUPS": "1"} if mode == "process-group" else {}


def _project(tmp_path: Path, names=("m",)) -> Path:
    return write_project(tmp_path, [
        {"name": n, "command": [sys.executable, DAEMONIZER, str(tmp_path / f"{n}.rec")],
         "seconds_to_kill": 3} for n in names
    ])


def _recorded(tmp_path: Path, name: str = "m") -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    try:
        for line in (tmp_path / f"{name}.rec").read_text().splitlines():
            kind, pid = line.split()
            out.setdefault(kind, []).append(int(pid))
    except FileNotFoundError:
        pass
    return out


def _alive(pid: int) -> bool:
    """Running (a zombie counts as dead: this machine's PID 1 reaps orphans slowly)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _started(tmp_path: Path, name: str = "m", count: int = 1) -> dict[str, list[int]]:
    """Wait until the manager's `count`-th process has left both helpers behind."""
    return poll_for(
        lambda: (r := _recorded(tmp_path, name)) and len(r.get("manager", [])) >= count
        and len(r.get("daemon", [])) >= count and r,
        15, f"{name} and its helpers to start",
    )


def _helpers(record: dict[str, list[int]]) -> list[int]:
    return record.get("setsid", []) + record.get("daemon", [])


def _all_dead(pids: list[int], what: str) -> None:
    try:
        poll_for(lambda: not [p for p in pids if _alive(p)], 10, what)
    except AssertionError:
        left = [(p, psutil.Process(p).cmdline(), psutil.Process(p).ppid()) for p in pids if _alive(p)]
        raise AssertionError(f"{what}: still alive {left}") from None


def test_status_says_which_containment_is_in_force(tmp_path, pmon, mode):
    instance = pmon(_project(tmp_path), env=_env(mode))
    assert instance.status()["containment"]["kind"] == mode
    from support import pmon_cli

    import json

    shown = json.loads(pmon_cli(instance.config_path, "status", "--json").stdout)
    assert shown["containment"]["kind"] == mode
    header = pmon_cli(instance.config_path, "status").stdout.splitlines()[1]  # under the project line
    assert "containment: " + ("cgroup v2" if mode == "cgroup" else "process group") in header


def test_helpers_go_with_a_stop(tmp_path, pmon, mode):
    instance = pmon(_project(tmp_path), env=_env(mode))
    record = _started(tmp_path)
    instance.call("stop", target="m")
    instance.wait_state("m", "stopped")
    _all_dead(record["manager"] + _helpers(record), "the manager and its helpers to die")


def test_helpers_go_with_their_manager_and_do_not_pile_up(tmp_path, pmon, mode):
    instance = pmon(_project(tmp_path), env=_env(mode))
    first = _started(tmp_path)
    os.kill(first["manager"][0], signal.SIGKILL)
    _all_dead(_helpers(first), "the dead manager's helpers to die")
    second = _started(tmp_path, count=2)
    instance.wait_state("m", "running")
    live = [p for p in _helpers(second) if _alive(p)]
    assert sorted(live) == sorted(set(_helpers(second)) - set(_helpers(first)))  # 2, new ones


def test_nothing_outlives_pmon_shutdown(tmp_path, pmon, mode):
    instance = pmon(_project(tmp_path, ("m", "n")), env=_env(mode))
    records = [_started(tmp_path, "m"), _started(tmp_path, "n")]
    assert instance.stop() == 0
    _all_dead([p for r in records for p in r["manager"] + _helpers(r)], f"every process to die {records}")
    if mode == "cgroup":  # and the project's cgroups are gone
        spec = instance.config.project
        base = cgroups.mount_point() / "pmon" / cgroups.project_key(spec.name, spec.state_dir)
        assert not base.exists(), list(base.iterdir())


def test_hot_restart_adopts_the_manager_not_a_helper_and_spares_its_helpers(tmp_path, pmon, mode):
    config = _project(tmp_path)
    first = pmon(config, env=_env(mode))
    record = _started(tmp_path)
    manager = record["manager"][0]
    poll_for(lambda: _saved_pid(first) == manager, what="the state file")
    first.kill()

    second = pmon(config, env=_env(mode))
    second.wait_event("adopted")
    assert second.manager("m")["pid"] == manager  # the manager, never its setsid helper
    assert all(_alive(p) for p in _helpers(record))  # not stopped as "a second copy"
    assert not [e for e in second.events() if e["event"] == "stray"]
    second.call("stop", target="m")
    second.wait_state("m", "stopped")
    _all_dead([manager, *_helpers(record)], "the adopted manager and its helpers to die")


@pytest.mark.parametrize("state_file", ["kept", "lost"])
def test_a_manager_that_died_while_pmon_was_away_takes_its_helpers_along(
    tmp_path, pmon, mode, state_file
):
    """Also with no state file (pmon killed within 50 ms of a start): the setsid helper,
    first at the top of what is left, is not taken for the manager."""
    config = _project(tmp_path)
    first = pmon(config, env=_env(mode))
    record = _started(tmp_path)
    poll_for(lambda: _saved_pid(first) == record["manager"][0], what="the state file")
    first.kill()
    os.kill(record["manager"][0], signal.SIGKILL)  # its helpers live on, unwatched
    if state_file == "lost":
        (first.config.project.state_dir / "state.json").unlink()

    second = pmon(config, env=_env(mode))
    _all_dead(_helpers(record), "the dead manager's helpers to be killed")
    again = _started(tmp_path, count=2)
    running = second.wait_state("m", "running")
    assert running["pid"] == again["manager"][1]  # started again, not a helper adopted


def _saved_pid(instance, name: str = "m") -> int | None:
    return saved_state(instance.config.project.state_dir).get("managers", {}).get(name, {}).get("pid")


def test_chaos_never_two_copies_and_no_strays(tmp_path, pmon, mode):
    """Seeded: SIGKILL pmon at random moments (also mid-start), start it again through a
    random spelling of the path, kill managers at random. After each restart has settled,
    each manager runs once with at most its own two helpers; after the end, nothing runs.
    PMON_CHAOS_SEED / PMON_CHAOS_ROUNDS replay or lengthen a run."""
    seed = int(os.environ.get("PMON_CHAOS_SEED", random.randrange(1 << 30)))
    rounds = int(os.environ.get("PMON_CHAOS_ROUNDS", "5"))
    rng = random.Random(seed)
    real = tmp_path / "real"
    (real / "sub").mkdir(parents=True)
    names = ("m", "n")
    _project(real, names)
    (tmp_path / "link").symlink_to(real)
    spellings = [(real / "pmon.toml", None), (tmp_path / "link" / "pmon.toml", None),
                 (Path("../pmon.toml"), real / "sub")]
    instance = None
    for round_ in range(rounds):
        path, cwd = rng.choice(spellings)
        instance = pmon(path, wait=False, env=_env(mode), cwd=cwd)
        instance.wait_ready(project_state=None)
        if rng.random() < 0.5:  # let it settle, check, then make trouble
            instance.wait_ready(project_state="running")
            _check_once(real, names, seed, round_, instance)
            if rng.random() < 0.5:
                victim = rng.choice(names)
                pid = instance.manager(victim)["pid"]
                if pid:
                    os.kill(pid, signal.SIGKILL)
        if round_ < rounds - 1:
            instance.kill()
    assert instance is not None
    instance.wait_ready(project_state="running")
    _check_once(real, names, seed, rounds, instance)
    every = [p for n in names for r in [_recorded(real, n)] for p in r.get("manager", []) + _helpers(r)]
    assert instance.stop() == 0
    _all_dead(every, f"every process to die after the end (seed {seed})")


def _check_once(real: Path, names, seed: int, round_: int, instance) -> None:
    for name in names:
        def settled():
            record = _recorded(real, name)
            managers = [p for p in record.get("manager", []) if _alive(p)]
            helpers = [p for p in _helpers(record) if _alive(p)]
            running = instance.manager(name)
            return (len(managers) == 1 and running["state"] == "running"
                    and running["pid"] == managers[0] and len(helpers) <= 2 and managers)
        try:
            poll_for(settled, 15, f"{name} to run once")
        except AssertionError:
            record = _recorded(real, name)
            raise AssertionError(
                f"seed {seed}, round {round_}: {name} records {record}, live managers "
                f"{[p for p in record.get('manager', []) if _alive(p)]}, live helpers "
                f"{[p for p in _helpers(record) if _alive(p)]}, status {instance.manager(name)}"
            ) from None


def test_fallback_adopts_only_what_the_state_file_says_it_spawned(tmp_path, pmon):
    """Without cgroups, a process is adopted only if pid, start time, owner and executable
    match the state file: a process that runs another program under the saved pid and start
    time is not adopted (and left alone), and the manager is started again, once."""
    env = _env("process-group")
    config = write_project(tmp_path, [{"name": "a", "command": [sys.executable, "-c",
                                                                "import time; time.sleep(3600)"]}])
    first = pmon(config, env=env)
    pid = first.manager("a")["pid"]
    poll_for(lambda: _saved_pid(first, "a") == pid, what="the state file")
    first.kill()
    os.kill(pid, signal.SIGKILL)
    import json
    import subprocess

    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        path = first.config.project.state_dir / "state.json"
        data = json.loads(path.read_text())
        data["managers"]["a"].update(pid=stranger.pid,
                                     create_time=psutil.Process(stranger.pid).create_time())
        path.write_text(json.dumps(data))
        second = pmon(config, env=env)
        a = second.wait_state("a", "running")
        assert a["pid"] != stranger.pid and stranger.poll() is None
        assert any(f"pid {stranger.pid} is not adopted: runs" in e["message"]
                   for e in second.events() if e["event"] == "adoption")
    finally:
        stranger.kill()
        stranger.wait()


def test_fallback_without_a_state_file_adopts_nothing_and_runs_no_second_copy(tmp_path, pmon):
    env = _env("process-group")
    config = _project(tmp_path)
    first = pmon(config, env=env)
    record = _started(tmp_path)
    poll_for(lambda: _saved_pid(first) == record["manager"][0], what="the state file")
    first.kill()
    (first.config.project.state_dir / "state.json").unlink()
    second = pmon(config, env=env)
    _all_dead(record["manager"] + _helpers(record), "the unverifiable manager and helpers to go")
    again = _started(tmp_path, count=2)
    assert second.wait_state("m", "running")["pid"] == again["manager"][1]
    assert [p for p in _recorded(tmp_path).get("manager", []) if _alive(p)] == [again["manager"][1]]


def test_managers_started_without_cgroups_are_moved_into_theirs_on_an_upgrade(tmp_path, pmon):
    """`pmon detach` from a pmon without cgroups (an older one, or PMON_NO_CGROUPS), then a
    pmon with cgroups: the managers are adopted, not started twice, and from then on
    contained with their helpers."""
    if why := cgroups_writable():
        pytest.skip(why)
    from support import pmon_cli

    config = _project(tmp_path)
    first = pmon(config, env=_env("process-group"))
    record = _started(tmp_path)
    manager = record["manager"][0]
    assert pmon_cli(config, "detach").returncode == 0
    assert first.proc.wait(20) == 0
    second = pmon(config, env=_env("cgroup"))
    assert second.manager("m")["pid"] == manager
    for pid in [manager, *_helpers(record)]:
        assert Path(f"/proc/{pid}/cgroup").read_text().strip().endswith("/manager-m"), pid
    second.call("stop", target="m")
    second.wait_state("m", "stopped")
    _all_dead([manager, *_helpers(record)], "the moved manager and its helpers to die")


def test_kill_manager_by_name_kills_its_whole_cgroup(tmp_path, pmon):
    """The fencing function for redundancy: one call, everything of that manager is gone."""
    if why := cgroups_writable():
        pytest.skip(why)
    instance = pmon(_project(tmp_path, ("m", "n")))
    record = _started(tmp_path, "m")
    _started(tmp_path, "n")
    spec = instance.config.project
    assert cgroups.kill_manager(spec.name, spec.state_dir, "m") is True
    assert not [p for p in record["manager"] + _helpers(record) if _alive(p)]  # at once
    assert all(_alive(p) for p in _recorded(tmp_path, "n")["manager"])  # only that one
    assert cgroups.kill_manager(spec.name, spec.state_dir, "no-such") is True
    assert cgroups.kill_manager("other-project", tmp_path / "elsewhere", "m") is False


def test_under_systemd_managers_run_in_the_units_delegated_subtree(tmp_path):
    """A real systemd (a container on this machine's root, issue 10's tests/systemd_box.py):
    a unit with Delegate=yes and KillMode=process; pmon in its leaf, each manager with its
    helpers in managers/manager-NAME; pmon SIGKILLed and started again adopts the manager;
    `systemctl stop` leaves nothing behind."""
    if why := cgroups_writable():
        pytest.skip(why)
    try:
        from systemd_box import Container
    except ImportError:
        pytest.skip("needs tests/systemd_box.py (the systemd container of issue 10)")
    if not shutil.which("systemd-nspawn"):
        pytest.skip("needs systemd-nspawn (apt-get install systemd-container)")
    project = tmp_path / "proj"
    project.mkdir()
    config = _project(project)
    pmon_bin = str(Path(sys.executable).parent / "pmon")
    box = tmp_path / "box"
    box.mkdir()
    container = Container(box, [project, Path(__file__).resolve().parent.parent])
    try:
        def status():
            out = container.run(pmon_bin, "status", "--json", "-c", str(config))
            return json.loads(out.stdout) if out.returncode == 0 else None

        def unit(name: str) -> None:
            started = container.run("systemd-run", f"--unit={name}", "-p", "Delegate=yes",
                                    "-p", "KillMode=process", pmon_bin, "run", "-q", "-c", str(config))
            assert started.returncode == 0, started.stderr

        unit("pmon13a")
        first = poll_for(lambda: (s := status()) and s["project_state"] == "running" and s, 30,
                         "pmon under systemd")
        assert first["containment"]["kind"] == "cgroup"
        assert "delegated by systemd" in first["containment"]["detail"]
        record = _started(project)
        for pid in [record["manager"][0], *_helpers(record)]:
            cgroup = container.run("cat", f"/proc/{pid}/cgroup").stdout
            assert "/system.slice/pmon13a.service/managers/manager-m" in cgroup, cgroup
        main = container.run("systemctl", "show", "-pMainPID", "--value", "pmon13a").stdout.strip()
        assert "/pmon13a.service/pmon-supervisor" in container.run("cat", f"/proc/{main}/cgroup").stdout
        container.run("kill", "-9", main)
        poll_for(lambda: container.run("systemctl", "is-active", "pmon13a").stdout.strip() != "active",
                 15, "the unit to notice")
        unit("pmon13b")
        again = poll_for(lambda: (s := status()) and s["project_state"] == "running" and s, 30,
                         "the second pmon")
        assert again["managers"][0]["pid"] == record["manager"][0]  # adopted, not started again
        pids = ",".join(map(str, [record["manager"][0], *_helpers(record)]))  # the box's pids

        def left() -> list[str]:
            out = container.run("ps", "-o", "pid=,stat=", "-p", pids).stdout.split("\n")
            return [line for line in out if line.strip() and "Z" not in line.split()[1]]
        assert len(left()) == 3  # the manager and its two helpers, seen from inside
        assert container.run("systemctl", "stop", "pmon13b").returncode == 0
        poll_for(lambda: not left(), 10, "everything to stop with the unit")
    finally:
        container.close()


def test_kill_manager_never_kills_the_caller_sitting_in_that_cgroup(tmp_path):
    """pmon sits in a manager's cgroup for a burst of spawns; a fence from an extension's
    hook in that moment must kill the manager, not pmon."""
    if why := cgroups_writable():
        pytest.skip(why)
    import subprocess

    script = (
        "import os, subprocess, sys\n"
        "from pathlib import Path\n"
        "from pmon.runtime import cgroups\n"
        "state = Path(sys.argv[1])\n"
        "base = cgroups.mount_point() / 'pmon' / cgroups.project_key('selfkill', state.resolve())\n"
        "(base / 'manager-x').mkdir(parents=True)\n"
        "cgroups.write_pid(base / 'manager-x', os.getpid())\n"
        "child = subprocess.Popen(['sleep', '100'])\n"
        "ok = cgroups.kill_manager('selfkill', state, 'x')\n"
        "print(ok, child.wait(), cgroups.own_cgroup())\n"
        "cgroups.remove(base / 'manager-x'); cgroups.remove(base)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[:2] == ["True", "-9"]  # the manager's process killed, caller alive
    assert not done.stdout.split()[2].endswith("manager-x")


def test_a_fence_kills_the_managers_whole_cgroup_and_spares_pmon_stalled_inside(tmp_path):
    """Redundancy's fence with cgroups (review 2, finding 1): the fenced manager's setsid and
    double-forked helpers are in its cgroup, not its process group, and go with it; a pmon
    stopped (SIGSTOP) while it sits in that cgroup for a spawn is moved home and lives."""
    if why := cgroups_writable():
        pytest.skip(why)
    import subprocess
    import time

    from pmon.redundancy.fence import Fence

    base = cgroups.mount_point() / "pmon" / f"fence-test-{os.getpid()}"
    cgroup, home = base / "manager-drv", base / "home"
    for each in (cgroup, home):
        each.mkdir(parents=True)
    enter = f"echo $$ > {cgroup}/cgroup.procs && exec "
    procs: list[subprocess.Popen] = []
    try:
        drv = subprocess.Popen(["sh", "-c", enter + f"{sys.executable} {DAEMONIZER} {tmp_path}/m.rec"],
                               start_new_session=True)
        procs.append(drv)
        record = _started(tmp_path)
        stalled_pmon = subprocess.Popen(["sh", "-c", enter + "sleep 600"])
        procs.append(stalled_pmon)
        poll_for(lambda: stalled_pmon.pid in cgroups.procs(cgroup), 10, "the stand-in pmon inside")
        os.kill(stalled_pmon.pid, signal.SIGSTOP)
        fence = Fence(grace=0.5)
        fence.start(time.monotonic(), [drv.pid], [str(cgroup)], (stalled_pmon.pid, str(home)))
        poll_for(lambda: fence.step(time.monotonic()) or fence.done, 10, "the fence to end")
        _all_dead(record["manager"] + _helpers(record), "the fenced manager and its helpers to go")
        assert stalled_pmon.poll() is None  # pmon lives: moved out before the kill
        assert stalled_pmon.pid in cgroups.procs(home)
        assert cgroups.procs(cgroup) == []
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)
        for each in (cgroup, home, base):
            cgroups.kill_and_wait(each)
            cgroups.remove(each)


def test_a_cgroup_pmon_s_managers_are_adopted_by_a_pmon_without_cgroups(tmp_path, pmon):
    """The downgrade (review 2, finding 2): `pmon detach` from a pmon with cgroups, then one
    with PMON_NO_CGROUPS=1 adopts the running manager (the state file says who it was: uid
    and exe), kills nothing, starts no second copy, and still stops it with its helpers."""
    if why := cgroups_writable():
        pytest.skip(why)
    from support import pmon_cli

    config = _project(tmp_path)
    first = pmon(config, env=_env("cgroup"))
    record = _started(tmp_path)
    manager = record["manager"][0]
    assert pmon_cli(config, "detach").returncode == 0
    assert first.proc.wait(20) == 0
    second = pmon(config, env=_env("process-group"))
    assert second.manager("m")["pid"] == manager
    assert all(_alive(p) for p in [manager, *_helpers(record)])
    events = [e["message"] for e in second.events()]
    assert not [m for m in events if "outlived" in m or "not adopted" in m or "away" in m], events
    second.call("stop", target="m")
    second.wait_state("m", "stopped")
    _all_dead([manager, *_helpers(record)], "the adopted manager and its helpers to die")


PROBE = """
import asyncio, sys
from pmon.app import build_extensions
from pmon.config import load
from pmon.runtime import cgroups
from pmon.runtime.api import Extension
from pmon.runtime.supervisor import Supervisor

class Probe(Extension):
    name = "probe"
    async def start(self, api):
        self.sup = api
    def on_manager(self, manager, old):
        print(manager.spec.name, manager.state.value, cgroups.own_cgroup(), flush=True)
        states = {m.state.value for m in self.sup.managers.values()}
        if states == {"running"} or "blocked" in states:
            self.sup.request_shutdown("probe")

config = load(sys.argv[1])
sys.exit(asyncio.run(Supervisor(config, build_extensions(config) + [Probe()], echo=False).run()))
"""


def test_pmon_is_home_when_the_hooks_run_after_a_spawn(tmp_path):
    """The extensions' (and so the plugins') hooks run with pmon back in its own cgroup,
    not in the manager's it just spawned into (review 2, finding 5): what pmon's threads
    fault in or fork there would be charged to, and killed with, that manager."""
    if why := cgroups_writable():
        pytest.skip(why)
    import subprocess

    from pmon.config import load
    from support import remove_project_cgroups

    config = write_project(tmp_path, [{"name": n, "command": ["sleep", "600"]} for n in ("m", "n")])
    try:
        done = subprocess.run([sys.executable, "-c", PROBE, str(config)], capture_output=True,
                              text=True, timeout=30)
    finally:  # a probe that timed out left its managers (in their cgroups)
        remove_project_cgroups(load(config))
    assert done.returncode == 0, done.stderr
    seen = [line.split() for line in done.stdout.splitlines()]
    assert ["m", "running"] in [s[:2] for s in seen] and ["n", "running"] in [s[:2] for s in seen]
    assert not [s for s in seen if "/manager-" in s[2]], seen


def test_a_resumed_stop_runs_no_second_stop_command_and_takes_its_leftovers(tmp_path, pmon, mode):
    """pmon killed while a manager's stop_command hangs; the next pmon resumes the stop with
    the stop signal only: the stop_command ran once (review 2, finding 6). With cgroups it
    ran in the manager's cgroup, so the manager's kill takes it and its children along."""
    from support import child

    runs = tmp_path / "runs"
    config = write_project(tmp_path, [{
        "name": "m", "command": child(), "seconds_to_kill": 3,
        "stop_command": ["sh", "-c", f"echo $$ >> {runs}; sleep 60 & echo $! >> {runs}; wait"],
    }])
    first = pmon(config, env=_env(mode))
    manager = first.manager("m")["pid"]
    first.call("stop", target="m", wait=False)
    try:
        pids = poll_for(lambda: runs.exists() and len(p := runs.read_text().split()) == 2 and p,
                        10, "the stop_command and its child to run")
        first.kill()
        second = pmon(config, env=_env(mode))
        second.wait_state("m", "stopped")
        assert not _alive(manager)
        assert len(runs.read_text().split()) == 2  # no second stop_command
        if mode == "cgroup":
            _all_dead([int(p) for p in pids], "the stop_command and its child to go with m")
    finally:  # the fallback leaves them (orphans of the dead pmon)
        for pid in map(int, runs.read_text().split() if runs.exists() else []):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_limits_are_refused_in_a_unit_delegated_without_a_subgroup(tmp_path):
    """A real systemd (tests/systemd_box.py): under Delegate=yes without DelegateSubgroup=,
    memory_max would enable controllers below the unit's cgroup, and systemd could not put
    the next pmon there on a restart (219/CGROUP). pmon refuses the limit, says why, and the
    unit survives a `systemctl restart` (review 2, finding 4)."""
    if why := cgroups_writable():
        pytest.skip(why)
    try:
        from systemd_box import Container
    except ImportError:
        pytest.skip("needs tests/systemd_box.py (the systemd container of issue 10)")
    if not shutil.which("systemd-nspawn"):
        pytest.skip("needs systemd-nspawn (apt-get install systemd-container)")
    project = tmp_path / "proj"
    project.mkdir()
    config = write_project(project, [
        {"name": "m", "command": ["sleep", "600"]},
        {"name": "big", "command": ["sleep", "600"], "memory_max": "64M"},
    ])
    events = project / "var" / "log" / "events.jsonl"
    pmon_bin = str(Path(sys.executable).parent / "pmon")
    box = tmp_path / "box"
    box.mkdir()
    container = Container(box, [project, Path(__file__).resolve().parent.parent])
    try:
        def status():
            out = container.run(pmon_bin, "status", "--json", "-c", str(config))
            try:  # a blocked manager makes the exit code non-zero: the JSON is there
                return json.loads(out.stdout)
            except ValueError:
                return None

        def refusals() -> list[str]:
            lines = events.read_text().splitlines() if events.exists() else []
            return [e["message"] for e in map(json.loads, lines)
                    if e["event"] == "spawn-failed" and e.get("manager") == "big"]

        started = container.run("systemd-run", "--unit=pmon13l", "-p", "Delegate=yes", "-p",
                                "KillMode=process", "-p", "Restart=always", "-p",
                                "RestartKillSignal=SIGUSR2", pmon_bin, "run", "-q",
                                "-c", str(config))
        assert started.returncode == 0, started.stderr
        poll_for(lambda: refusals(), 30, "big's start to be refused")
        assert "DelegateSubgroup=pmon-supervisor" in refusals()[0], refusals()
        first = poll_for(lambda: (s := status()) and "managers" in s and s, 30, "pmon under systemd")
        m = next(row for row in first["managers"] if row["name"] == "m")["pid"]
        assert container.run("systemctl", "restart", "pmon13l").returncode == 0
        poll_for(lambda: container.run("systemctl", "is-active", "pmon13l").stdout.strip() == "active"
                 and (s := status()) and s.get("project_state") in ("running", "blocked")
                 and s["pmon_pid"] != first["pmon_pid"], 30, "pmon started again in its unit")
        again = status()
        assert next(row for row in again["managers"] if row["name"] == "m")["pid"] == m  # adopted
    finally:
        container.close()
