"""`pmon logs NAME [-f] [-n N] [--since TIME]`: a manager's output, with pmon's own lines
about it (`-- pmon 2026-12-02 03:01:12.345: pid 1200 exited with signal SIGKILL: restarted`)
where they happened: pmon writes them into the same file (runtime/output.py `note`).

The file is read directly (the CLI runs beside pmon): it works while pmon is down too. `-f`
follows the file (the manager writes it, not pmon: there is nothing to subscribe to) and
survives its rotation (copy-truncate: the file shrinks, reading starts again at 0).

`register(main, config_option, fail, default_config)` is called by cli/__init__.py.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable

import click

from pmon.cli.events import parse_since
from pmon.cli.status import complete_managers, no_match_message

EXIT_CONFIG, EXIT_NO_SUCH = 2, 4
NOTE = "-- pmon "
FOLLOW_EVERY = 0.2  # seconds between looks at a followed file


def files_of(path: Path) -> list[Path]:
    """The log and its rotated copies, oldest first."""
    backups = sorted((p for p in path.parent.glob(path.name + ".*") if p.suffix[1:].isdigit()),
                     key=lambda p: -int(p.suffix[1:]))
    return [*backups, path]


def note_time(line: str) -> float | None:
    """The time of one of pmon's lines, or None for the manager's own."""
    if not line.startswith(NOTE):
        return None
    try:
        return datetime.strptime(line[len(NOTE):len(NOTE) + 23], "%Y-%m-%d %H:%M:%S.%f").timestamp()
    except ValueError:
        return None


def since_filter(lines: Iterable[str], start: float) -> list[str]:
    """The lines from pmon's first line at or after `start` on (the manager's lines carry no
    time of their own)."""
    out: list[str] = []
    for line in lines:
        at = note_time(line)
        if out or (at is not None and at >= start):
            out.append(line)
    return out


def register(main: click.Group, config_option: Callable[..., Any], fail: Callable[..., Any],
             default_config: Callable[[Path | None], Path]) -> None:
    @main.command()
    @config_option
    @click.argument("name", shell_complete=complete_managers)
    @click.option("-f", "--follow", is_flag=True, help="Keep printing what the manager writes.")
    @click.option("-n", "--lines", "count", type=int, default=None, help="Only the last N lines (default 50 without --since).")
    @click.option("--since", metavar="TIME", help="From pmon's first line at TIME on: 10m, 2h, 03:10, 2026-12-02 03:10.")
    def logs(config_path: Path | None, name: str, follow: bool, count: int | None, since: str | None) -> None:
        """A manager's output (stdout and stderr), with pmon's lines about it: starts, exits
        (signal or code, and what pmon did), failed starts, signals, monitor restarts."""
        from pmon.control.client import Endpoint
        from pmon.errors import ConfigError

        try:
            path = default_config(config_path)
            where = Endpoint.read(path)
            names = _names(where, path)
        except ConfigError as exc:
            fail(str(exc), EXIT_CONFIG)
        if name not in names:
            fail(no_match_message(name, names), EXIT_NO_SUCH)
        log = where.state_dir / "log" / f"{name}.log"
        lines: list[str] = []
        for part in files_of(log):
            try:
                lines += part.read_text(encoding="utf-8", errors="replace").splitlines()
            except FileNotFoundError:
                continue
        if since:
            lines = since_filter(lines, parse_since(since))
        if count is not None or not since:
            keep = 50 if count is None else max(count, 0)
            lines = lines[len(lines) - keep:] if keep < len(lines) else lines
        for line in lines:
            _echo(line)
        if follow:
            try:
                _follow(log)
            except KeyboardInterrupt:
                return


def _echo(line: str) -> None:
    if line.startswith(NOTE) and sys.stdout.isatty():
        import os

        if not os.environ.get("NO_COLOR"):
            line = click.style(line, fg="cyan")
    click.echo(line)


def _names(where: Any, path: Path) -> list[str]:
    """The managers of the running project, else of its file."""
    from pmon.control.client import call

    try:
        return [m["name"] for m in call(where, "status", timeout=5.0)["managers"]]
    except Exception:
        import tomllib

        data = tomllib.loads(path.read_text(encoding="utf-8"))
        return [str(m["name"]) for m in data.get("managers", []) if isinstance(m, dict) and "name" in m]


def _follow(path: Path) -> None:
    position = path.stat().st_size if path.exists() else 0
    pending = b""
    while True:
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size < position:  # rotated (copy-truncate) or cut: start again at the top
            position, pending = 0, b""
        if size > position:
            with open(path, "rb") as handle:
                handle.seek(position)
                data = handle.read(size - position)
            position += len(data)
            pending += data
            *whole, pending = pending.split(b"\n")
            for raw in whole:
                _echo(raw.decode("utf-8", errors="replace"))
            sys.stdout.flush()
        time.sleep(FOLLOW_EVERY)
