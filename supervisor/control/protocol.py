"""Framing of the control channel: one JSON object per line, each way.

request: {"command": "stop", "args": {"target": "driver1"}, "token": "..."}
reply:   {"ok": true, "result": ...} or {"ok": false, "error": {"code": "...", "message": "..."}}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pmon.errors import ProtocolError

MAX_LINE = 1024 * 1024


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    try:
        message = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"not a JSON object: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError("a control message must be a JSON object")
    return message


def error_reply(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message}}


def socket_path(state_dir: Path) -> Path:
    return state_dir / "pmon.sock"


def token_path(state_dir: Path) -> Path:
    return state_dir / "control.token"


def address_path(state_dir: Path) -> Path:
    """Where a TCP control server writes the address it bound (the port may be 0 = any)."""
    return state_dir / "control.addr"


def with_iso(value: Any) -> Any:
    """A copy of a reply where every epoch time (`ts`, `at`, `*_at`, `last_switchover`) gets
    an ISO 8601 twin beside it (`ts_iso`, ...), in local time with its offset: a script
    reads the number, a person the text."""
    if isinstance(value, list):
        return [with_iso(item) for item in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        out[key] = with_iso(item)
        if (key in ("ts", "at") or key.endswith("_at")) and isinstance(item, (int, float)) \
                and not isinstance(item, bool) and item > 0:
            out[f"{key}_iso"] = iso8601(item)
    return out


def iso8601(ts: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ts, timezone.utc).astimezone().isoformat(timespec="milliseconds")
