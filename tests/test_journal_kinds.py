"""Every event kind the code writes has a journal priority (review 1, finding 6): the code
is read (an AST walk over every call that writes an event), not a list kept by hand."""

from __future__ import annotations

import ast
from pathlib import Path

from pmon.runtime import journal

ROOT = Path(__file__).resolve().parent.parent
WRITERS = {"_record", "_note"}  # core/project.py's records, PMON TCP's rate-limited notes


def written_kinds() -> dict[str, str]:
    """kind -> where it is written, for every `<x>.events.write("kind", ...)`,
    `_record("kind", ...)` and `_note("kind", ...)` under supervisor/ and plugins/."""
    kinds: dict[str, str] = {}
    for path in sorted([*(ROOT / "supervisor").rglob("*.py"), *(ROOT / "plugins").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            is_event = (
                isinstance(func, ast.Attribute) and func.attr == "write"
                and isinstance(func.value, ast.Attribute) and func.value.attr == "events"
            ) or (isinstance(func, ast.Attribute) and func.attr in WRITERS)
            first = node.args[0]
            if is_event and isinstance(first, ast.Constant) and isinstance(first.value, str):
                kinds.setdefault(first.value, f"{path.relative_to(ROOT)}:{node.lineno}")
    return kinds


def test_every_event_kind_written_has_a_journal_priority():
    kinds = written_kinds()
    assert len(kinds) > 40  # the walk finds the writes (it would pass vacuously otherwise)
    missing = {kind: where for kind, where in kinds.items() if kind not in journal.CLASSIFIED}
    assert not missing, f"event kinds with no journal priority (runtime/journal.py): {missing}"


def test_the_review_s_warnings_are_at_warning_or_worse():
    for kind in ("metrics-failed", "metrics-error", "fd-limit", "metrics-counts-lost",
                 "stop-resumed", "job-resumed", "adoption"):
        assert journal.priority(kind, {}) <= journal.WARNING, kind
    for kind in ("state-dir", "write-recovered"):
        assert journal.priority(kind, {}) == journal.NOTICE, kind


def test_no_kind_is_in_two_tables():
    tables = [journal._ERRORS, journal._WARNINGS, journal._NOTICES, journal._INFOS, journal._BY_FIELDS]
    assert sum(len(t) for t in tables) == len(journal.CLASSIFIED)
