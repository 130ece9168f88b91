"""Finding, loading and configuring plugins; the factory that builds the plugin manager.

Plugins come from two places, loaded the same way: entry points of the group `pmon.plugins`
(installed packages, and pmon's own bundled monitors, which are declared exactly like
outside ones) and the `*.py` files of the folders `[plugins] paths` names. `[plugins]
enable` / `disable` choose which of them run. Everything that can be wrong with a plugin at
start-up (it does not import, implements a hook that does not exist, rejects its settings)
is a ConfigError that names the plugin and where it came from: pmon refuses to start rather
than run without a monitor the operator asked for.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.metadata
import importlib.util
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any, Callable, Mapping

import pluggy

from pmon import hookspecs
from pmon.config import Config
from pmon.errors import ConfigError
from pmon.plugin_types import PluginSettings, PluginSetup, check_setup

ENTRY_POINT_GROUP = "pmon.plugins"
FOLDER_PACKAGE = "pmon_project_plugins"  # import prefix of plugins loaded from a folder

# `[plugins]` keys that are pmon's own; every other key must be a plugin's table.
OWN_KEYS = {"paths", "enable", "disable", "timeout", "hook_timeout"}


@dataclass(frozen=True)
class PluginsSpec:
    """The `[plugins]` table of a project."""

    paths: tuple[Path, ...] = ()
    enable: tuple[str, ...] | None = None  # None: every plugin found
    disable: tuple[str, ...] = ()
    timeout: float = 5.0  # a monitor check or notification may take this long
    hook_timeout: float = 0.5  # before-start and restart advice: the loop waits this long
    tables: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class PluginInfo:
    name: str
    source: str  # "entry point pmon_plugins.memory (pmon 0.1.0)" or "folder /x/plugins.d/y.py"
    plugin: object
    hooks: tuple[str, ...]
    setup: PluginSetup = PluginSetup()


@dataclass(frozen=True)
class LoadedPlugins:
    pm: pluggy.PluginManager
    spec: PluginsSpec
    plugins: Mapping[str, PluginInfo]
    idle: frozenset[str] = frozenset()  # found, but not run ([plugins] enable / disable)


def make_plugin_manager() -> pluggy.PluginManager:
    """A fresh plugin manager that knows pmon's hooks (never a module-level one)."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def load(config: Config) -> LoadedPlugins:
    """Load, register, check and configure the project's plugins. Raises ConfigError."""
    spec = parse_spec(config)
    where = f"{config.path}: [plugins]"
    found = _discover(spec, where)
    chosen = _choose(found, spec, where)
    pm = make_plugin_manager()
    infos: dict[str, PluginInfo] = {}
    for name, (source, load_plugin) in chosen.items():
        try:
            plugin = load_plugin()
        except Exception as exc:
            raise ConfigError(
                f"{where}: plugin '{name}' ({source}) cannot be loaded: {describe_error(exc)}; "
                f"fix it, or add it to [plugins] disable"
            ) from None
        try:
            pm.register(plugin, name=name)
        except ValueError as exc:  # the same module registered under two names
            raise ConfigError(f"{where}: plugin '{name}' ({source}): {exc}") from None
        except pluggy.PluginValidationError as exc:
            raise ConfigError(f"{where}: plugin '{name}' ({source}): {exc}") from None
        hooks = tuple(sorted(
            impl_name for impl_name in _hook_names(pm)
            if any(i.plugin_name == name for i in getattr(pm.hook, impl_name).get_hookimpls())
        ))
        infos[name] = PluginInfo(name, source, plugin, hooks)
    _check_pending(pm, infos, where)
    idle = frozenset(found) - set(chosen)
    infos = _configure(pm, infos, spec, config, idle=idle)
    return LoadedPlugins(pm, spec, MappingProxyType(infos), idle)


# --- [plugins] ----------------------------------------------------------------------------


def parse_spec(config: Config) -> PluginsSpec:
    table = config.raw.get("plugins", {})
    where = f"{config.path}: [plugins]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table ([plugins]), got {table!r}")
    errors: list[str] = []

    def names(key: str) -> tuple[str, ...] | None:
        value = table.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            errors.append(f"{where}, key '{key}': expected a list of plugin names, got {value!r}")
            return ()
        return tuple(value)

    def seconds(key: str, default: float) -> float:
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            errors.append(f"{where}, key '{key}': expected a number of seconds > 0, got {value!r}")
            return default
        return float(value)

    paths = names("paths") or ()
    tables = {}
    for key, value in table.items():
        if key in OWN_KEYS:
            continue
        if not isinstance(value, dict):
            close = difflib.get_close_matches(key, sorted(OWN_KEYS), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            errors.append(
                f"{where}, key '{key}': unknown key{hint}; [plugins] takes "
                f"{', '.join(sorted(OWN_KEYS))} and one table [plugins.NAME] per plugin"
            )
            continue
        tables[key] = MappingProxyType(dict(value))
    spec = PluginsSpec(
        paths=tuple((config.path.parent / p).resolve() for p in paths),
        enable=names("enable"),
        disable=names("disable") or (),
        timeout=seconds("timeout", PluginsSpec.timeout),
        hook_timeout=seconds("hook_timeout", PluginsSpec.hook_timeout),
        tables=MappingProxyType(tables),
    )
    if errors:
        raise ConfigError("\n".join(errors))
    return spec


# --- finding plugins ----------------------------------------------------------------------

Loader = Callable[[], object]


def _discover(spec: PluginsSpec, where: str) -> dict[str, tuple[str, Loader]]:
    """Every plugin that could run: name -> (where it comes from, how to load it)."""
    found: dict[str, tuple[str, Loader]] = {}
    seen_values: dict[str, str] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if seen_values.get(ep.name) == ep.value:
            continue  # the same distribution seen twice on sys.path
        dist = getattr(ep, "dist", None)
        origin = f" ({dist.name} {dist.version})" if dist is not None else ""
        source = f"entry point {ep.value}{origin}"
        if ep.name in found:
            raise ConfigError(
                f"{where}: two plugins are called '{ep.name}': {found[ep.name][0]} and {source}; "
                "uninstall one of the packages"
            )
        seen_values[ep.name] = ep.value
        found[ep.name] = (source, ep.load)
    for folder in spec.paths:
        if not folder.is_dir():
            raise ConfigError(
                f"{where}, key 'paths': no such folder {folder}; create it or remove it from paths"
            )
        for file in sorted(folder.glob("*.py")):
            if file.name.startswith("_"):
                continue
            source = f"folder {file}"
            if file.stem in found:
                raise ConfigError(
                    f"{where}: two plugins are called '{file.stem}': {found[file.stem][0]} and "
                    f"{source}; rename the file"
                )
            found[file.stem] = (source, functools.partial(_import_file, file))
    return found


def _import_file(file: Path) -> ModuleType:
    name = f"{FOLDER_PACKAGE}.{file.stem}"
    module_spec = importlib.util.spec_from_file_location(name, file)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _choose(
    found: dict[str, tuple[str, Loader]], spec: PluginsSpec, where: str
) -> dict[str, tuple[str, Loader]]:
    for key, listed in (("enable", spec.enable or ()), ("disable", spec.disable)):
        for name in listed:
            if name not in found:
                close = difflib.get_close_matches(name, list(found), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ConfigError(
                    f"{where}, key '{key}': no plugin '{name}'{hint}; "
                    f"plugins found: {', '.join(sorted(found)) or '(none)'}"
                )
    return {
        name: value
        for name, value in found.items()
        if (spec.enable is None or name in spec.enable) and name not in spec.disable
    }


# --- checking and configuring -------------------------------------------------------------


def _hook_names(pm: pluggy.PluginManager) -> list[str]:
    return [name for name in vars(pm.hook) if not name.startswith("_")]


def _check_pending(pm: pluggy.PluginManager, infos: Mapping[str, PluginInfo], where: str) -> None:
    """A hook implementation without a spec is a typo: say which plugin, and what it meant."""
    known = sorted(n for n in _hook_names(pm) if getattr(pm.hook, n).has_spec())
    for name in _hook_names(pm):
        caller = getattr(pm.hook, name)
        if caller.has_spec():
            continue
        for impl in caller.get_hookimpls():
            if impl.optionalhook:
                continue
            info = infos.get(impl.plugin_name)
            source = f" ({info.source})" if info else ""
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"{where}: plugin '{impl.plugin_name}'{source} implements an unknown hook "
                f"'{name}'{hint}; hooks are: {', '.join(known)}"
            )
    pm.check_pending()  # pluggy's own check, in case it knows more than the loop above


def _configure(
    pm: pluggy.PluginManager,
    infos: dict[str, PluginInfo],
    spec: PluginsSpec,
    config: Config,
    idle: frozenset[str],
) -> dict[str, PluginInfo]:
    """Hand each plugin its settings; flag tables that no plugin reads.

    A table named after a plugin that is found but does not run (`disable`, or left out of
    `enable`) is kept without complaint: switching a plugin off needs no other edit.
    """
    where = f"{config.path}: [plugins]"
    settings = PluginSettings(
        tables=spec.tables,
        managers=MappingProxyType({m.name: m.monitor for m in config.managers}),
        config_path=config.path,
    )
    impls = {i.plugin_name: i for i in pm.hook.pmon_configure.get_hookimpls()}
    configured: dict[str, PluginInfo] = {}
    for name, info in infos.items():
        setup = PluginSetup()
        impl = impls.get(name)
        if impl is not None:
            try:
                setup = check_setup(call_impl(impl, {"settings": settings}))
            except ValueError as exc:
                raise ConfigError(f"{where}: plugin '{name}' ({info.source}): {exc}") from None
            except Exception as exc:
                raise ConfigError(
                    f"{where}: plugin '{name}' ({info.source}) failed to read its settings: "
                    f"{describe_error(exc)}"
                ) from None
        if setup.interval is None and "pmon_monitor_check" in info.hooks and impl is None:
            setup = PluginSetup(interval=1.0)  # a plain monitor with no settings: every second
        configured[name] = PluginInfo(info.name, info.source, info.plugin, info.hooks, setup)
    check_read(config, spec.tables, configured, idle)
    return configured


def check_read(
    config: Config,
    tables: Mapping[str, Any],
    configured: Mapping[str, PluginInfo],
    idle: frozenset[str],
) -> None:
    """Every `[plugins.NAME]` table in `tables` and every manager's `monitor.NAME` must be
    read by a configured plugin (or name one that is found but does not run): a typo is a
    ConfigError. Also for a change of a running project (the plugins it loaded)."""
    claimed = {t for info in configured.values() for t in info.setup.tables}
    readers = ", ".join(sorted(configured)) or "(none)"
    settings_names = [(f"[plugins.{t}]", t, "this table") for t in tables] + [
        (f"manager '{m.name}' (managers[{m.index}]), key 'monitor.{key}'", key, "it")
        for m in config.managers for key in m.monitor
    ]
    for where_it_is, table, what in settings_names:
        if table not in claimed and table not in idle:
            close = difflib.get_close_matches(table, sorted(claimed), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"{config.path}: {where_it_is}: no loaded plugin reads {what}{hint}; "
                f"loaded plugins: {readers}"
            )


def call_impl(impl: Any, kwargs: Mapping[str, Any]) -> Any:
    """Call one plugin's implementation with the arguments it asks for (as pluggy does)."""
    return impl.function(*[kwargs[arg] for arg in impl.argnames])


def describe_error(exc: BaseException) -> str:
    """'ValueError: bad at plugin.py:12': the error and the line of the plugin that raised."""
    frames = traceback.extract_tb(exc.__traceback__)
    at = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return f"{type(exc).__name__}: {exc}{at}"
