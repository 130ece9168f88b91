"""`pmon events`: the event log with readable local times; `-f` follows it through the
control channel's feed (`subscribe`, docs/control.md), never by polling the file.

`register(main, config_option, fail, default_config)` is called by cli/__init__.py with its helpers (this
module does not import pmon.cli: `python -m pmon.cli` would import it twice).
"""

from __future__ import annotations

import fnmatch
import json
import re
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import click

from pmon.cli.status import complete_managers

EXIT_REFUSED, EXIT_CONFIG, EXIT_NOT_RUNNING = 1, 2, 3
_AGO = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|min|h|d)$")
_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: float | None = None) -> float:
    """An epoch time from '90s', '10m', '2h', '1d' (ago), 'HH:MM[:SS]' (today, local time),
    or an ISO 8601 date/time ('2026-12-02', '2026-12-02 03:10', with or without a zone)."""
    now = time.time() if now is None else now
    text = text.strip()
    ago = _AGO.match(text)
    if ago:
        return now - float(ago.group(1)) * _UNITS[ago.group(2)]
    try:
        if re.fullmatch(r"\d{1,2}:\d{2}(:\d{2})?", text):
            today = datetime.fromtimestamp(now).strftime("%Y-%m-%d")
            text = f"{today} {text}"
        return datetime.fromisoformat(text).timestamp()  # naive: local time
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: give a time ago (90s, 10m, 2h, 1d), a time today (03:10) "
            "or an ISO 8601 date/time (2026-12-02 03:10)", param_hint="--since"
        ) from None


def local(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) + f".{int(ts * 1000) % 1000:03d}"


def log_files(state_dir: Path) -> list[Path]:
    """The event log and its rotated backups, oldest first."""
    path = state_dir / "log" / "events.jsonl"
    backups = sorted(
        (p for p in path.parent.glob("events.jsonl.*") if p.suffix[1:].isdigit()),
        key=lambda p: -int(p.suffix[1:]),
    )
    return [*backups, path]


def read_records(files: Iterable[Path]) -> Iterator[dict[str, Any]]:
    for path in files:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            continue
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut by a full disk
            if isinstance(record, dict) and isinstance(record.get("ts"), (int, float)):
                yield record


def matches(record: dict[str, Any], patterns: tuple[str, ...]) -> bool:
    name = record.get("manager")
    return not patterns or (isinstance(name, str) and any(fnmatch.fnmatchcase(name, p) for p in patterns))


def render(record: dict[str, Any], as_json: bool) -> str:
    if as_json:
        from pmon.control.protocol import iso8601

        return json.dumps({"time": iso8601(record["ts"]), **record})
    who = record.get("manager") or "-"
    return f"{local(record['ts'])}  {who:<14} {record.get('message', record.get('event', ''))}"


def register(
    main: click.Group, config_option: Callable[..., Any], fail: Callable[..., Any],
    default_config: Callable[[Path | None], Path],
) -> None:
    @main.command()
    @config_option
    @click.argument("names", nargs=-1, metavar="[NAME|GLOB]...", shell_complete=complete_managers)
    @click.option("-f", "--follow", is_flag=True, help="Keep printing new events as they happen (needs a running pmon).")
    @click.option("--since", "since", metavar="TIME", help="Only events from TIME on: 10m, 2h, 03:10, 2026-12-02 03:10.")
    @click.option("-n", "--lines", "count", type=int, default=None, help="Only the last N events (default 50 without --since).")
    @click.option("--json", "as_json", is_flag=True, help="One JSON object a line, with 'time' (ISO 8601) beside 'ts'.")
    def events(config_path: Path | None, names: tuple[str, ...], follow: bool, since: str | None,
               count: int | None, as_json: bool) -> None:
        """pmon's event log (of NAMEs only, if given), with local times.

        Every decision is in it: starts, exits and what followed, blocks, project restarts,
        switchovers, refusals. With -f, state changes are shown too, as they happen.
        """
        from pmon.control.client import Endpoint, RemoteError, subscribe
        from pmon.errors import ConfigError, NotRunning, PmonError

        try:
            where = Endpoint.read(default_config(config_path))
        except ConfigError as exc:
            fail(str(exc), EXIT_CONFIG)
        stream = None
        if follow:  # subscribe first: nothing written while the file is read is missed
            try:
                stream = subscribe(where, names)
            except NotRunning as exc:
                fail(str(exc), EXIT_NOT_RUNNING)
            except (RemoteError, PmonError, OSError) as exc:
                fail(str(exc))
        start = parse_since(since) if since else None
        past = [r for r in read_records(log_files(where.state_dir))
                if matches(r, names) and (start is None or r["ts"] >= start)]
        if count is not None or start is None:
            keep = 50 if count is None else max(count, 0)
            past = past[len(past) - keep:] if keep < len(past) else past
        seen = {_key(r) for r in past}
        last = past[-1]["ts"] if past else 0.0
        for record in past:
            click.echo(render(record, as_json))
        if stream is None:
            return
        try:
            for record in stream:
                if record["ts"] <= last and _key(record) in seen:
                    continue  # already printed from the file
                click.echo(render(record, as_json))
                sys.stdout.flush()
        except KeyboardInterrupt:
            return  # Ctrl-C ends a follow, as with tail -f
        except (OSError, ValueError):
            pass
        fail("pmon went away; no more events", EXIT_NOT_RUNNING)


def _key(record: dict[str, Any]) -> tuple[Any, ...]:
    return (record.get("ts"), record.get("event"), record.get("message"))
