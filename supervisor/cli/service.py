"""`pmon service install|uninstall`: CLI only; the work is in systemd.py and windows.py."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, TypeVar

import click

_F = TypeVar("_F", bound=Callable[..., Any])


@click.group()
def service() -> None:
    """Run the project as an operating-system service (systemd unit / Windows service)."""


def _scope_option(func: _F) -> _F:
    return click.option(
        "--user/--system", "user", default=None,
        help="A user unit (systemctl --user) or a system unit. Default: system for root.",
    )(func)


def _is_user(user: bool | None) -> bool:
    return (not hasattr(os, "geteuid") or os.geteuid() != 0) if user is None else user


@service.command()
@click.option("-c", "--config", "config_path", envvar="PMON_CONFIG", default=None,
              type=click.Path(dir_okay=False, path_type=Path), help="The project's TOML file.")
@_scope_option
@click.option("--watchdog-sec", type=click.FloatRange(min=1), default=None,
              help="Let systemd restart pmon when its loop stops answering for this long.")
@click.option("--kill-mode", type=click.Choice(["process", "mixed"]), default="process",
              show_default=True,
              help="process: pmon stops its managers, and they survive a pmon crash to be "
                   "adopted; mixed: systemd also kills leftovers (no hot restart after a crash).")
@click.option("--unit-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write the unit here instead of the systemd directory.")
@click.option("--user-name", "run_as", default=None, metavar="USER",
              help="Run pmon as this user (User=); its state directory is handed to it.")
@click.option("--enable", is_flag=True, help="systemctl enable the unit (start at boot).")
@click.option("--now", is_flag=True, help="Start the unit now (with --enable: enable --now).")
@click.option("--print", "print_only", is_flag=True, help="Print the unit; write nothing.")
def install(config_path: Path | None, user: bool | None, watchdog_sec: float | None,
            kill_mode: str, unit_dir: Path | None, run_as: str | None, enable: bool,
            now: bool, print_only: bool) -> None:
    """Install pmon for this project as a systemd unit (Linux) or a Windows service."""
    from pmon.cli import fail, load_config
    from pmon.runtime import platform  # not at module level: `import pmon.cli` stays light

    config = load_config(config_path)
    if platform.IS_WINDOWS:  # pragma: no cover (Windows only)
        from pmon.service import windows

        try:
            reg = windows.install(config)
        except ImportError:
            fail("the Windows service needs pywin32: pip install pmon[windows]")
        except Exception as exc:  # pywin32 raises its own error type
            fail(f"cannot install the service: {exc}")
        click.echo(f"installed Windows service {reg.name}; start it with: sc start {reg.name}")
        return
    from pmon.service import systemd

    scope = _is_user(user)
    if run_as and scope:
        fail("--user-name is for a system unit (a user unit runs as its user): drop --user", 2)
    options = systemd.UnitOptions(user=scope, watchdog_sec=watchdog_sec, kill_mode=kill_mode,
                                  run_as=run_as)
    try:
        if print_only:
            click.echo(systemd.unit_text(config, options), nl=False)
            return
        path = systemd.install(config, options, unit_dir)
    except systemd.UnitError as exc:
        fail(f"cannot write the unit: {exc}", 2)
    except OSError as exc:
        fail(f"cannot write the unit: {exc}; try --user, or run as root")
    click.echo(f"wrote {path}")
    if run_as:
        click.echo(f"pmon will run as {run_as}, owner of {config.project.state_dir} now; it "
                   f"must be able to read {config.path} (and write it for add/edit/remove)")
    if not (enable or now):
        click.echo("enable and start it with:")
        for line in systemd.next_steps(config, scope, installed=True):
            click.echo(f"  {line}")
        return
    if unit_dir is not None or not systemd.systemd_running(scope):
        fail("--enable/--now need a running systemd and the unit in its directory "
             f"(not --unit-dir); run: {' && '.join(systemd.next_steps(config, scope, True)[:2])}")
    name = systemd.unit_name(config)
    steps = [["daemon-reload"], ["enable", "--now", name] if enable and now
             else ["enable", name] if enable else ["start", name]]
    for step in steps:
        done = systemd.systemctl(scope, *step)
        if done.returncode != 0:
            fail(f"systemctl {' '.join(step)} failed: {done.stderr.strip() or done.returncode}; "
                 f"the unit is written ({path}); see: systemctl status {name}")
        click.echo(f"systemctl {' '.join(step)}: done")


@service.command()
@click.option("-c", "--config", "config_path", envvar="PMON_CONFIG", default=None,
              type=click.Path(dir_okay=False, path_type=Path), help="The project's TOML file.")
@_scope_option
@click.option("--unit-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Remove the unit from here instead of the systemd directory.")
def uninstall(config_path: Path | None, user: bool | None, unit_dir: Path | None) -> None:
    """Remove the project's systemd unit (Linux) or Windows service."""
    from pmon.cli import fail, load_config
    from pmon.runtime import platform  # not at module level: `import pmon.cli` stays light

    config = load_config(config_path)
    if platform.IS_WINDOWS:  # pragma: no cover (Windows only)
        from pmon.service import windows

        try:
            click.echo(f"removed Windows service {windows.uninstall(config)}")
        except Exception as exc:
            fail(f"cannot remove the service: {exc}")
        return
    from pmon.service import systemd

    scope = _is_user(user)
    name = systemd.unit_name(config)
    managed = unit_dir is None and systemd.systemd_running(scope)
    if managed and systemd.is_loaded(config, scope):
        # stop (the ordered stop of every manager) and disable before the file goes:
        # without its file systemd could neither stop the unit properly nor disable it
        done = systemd.systemctl(scope, "disable", "--now", name)
        if done.returncode != 0:
            fail(f"systemctl disable --now {name} failed: {done.stderr.strip()}; nothing removed")
        click.echo(f"stopped and disabled {name}")
    try:
        path = systemd.uninstall(config, scope, unit_dir)
    except OSError as exc:
        fail(f"cannot remove the unit: {exc}")
    if path is None:
        fail(f"no unit {systemd.unit_name(config)} in {unit_dir or systemd.unit_dir(scope)}")
    if managed:
        systemd.systemctl(scope, "daemon-reload")
        click.echo(f"removed {path}; systemctl daemon-reload: done")
        return
    click.echo(f"removed {path}; then:")
    for line in systemd.next_steps(config, scope, installed=False):
        click.echo(f"  {line}")
