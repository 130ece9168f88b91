"""Mutated project files for fuzzing `pmon validate` (tests/test_validate_strict.py and
scripts/fuzz_validate.py): a valid base project of real test managers, changed by one to
three random edits (a key set to a nasty value, a key removed, a table duplicated, a line
of the TOML text cut or doubled). Every path a mutation can write is relative: a file that
`validate` accepts can be run in a temporary folder."""

from __future__ import annotations

import copy
import random
import sys
from pathlib import Path
from typing import Any

import tomli_w

CHILD = str(Path(__file__).parent / "children" / "child.py")

NASTY_STRINGS = [
    "", "a\0b", "\0", "A=B", "=", "-x", "--", "\x1b[31mred\x1b[0m", "x" * 300, "a b",
    "ok", "dir/sub", "é", "1", "..x", ".hidden", "_u", "a\nb", "#", "\t", "\u202e",
]
NASTY_NUMBERS: list[Any] = [
    0, -1, 1, 0.0001, 0.5, 3, float("inf"), float("-inf"), float("nan"), 1e308, 2**63 - 1,
    -(2**63), True, False,
]
NASTY_OTHER: list[Any] = [[], [""], ["a\0"], [1], {}, {"A=B": "x"}, {"A\0": "x"}, {"": "x"},
                          {"A": "b\0"}, {"A": 1}, {"ok": "fine"}, [CHILD], "127.0.0.1:0"]
MANAGER_KEYS = [
    "name", "command", "start", "core", "redundancy", "ready", "ready_seconds",
    "start_timeout", "seconds_to_kill", "restart_count", "reset_after", "env", "cwd", "num",
    "run_on", "notify_switchover", "weight", "monitor", "bogus",
]
TABLE_KEYS = {
    "project": ["name", "state_dir", "log_max_bytes", "log_backups", "stop_on_write_error"],
    "defaults": ["seconds_to_kill", "reset_after", "restart_count", "start_timeout", "env"],
    "control": ["tcp"],
    "pmon_tcp": ["port", "address", "password", "password_file", "idle_timeout"],
    "plugins": ["paths", "enable", "disable", "timeout"],
}


def base(name: str = "fuzz") -> dict[str, Any]:
    py = sys.executable
    return {
        "project": {"name": name, "state_dir": "var"},
        "defaults": {"seconds_to_kill": 2, "start_timeout": 5},
        "managers": [
            {"name": "core", "command": [py, CHILD], "core": True},
            {"name": "drv", "command": [py, CHILD], "env": {"PORT": "5020"}},
            {"name": "man", "command": [py, CHILD], "start": "manual"},
            {"name": "note", "command": [py, CHILD, "--ready-after", "0.2"], "ready": "notify"},
            {"name": "job", "command": [py, CHILD, "--exit-after", "0.1"], "start": "once"},
        ],
    }


# Values of the right type, near the edges: the files `validate` accepts come from these.
PLAUSIBLE: dict[str, list[Any]] = {
    "start": ["always", "once", "manual"], "ready": ["spawn", "notify", "delay"],
    "run_on": ["both"], "core": [True, False], "ready_seconds": [0, 0.1, 1e9],
    "start_timeout": [0, 0.5, 1e12], "seconds_to_kill": [0, 0.3, 1e300],
    "restart_count": [0, 1, 10**9], "reset_after": [1, 1.5, 1e300], "num": [0, 7],
    "weight": [0, 5], "cwd": [".", "sub"], "env": [{"X_1": ""}, {"LONG": "v" * 5000}],
    "name": ["a", "Z9", "_x", "a.b-c", "é1", "n" * 64], "notify_switchover": [True],
    "log_max_bytes": [0, 1, 2**40], "log_backups": [0, 50], "state_dir": ["var2", "a/b"],
    "stop_on_write_error": [True], "tcp": ["127.0.0.1:0"], "port": [0],
    "idle_timeout": [0, 1e9], "timeout": [0, 1e9],
}


def nasty(rng: random.Random, key: str = "") -> Any:
    if key in PLAUSIBLE and rng.random() < 0.5:
        return copy.deepcopy(rng.choice(PLAUSIBLE[key]))
    pool = rng.choice([NASTY_STRINGS, NASTY_NUMBERS, NASTY_OTHER])
    return copy.deepcopy(rng.choice(pool))


def mutate(rng: random.Random, name: str = "fuzz") -> str:
    """The text of one mutated project file."""
    data = base(name)
    for _ in range(rng.randint(1, 3)):
        kind = rng.random()
        managers = data["managers"]
        if kind < 0.9 and not (isinstance(managers, list) and managers and all(
                isinstance(m, dict) for m in managers)):
            kind = 0.95  # the list itself was replaced: replace a table instead
        if kind < 0.6:
            manager = rng.choice(managers)
            key = rng.choice(MANAGER_KEYS)
            manager[key] = nasty(rng, key)
        elif kind < 0.75:
            table = rng.choice(list(TABLE_KEYS))
            if not isinstance(data.setdefault(table, {}), dict):
                data[table] = {}
            key = rng.choice(TABLE_KEYS[table])
            data[table][key] = nasty(rng, key)
        elif kind < 0.85:
            manager = rng.choice(managers)
            manager.pop(rng.choice(list(manager)), None)
        elif kind < 0.9:
            managers.append(copy.deepcopy(rng.choice(managers)))
        else:
            table = rng.choice(list(TABLE_KEYS) + ["managers"])
            data[table] = nasty(rng)
    try:
        text = tomli_w.dumps(data)
    except (TypeError, ValueError):  # a value TOML cannot hold: mutate the text instead
        text = tomli_w.dumps(base(name))
    if rng.random() < 0.15:
        lines = text.splitlines()
        at = rng.randrange(len(lines))
        if rng.random() < 0.5:
            del lines[at]
        else:
            lines.insert(at, lines[at])
        text = "\n".join(lines) + "\n"
    if rng.random() < 0.05:
        at = rng.randrange(len(text))
        text = text[:at] + rng.choice(["\0", "\x1b", "[", "]", '"', "=", "\n"]) + text[at + 1:]
    return text
