"""The `pmon` command. Thin: parse, call the running supervisor (or the validator), print.

Exit codes: 0 done; 1 refused or failed (the message says why); 2 bad configuration or
usage; 3 pmon is not running for this project.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, NoReturn, Sequence

import click

from pmon.errors import ConfigError, NotRunning, PmonError
from pmon.states import StartType

if TYPE_CHECKING:
    from pmon import config as config_module

EXIT_REFUSED, EXIT_CONFIG, EXIT_NOT_RUNNING = 1, 2, 3


def config_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "-c",
        "--config",
        "config_path",
        envvar="PMON_CONFIG",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="The project's TOML file (default: $PMON_CONFIG, else ./pmon.toml).",
    )(func)


def default_config(path: Path | None) -> Path:
    if path is None:
        path = Path("pmon.toml")
        if not path.exists():
            fail("no project file: pass -c FILE or set PMON_CONFIG", EXIT_CONFIG)
    return path


def load_config(path: Path | None) -> "config_module.Config":
    from pmon import config as config_module

    try:
        return config_module.load(default_config(path))
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)


def fail(message: str, code: int = EXIT_REFUSED) -> NoReturn:
    click.echo(f"pmon: {message}", err=True)
    sys.exit(code)


def call(config_path: Path | None, command: str, **args: Any) -> Any:
    from pmon.control.client import Endpoint, call as remote_call

    try:
        return remote_call(Endpoint.read(default_config(config_path)), command, **args)
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
    except NotRunning as exc:
        fail(str(exc), EXIT_NOT_RUNNING)
    except (PmonError, OSError) as exc:
        fail(str(exc), EXIT_CONFIG if getattr(exc, "code", None) == "config" else EXIT_REFUSED)


def target_arg(value: str) -> str | int:
    return int(value) if value.isdigit() else value


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pmon")
def main() -> None:
    """pmon: a process monitor for control-system servers.

    `pmon run -c FILE` runs a project in the foreground; the other commands talk to it.
    """


@main.command()
@config_option
@click.option("--quiet", "-q", is_flag=True, help="Do not echo events on stderr.")
def run(config_path: Path | None, quiet: bool) -> None:
    """Run the project in the foreground until SIGTERM / SIGINT."""
    _asyncio_without_tls()
    from pmon.app import run as run_project

    config = load_config(config_path)
    try:
        sys.exit(run_project(config, echo=not quiet))
    except ConfigError as exc:  # e.g. a plugin that does not load or rejects its settings
        fail(str(exc), EXIT_CONFIG)
    except PmonError as exc:
        fail(str(exc))


@main.command()
@config_option
def validate(config_path: Path | None) -> None:
    """Check the project file as `run` would, plugins included; start nothing."""
    from pmon import plugins

    config = load_config(config_path)
    try:
        loaded = plugins.load(config)
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
    click.echo(
        f"{config.path}: valid, project '{config.project.name}', {len(config.managers)} managers, "
        f"plugins: {', '.join(loaded.plugins) or 'none'}"
    )


def _since(started_at: float | None) -> str:
    if not started_at:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started_at))


def print_table(status: dict[str, Any]) -> None:
    header = f"project {status['project']}: {status['project_state']}"
    if status.get("containment"):  # which containment is in force (runtime/containment.py)
        header += f"; containment: {status['containment']['detail']}"
    click.echo(header)
    rows = [("#", "NAME", "STATE", "PID", "START", "CORE", "RESTARTS", "SINCE")]
    for m in status["managers"]:
        state = m["state"]
        if m["state"] == "exited" and m["exit_code"] is not None:
            state += f" ({m['exit_code']})"
        if m.get("ready_failed"):
            state += " (not ready)"
        rows.append((
            str(m["index"]), m["name"], state, str(m["pid"] or "-"), m["start"],
            "yes" if m["core"] else "", str(m["restarts"]), _since(m["started_at"]),
        ))
    echo_rows(rows)
    for m in status["managers"]:
        if m.get("held"):  # a condition holds it back (run_on = "active" on a passive server)
            click.echo(f"{m['name']} waits: {m['held']}")
    if status.get("verdicts"):
        click.echo(f"monitor verdicts (error state {status.get('plugin_error_state', 0):g}):")
        for v in status["verdicts"]:
            click.echo(f"  {v['severity']:<8} {v['target'] or 'project'}: {v['message']} ({v['plugin']})")


def echo_rows(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def status(config_path: Path | None, as_json: bool) -> None:
    """One row per manager: index, name, state, pid, start type, core, restarts, since."""
    result = call(config_path, "status")
    if as_json:
        result = {"project": result["project"], "managers": [
            {k: m.get(k) for k in ("index", "name", "state", "pid", "start", "core", "restarts",
                                   "exit_code", "started_at", "reason", "held")}
            for m in result["managers"]
        ], "project_state": result["project_state"],
           "project_reason": result.get("project_reason", ""),
           "verdicts": result.get("verdicts", []),
           "containment": result.get("containment")}
        click.echo(json.dumps(result, indent=1))
    else:
        print_table(result)


def _manager_command(name: str, verb: str, all_command: str, all_help: str) -> None:
    @main.command(name=name, help=f"{verb} a manager (NAME or index), or --all: {all_help}.")
    @config_option
    @click.argument("target", required=False)
    @click.option("--all", "all_", is_flag=True, help=all_help)
    @click.option("--force", is_flag=True, hidden=name == "start",
                  help="Stop or restart even the active server of a pair whose partner is not available.")
    def handler(config_path: Path | None, target: str | None, all_: bool, force: bool) -> None:
        if all_ == (target is not None):
            raise click.UsageError(f"give a manager NAME (or index), or --all: pmon {name} NAME")
        forced = {"force": True} if force else {}
        if force and not (name == "restart" or (all_ and name == "stop")):
            raise click.UsageError("--force goes with `pmon stop --all` and `pmon restart` only")
        if all_:
            result = call(config_path, all_command, **forced)
            click.echo(f"project {result['project']}: {result['project_state']}")
        else:
            row = call(config_path, name, target=target_arg(target or ""), **forced)
            click.echo(f"{row['name']}: {row['state']}" + (f" (pid {row['pid']})" if row["pid"] else ""))


_manager_command("start", "Start", "start-all", "start the project in order")
_manager_command("stop", "Stop", "stop-all", "stop every manager in reverse order, pmon stays")
_manager_command("restart", "Restart", "restart-all", "restart the whole project")


@main.command(context_settings={"ignore_unknown_options": True})
@config_option
@click.argument("name")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--start", "start_type", type=click.Choice([t.value for t in StartType]), default="always", show_default=True)
@click.option("--seconds-to-kill", type=float, help="Wait after SIGTERM before SIGKILL.")
@click.option("--restart-count", type=int, help="Restarts allowed within --reset-after.")
@click.option("--reset-after", type=float, help="Window of the restart count, in seconds.")
@click.option("--ready", type=click.Choice(["spawn", "notify", "delay"]), help="When it counts as ready.")
@click.option("--env", "env", multiple=True, metavar="KEY=VALUE", help="An environment variable (repeatable).")
def add(config_path: Path | None, name: str, command: tuple[str, ...], start_type: str, env: tuple[str, ...], **limits: Any) -> None:
    """Add manager NAME running COMMAND (after --) to the running project and its TOML file.

    Example: pmon add driver3 --start always -- python3 driver.py -num 5

    The TOML file is rewritten (with tomli-w): comments in it are not kept.
    """
    table: dict[str, Any] = {"name": name, "command": list(command), "start": start_type}
    table.update({key: value for key, value in limits.items() if value is not None})
    if env:
        pairs = [item.partition("=") for item in env]
        if any(not sep or not key for key, sep, _ in pairs):
            raise click.UsageError("--env takes KEY=VALUE")
        table["env"] = {key: value for key, _, value in pairs}
    row = call(config_path, "add", manager=table)
    held = f"; it waits: {row['held']}" if row.get("held") else ""
    click.echo(f"{row['name']}: added as #{row['index']}, {row['state']}{held}")


@main.command()
@config_option
@click.argument("target")
def remove(config_path: Path | None, target: str) -> None:
    """Remove a stopped, non-core manager from the project and its TOML file (comments are not kept)."""
    result = call(config_path, "remove", target=target_arg(target))
    click.echo(f"{result['removed']}: removed")


@main.command()
@config_option
@click.argument("target")
@click.argument("settings", nargs=-1, required=True, metavar="KEY=VALUE...")
def edit(config_path: Path | None, target: str, settings: tuple[str, ...]) -> None:
    """Change keys of manager TARGET in the running project and its TOML file.

    VALUE is a TOML value (a bare word is taken as a string); KEY= with nothing after the =
    removes the key (back to its default). As with `pmon reload`, a key that shapes the
    process (command, env, cwd, start, ready, run_on, ...) restarts a running manager (a core
    one: the whole project); a limit (restart_count, seconds_to_kill, ...) applies in place.

    Example: pmon edit driver1 'command=["python3", "driver.py", "-num", "2"]' restart_count=5

    The TOML file is rewritten (with tomli-w): comments in it are not kept.
    """
    changes = dict(_setting(item) for item in settings)
    row = call(config_path, "edit", target=target_arg(target), changes=changes)
    click.echo(f"{row['name']}: edited, {row['state']}" + (f" (pid {row['pid']})" if row["pid"] else ""))


def _setting(item: str) -> tuple[str, Any]:
    import tomllib

    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise click.UsageError(f"{item!r}: write KEY=VALUE (KEY= removes the key)")
    if not text.strip():
        return key.strip(), None
    try:
        return key.strip(), tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return key.strip(), text  # a bare word: a string


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def plugins(config_path: Path | None, as_json: bool) -> None:
    """The loaded plugins: where each comes from, its hooks, its failure streak."""
    result = call(config_path, "plugins")
    if as_json:
        click.echo(json.dumps(result, indent=1))
        return
    rows = [("NAME", "SOURCE", "HOOKS", "EVERY", "CALLS", "FAILED", "STREAK", "VERDICTS")]
    for p in result["plugins"]:
        hooks = ",".join(h.removeprefix("pmon_") for h in p["hooks"])
        every = f"{p['interval']:g}s" if p["interval"] else "-"
        rows.append((p["name"], p["source"], hooks, every, str(p["calls"]), str(p["failures"]),
                     str(p["failure_streak"]), str(p["verdicts"])))
    echo_rows(rows)
    for p in result["plugins"]:
        if p["failure_streak"]:
            click.echo(f"{p['name']}: failing ({p['failure_streak']} calls): {p['last_error']}")
    click.echo(f"plugin error state: {result['error_state']:g}")


@main.command()
@config_option
@click.option("--force", is_flag=True, help="Stop even the active server of a pair whose partner is not available.")
def shutdown(config_path: Path | None, force: bool) -> None:
    """Stop every manager in reverse order, then pmon itself."""
    call(config_path, "shutdown", **({"force": True} if force else {}))
    click.echo("pmon is shutting down")


@main.command()
@config_option
@click.option("--dry-run", is_flag=True, help="Only print what the reload would do.")
def reload(config_path: Path | None, dry_run: bool) -> None:
    """Re-read the project file and apply only what changed (SIGHUP does the same).

    Added managers start, removed ones stop, changed ones restart, the others keep running
    with the same pid. An invalid file changes nothing.
    """

    from pmon import config as config_module

    try:  # the file pmon would read; checked here too, for a clear message
        config_module.load(default_config(config_path))
    except ConfigError as exc:
        fail(f"reload refused, nothing changed:\n{exc}", EXIT_CONFIG)
    result = call(config_path, "reload", dry_run=dry_run)
    click.echo(f"{'would reload' if dry_run else 'reloaded'} {result['config']}:")
    for line in describe(result):
        click.echo(line)


@main.command()
@config_option
def detach(config_path: Path | None) -> None:
    """Stop pmon but leave its managers running (to upgrade pmon); `pmon run` adopts them."""
    result = call(config_path, "detach")
    click.echo(f"pmon is exiting; {result['managers']} managers run on until pmon runs again")


def _asyncio_without_tls() -> None:
    """Import asyncio without its TLS support. pmon's loop never speaks TLS (the control
    channel and PMON TCP are plain; the token guards TCP), but asyncio imports `ssl` just in
    case, which maps OpenSSL's libraries into the daemon: about 4 MiB of its RSS. asyncio
    supports Python builds without ssl; the block lasts only for asyncio's import, so a
    plugin that imports ssl itself (an HTTPS check, say) still gets it."""
    if "asyncio" in sys.modules or "ssl" in sys.modules:
        return
    sys.modules["ssl"] = None  # type: ignore[assignment]  # import ssl -> ImportError
    try:
        import asyncio  # noqa: F401
    finally:
        del sys.modules["ssl"]


def describe(result: Mapping[str, Any]) -> list[str]:
    """A plan (as the reload command returns it) in lines for people."""
    lines = []
    for word, key in (("add", "added"), ("remove", "removed")):
        lines += [f"  {word:8} {name}" for name in result[key]]
    for name, keys in result["changed"].items():
        lines.append(f"  restart  {name} ({', '.join(keys)} changed)")
    for name, keys in result["updated"].items():
        lines.append(f"  update   {name} ({', '.join(keys)}; keeps running)")
    if result.get("project"):
        lines.append(f"  update   [project] ({', '.join(result['project'])}; applies in place)")
    if result["unchanged"]:
        lines.append(f"  keep     {', '.join(result['unchanged'])}")
    for section in result["not_applied"]:
        lines.append(
            f"  not applied: {section} changed; it takes effect when pmon starts again "
            "(`pmon detach` then `pmon run` keeps the managers running)"
        )
    return lines or ["  nothing to do"]


from pmon.cli.service import service  # noqa: E402  (pmon service install|uninstall)

main.add_command(service)


from pmon.cli.redundancy import register as _register_redu  # noqa: E402

_register_redu(main, call, config_option)  # `pmon redu ...`

