"""How many file descriptors a project needs, against RLIMIT_NOFILE: said at start-up (an
event) and by `pmon validate`, so that a project too big for its limit is not found out
by managers ending `blocked` because a spawn found no fd.

An estimate that errs high: per manager its pidfd and its output log, plus a few for a
spawn under way; pmon's own (event log, lock, sockets, the loop, plugins); the control
channel's and PMON TCP's connection limits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pmon.config import Config

PER_MANAGER = 2  # pidfd + output log
OWN = 48  # event log, lock, notify and control sockets, epoll, self-pipe, plugins, spawns
CONTROL_CONNECTIONS = 64  # the control server's limit (control/server.py takes it from here)


def needed(config: "Config") -> int:
    clients = CONTROL_CONNECTIONS + (config.pmon_tcp.max_clients if config.pmon_tcp else 0)
    return OWN + PER_MANAGER * len(config.managers) + clients


def limit(after_raise: bool = True) -> int | None:
    """RLIMIT_NOFILE: the soft limit, or (`after_raise`) the hard one pmon lifts it to at
    start (runtime/platform.py). None where there is no such limit (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    value = hard if after_raise else soft
    return None if value == resource.RLIM_INFINITY else value


def shortfall(config: "Config", available: int | None) -> str | None:
    """A sentence when the project needs more fds than `available`, else None."""
    need = needed(config)
    if available is None or need <= available:
        return None
    return (
        f"the project needs about {need} file descriptors ({len(config.managers)} managers "
        f"x {PER_MANAGER} + {need - PER_MANAGER * len(config.managers)} for pmon and its "
        f"clients) but RLIMIT_NOFILE is {available}: managers would fail to start; raise the "
        "limit (ulimit -n, LimitNOFILE= in the systemd unit)"
    )
