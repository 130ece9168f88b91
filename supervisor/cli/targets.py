"""`pmon start|stop|restart|kill NAME|GLOB|INDEX ...` (or --all) and `pmon signal NAME SIG`:
several targets per command, "did you mean", and honest results: a manager that did not
come up is named with why (the explainer's reason) and what to type, and the command exits 1.

`register(main, config_option, call, fail)` is called by cli/__init__.py with its helpers.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import click

from pmon.cli.status import EXIT_NO_SUCH, complete_managers, no_match_message, select

EXIT_FAILED = 1
# What a command's success looks like, by the state the manager settled in.
GOOD = {"start": {"running"}, "restart": {"running"}, "stop": {"stopped", "exited"},
        "kill": {"stopped", "exited"}}


def resolve(call: Callable[..., Any], config_path: Path | None, patterns: tuple[str, ...],
            fail: Callable[..., Any]) -> list[dict[str, Any]]:
    """The rows the patterns pick, in project order; exit 4 (with did you mean) on a miss."""
    status = call(config_path, "status")
    rows, unmatched = select(status["managers"], patterns)
    if unmatched:
        known = [m["name"] for m in status["managers"]]
        fail("; ".join(no_match_message(p, known) for p in unmatched), EXIT_NO_SUCH)
    return rows


def settled_well(verb: str, row: dict[str, Any]) -> bool:
    if verb in ("start", "restart") and row["state"] == "exited":
        return bool(row.get("ok"))  # a `once` manager that finished well
    if verb in ("start", "restart") and row.get("held"):
        return False
    return row["state"] in GOOD[verb] and not str(row.get("why", "")).startswith("hung:")


def describe_row(row: dict[str, Any]) -> str:
    return f"{row['name']}: {row['state']}" + (f" (pid {row['pid']})" if row.get("pid") else "")


def failure(verb: str, row: dict[str, Any]) -> str:
    did = "did not come up" if verb in ("start", "restart") else "did not stop"
    why = row.get("why") or row.get("held") or row.get("reason") or row["state"]
    hint = f"; {row['hint']}" if row.get("hint") else ""
    return f"{row['name']} {did}: {why}{hint}"


def register(main: click.Group, config_option: Callable[..., Any], call: Callable[..., Any],
             fail: Callable[..., Any]) -> None:
    def manager_command(verb: str, all_command: str | None, all_help: str, help_text: str) -> None:
        @main.command(name=verb, help=help_text)
        @config_option
        @click.argument("targets", nargs=-1, metavar="[NAME|GLOB|INDEX]...", shell_complete=complete_managers)
        @click.option("--all", "all_", is_flag=True, hidden=all_command is None, help=all_help)
        @click.option("--force", is_flag=True, hidden=verb not in ("stop", "restart"),
                      help="Go ahead even where pmon would refuse: the active server of a pair "
                           "whose partner is not available, or a stop that switches the pair over.")
        def handler(config_path: Path | None, targets: tuple[str, ...], all_: bool, force: bool) -> None:
            if all_ == bool(targets) or (all_ and all_command is None):
                raise click.UsageError(f"give one or more manager NAMEs (globs, indexes), or --all: pmon {verb} NAME")
            if force and verb not in ("stop", "restart"):
                raise click.UsageError("--force goes with `pmon stop` and `pmon restart` only")
            forced = {"force": True} if force else {}
            if all_:
                assert all_command is not None
                result = call(config_path, all_command, **forced)
                click.echo(f"project {result['project']}: {result['project_state']}")
                bad = [m for m in result["managers"] if not m.get("ok", True) and not m.get("held")]
                if verb == "stop":
                    bad = [m for m in result["managers"] if m["state"] not in GOOD["stop"]]
                for m in bad:
                    click.echo(f"pmon: {failure(verb, m)}", err=True)
                if bad or (verb != "stop" and result["project_state"] != "running"):
                    sys.exit(EXIT_FAILED)
                return
            failed = False
            for row in resolve(call, config_path, targets, fail):
                args: dict[str, Any] = {"target": row["name"]}
                if verb in ("restart", "stop"):
                    args.update(forced)
                after = call(config_path, verb, **args)
                if verb == "restart" and after.get("core"):
                    # a core manager: the whole project went down and up again
                    status = call(config_path, "status")
                    names = ", ".join(m["name"] for m in status["managers"] if m["state"] != "stopped" or m.get("pid"))
                    click.echo(f"{row['name']} is a core manager: the whole project was restarted ({names})")
                    for m in status["managers"]:
                        click.echo(f"  {describe_row(m)}")
                        if m["name"] != row["name"] and not m.get("ok", True) and not m.get("held"):
                            click.echo(f"pmon: {failure(verb, m)}", err=True)
                            failed = True
                if settled_well(verb, after):
                    click.echo(describe_row(after))
                else:
                    click.echo(describe_row(after))
                    click.echo(f"pmon: {failure(verb, after)}", err=True)
                    failed = True
            if failed:
                sys.exit(EXIT_FAILED)

    manager_command("start", "start-all", "start the project in order",
                    "Start managers (NAMEs, globs, indexes), or --all: start the project in order. "
                    "Exit 1 if one did not come up (the message says why and what to type).")
    manager_command("stop", "stop-all", "stop every manager in reverse order, pmon stays",
                    "Stop managers (SIGTERM, SIGKILL after seconds_to_kill), or --all.")
    manager_command("restart", "restart-all", "restart the whole project",
                    "Restart managers, or --all; a core manager restarts the whole project (and says so).")
    manager_command("kill", None, "",
                    "Kill managers' process groups at once (SIGKILL, no SIGTERM first); they stay stopped.")

    @main.command(name="signal")
    @config_option
    @click.argument("target", shell_complete=complete_managers)
    @click.argument("signame")
    def send_signal(config_path: Path | None, target: str, signame: str) -> None:
        """Send signal SIGNAME (HUP, USR1, SIGTERM, 10, ...) to manager TARGET's process group."""
        import signal

        name = signame.upper()
        try:
            number = int(name) if name.isdigit() else int(getattr(signal, name if name.startswith("SIG") else f"SIG{name}"))
        except (AttributeError, TypeError):
            raise click.BadParameter(f"{signame!r} is not a signal here", param_hint="SIGNAME") from None
        for row in resolve(call, config_path, (target,), fail):
            result = call(config_path, "signal", target=row["name"], signal=number)
            click.echo(f"{result['name']}: sent {result['signal']} to pid {result['pid']}")
