"""The state file is written off the loop (review 1, finding 4): with its file system frozen
(fsfreeze: every write blocks, as an fsync under heavy writeback does for seconds), pmon still
sees a death, restarts the manager and answers status. A command's durable reply waits for
the disk, and comes once it thaws. Real file systems: an ext4 image on a loop device (the
state directory), a tmpfs over its log/ (the event log and output are not under test)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading

import pytest

from support import Pmon, child, kill_project_processes, pmon_cli, poll_for, write_project

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("mkfs.ext4", "fsfreeze", "mount")),
    reason="needs root, mkfs.ext4, fsfreeze and loop devices",
)


def run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, timeout=60)


def test_a_frozen_state_disk_stalls_no_death_nor_status(tmp_path):
    image, state_dir = tmp_path / "state.img", tmp_path / "var"
    run("truncate", "-s", "64M", str(image))
    run("mkfs.ext4", "-q", "-F", str(image))
    state_dir.mkdir()
    mounts: list[str] = []
    frozen = False
    instance = None
    try:
        try:
            run("mount", "-o", "loop,noatime", str(image), str(state_dir))
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"cannot loop-mount an image here: {exc.stderr.decode().strip()}")
        mounts.append(str(state_dir))
        (state_dir / "log").mkdir()
        run("mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(state_dir / "log"))
        mounts.append(str(state_dir / "log"))
        config = write_project(tmp_path, [
            {"name": "a", "command": child()},
            {"name": "b", "command": child(), "start": "manual"},
        ])
        instance = Pmon(config)
        instance.wait_ready()
        for command in ("start", "stop"):  # b's output log is open (its mkdir would block)
            assert pmon_cli(config, command, "b").returncode == 0
        old = instance.manager("a")["pid"]
        run("fsfreeze", "-f", str(state_dir))
        frozen = True
        os.kill(old, signal.SIGKILL)  # a death: a state write follows, and blocks
        poll_for(lambda: (m := instance.manager("a"))["state"] == "running" and m["pid"] != old,
                 20, "a restarted while the state disk is frozen")
        # a command's reply is durable: it waits for the disk, and comes after the thaw
        replies: list[subprocess.CompletedProcess[str]] = []
        starter = threading.Thread(target=lambda: replies.append(pmon_cli(config, "start", "b")))
        starter.start()
        poll_for(lambda: instance.manager("b")["state"] == "running", 20, "b started, not yet saved")
        assert not replies  # not acknowledged while its decision is not on disk
        run("fsfreeze", "-u", str(state_dir))
        frozen = False
        starter.join(30)
        assert replies and replies[0].returncode == 0, replies
    finally:
        if frozen:
            subprocess.run(["fsfreeze", "-u", str(state_dir)], timeout=30)
        if instance is not None:
            instance.stop()
            kill_project_processes(instance.config.project.name)
        for mount in reversed(mounts):
            subprocess.run(["umount", "-l", mount], timeout=30)


def test_a_last_state_write_that_fails_is_an_error_exit(tmp_path):
    """Finding 9: pmon's final state write on a full disk is retried, then pmon says so and
    exits 1 (not 0, nor 40 under its unit): the next pmon would start from a stale file."""
    state_dir = tmp_path / "var"
    state_dir.mkdir()
    run("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(state_dir))
    instance = None
    try:
        config = write_project(tmp_path, [{"name": "a", "command": child()}])
        instance = Pmon(config, env={"PMON_SYSTEMD_UNIT": "pmon-test.service"})
        instance.wait_ready()
        with open(state_dir / "ballast", "wb") as ballast:  # fill the disk
            try:
                while True:
                    ballast.write(b"\0" * 65536)
                    ballast.flush()
            except OSError:
                pass
        assert instance.stop() == 1
    finally:
        if instance is not None:
            instance.stop()
            kill_project_processes(instance.config.project.name)
        subprocess.run(["umount", "-l", str(state_dir)], timeout=30)
