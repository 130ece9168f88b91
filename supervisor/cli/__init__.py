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


def _config_before_command(ctx: click.Context, _param: Any, value: Path | None) -> Path | None:
    """-c after the command wins; else the -c given before it (`pmon -c FILE status`)."""
    if value is not None:
        return value
    root = ctx.find_root()
    given = root.params.get("config_path") if root is not ctx else None
    return given if isinstance(given, Path) else None


def config_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "-c",
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        callback=_config_before_command,
        help="The project's TOML file (default: -c before the command, $PMON_CONFIG, ./pmon.toml).",
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
    from pmon.runtime import journal  # under systemd (`pmon run`), an error for journalctl -p

    text = f"pmon: {message}"
    click.echo(journal.prefixed(journal.ERR, text) if journal.connected() else text, err=True)
    sys.exit(code)


def call(config_path: Path | None, command: str, *, as_json: bool = False, **args: Any) -> Any:
    """One command to the running pmon. On failure: the line on stderr and the exit code;
    with `as_json`, also a JSON error object on stdout, for the script that reads it."""
    from pmon.control.client import Endpoint, call as remote_call

    def failed(exc: Exception, code: int) -> NoReturn:
        if as_json:
            kind = getattr(exc, "code", "error")
            click.echo(json.dumps({"ok": False, "error": {"code": kind, "message": str(exc), "exit_code": code}}))
        fail(str(exc), code)

    try:
        return remote_call(Endpoint.read(default_config(config_path)), command, **args)
    except ConfigError as exc:
        failed(exc, EXIT_CONFIG)
    except NotRunning as exc:
        failed(exc, EXIT_NOT_RUNNING)
    except (PmonError, OSError) as exc:
        failed(exc, EXIT_CONFIG if getattr(exc, "code", None) == "config" else EXIT_REFUSED)


def target_arg(value: str) -> str | int:
    return int(value) if value.isdigit() else value


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pmon")
@click.option("-c", "--config", "config_path", envvar="PMON_CONFIG", default=None,
              type=click.Path(dir_okay=False, path_type=Path),
              help="The project's TOML file, for every command (default: $PMON_CONFIG, ./pmon.toml).")
def main(config_path: Path | None) -> None:
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
        from pmon.config import check_programs

        check_programs(config)  # a typo in a command is an error now, not a backoff later
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

    from pmon.config import check_programs

    config = load_config(config_path)
    try:
        check_programs(config)
        loaded = plugins.load(config)
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
    click.echo(
        f"{config.path}: valid, project '{config.project.name}', {len(config.managers)} managers, "
        f"plugins: {', '.join(loaded.plugins) or 'none'}"
    )
    from pmon.runtime import fdbudget

    fds = fdbudget.shortfall(config, fdbudget.limit())  # this shell's limit, as run would
    if fds:
        click.echo(f"pmon: warning: {fds}", err=True)


def echo_rows(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


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

    The TOML file keeps its comments and layout (only the change is written, with tomlkit).
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
    """Remove a stopped, non-core manager from the project and its TOML file (its comments and layout stay)."""
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

    The TOML file keeps its comments and layout (only the change is written, with tomlkit).
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
    result = call(config_path, "plugins", as_json=as_json)
    if as_json:
        from pmon.control.protocol import with_iso

        click.echo(json.dumps(with_iso(result), indent=1))
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
@click.option("--wait", "wait", is_flag=True, help="Return only once pmon has exited (every manager down).")
@click.option("--timeout", type=float, default=300.0, show_default=True, help="With --wait: give up after this many seconds (exit 1).")
def shutdown(config_path: Path | None, force: bool, wait: bool, timeout: float) -> None:
    """Stop every manager in reverse order, then pmon itself."""
    from pmon.control.client import Endpoint

    where = Endpoint.read(default_config(config_path))
    call(config_path, "shutdown", **({"force": True} if force else {}))
    if not wait:
        click.echo("pmon is shutting down")
        return
    if not _wait_until_gone(where.state_dir, timeout):
        fail(f"pmon did not exit within {timeout:g} s; see `pmon status` and `pmon events -n 20`")
    click.echo("pmon has stopped: every manager is down")


def _wait_until_gone(state_dir: Path, timeout: float) -> bool:
    """True once the project's lock is free: it dies with the pmon process, after its final
    stop, whatever way it ended."""
    from pmon.runtime import platform

    deadline = time.monotonic() + timeout
    with open(state_dir / "pmon.lock", "a+") as handle:
        while not platform.lock_exclusively(handle):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
    return True


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
    if not dry_run:
        _fail_if_not_up(config_path, [*result["added"], *result["changed"]], list(result["changed"]))


def _fail_if_not_up(config_path: Path | None, names: Sequence[str], changed: Sequence[str] = ()) -> None:
    """Exit 1 naming each of `names` that did not come up, with why and what to type; say
    so when a changed core manager restarted the whole project."""
    from pmon.cli.targets import failure

    every = call(config_path, "status")["managers"]
    cores = [m["name"] for m in every if m["core"] and m["name"] in changed]
    if cores:
        click.echo(f"{', '.join(cores)} changed (core): the whole project was restarted "
                   f"({', '.join(m['name'] for m in every)})")
        names = [m["name"] for m in every]
    rows = [m for m in every if m["name"] in names]
    bad = [m for m in rows if not m.get("ok", True) and not m.get("held")
           and not (m["state"] == "stopped" and m["start"] == "manual")]
    for m in bad:
        click.echo(f"pmon: {failure('start', m)}", err=True)
    if bad:
        sys.exit(EXIT_REFUSED)


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



from pmon.cli.events import register as _register_events  # noqa: E402

_register_events(main, config_option, fail, default_config)  # `pmon events`


from pmon.cli.status import register as _register_status  # noqa: E402

_register_status(main, config_option, call, fail)  # `pmon status`


from pmon.cli.targets import register as _register_targets  # noqa: E402

_register_targets(main, config_option, call, fail)  # start, stop, restart, kill, signal


from pmon.cli.logs import register as _register_logs  # noqa: E402

_register_logs(main, config_option, fail, default_config)  # `pmon logs`


from pmon.cli.manager_info import register as _register_describe  # noqa: E402

_register_describe(main, config_option, call)  # `pmon describe`


@main.command()
@config_option
def console(config_path: Path | None) -> None:
    """A full-screen live console: the managers, the project, the pair, events, logs."""
    from pmon.control.client import Endpoint

    try:
        where = Endpoint.read(default_config(config_path))
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
    try:
        from pmon.cli import console_app as live  # textual: only here (the `console` extra)
    except ImportError as exc:
        fail(f"pmon console needs textual ({exc}); install it with pip install 'pmon[console]'",
             EXIT_CONFIG)
    sys.exit(live.run(where))
