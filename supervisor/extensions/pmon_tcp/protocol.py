"""The PMON TCP wire format, without I/O: parse a request line, format the replies.

Request: `user#password#COMMAND[ args]` and a newline. Replies come in three kinds, none of
them with a terminator unless shown: lists (`LIST:n\n`, rows ending in `\n`, `;\n`),
statuses (`OK` or `ERROR <errId> :<text>`) and values (a project name, a manager's
properties). docs/pmon_tcp.md holds the facts.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable, Sequence

MAX_LINE = 64 * 1024  # real requests are short; a longer line is an error, then dropped

OK = b"OK"


def error(err_id: str, text: str) -> bytes:
    """`ERROR <errId> :<text>`, on one line whatever the text holds."""
    one_line = "; ".join(part.strip() for part in text.splitlines() if part.strip())
    return f"ERROR {err_id} :{one_line}".encode("utf-8", "replace")


# The errors whose wording real clients have seen.
ERR_CMD = error("errCmd", "unknown command")
ERR_INV_IDX = error("errInvIdx", "invalid manager index given")
ERR_STOP = error("errStop", "STOP of this manager not possible")
ERR_INS = error("errIns", "insertion at this position not allowed")
ERR_START_ALL = error("errStartAll", "START_ALL in this mode not allowed")
# No client documents these; pmon's own, in the same form.
ERR_AUTH = error("errAuth", "authentication failed")
ERR_MALFORMED = error("errCmd", "malformed request; expected user#password#COMMAND")
ERR_NOT_TEXT = error("errCmd", "request is not text")
ERR_TOO_LONG = error("errCmd", f"request longer than {MAX_LINE} bytes")

START_MODES = ("manual", "once", "always")  # their position is the number in LIST / STATI


class Malformed(Exception):
    """A line that is not a request; `reply` is what the client gets."""

    def __init__(self, reply: bytes) -> None:
        super().__init__(reply.decode())
        self.reply = reply


@dataclass(frozen=True)
class Request:
    user: str
    password: str
    command: str  # normalised: "MGRLIST:LIST", "SINGLE_MGR:START", "START_ALL:", "PROJECT:"
    args: str  # the rest of the line, stripped


def parse(line: bytes) -> Request:
    """One request line (with or without its newline). Raises Malformed."""
    try:
        text = line.rstrip(b"\n").rstrip(b" \r").decode("utf-8")
    except UnicodeDecodeError:
        raise Malformed(ERR_NOT_TEXT) from None
    if any(ord(c) < 32 and c != "\t" for c in text):
        raise Malformed(ERR_NOT_TEXT)
    parts = text.split("#", 2)
    if len(parts) != 3:
        raise Malformed(ERR_MALFORMED)
    user, password, rest = parts
    head, _, args = rest.strip().partition(" ")
    group, _, sub = head.upper().partition(":")
    return Request(user, password, f"{group}:{sub}", args.strip())


def parse_index(args: str) -> int | None:
    """A manager index (`0` is pmon itself), or None when `args` is not exactly one."""
    return int(args) if args.isdigit() and args.isascii() else None


# --- replies -------------------------------------------------------------------------


def list_reply(rows: Sequence[str], tail: str | None = None) -> bytes:
    """`LIST:n`, the rows, the optional project line, `;`: every line ends in LF."""
    lines = [f"LIST:{len(rows)}", *rows, *([tail] if tail is not None else []), ";"]
    return ("\n".join(lines) + "\n").encode("utf-8", "replace")


def list_row(
    exe: str, mode: str, sec_kill: int, restart_count: int, reset_min: int, options: str
) -> str:
    return f"{exe};{START_MODES.index(mode)};{sec_kill};{restart_count};{reset_min};{options}"


def stati_row(state: int, pid: int, mode: str, started_at: float | None, number: int) -> str:
    return f"{state};{pid:5d};{START_MODES.index(mode)};{format_time(started_at)};{number:3d}"


def mode_line(mode_number: int, mode_name: str, emergency: bool, demo: bool = False) -> str:
    return f"{mode_number} {mode_name} {int(emergency)} {int(demo)}"


def props(mode: str, sec_kill: int, restart_count: int, reset_min: int, options: str) -> bytes:
    """The PROP_GET value: `<modeWord> <secKill> <restartCount> <resetMin> <options...>`."""
    return f"{mode} {sec_kill} {restart_count} {reset_min} {options}".rstrip().encode()


def format_time(timestamp: float | None) -> str:
    """`YYYY.MM.DD hh:mm:ss.mmm` in local time; never started: the epoch (in local time)."""
    text = datetime.fromtimestamp(timestamp or 0.0).strftime("%Y.%m.%d %H:%M:%S.%f")
    return text[:-3]


# --- manager properties ------------------------------------------------------------


def join_options(args: Iterable[str]) -> str:
    """A command's arguments after the program, quoted as a shell would need them (a line
    break, which would end the row, is shown as \\n)."""
    return shlex.join(args).replace("\r", "\\r").replace("\n", "\\n")


def split_options(text: str) -> list[str]:
    """Options as sent (one pair of surrounding quotes stripped) -> arguments. ValueError."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'" and text[0] not in text[1:-1]:
        text = text[1:-1]
    return shlex.split(text)


def manager_number(args: Sequence[str], num: int | None) -> int:
    """The manager number: the `num` key, else `-num N` in the arguments, else 1 (as PMON)."""
    if num is not None:
        return num
    for flag, value in zip(args, args[1:]):
        if flag == "-num" and value.isdigit():
            return int(value)
    return 1


@dataclass(frozen=True)
class Props:
    """The fields INS and PROP_PUT carry after the index (and, for INS, the program)."""

    mode: str
    sec_kill: int
    restart_count: int
    reset_min: int
    options: list[str]


def parse_props(text: str) -> Props:
    """`<mode> <secKill> <restartCount> <resetMin> <options...>`; ValueError says what is wrong."""
    fields = text.split(None, 4)
    if len(fields) < 4:
        raise ValueError("expected <manual|once|always> <secKill> <restartCount> <resetMin> <options...>")
    mode_text, sec_kill, restart_count, reset_min = fields[:4]
    mode = mode_text.lower()
    if mode.isdigit() and int(mode) < len(START_MODES):
        mode = START_MODES[int(mode)]
    if mode not in START_MODES:
        raise ValueError(f"start mode {mode_text!r} is not manual, once, always (or 0, 1, 2)")
    numbers = []
    for label, value in (("secKill", sec_kill), ("restartCount", restart_count), ("resetMin", reset_min)):
        if not (value.isdigit() and value.isascii()):
            raise ValueError(f"{label} {value!r} is not a whole number >= 0")
        numbers.append(int(value))
    try:
        options = split_options(fields[4] if len(fields) > 4 else "")
    except ValueError as exc:
        raise ValueError(f"options: {exc}") from None
    return Props(mode, numbers[0], numbers[1], numbers[2], options)
