"""The systemd unit of a project: written by `pmon service install`, removed by `uninstall`.

Choices, and why:
- Type=notify: systemd counts pmon as started only when the start sequence is done
  (sdnotify.py sends READY=1), so units ordered after it find the project running; pmon
  sends STOPPING=1 when its own stop begins and keeps STATUS= current.
- KillMode=process (default): on `systemctl stop` systemd sends SIGTERM to pmon alone;
  pmon stops its managers in reverse order itself, each with its seconds_to_kill. And when
  pmon dies or is killed, systemd leaves the managers alone, so the pmon that Restart=
  starts adopts them (hot restart). With KillMode=mixed or control-group, systemd would
  kill every manager whenever pmon ends. `--kill-mode mixed` is offered for sites that
  prefer systemd to SIGKILL leftovers after a stop (it gives up hot restart after a crash).
- RestartKillSignal= (systemd 244+): `systemctl restart` sends the hot-restart signal, which
  pmon takes as `pmon detach`; the next pmon adopts every manager. `systemctl stop` still
  sends SIGTERM: a real ordered stop. An older systemd ignores the line (with a warning in
  the journal) and a restart is a stop and a start.
- SuccessExitStatus= / RestartPreventExitStatus=: a final stop under the unit exits with
  EXIT_STOPPED, so `pmon shutdown` leaves the unit stopped instead of being restarted; a
  configuration error (exit 2) is not restarted every second for ever either.
- SyslogIdentifier=pmon-PROJECT: `journalctl -t pmon-PROJECT -p warning` finds pmon's
  warnings and errors (pmon writes sd-daemon priority prefixes, runtime/journal.py).
- Delegate=yes: the unit's cgroup subtree is pmon's, so that each manager runs in a cgroup
  of its own that holds every descendant (runtime/cgroups.py); pmon sits in the leaf
  pmon-supervisor. memory_max & co. also need DelegateSubgroup=, systemd 254+, so that a
  restarted pmon may start in a unit whose subtree has controllers: not written (older
  systemd rejects the unit), so pmon refuses the limits in such a unit with the reason
  (runtime/cgroups.py find_tree); add the line by hand on a newer systemd.
- TimeoutStopSec covers the longest ordered stop (the sum of the managers' seconds_to_kill).
- WatchdogSec (optional): pmon's loop sends WATCHDOG=1 at half of it.

Each directive is written by its own quoting rules (see the quote_* functions): what is
right for ExecStart= is wrong for WorkingDirectory=.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pmon.commands.project import HOT_RESTART_SIGNAL
from pmon.runtime.statefile import write_atomically
from pmon.service import EXIT_STOPPED, UNIT_ENV, pmon_command, service_name, start_timeout, stop_timeout

if TYPE_CHECKING:
    from pmon.config import Config

KILL_MODES = ("process", "mixed")
EXIT_CONFIG = 2  # `pmon run`'s exit status for a configuration error (cli/__init__.py)
# systemd's own user-name rule (the strict one, valid_user_group_name without relaxations).
_USER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,30}")


class UnitError(ValueError):
    """A unit that cannot be written (a path systemd cannot express, an unknown user)."""


@dataclass(frozen=True)
class UnitOptions:
    user: bool = False  # a user unit (systemctl --user) instead of a system one
    watchdog_sec: float | None = None
    kill_mode: str = "process"
    python: str | None = None  # default: the Python running pmon now
    run_as: str | None = None  # User= of a system unit (pmon service install --user-name)


def unit_name(config: "Config") -> str:
    return f"{service_name(config)}.service"


def unit_dir(user: bool) -> Path:
    if user:
        base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        return Path(base) / "systemd" / "user"
    return Path("/etc/systemd/system")


# --- quoting, one function per directive's rules ---------------------------------------
def _plain(text: str, what: str) -> str:
    """No control characters: a newline would end the directive (and no rule escapes it
    in a path)."""
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise UnitError(f"{what} {text!r} contains a control character; systemd cannot take it")
    return text


def specifiers(text: str) -> str:
    """Text in a directive that expands specifiers (%n, %h, ...): a literal % is %%."""
    return text.replace("%", "%%")


def quote(arg: str) -> str:
    """One word of ExecStart=: specifiers (%) and environment variables ($) are expanded
    there, and words are split at spaces unless double-quoted (C escapes inside)."""
    text = specifiers(_plain(arg, "the command word")).replace("$", "$$")
    if text and not any(c.isspace() or c in "\"'\\;" for c in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_path(path: str) -> str:
    """A path directive (WorkingDirectory=): the rest of the line is the path, taken as it
    stands: no quotes (they would be part of the path), no $ expansion; specifiers only.
    A trailing backslash would join the next line, and leading or trailing blanks are
    stripped by the parser: such paths cannot be written."""
    _plain(path, "the path")
    if not path.startswith("/"):
        raise UnitError(f"the path {path!r} is not absolute")
    if path != path.strip() or path.endswith("\\"):
        raise UnitError(
            f"the path {path!r} starts or ends with a blank or a backslash, which a unit "
            "file cannot express; rename the folder"
        )
    return specifiers(path)


def quote_env(name: str, value: str) -> str:
    """One assignment of Environment=: a double-quoted word (C escapes inside), specifiers
    expanded, $ left alone (Environment= does not expand variables)."""
    _plain(value, f"the value of {name}")
    text = specifiers(f"{name}={value}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def check_user_name(name: str) -> str:
    """User=: a name by systemd's rule, and one that exists here (so the unit can start)."""
    if not _USER_NAME.fullmatch(name):
        raise UnitError(
            f"user name {name!r} is not one systemd accepts (letters, digits, '_', '-'; "
            "not starting with a digit or '-')"
        )
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        raise UnitError(f"no user {name!r} on this machine; create it first (useradd)") from None
    return name


# --- the unit ------------------------------------------------------------------------
def unit_text(config: "Config", options: UnitOptions = UnitOptions()) -> str:
    if options.kill_mode not in KILL_MODES:
        raise ValueError(f"kill mode must be one of {', '.join(KILL_MODES)}")
    command = " ".join(quote(arg) for arg in pmon_command(config, options.python))
    name = service_name(config)
    lines = [
        "# Written by `pmon service install`; remove with `pmon service uninstall`.",
        "[Unit]",
        f"Description={specifiers(f'pmon process monitor, project {config.project.name}')}",
        "After=network-online.target",
        "Wants=network-online.target",
        "StartLimitIntervalSec=0",
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={command}",
        "ExecReload=/bin/kill -HUP $MAINPID",
        f"WorkingDirectory={quote_path(str(config.path.parent))}",
        f"Environment={quote_env('PYTHONUNBUFFERED', '1')} {UNIT_ENV}=%n",
        f"SyslogIdentifier={specifiers(name)}",
    ]
    if options.run_as:
        lines.append(f"User={check_user_name(options.run_as)}")
    lines += [
        f"KillMode={options.kill_mode}",
        "Delegate=yes",
        "KillSignal=SIGTERM",
        f"RestartKillSignal={HOT_RESTART_SIGNAL}",
        f"TimeoutStartSec={start_timeout(config):g}",
        # `systemctl restart` detaches once a job under way is done: a project restart is a
        # stop and a start, so the stop may take both (the final stop takes only the first)
        f"TimeoutStopSec={stop_timeout(config) + start_timeout(config):g}",
        "Restart=always",
        "RestartSec=1",
        f"SuccessExitStatus={EXIT_STOPPED}",
        f"RestartPreventExitStatus={EXIT_STOPPED} {EXIT_CONFIG}",
    ]
    if options.watchdog_sec:
        lines.append(f"WatchdogSec={options.watchdog_sec:g}")
    target = "default.target" if options.user else "multi-user.target"
    lines += ["", "[Install]", f"WantedBy={target}", ""]
    return "\n".join(lines)


def install(config: "Config", options: UnitOptions, directory: Path | None = None) -> Path:
    """Write the unit file (and hand the state directory to `run_as`); returns its path.
    Raises UnitError for a unit that cannot be written, OSError when the file cannot."""
    text = unit_text(config, options)  # first: a bad path or user writes nothing
    if options.run_as:
        own_state_dir(config, options.run_as)
    target = (directory or unit_dir(options.user)) / unit_name(config)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(target, text.encode())
    os.chmod(target, 0o644)
    return target


def own_state_dir(config: "Config", user: str) -> None:
    """pmon runs as `user`: its state directory (lock, sockets, state file, logs) must be
    that user's, also what an earlier pmon as root left there."""
    import pwd

    entry = pwd.getpwnam(user)
    state_dir = config.project.state_dir
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    for root, dirs, files in os.walk(state_dir):
        for item in [root, *(os.path.join(root, d) for d in dirs), *(os.path.join(root, f) for f in files)]:
            os.chown(item, entry.pw_uid, entry.pw_gid, follow_symlinks=False)


def uninstall(config: "Config", user: bool, directory: Path | None = None) -> Path | None:
    """Remove the unit file; returns its path, or None when there was none."""
    target = (directory or unit_dir(user)) / unit_name(config)
    if not target.exists():
        return None
    target.unlink()
    return target


# --- talking to systemctl (install --enable/--now, uninstall) -----------------------------
def systemd_running(user: bool) -> bool:
    """sd_booted(3): systemd is PID 1 here (a user unit also needs the user's manager)."""
    if shutil.which("systemctl") is None or not os.path.isdir("/run/systemd/system"):
        return False
    return not user or bool(os.environ.get("XDG_RUNTIME_DIR"))


def systemctl(user: bool, *args: str) -> subprocess.CompletedProcess[str]:
    command = ["systemctl", *(["--user"] if user else []), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def is_loaded(config: "Config", user: bool) -> bool:
    """systemd knows the unit (enabled, running or at least loaded from its file)."""
    done = systemctl(user, "show", "-p", "LoadState", "--value", unit_name(config))
    return done.returncode == 0 and done.stdout.strip() not in ("", "not-found")


def next_steps(config: "Config", user: bool, installed: bool) -> list[str]:
    ctl = "systemctl --user" if user else "systemctl"
    name = unit_name(config)
    if installed:
        return [f"{ctl} daemon-reload", f"{ctl} enable --now {name}", f"{ctl} status {name}"]
    return [f"{ctl} disable --now {name}   (if it was enabled)", f"{ctl} daemon-reload"]
