"""pmon's stderr when it is the systemd journal: sd-daemon(3) priority prefixes, no clock.

systemd sets JOURNAL_STREAM=DEV:INODE for a service whose stdout/stderr is connected to
journald; the variable alone proves nothing (a child of such a service inherits it with
its stderr elsewhere), so the stream counts only when stderr is that very socket
(systemd.exec(5)). Then every line starts with `<N>`, the syslog priority, which journald
strips and records; journald stamps the time itself, so pmon writes none. The unit's
SyslogIdentifier=pmon-PROJECT names the lines: `journalctl -t pmon-PROJECT -p warning`
shows pmon's warnings and errors.

The priority of an event comes from its kind (the `event` of the event log), with the
few kinds whose weight depends on their fields decided here too. Every kind the code
writes is in exactly one of the tables below (tests/test_journal_kinds.py reads the code
and fails on a kind that is not), so a new warning cannot fall to info unnoticed.
"""

from __future__ import annotations

import os
import sys
from typing import IO, Any, Mapping

ERR, WARNING, NOTICE, INFO = 3, 4, 5, 6

_ERRORS = frozenset({
    "write-failed", "state-write-failed", "extension-error", "listener-error", "plugin-error",
    "plugin-failed", "spawn-failed", "start-refused", "reload-failed", "project-blocked",
    "control-error", "pmon-tcp-failed", "metrics-failed", "metrics-error",
})
_WARNINGS = frozenset({
    "kill", "project-restart", "start-timeout", "not-ready", "died-away", "stray",
    "pmon-tcp-error", "plugin-restart", "hot-restart-ignored", "fd-limit",
    "metrics-counts-lost", "stop-resumed", "job-resumed", "adoption", "pmon-tcp-refused",
    "pmon-tcp-auth-failed", "self-fenced", "redundancy-stranger",
    "redundancy-settings-differ",
})
_NOTICES = frozenset({
    "pmon-started", "pmon-stopped", "shutdown", "switchover", "redundancy-role", "reload",
    "adopted", "project-started", "plugin-recovered", "verdict-cleared", "hot-restart-waits",
    "state-dir", "write-recovered", "general-query", "self-fence-ended",
})
_INFOS = frozenset({  # the routine: a manager started, ready, signalled, adopted; listening
    "started", "ready", "signalled", "adopt", "plugins-loaded", "metrics-listening",
    "pmon-tcp-listening", "stop-command",
})
_BY_FIELDS = frozenset({"exited", "verdict"})  # weighed by their fields, in priority()
CLASSIFIED = _ERRORS | _WARNINGS | _NOTICES | _INFOS | _BY_FIELDS
_VERDICT = {"error": ERR, "warning": WARNING}


def priority(event: str, fields: Mapping[str, Any]) -> int:
    """The syslog priority of one event of the event log."""
    if event in _ERRORS:
        return ERR
    if event in _WARNINGS:
        return WARNING
    if event == "exited":
        # an operator's stop, the project's stop, a `once` manager done: as planned
        state, code = fields.get("state"), fields.get("exit_code")
        if state == "stopped" or (state == "exited" and code == 0):
            return INFO
        return ERR if state == "blocked" else WARNING
    if event == "verdict":
        return _VERDICT.get(str(fields.get("severity")), NOTICE)
    return NOTICE if event in _NOTICES else INFO


def connected(stream: IO[str] | None = None, env: Mapping[str, str] | None = None) -> bool:
    """Whether `stream` (default: stderr) is the journal stream systemd gave this process."""
    stream = sys.stderr if stream is None else stream
    value = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    device, sep, inode = value.partition(":")
    if not sep or not device.isdigit() or not inode.isdigit() or stream is None:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return st.st_dev == int(device) and st.st_ino == int(inode)


def prefixed(level: int, message: str) -> str:
    """`<N>` before every line: journald takes each line as one entry of its own."""
    return "\n".join(f"<{level}>{line}" for line in message.splitlines() or [""])
