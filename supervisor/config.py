"""TOML -> validated, typed, frozen model of a project.

Every error names the file, the manager (by name and position) and the key, says what is
allowed, and where it can, suggests the key that was probably meant. Validation collects all
errors of the file at once, so a user fixes them in one go.
"""

from __future__ import annotations

import enum
import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from pmon.errors import ConfigError
from pmon.states import Readiness, StartType

if TYPE_CHECKING:
    from pmon.redundancy.settings import RedundancySpec


# The one platform fact a project file depends on (runtime/platform.py takes it from here):
# the systemd notify socket is an AF_UNIX datagram socket, which Windows lacks.
HAS_NOTIFY_SOCKET = os.name != "nt"

@dataclass(frozen=True)
class ManagerSpec:
    """One manager as configured. Index is 1-based: index 0 is pmon itself (as in PMON)."""

    name: str
    command: tuple[str, ...]
    index: int = 0
    start: StartType = StartType.ALWAYS
    core: bool = False
    redundancy: bool = False
    ready: Readiness = Readiness.SPAWN
    ready_seconds: float = 1.0
    start_timeout: float = 30.0
    seconds_to_kill: float = 10.0
    restart_count: int = 3
    reset_after: float = 300.0
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    cwd: Path = Path(".")
    num: int | None = None
    # Per-manager settings of monitor plugins: plugin key -> its table (read by the plugin).
    monitor: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: MappingProxyType({}))
    run_on: str = "both"  # "active": only on the active server of a redundant pair
    notify_switchover: bool = False  # SIGUSR1 at every switchover
    weight: int | None = None  # error weight when not running; None: [redundancy] manager_weight
    # Execution settings (see the block "execution settings" below): whom it runs as and
    # with which limits, how it is stopped. None: as pmon itself.
    user: str | None = None
    group: str | None = None
    umask: int | None = None
    rlimits: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    stop_signal: str = "TERM"
    stop_command: tuple[str, ...] | None = None
    env_file: Path | None = None
    # cgroup limits (cgroups only): the values written to memory.max, cpu.max, pids.max
    memory_max: str | None = None
    cpu_max: str | None = None
    pids_max: str | None = None


@dataclass(frozen=True)
class ControlSpec:
    """Where the control channel listens. `tcp` is "127.0.0.1:PORT" or None (Unix socket)."""

    tcp: str | None = None


@dataclass(frozen=True)
class PmonTcpSpec:
    """The WinCC OA PMON TCP listener ([pmon_tcp]); no section = no listener."""

    address: str = "127.0.0.1"
    port: int = 4999
    user: str = ""
    password: str = ""
    idle_timeout: float = 300.0  # a client silent this long is dropped
    max_clients: int = 128


@dataclass(frozen=True)
class MetricsSpec:
    """The Prometheus exporter ([metrics]); no section = no exporter, nothing imported."""

    host: str = "127.0.0.1"
    port: int = 9464


@dataclass(frozen=True)
class ProjectSpec:
    name: str
    state_dir: Path
    log_max_bytes: int = 10 * 1024 * 1024
    log_backups: int = 3
    control: ControlSpec = ControlSpec()
    stop_on_write_error: bool = False  # the supervisor watchdog: see Supervisor.write_failed


@dataclass(frozen=True)
class Config:
    path: Path
    project: ProjectSpec
    managers: tuple[ManagerSpec, ...]
    raw: Mapping[str, Any]  # the parsed TOML, for write-back by `add` / `remove`
    pmon_tcp: PmonTcpSpec | None = None
    redundancy: RedundancySpec | None = None  # None: a standalone server
    metrics: MetricsSpec | None = None  # None: no Prometheus exporter

    def start_order(self) -> tuple[ManagerSpec, ...]:
        """List order, with the redundancy manager moved first (PMON's rule)."""
        return tuple(sorted(self.managers, key=lambda m: not m.redundancy))

    def manager(self, name: str) -> ManagerSpec:
        for spec in self.managers:
            if spec.name == name:
                return spec
        raise KeyError(name)


# --- the schema -----------------------------------------------------------------------
# A key: (what the user must write, check-and-convert). The converter raises ValueError
# with the hint that completes "expected ...".


def _positive_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        0 <= value < float("inf")  # also refuses nan and inf: a stop that never ends
    ):
        raise ValueError("a number >= 0 (seconds)")
    return float(value)


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("a whole number >= 0")
    return value


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def _string(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("a non-empty string")
    return value


def _name(value: Any) -> str:
    text = _string(value)
    if text.isdigit() or not _sane_name(text):
        raise ValueError(
            f"a name of at most {MAX_NAME} letters, digits, '-', '_' or '.', starting with "
            "a letter, digit or '_', not only digits"
        )
    return text


def _command(value: Any) -> tuple[str, ...]:
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(part, str) for part in value)
        or not value[0]
    ):
        raise ValueError('a non-empty list of strings, e.g. ["python3", "driver.py"]')
    return tuple(value)


def _env(value: Any) -> Mapping[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError('a table of strings, e.g. { DRIVER_PORT = "5020" }')
    bad = [k for k in value if not k or "=" in k]
    if bad:
        raise ValueError(f"variable names without '=' (not {bad[0]!r})")
    return MappingProxyType(dict(value))


def _enum(enum_type: type[enum.Enum]) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        try:
            return enum_type(value)
        except ValueError:
            allowed = " | ".join(repr(member.value) for member in enum_type)
            raise ValueError(f"one of {allowed}") from None

    return convert


def _one_of(*allowed: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if not isinstance(value, str) or value not in allowed:
            raise ValueError("one of " + " | ".join(repr(a) for a in allowed))
        return value

    return convert


def _monitor(value: Any) -> Mapping[str, Mapping[str, Any]]:
    # Only the shape is checked here; each plugin checks its own table at start-up.
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, dict) for k, v in value.items()
    ):
        raise ValueError("a table of plugin tables, e.g. monitor.memory = { max_rss_mb = 200 }")
    return MappingProxyType({k: MappingProxyType(dict(v)) for k, v in value.items()})


# --- execution settings: user / group / umask / rlimits / stop_signal / stop_command /
# env_file (each also in [defaults]; env_file is read in _managers, relative to the file).
STOP_SIGNALS = ("TERM", "INT", "HUP", "QUIT", "USR1", "USR2")
RLIMITS = {"nofile": "RLIMIT_NOFILE", "core": "RLIMIT_CORE", "as": "RLIMIT_AS"}
UNLIMITED = -1  # resource.RLIM_INFINITY on Linux


def _account(kind: str) -> Callable[[Any], str]:
    """A user or group that exists here, by name or number."""
    def convert(value: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, (str, int)) or value in ("", -1):
            raise ValueError(f"a {kind} name or number, e.g. {kind} = \"{'wincc' if kind == 'user' else 'plant'}\"")
        if os.name == "nt":
            raise ValueError(f"nothing on Windows ({kind} needs a POSIX system)")
        import grp
        import pwd

        look: Any = pwd if kind == "user" else grp
        try:
            if isinstance(value, int) or value.isdigit():
                look.getpwuid(int(value)) if kind == "user" else look.getgrgid(int(value))
            else:
                look.getpwnam(value) if kind == "user" else look.getgrnam(value)
        except (KeyError, OverflowError):
            raise ValueError(f"a {kind} that exists on this machine (no {kind} {value!r})") from None
        return str(value)

    return convert


def _umask(value: Any) -> int:
    if isinstance(value, str) and 3 <= len(value) <= 4 and all(c in "01234567" for c in value):
        return int(value, 8)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0o777:
        return value
    raise ValueError('octal digits as a string, e.g. umask = "027" (or 0o027)')


def _limit(value: Any) -> int:
    if value in ("infinity", "unlimited"):
        return UNLIMITED
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError('a whole number >= 0 or "infinity"')
    return value


def _rlimits(value: Any) -> Mapping[str, int]:
    example = 'e.g. rlimits = { nofile = 4096, core = 0, as = "infinity" }'
    if not isinstance(value, dict):
        raise ValueError(f"a table of limits, {example}")
    out = {}
    for key, limit in value.items():
        if key not in RLIMITS:
            raise ValueError(f"limits among {', '.join(RLIMITS)} (not {key!r}), {example}")
        try:
            out[key] = _limit(limit)
        except ValueError as exc:
            raise ValueError(f"rlimits.{key}: {exc}, {example}") from None
    return MappingProxyType(out)


def _stop_signal(value: Any) -> str:
    text = value.upper().removeprefix("SIG") if isinstance(value, str) else None
    if text not in STOP_SIGNALS:
        raise ValueError("one of " + " | ".join(repr(s) for s in STOP_SIGNALS))
    return text


def read_env_file(path: Path) -> tuple[dict[str, str], list[str]]:
    """systemd's EnvironmentFile syntax: KEY=VALUE lines; '#' and ';' comment lines; blank
    lines; a value in double quotes (with \\ escapes) or single quotes; a trailing backslash
    continues a line. Returns the variables and the problems (with line numbers)."""
    out: dict[str, str] = {}
    problems: list[str] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    number = 0
    while number < len(lines):
        start = number + 1
        line = lines[number]
        number += 1
        while line.endswith("\\") and number < len(lines):
            line = line[:-1] + lines[number]
            number += 1
        text = line.strip()
        if not text or text[0] in "#;":
            continue
        key, sep, value = text.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not all(c.isalnum() or c == "_" for c in key) or key[0].isdigit():
            problems.append(f"line {start}: expected KEY=VALUE (KEY: letters, digits, _), got {text!r}")
            continue
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            quote, value = value[0], value[1:-1]
            if quote == '"':
                value = re.sub(r'\\(.)', r"\1", value)
        if "\0" in value:
            problems.append(f"line {start}: {key}: a NUL byte cannot be in the environment")
            continue
        out[key] = value
    return out, problems


_SIZE = re.compile(r"(\d+)\s*([KMGT]?)i?B?", re.IGNORECASE)


def _memory_max(value: Any) -> str:
    """memory.max: bytes, or a size with K, M, G, T (powers of 1024), or "max"."""
    if value == "max":
        return "max"
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return str(value)
    match = _SIZE.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None or int(match.group(1)) == 0:
        raise ValueError('a size > 0: bytes, or e.g. "512M", "2G", or "max"')
    return str(int(match.group(1)) * 1024 ** " KMGT".index(match.group(2).upper() or " "))


def _cpu_max(value: Any) -> str:
    """cpu.max from a share of one core, as systemd's CPUQuota: "50%" -> "50000 100000"."""
    text = value.strip() if isinstance(value, str) else ""
    if text == "max":
        return "max 100000"
    if text.endswith("%") and text[:-1].isdigit() and int(text[:-1]) > 0:
        return f"{int(text[:-1]) * 1000} 100000"
    raise ValueError('a share of one core, e.g. "50%" (200% = two cores), or "max"')


def _pids_max(value: Any) -> str:
    if value == "max":
        return "max"
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return str(value)
    raise ValueError('a whole number > 0, or "max"')


MANAGER_KEYS: dict[str, Callable[[Any], Any]] = {
    "name": _name,
    "command": _command,
    "start": _enum(StartType),
    "core": _boolean,
    "redundancy": _boolean,
    "ready": _enum(Readiness),
    "ready_seconds": _positive_number,
    "start_timeout": _positive_number,
    "seconds_to_kill": _positive_number,
    "restart_count": _count,
    "reset_after": _positive_number,
    "env": _env,
    "cwd": _string,
    "num": _count,
    "monitor": _monitor,
    "run_on": _one_of("both", "active"),
    "notify_switchover": _boolean,
    "weight": _count,
    "user": _account("user"),
    "group": _account("group"),
    "umask": _umask,
    "rlimits": _rlimits,
    "stop_signal": _stop_signal,
    "stop_command": _command,
    "env_file": _string,
    "memory_max": _memory_max,
    "cpu_max": _cpu_max,
    "pids_max": _pids_max,
}
# Keys that make no sense for every manager at once.
NOT_DEFAULTABLE = frozenset({"name", "command", "redundancy", "num", "monitor"})

PROJECT_KEYS: dict[str, Callable[[Any], Any]] = {
    "name": _name,
    "state_dir": _string,
    "log_max_bytes": _count,
    "log_backups": _count,
    "stop_on_write_error": _boolean,
}


def _tcp_address(value: Any) -> str:
    text = _string(value)
    host, _, port = text.rpartition(":")
    if host not in ("127.0.0.1", "localhost", "::1", "[::1]") or not port.isdigit():
        raise ValueError('a loopback address "127.0.0.1:PORT" (never a network port)')
    return text


CONTROL_KEYS: dict[str, Callable[[Any], Any]] = {"tcp": _tcp_address}


def _credential(value: Any) -> str:
    if not isinstance(value, str) or any(c in "#\r\n" for c in value):
        raise ValueError("a string without '#' or line breaks ('#' separates the fields)")
    return value


def _port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ValueError("a port number 0..65535 (0: any free port)")
    return value


def _positive_count(value: Any) -> int:
    count = _count(value)
    if count < 1:
        raise ValueError("a whole number >= 1")
    return count


PMON_TCP_KEYS: dict[str, Callable[[Any], Any]] = {
    "enabled": _boolean,
    "address": _string,
    "port": _port,
    "user": _credential,
    "password": _credential,
    "password_file": _string,
    "idle_timeout": _positive_number,
    "max_clients": _positive_count,
}

# Top-level sections; other modules (redundancy, plugins, ...) extend this with theirs.
SECTIONS = {"project", "defaults", "managers", "control", "pmon_tcp", "plugins", "redundancy",
            "metrics"}


class _Errors:
    """Collects every problem of one file, then raises them as one ConfigError."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.lines.append(f"{self.path}: {where}: {message}")

    def unknown_keys(self, where: str, table: Mapping[str, Any], known: Any) -> None:
        for key in table:
            if key not in known:
                import difflib  # only for a misspelt key

                close = difflib.get_close_matches(key, list(known), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                allowed = ", ".join(sorted(known))
                self.add(f"{where}, key '{key}'", f"unknown key{hint}; allowed: {allowed}")

    def convert(
        self, where: str, table: Mapping[str, Any], schema: Mapping[str, Callable[[Any], Any]]
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in table.items():
            if key not in schema:
                continue
            try:
                out[key] = schema[key](value)
            except ValueError as exc:
                self.add(f"{where}, key '{key}'", f"expected {exc}, got {value!r}")
        return out

    def raise_if_any(self) -> None:
        if self.lines:
            raise ConfigError("\n".join(self.lines))


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate a project file. Raises ConfigError naming every problem."""
    # The project's identity is its canonical path: a symlink or a `../` spelling of the
    # same file must find the same state directory, lock and managers.
    path = Path(path).resolve()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such file; pass the project file with -c FILE or PMON_CONFIG"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse(data, path)


def parse(data: Mapping[str, Any], path: Path) -> Config:
    """Validate an already parsed TOML document that belongs to `path`."""
    errors = _Errors(path)
    base = path.parent
    _strictness(data, errors)
    errors.raise_if_any()  # the checks below would trip over a NUL (paths, resolve)
    errors.unknown_keys("top level", data, SECTIONS)

    project_table = _table(data, "project", errors)
    errors.unknown_keys("[project]", project_table, PROJECT_KEYS)
    project = errors.convert("[project]", project_table, PROJECT_KEYS)
    if "name" not in project and "name" not in project_table:
        errors.add("[project], key 'name'", 'missing; add name = "myproject" under [project]')
    control_table = _table(data, "control", errors)
    errors.unknown_keys("[control]", control_table, CONTROL_KEYS)
    control = errors.convert("[control]", control_table, CONTROL_KEYS)

    defaults_table = _table(data, "defaults", errors)
    defaultable = {k: v for k, v in MANAGER_KEYS.items() if k not in NOT_DEFAULTABLE}
    errors.unknown_keys("[defaults]", defaults_table, defaultable)
    defaults = errors.convert("[defaults]", defaults_table, defaultable)

    managers = _managers(data, defaults, base, errors)
    pmon_tcp = _pmon_tcp(data, base, errors)
    metrics = _metrics(data, errors)
    from pmon.redundancy import settings as redundancy_settings  # late: it imports this module

    redundancy = redundancy_settings.parse(data, path, errors)
    managers = redundancy_settings.check_managers(managers, redundancy, path, errors)
    errors.raise_if_any()

    state_dir = (base / project.get("state_dir", "var")).resolve()  # canonical, as `path`
    project_spec = ProjectSpec(
        name=project["name"],
        state_dir=state_dir,
        log_max_bytes=project.get("log_max_bytes", ProjectSpec.log_max_bytes),
        log_backups=project.get("log_backups", ProjectSpec.log_backups),
        control=ControlSpec(**control),
        stop_on_write_error=project.get("stop_on_write_error", False),
    )
    return Config(
        path=path, project=project_spec, managers=managers, raw=data, pmon_tcp=pmon_tcp,
        redundancy=redundancy, metrics=metrics,
    )


# --- what `run` could not start: refused here, so that `validate` refuses it too ----------
MAX_NAME = 64  # a manager's name is a file name (its log) and a column of `pmon status`
MIN_RESET_AFTER = 1.0  # a shorter window forgets every restart: no backoff, no block


def _sane_name(text: str) -> bool:
    """Letters, digits, '-', '_', '.'; not starting with '-' or '.' (an option, a hidden
    file); no control characters (terminal escapes in `status`); short enough for a path."""
    return (
        0 < len(text) <= MAX_NAME
        and (text[0].isalnum() or text[0] == "_")
        and all((c.isalnum() and c.isprintable()) or c in "-_." for c in text)
    )


def _strictness(data: Mapping[str, Any], errors: _Errors) -> None:
    """Refuse what passes the schema but cannot run: a NUL anywhere (no OS call takes one:
    in a command, an environment variable, a path), and a restart window too short to
    count restarts (reset_after, here and in [defaults])."""
    for where, text in _strings(data, "top level"):
        if "\0" in text:
            errors.add(where, f"contains a NUL character ({text!r}); remove it")
    tables = [("[defaults]", data.get("defaults"))]
    managers = data.get("managers")
    if isinstance(managers, list):
        tables += [(f"managers[{i}]", t) for i, t in enumerate(managers, start=1)]
    for where, table in tables:
        value = table.get("reset_after") if isinstance(table, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and (
            value < MIN_RESET_AFTER and value >= 0
        ):
            errors.add(
                f"{where}, key 'reset_after'",
                f"{value!r} s is shorter than one restart: every crash would count as the "
                f"first (no backoff, never blocked); use at least {MIN_RESET_AFTER:g}",
            )


def _strings(value: Any, where: str) -> Any:
    """Every string (keys too) of a parsed TOML value, with where it is."""
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            if where != "top level":
                inner = f"{where}, key {key!r}"
            else:
                inner = key if isinstance(item, list) else f"[{key}]"
            if isinstance(key, str):
                yield inner, key
            yield from _strings(item, inner)
    elif isinstance(value, list):
        for position, item in enumerate(value, start=1):
            yield from _strings(item, f"{where}[{position}]")


def _table(data: Mapping[str, Any], key: str, errors: _Errors) -> Mapping[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        errors.add(f"[{key}]", f"expected a table ([{key}]), got {value!r}")
        return {}
    return value


def _pmon_tcp(data: Mapping[str, Any], base: Path, errors: _Errors) -> PmonTcpSpec | None:
    """[pmon_tcp]: off unless present; a non-loopback address only with a password."""
    if "pmon_tcp" not in data:
        return None
    table = _table(data, "pmon_tcp", errors)
    errors.unknown_keys("[pmon_tcp]", table, PMON_TCP_KEYS)
    values = errors.convert("[pmon_tcp]", table, PMON_TCP_KEYS)
    if not values.pop("enabled", True):
        return None
    if "password_file" in values:
        if "password" in values:
            errors.add("[pmon_tcp], key 'password_file'", "give password or password_file, not both")
        where = "[pmon_tcp], key 'password_file'"
        file = base / values.pop("password_file")
        try:
            line = (file.read_text(encoding="utf-8").splitlines() or [""])[0].strip()
        except (OSError, UnicodeDecodeError) as exc:
            errors.add(where, f"cannot read {file}: {exc}")
            return None
        user, sep, password = line.rpartition("#")
        if sep:
            values["user"] = user
        values["password"] = password
        if "#" in user or not password:
            errors.add(where, f"{file} must hold one line: the password, or user#password")
    address = values.get("address", PmonTcpSpec.address)
    if not values.get("password") and not _is_loopback(address):
        errors.add(
            "[pmon_tcp], key 'address'",
            f"{address!r} is not a loopback address: a network listener needs a password "
            '(set password or password_file), or use address = "127.0.0.1"',
        )
    return PmonTcpSpec(**values)


def _listen(value: Any) -> tuple[str, int]:
    """ "HOST:PORT" (an IP address, or localhost) or ":PORT" / "PORT" (loopback)."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str):
        raise ValueError('an address "127.0.0.1:9464" (or ":9464" for loopback)')
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError('an address "HOST:PORT" with a port 0..65535, e.g. "127.0.0.1:9464"')
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            # A name may resolve to a network address nobody meant to open.
            raise ValueError(
                'an IP address and a port, e.g. "127.0.0.1:9464" (loopback), or "0.0.0.0:9464" '
                "to let every network scrape it (no host names)"
            ) from None
    return host, int(port)


def _metrics(data: Mapping[str, Any], errors: _Errors) -> MetricsSpec | None:
    """[metrics]: off unless present; loopback unless `listen` names another address."""
    if "metrics" not in data:
        return None
    table = _table(data, "metrics", errors)
    errors.unknown_keys("[metrics]", table, {"listen"})
    values = errors.convert("[metrics]", table, {"listen": _listen})
    host, port = values.get("listen", (MetricsSpec.host, MetricsSpec.port))
    return MetricsSpec(host=host, port=port)


def _is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def _managers(
    data: Mapping[str, Any], defaults: Mapping[str, Any], base: Path, errors: _Errors
) -> tuple[ManagerSpec, ...]:
    tables = data.get("managers", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        errors.add("managers", "expected [[managers]] tables, one per manager")
        return ()
    specs: list[ManagerSpec] = []
    seen: dict[str, int] = {}
    for position, table in enumerate(tables, start=1):
        label = table.get("name") if isinstance(table.get("name"), str) else None
        label = label if label and _sane_name(label) else None  # no escapes in a message
        where = f"manager '{label}' (managers[{position}])" if label else f"managers[{position}]"
        errors.unknown_keys(where, table, MANAGER_KEYS)
        values = {**defaults, **errors.convert(where, table, MANAGER_KEYS)}
        for required in ("name", "command"):
            if required not in table:
                errors.add(f"{where}, key '{required}'", "missing; every manager needs it")
        if "name" not in values or "command" not in values:
            continue
        name = values["name"]
        if name in seen:
            errors.add(
                f"{where}, key 'name'",
                f"duplicate manager name '{name}' (also managers[{seen[name]}]); names must be unique",
            )
        seen.setdefault(name, position)
        if values.get("redundancy"):
            if table.get("core") is False:
                errors.add(
                    f"{where}, key 'core'",
                    "the redundancy manager is always a core manager; remove core = false",
                )
            values["core"] = True
        if values.get("ready") is Readiness.NOTIFY and not HAS_NOTIFY_SOCKET:
            errors.add(
                f"{where}, key 'ready'",
                'ready = "notify" needs the systemd notify socket, which this platform lacks; '
                'use ready = "delay" with ready_seconds',
            )
        if values.get("core") and values.get("start", StartType.ALWAYS) is not StartType.ALWAYS:
            errors.add(
                f"{where}, key 'start'",
                f"a core manager must have start = \"always\", not \"{values['start']}\"; "
                "set core = false or start = \"always\"",
            )
        values["cwd"] = (base / values.get("cwd", ".")).resolve()
        if "env_file" in values:  # its variables, then `env` (which wins)
            values["env_file"] = (base / values["env_file"]).resolve()
            values["env"] = _with_env_file(values, f"{where}, key 'env_file'", errors)
        specs.append(ManagerSpec(index=position, **values))
    if sum(spec.redundancy for spec in specs) > 1:
        errors.add("managers", "more than one manager has redundancy = true; a project has one")
    return tuple(specs)


# --- can the managers' programs be started? (pmon validate, run, reload, add, edit) ---------
def check_programs(config: Config, names: Iterable[str] | None = None) -> None:
    """Raise ConfigError naming manager and key for every program that is not found or not
    executable, and every `cwd` that is not a directory (of `names` only, if given). Kept out
    of `parse`: the file's shape is valid anywhere, its programs only on this machine."""
    import shutil

    errors = _Errors(config.path)
    wanted = None if names is None else set(names)
    for spec in config.managers:
        if wanted is not None and spec.name not in wanted:
            continue
        where = f"manager '{spec.name}' (managers[{spec.index}])"
        if not _is(spec.cwd, "dir"):
            errors.add(f"{where}, key 'cwd'", f"{spec.cwd} is not a directory; create it or fix cwd")
            continue
        program = spec.command[0]
        if os.sep in program or (os.altsep and os.altsep in program):
            path = spec.cwd / program  # relative to cwd, as the spawn resolves it
            if not _is(path, "file"):
                errors.add(f"{where}, key 'command'", f"program {program!r} not found ({path} does not exist)")
            elif not os.access(path, os.X_OK):
                errors.add(f"{where}, key 'command'", f"program {path} is not executable (chmod +x it, or run it through its interpreter)")
            continue
        search = spec.env.get("PATH", os.environ.get("PATH", os.defpath))
        if shutil.which(program, path=search) is None:
            errors.add(
                f"{where}, key 'command'",
                f"program {program!r} not found on PATH; fix its spelling, install it or give its full path",
            )
    errors.raise_if_any()


def _is(path: Path, kind: str) -> bool:
    """path.is_dir() / is_file(), false also for a path the system refuses to look at (a
    name too long: ENAMETOOLONG, which pathlib raises), so that validate says so plainly."""
    try:
        return path.is_dir() if kind == "dir" else path.is_file()
    except OSError:
        return False


def _with_env_file(values: Mapping[str, Any], where: str, errors: _Errors) -> Mapping[str, str]:
    path: Path = values["env_file"]
    try:
        variables, problems = read_env_file(path)
    except (OSError, UnicodeDecodeError) as exc:
        errors.add(where, f"cannot read {path}: {exc}")
        return MappingProxyType(dict(values.get("env", {})))
    for problem in problems:
        errors.add(where, f"{path}: {problem}")
    return MappingProxyType({**variables, **values.get("env", {})})
