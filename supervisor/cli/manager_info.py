"""`pmon describe NAME [--json]`: one manager in full (commands/describe.py answers).

`register(main, config_option, call)` is called by cli/__init__.py with its helpers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import click

from pmon.cli.status import _bytes, _duration, _last_exit, complete_managers


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def lines_of(d: dict[str, Any]) -> list[str]:
    out = [f"{d['name']} (#{d['index']}): {d['state']}" + (f", pid {d['pid']}" if d.get("pid") else "")]
    if d.get("why"):
        out.append(f"  why:      {d['why']}" + (f"  -> {d['hint']}" if d.get("hint") else ""))
    import shlex

    out += [
        f"  command:  {shlex.join(d['command'])}",
        f"  cwd:      {d['cwd']}",
        f"  start:    {d['start']}" + (", core" if d["core"] else "") + f", run_on {d['run_on']}"
        + (f", weight {d['weight']}" if d.get("weight") is not None else ""),
        f"  ready:    {d['ready']}" + (f" after {d['ready_seconds']:g} s" if d["ready"] == "delay" else "")
        + f", start_timeout {d['start_timeout']:g} s",
        f"  limits:   restart_count {d['restart_count']} within reset_after {d['reset_after']:g} s, "
        f"seconds_to_kill {d['seconds_to_kill']:g}",
        f"  log:      {d['log_file']}  (pmon logs {d['name']})",
        f"  usage:    uptime {_duration(d.get('uptime'))}, CPU "
        + ("-" if d.get("cpu_percent") is None else f"{d['cpu_percent']:.1f}%") + f", RSS {_bytes(d.get('rss'))}",
        f"  last exit: {_last_exit(d.get('last_exit'))}",
        f"  restarts: {d['recent_restarts']}/{d['restart_limit']} in the window, {d['restarts']} since pmon started",
    ]
    for restart in d["restarts_in_window"]:
        out.append(f"            {_when(restart['at'])}")
    if d["env"]:
        out.append("  env:")
        out += [f"    {k}={v}" for k, v in d["env"].items()]
    if d["monitor"]:
        out.append("  monitors: " + ", ".join(f"{k} {v}" for k, v in d["monitor"].items()))
    if d["events"]:
        out.append("  last events:")
        out += [f"    {_when(e['ts'])}  {e.get('message', e.get('event'))}" for e in d["events"]]
    return out


def register(main: click.Group, config_option: Callable[..., Any], call: Callable[..., Any]) -> None:
    @main.command()
    @config_option
    @click.argument("name", shell_complete=complete_managers)
    @click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts (ISO 8601 times beside the epoch numbers).")
    def describe(config_path: Path | None, name: str, as_json: bool) -> None:
        """One manager in full: command, cwd, environment (secret-looking values hidden),
        start type, limits, log file, why it is where it is, its restarts in the window and
        its last events."""
        result = call(config_path, "describe", as_json=as_json, target=int(name) if name.isdigit() else name)
        if as_json:
            from pmon.control.protocol import with_iso

            click.echo(json.dumps(with_iso(result), indent=1))
            return
        for line in lines_of(result):
            click.echo(line)
