"""The fence itself (supervisor/redundancy/fence.py) on real processes: its bound, and what
its steps on the heartbeat loop still find. Linux (the marks are read from /proc)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from pmon.redundancy.fence import Fence
from support import poll_for

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="the marks are read from /proc")

# Starts a marked process every 10 ms (up to 20 alive), whatever the fence kills: there is
# always one born since the fence's last signal. It is none of the fence's (no mark of its
# own, a session of its own), as a stray unit outside pmon that restarts a driver would be;
# its children ignore SIGTERM.
RESPAWNER = """
import os, subprocess, time
env = {**os.environ, "PMON_MANAGER": "drv"}
alive = []
while True:
    alive = [proc for proc in alive if proc.poll() is None]
    if len(alive) < 20:
        alive.append(subprocess.Popen(["sh", "-c", "trap '' TERM; exec sleep 100"], env=env))
    time.sleep(0.005)
"""


def start_respawner(env: dict[str, str]) -> subprocess.Popen[bytes]:
    """RESPAWNER in a session of its own; as root at the highest priority, so that a loaded
    machine does not starve it for a whole step of the fence (it would then find none of its
    processes alive, and end: the test's premise gone)."""
    nice = ["nice", "-n", "-20"] if os.geteuid() == 0 else []
    return subprocess.Popen([*nice, sys.executable, "-c", RESPAWNER], start_new_session=True, env=env)


@pytest.fixture
def marks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """This process stands in for the redundancy manager: the NOTIFY_SOCKET it has from
    pmon is the project's mark; the returned environment is a manager's (both marks)."""
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    return {**os.environ, "PMON_MANAGER": "drv"}


@pytest.fixture
def groups() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes started here, each the leader of its own session: killed with their
    groups at the end."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.wait(10)


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] in "ZX"
    except (OSError, IndexError):
        return True


def _step_until_done(fence: Fence, timeout: float) -> float:
    """Step the fence every 50 ms, as the heartbeat loop does; the time it took."""
    begin = time.monotonic()
    poll_for(lambda: fence.step(time.monotonic()) or fence.done, timeout, "the fence to end")
    return time.monotonic() - begin


def test_a_fence_ends_by_its_bound_when_its_processes_keep_coming_back(marks, groups, capfd):
    """Nothing stops a process that something outside the fence starts again at once: the
    fence ends by its bound (before: it said "fencing" for ever, and the partner never took
    the role), says what it left alive, and keeps `overrun` for pmon's report."""
    respawner = start_respawner({k: v for k, v in marks.items() if k != "PMON_MANAGER"})
    groups.append(respawner)
    poll_for(lambda: [p for p in _children(respawner.pid) if not _gone(p)], 10,
             "the first marked process")
    fence = Fence(grace=0.2, bound=1.0)
    fence.start(time.monotonic(), [], names=["drv"])
    took = _step_until_done(fence, 10)
    assert fence.overrun and fence.killed and not fence.active
    assert 0.9 <= took < 3.0, took
    said = [line for line in capfd.readouterr().err.splitlines() if "fence" in line]
    assert len(said) == 1, said
    assert said[0].startswith("redundancy: the fence did not end within 1 s; left alive: pids "), said
    assert "(by their marks" in said[0] and said[0].endswith("the partner may take over"), said
    fence.reset()
    assert fence.overrun  # it tells of the last fence until the next one starts


# One marked process at a time, started again argv[1] seconds after each death: something
# outside pmon that restarts a driver (a unit with Restart=always, a shell loop).
RESTARTER = """
import os, subprocess, sys, time
env = {**os.environ, "PMON_MANAGER": "drv"}
while True:
    subprocess.Popen(["sh", "-c", "trap '' TERM; exec sleep 100"], env=env).wait()
    time.sleep(float(sys.argv[1]))
"""


def test_a_driver_restarted_within_the_fences_quiet_time_never_ends_it_early(marks, groups):
    """The fence ends only when two looks at the whole machine, END_QUIET apart, found
    nothing of it alive. Before, one look in the gap between a death and its restart ended
    it (about one CI run in ten of the test above), and the restarted driver ran on beside
    the partner's. Seeded restart delays longer than a step here (20 ms: a look in the gap
    is sure) and shorter than END_QUIET with room for the restart (PMON_CHAOS_SEED replays)."""
    from pmon.redundancy.fence import END_QUIET

    seed = int(os.environ.get("PMON_CHAOS_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    env = {k: v for k, v in marks.items() if k != "PMON_MANAGER"}
    nice = ["nice", "-n", "-20"] if os.geteuid() == 0 else []
    for delay in (0.0, *(rng.uniform(0.025, END_QUIET - 0.015) for _ in range(2))):
        restarter = subprocess.Popen([*nice, sys.executable, "-c", RESTARTER, str(delay)],
                                     start_new_session=True, env=env)
        groups.append(restarter)
        poll_for(lambda: [p for p in _children(restarter.pid) if not _gone(p)], 10,
                 "the first marked process")
        fence = Fence(grace=0.2, bound=1.0)
        fence.start(time.monotonic(), [], names=["drv"])
        _step_until_done(fence, 10)
        assert fence.overrun, f"the fence ended while a driver came back {delay:.3f} s " \
            f"after each death (PMON_CHAOS_SEED={seed})"
        os.killpg(restarter.pid, signal.SIGKILL)


# A driver that, on its SIGTERM, starts a helper in a session of its own and exits. Python's
# subprocess resets the helper's signal handlers with signals blocked (vfork), so a SIGTERM
# that reaches the helper before its exec is not lost (a shell's trap loses it: the fence's
# SIGKILL would take it, a grace later).
DRIVER = """
import signal, subprocess, sys, time
def stop(signum, frame):
    helper = subprocess.Popen(["sleep", "100"], start_new_session=True)
    with open(sys.argv[1] + ".tmp", "w") as out:
        out.write(str(helper.pid))
    import os
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
open(sys.argv[2], "w").close()
while True:
    time.sleep(0.05)
"""


def test_a_helper_a_driver_starts_after_the_fence_began_is_stopped_at_a_step(
        marks, groups, tmp_path):
    """The driver, on its SIGTERM, starts a helper in a session of its own (outside its
    process group; no cgroup here): only its marks tell it, and it appears after the fence
    began. A step finds it and stops it, long before the SIGKILL's grace."""
    record, ready = tmp_path / "helper.pid", tmp_path / "ready"
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(record), str(ready)],
                              start_new_session=True, env=marks)
    groups.append(driver)
    poll_for(ready.exists, 10, "the driver to be ready")
    fence = Fence(grace=30.0, bound=60.0)
    fence.start(time.monotonic(), [driver.pid], names=["drv"])
    took = _step_until_done(fence, 10)
    helper = int(poll_for(lambda: record.exists() and record.read_text(), 10, "the helper's pid"))
    assert not fence.killed and not fence.overrun and took < 5, took  # by SIGTERM, at a step
    poll_for(lambda: _gone(helper), 10, "the helper to be gone")
    assert driver.wait(10) == 0  # its handler ran: the helper came after the fence's SIGTERM


# A driver that ignores SIGTERM, with helpers in its process group that, on their SIGTERM,
# leave the group (setsid) and ignore it too (found by a review: the fence's SIGKILL went
# to the group only, and the helpers outlived the fence).
LEAVER = """
import os, signal, sys, time
def leave(signum, frame):
    os.setsid()
signal.signal(signal.SIGTERM, leave)
open(os.path.join(sys.argv[1], str(os.getpid())), "w").close()  # its handler is in place
while True:
    time.sleep(0.05)
"""
STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
helpers = [subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[3]]) for _ in range(4)]
with open(sys.argv[2] + ".tmp", "w") as out:
    out.write(" ".join(str(h.pid) for h in helpers))
import os
os.rename(sys.argv[2] + ".tmp", sys.argv[2])
while True:
    time.sleep(0.05)
"""


def test_helpers_that_leave_the_group_on_sigterm_get_the_sigkill(marks, groups, tmp_path):
    record, ready = tmp_path / "helpers", tmp_path / "ready"
    ready.mkdir()
    driver = subprocess.Popen([sys.executable, "-c", STUBBORN, LEAVER, str(record), str(ready)],
                              start_new_session=True, env=marks)
    groups.append(driver)
    helpers = [int(p) for p in poll_for(lambda: record.exists() and record.read_text(), 10,
                                        "the helpers").split()]
    poll_for(lambda: all((ready / str(p)).exists() for p in helpers), 10,
             "the helpers' SIGTERM handlers")
    fence = Fence(grace=0.5, bound=5.0)
    fence.start(time.monotonic(), [driver.pid], names=["drv"])
    took = _step_until_done(fence, 10)
    left = [p for p in helpers if not _gone(p)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert left == [] and fence.killed and not fence.overrun, (left, took)
    assert took < 2.0, took  # by the SIGKILL after grace, not by the bound


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(Path(f"/proc/{entry}/stat").read_text().rsplit(") ", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return found
