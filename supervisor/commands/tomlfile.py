"""Write a change of the project back into its TOML file without losing the operator's
comments and layout (add, remove, edit, and PMON TCP's INS / DEL / PROP_PUT, which are the
same commands).

The change path works on plain tables (core/change.py); this module carries the difference
between the table the file held (`old`) and the changed one (`new`) into the file's own
tomlkit document: a removed manager's table goes, an added one is inserted at its position,
an edited key is set in place, everything else (comments, blank lines, key order, quoting)
stays as the operator wrote it. tomli-w stays for files written from scratch.
"""

from __future__ import annotations

from typing import Any, Mapping


def updated_text(text: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """`text` (the file, parsed as `old`) with the difference from `old` to `new` applied."""
    import tomlkit

    document = tomlkit.parse(text)
    _merge(document, old, new)
    result = tomlkit.dumps(document)
    import tomllib

    if tomllib.loads(result) != _plain(new):  # a layout tomlkit cannot edit in place
        import tomli_w

        return tomli_w.dumps(dict(new))
    return result


def _merge(target: Any, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    for key in [k for k in old if k not in new]:
        del target[key]
    for key, value in new.items():
        before = old.get(key, _MISSING)
        if before == value and key in target:
            continue
        if isinstance(value, Mapping) and isinstance(before, Mapping) and key in target:
            _merge(target[key], before, value)
        elif key == "managers" and isinstance(value, list) and isinstance(before, list) and key in target:
            _merge_managers(target[key], before, value)
        else:
            target[key] = _item(value)


def _merge_managers(tables: Any, old: list[Any], new: list[Any]) -> None:
    """[[managers]] by name: removed ones go, kept ones are edited in place, added ones are
    inserted where the new list has them."""
    new_names = [t.get("name") for t in new]
    for position in range(len(old) - 1, -1, -1):
        if old[position].get("name") not in new_names:
            del tables[position]
    kept = {t.get("name"): t for t in old if t.get("name") in new_names}
    for position, table in enumerate(new):
        name = table.get("name")
        if name in kept:
            _merge(tables[position], kept[name], table)
        else:
            tables.insert(position, _item(table))


def _item(value: Any) -> Any:
    import tomlkit

    if isinstance(value, Mapping):
        table = tomlkit.table()
        for key, item in value.items():
            table[key] = _item(item)
        return table
    return tomlkit.item(value)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


_MISSING = object()
