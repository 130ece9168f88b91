"""A manager's execution settings, as the spawn applies them (config.py validates them):
whom it runs as (`user`, `group`: pmon as root drops privileges for it), its `umask` and
`rlimits`, its cgroup limits (`memory_max`, `cpu_max`, `pids_max`: written by
containment.py), and how it is stopped (`stop_signal`, `stop_command`).

user, group and umask go to Popen itself (set in the child between fork and exec, no
Python code there, so the fast vfork path stays for managers without rlimits); rlimits need
a preexec_fn (a fork instead of a vfork: only the managers that set them pay for it), which
runs after the child dropped its privileges: it can lower a limit, or raise it up to the
hard limit pmon has.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any, Callable

from pmon.config import RLIMITS, UNLIMITED, ManagerSpec


def popen_settings(spec: ManagerSpec) -> dict[str, Any]:
    """Extra Popen arguments for the manager's settings ({} when it has none)."""
    out: dict[str, Any] = {}
    if spec.umask is not None:
        out["umask"] = spec.umask
    account = _account(spec)
    if account is not None:
        uid, gid, groups = account
        if uid != os.geteuid() or gid != os.getegid():
            if os.geteuid() != 0:
                raise OSError(
                    f"user = {spec.user!r} / group = {spec.group!r} need pmon to run as root "
                    f"(it runs as uid {os.geteuid()})"
                )
            out.update(user=uid, group=gid, extra_groups=groups)
    if spec.rlimits:
        out["preexec_fn"] = _set_limits(spec.rlimits)
    return out


def account_env(spec: ManagerSpec) -> dict[str, str]:
    """USER, LOGNAME and HOME of the manager's user (as systemd's User= sets them)."""
    if spec.user is None:
        return {}
    import pwd

    entry = pwd.getpwuid(int(spec.user)) if spec.user.isdigit() else pwd.getpwnam(spec.user)
    return {"USER": entry.pw_name, "LOGNAME": entry.pw_name, "HOME": entry.pw_dir}


def own_log(spec: ManagerSpec, path: Path) -> None:
    """The manager's log file belongs to the user it runs as (pmon as root)."""
    account = _account(spec)
    if account is not None and os.geteuid() == 0:
        os.chown(path, account[0], account[1])


def cgroup_limits(spec: ManagerSpec) -> dict[str, str]:
    """memory_max, cpu_max, pids_max as the cgroup files they are written to."""
    pairs = (("memory.max", spec.memory_max), ("cpu.max", spec.cpu_max), ("pids.max", spec.pids_max))
    return {file: value for file, value in pairs if value is not None}


def stop_signal(spec: ManagerSpec) -> int:
    return int(getattr(signal, f"SIG{spec.stop_signal}"))


def _account(spec: ManagerSpec) -> tuple[int, int, list[int]] | None:
    """(uid, gid, supplementary groups) for the spec's user / group; None: as pmon."""
    if spec.user is None and spec.group is None:
        return None
    import grp
    import pwd

    uid, gid, groups = os.geteuid(), os.getegid(), os.getgroups()
    if spec.user is not None:
        entry = pwd.getpwuid(int(spec.user)) if spec.user.isdigit() else pwd.getpwnam(spec.user)
        uid, gid = entry.pw_uid, entry.pw_gid
        groups = os.getgrouplist(entry.pw_name, gid)  # as a login of that user has them
    if spec.group is not None:
        gid = int(spec.group) if spec.group.isdigit() else grp.getgrnam(spec.group).gr_gid
    return uid, gid, groups


def _set_limits(limits: Any) -> Callable[[], None]:
    import resource

    pairs = []
    for key, value in limits.items():
        which = getattr(resource, RLIMITS[key])
        limit = resource.RLIM_INFINITY if value == UNLIMITED else value
        pairs.append((which, limit))

    def apply() -> None:  # in the child, after fork: no locks, no allocation worth a name
        for which, limit in pairs:  # soft = hard, as systemd's LimitNOFILE= and friends
            resource.setrlimit(which, (limit, limit))

    return apply
