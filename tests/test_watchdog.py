"""The supervisor watchdog: pmon that cannot write its state or logs stops the project."""

from __future__ import annotations

import errno
import os
import signal
import shutil
from pathlib import Path

from pmon.runtime.logs import EventLog
from pmon.runtime.output import ManagerLog
from support import child, poll_for, write_project


def test_a_full_disk_under_the_event_log_is_reported():
    failures: list[OSError] = []
    log = EventLog(Path("/dev/full"), 0, 0, echo=False, on_error=failures.append)
    log.write("x", "hello")
    log.close()
    assert failures and failures[0].errno == errno.ENOSPC


def test_pmon_stops_the_project_cleanly_when_it_cannot_write_its_state(tmp_path, pmon):
    config = write_project(tmp_path, [{"name": "a", "command": child()},
                                      {"name": "b", "command": child()}],
                           project={"stop_on_write_error": True})
    instance = pmon(config)
    pid_b = instance.manager("b")["pid"]
    state = instance.config.project.state_dir / "state.json"
    poll_for(state.exists, what="the first state write")
    state.unlink()
    state.mkdir()  # the next state write fails, as on a full disk
    os.kill(pid_b, signal.SIGKILL)  # a change: pmon writes its state
    # stopped in order, but its last state write failed too: exit 1 (review 1, finding 9)
    assert instance.proc.wait(30) == 1
    events = instance.events()
    failed = [e for e in events if e["event"] == "write-failed"]
    assert failed and "state file" in failed[0]["message"]
    shutdown = [e for e in events if e["event"] == "shutdown"]
    assert "watchdog: cannot write the state file" in shutdown[0]["reason"]
    assert events[-1]["event"] == "pmon-stopped"  # the managers were stopped in order
    shutil.rmtree(state)


def test_output_log_rotates_by_copy_truncate_while_the_writer_keeps_its_descriptor(tmp_path):
    log = ManagerLog(tmp_path / "m.log", max_bytes=100, backups=2)
    fd = log.open_for_child()  # what the manager writes through
    try:
        os.write(fd, b"a" * 150)
        assert log.rotate_if_needed()
        os.write(fd, b"b" * 10)  # O_APPEND: lands at the new end, no hole
        assert (tmp_path / "m.log").read_bytes() == b"b" * 10
        assert (tmp_path / "m.log.1").read_bytes() == b"a" * 150
        os.write(fd, b"c" * 120)
        assert log.rotate_if_needed()
        assert (tmp_path / "m.log.2").read_bytes() == b"a" * 150
        assert (tmp_path / "m.log.1").read_bytes() == b"b" * 10 + b"c" * 120
        assert not log.rotate_if_needed()
    finally:
        os.close(fd)
