"""add, remove, edit and PMON TCP's PROP_PUT keep the project file's comments and layout
(tomlkit): against a real pmon, with the sample file's habits (comments above and beside
keys, blank lines, inline tables)."""

from __future__ import annotations

import socket
import tomllib

from hypothesis import given, settings
from hypothesis import strategies as st

from pmon.commands.tomlfile import updated_text

from support import child, pmon_cli, poll_for


def write_commented(tmp_path, extra=""):
    c = child()
    command = "[" + ", ".join(f'"{part}"' for part in c) + "]"
    text = f'''# The demo project: read by the night shift, keep it tidy.
[project]
name = "toml-{tmp_path.name}"[-40:]
state_dir = "var"   # beside this file
{extra}
# --- core ---------------------------------------------------------------
[[managers]]
name = "data"       # the data manager
command = {command}
core = true

# --- drivers ------------------------------------------------------------
[[managers]]
name = "driver1"
command = {command}
env = {{ PLANT = "north" }}   # inline, as written
restart_count = 3   # three strikes

[[managers]]
name = "tool"       # an operator tool
command = {command}
start = "manual"
'''
    text = text.replace('name = "toml-' + tmp_path.name + '"[-40:]', f'name = "toml-{tmp_path.name[-30:]}"')
    path = tmp_path / "pmon.toml"
    path.write_text(text)
    return path


COMMENTS = ["# The demo project: read by the night shift, keep it tidy.", "# beside this file",
            "# --- core ---", "# the data manager", "# --- drivers ---", "# inline, as written"]


def test_add_edit_remove_keep_every_comment_and_the_layout(tmp_path, pmon):
    config = write_commented(tmp_path)
    instance = pmon(config)
    original = config.read_text()
    out = pmon_cli(config, "add", "driver2", "--restart-count", "5", "--", *child())
    assert out.returncode == 0, out.stderr
    out = pmon_cli(config, "edit", "driver1", "restart_count=7", "seconds_to_kill=2")
    assert out.returncode == 0, out.stderr
    text = config.read_text()
    assert all(c in text for c in COMMENTS)
    assert 'env = { PLANT = "north" }   # inline, as written' in text
    assert "restart_count = 7   # three strikes" in text  # the value changed, its comment stays
    assert "seconds_to_kill = 2" in text
    assert text.startswith(original.split("[[managers]]")[0])  # the head is untouched
    data = tomllib.loads(text)
    assert [m["name"] for m in data["managers"]] == ["data", "driver1", "tool", "driver2"]
    assert data["managers"][3]["restart_count"] == 5
    assert pmon_cli(config, "remove", "tool").returncode == 0
    text = config.read_text()
    assert "# an operator tool" not in text and all(c in text for c in COMMENTS)
    assert [m["name"] for m in tomllib.loads(text)["managers"]] == ["data", "driver1", "driver2"]
    assert pmon_cli(config, "reload", "--dry-run").returncode == 0  # the file is what runs
    assert [m["name"] for m in instance.status()["managers"]] == ["data", "driver1", "driver2"]


def test_prop_put_keeps_the_comments(tmp_path, pmon):
    config = write_commented(tmp_path, extra="\n[pmon_tcp]\nport = 0   # WinCC OA tools: any free port\n")
    instance = pmon(config)
    address = instance.config.project.state_dir / "pmon_tcp.addr"
    host, _, port = poll_for(lambda: address.exists() and address.read_text(), 10,
                             "the PMON TCP address").rpartition(":")
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(b"##SINGLE_MGR:PROP_PUT 2 always 5 4 3\n")
        assert sock.recv(65536) == b"OK"
    text = poll_for(lambda: (t := config.read_text()) and "restart_count = 4" in t and t, 10,
                    "PROP_PUT to reach the file")
    assert all(c in text for c in COMMENTS) and "# WinCC OA tools: any free port" in text
    assert "restart_count = 4   # three strikes" in text


keys = st.sampled_from(["restart_count", "seconds_to_kill", "reset_after", "num"])
values = st.one_of(st.none(), st.integers(0, 99))


@settings(max_examples=150, deadline=None)
@given(edits=st.lists(st.tuples(st.sampled_from(["data", "driver1", "tool"]), keys, values), max_size=8),
       removed=st.sets(st.sampled_from(["driver1", "tool"])), added=st.integers(0, 2))
def test_any_change_lands_exactly_and_keeps_every_comment(tmp_path_factory, edits, removed, added):
    """Randomized: whatever keys are set or removed, managers removed or added, the file
    reads back as exactly the new table, and every comment of what stays is still there."""
    directory = tmp_path_factory.mktemp("t")
    text = write_commented(directory).read_text()
    old = tomllib.loads(text)
    new = tomllib.loads(text)
    for name, key, value in edits:
        table = next(t for t in new["managers"] if t["name"] == name)
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value
    new["managers"] = [t for t in new["managers"] if t["name"] not in removed]
    for n in range(added):
        new["managers"].insert(1 + n, {"name": f"new{n}", "command": ["x"], "env": {"A": "1"}})
    result = updated_text(text, old, new)
    assert tomllib.loads(result) == new
    kept = [c for c in COMMENTS if "inline" not in c or "driver1" not in removed]
    assert all(c in result for c in kept)
