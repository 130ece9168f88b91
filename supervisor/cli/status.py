"""`pmon status`: one row per manager that says what it is doing, since when, what it costs,
how it last ended, and, where it is not where it should be, why and what to type.

Exit codes (like `systemctl is-active` and supervisorctl 4's `status`, stated in the help):
0 everything shown that should run runs; 1 something that should run does not (or the
project is not running); 3 pmon is not running; 4 no manager matches a NAME or GLOB.

`register(main, config_option, call, fail)` is called by cli/__init__.py with its helpers.
"""

from __future__ import annotations

import fnmatch
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import click

EXIT_OK, EXIT_NOT_OK, EXIT_NO_SUCH = 0, 1, 4
STATES = ("stopped", "starting", "running", "stopping", "exited", "backoff", "blocked", "hung")
_COLOURS = {
    "running": "green", "starting": "yellow", "stopping": "yellow", "backoff": "red",
    "blocked": "red", "hung": "red", "exited": None, "stopped": None,
}


def use_colour() -> bool:
    """Colour on a terminal, none when piped or with NO_COLOR set (no-color.org)."""
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def select(managers: Sequence[dict[str, Any]], patterns: Iterable[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """The managers that NAMEs, GLOBs or indexes pick (in project order), and the patterns
    that picked none."""
    patterns = list(patterns)
    if not patterns:
        return list(managers), []
    picked, unmatched = set(), []
    for pattern in patterns:
        hits = [m["name"] for m in managers
                if fnmatch.fnmatchcase(m["name"], pattern) or str(m["index"]) == pattern]
        if not hits:
            unmatched.append(pattern)
        picked.update(hits)
    return [m for m in managers if m["name"] in picked], unmatched


def complete_managers(ctx: click.Context, _param: Any, incomplete: str) -> list[str]:
    """Shell completion: the manager names of the running project (from its status), else
    of its file; nothing at all when neither can be read. Never raises (a shell calls it)."""
    try:
        from pmon.control.client import Endpoint, call

        given = ctx.params.get("config_path") or ctx.find_root().params.get("config_path")
        path = Path(given or os.environ.get("PMON_CONFIG") or "pmon.toml")
        where = Endpoint.read(path)
        try:
            names = [m["name"] for m in call(where, "status", timeout=2.0)["managers"]]
        except Exception:
            import tomllib

            data = tomllib.loads(path.read_text(encoding="utf-8"))
            names = [m["name"] for m in data.get("managers", []) if isinstance(m.get("name"), str)]
    except Exception:
        return []
    return [name for name in names if name.startswith(incomplete)]


def no_match_message(pattern: str, names: Sequence[str]) -> str:
    import difflib

    close = difflib.get_close_matches(pattern, names, n=3, cutoff=0.6)
    listed = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else f"; managers: {listed}"
    return f"no manager matches {pattern!r}{hint}"


def shown_state(row: dict[str, Any]) -> str:
    return "hung" if str(row.get("why", "")).startswith("hung:") else str(row["state"])


def table_state(row: dict[str, Any]) -> str:
    """The STATE cell: an exited manager shows its exit code, as it always did."""
    state = shown_state(row)
    if state == "exited" and row.get("exit_code") is not None:
        state += f" ({row['exit_code']})"
    if row.get("ready_failed"):
        state += " (not ready)"
    return state


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n = n / 1024  # type: ignore[assignment]
    return "-"


def _last_exit(last: dict[str, Any] | None) -> str:
    if not last:
        return "-"
    text = str(last.get("signal") or (f"code {last['code']}" if last.get("code") is not None else "could not start"))
    at = last.get("at")
    if at:
        fmt = "%H:%M:%S" if time.time() - at < 86400 else "%Y-%m-%d %H:%M"
        text += " at " + time.strftime(fmt, time.localtime(at))
    return text


def header(status: dict[str, Any]) -> str:
    line = f"project {status['project']}: {status['project_state']}"
    if status.get("project_reason") and status["project_state"] != "running":
        line += f" ({status['project_reason']})"
    role = status.get("role")
    if role and role != "standalone":
        partner = status.get("partner_role") or "not connected"
        line += f"; server {status.get('server')}: {role}, partner {status.get('partner')}: {partner}"
    return line


def print_status(status: dict[str, Any], rows: Sequence[dict[str, Any]], colour: bool) -> None:
    paint = (lambda text, **kw: click.style(text, **kw)) if colour else (lambda text, **kw: text)
    state_colour = _COLOURS.get(status["project_state"], "red" if status["project_state"] == "blocked" else None)
    click.echo(paint(header(status), bold=True, fg=state_colour), color=colour)
    if status.get("containment"):  # which containment is in force (runtime/containment.py)
        click.echo(f"containment: {status['containment']['detail']}")
    table = [("#", "NAME", "STATE", "PID", "START", "CORE", "RESTARTS", "UPTIME", "CPU", "RSS", "LAST EXIT")]
    for m in rows:
        table.append((
            str(m["index"]), m["name"], table_state(m), str(m["pid"] or "-"), m["start"],
            "yes" if m["core"] else "",
            f"{m.get('recent_restarts', m['restarts'])}/{m.get('restart_limit', '-')}",
            _duration(m.get("uptime")),
            "-" if m.get("cpu_percent") is None else f"{m['cpu_percent']:.1f}%",
            _bytes(m.get("rss")), _last_exit(m.get("last_exit")),
        ))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for n, row in enumerate(table):
        cells = [cell.ljust(width) for cell, width in zip(row, widths)]
        if n == 0:
            cells = [paint(c, bold=True) for c in cells]
        else:
            fg = _COLOURS.get(row[2].split()[0])
            if fg:
                cells[2] = paint(cells[2], fg=fg, bold=True) if fg == "red" else paint(cells[2], fg=fg)
        click.echo("  ".join(cells).rstrip(), color=colour)
    explained = [m for m in rows if m.get("why") and (not m.get("ok", True) or m.get("held"))]
    if explained:
        click.echo()
    for m in explained:
        hint = f"  -> {paint(m['hint'], bold=True)}" if m.get("hint") else ""
        why = paint(m["why"], fg="red" if not m.get("ok", True) else None)
        click.echo(f"{m['name']}: {why}{hint}", color=colour)
    if status.get("project_state") == "blocked":
        click.echo(f"project: {paint('pmon restart --all', bold=True)} starts it again", color=colour)
    verdicts = [v for v in status.get("verdicts", []) if v.get("key") != "alive"]  # hung: above
    if verdicts:
        click.echo(f"monitor verdicts (error state {status.get('plugin_error_state', 0):g}):")
        for v in verdicts:
            click.echo(f"  {v['severity']:<8} {v['target'] or 'project'}: {v['message']} ({v['plugin']})")


def exit_code(status: dict[str, Any], rows: Sequence[dict[str, Any]]) -> int:
    if status["project_state"] != "running":
        return EXIT_NOT_OK
    return EXIT_OK if all(m.get("ok", m["state"] == "running") for m in rows) else EXIT_NOT_OK


def register(main: click.Group, config_option: Callable[..., Any], call: Callable[..., Any],
             fail: Callable[..., Any]) -> None:
    @main.command()
    @config_option
    @click.argument("names", nargs=-1, metavar="[NAME|GLOB|INDEX]...", shell_complete=complete_managers)
    @click.option("--state", "states", multiple=True, type=click.Choice(STATES),
                  help="Only managers in this state (repeatable; 'hung': running, no alive sign).")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts (ISO 8601 times beside the epoch numbers).")
    def status(config_path: Path | None, names: tuple[str, ...], states: tuple[str, ...], as_json: bool) -> None:
        """One row per manager: state, pid, restarts in the window / allowed, uptime, CPU and
        RSS of its process tree, last exit; below, why a manager is not where it should be
        and the command that gets it out.

        \b
        Exit codes:
          0  everything shown that should run runs
          1  something that should run does not, or the project is not running
          3  pmon is not running for this project
          4  no manager matches a NAME or GLOB
        """
        result = call(config_path, "status", as_json=as_json)
        rows, unmatched = select(result["managers"], names)
        if unmatched:
            known = [m["name"] for m in result["managers"]]
            message = "; ".join(no_match_message(p, known) for p in unmatched)
            if as_json:
                click.echo(json.dumps({"ok": False, "error": {"code": "unknown-manager", "message": message, "exit_code": EXIT_NO_SUCH}}))
            fail(message, EXIT_NO_SUCH)
        if states:
            rows = [m for m in rows if shown_state(m) in states]
        code = exit_code(result, rows)
        if as_json:
            from pmon.control.protocol import with_iso

            out = {k: v for k, v in result.items() if k != "managers"}
            out["managers"] = rows
            out["exit_code"] = code
            click.echo(json.dumps(with_iso(out), indent=1))
        else:
            print_status(result, rows, use_colour())
        sys.exit(code)
