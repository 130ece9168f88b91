"""The layers of pmon: imports point one way, module-level imports form no cycle, the CLI
stays light, and a daemon loads only the extensions its project configures.

The rules (the layer of each module, what each layer may import) are in tests/layering.py,
which reads every module under supervisor/ with `ast`. In short, lowest first:

  base        pmon, errors, states, config, hookspecs, plugin_types, plugins,
              redundancy.settings:
              only base
  core        pmon.core.*: base, core; and no asyncio, socket, subprocess, threading, psutil,
              os, time ... (pure)
  runtime     pmon.runtime.*: base, core, runtime
  extensions  pmon.extensions.* (not pmon_tcp): base, core, runtime, extensions
  commands    pmon.commands.*: base ... extensions, commands
  faces       pmon.control.server: base ... commands, pmon.control.*;
              pmon.extensions.pmon_tcp.*: base ... commands, pmon_tcp itself
  client      pmon.control.client, pmon.control.protocol: base and each other
  app         pmon.app, pmon.service.*: everything above but the cli and the redundancy manager
  cli         pmon.cli.*, pmon.__main__: base, client, cli at module level; anything in functions
  redundancy  pmon.redundancy.* (its own process), but settings: base, client, redundancy

Imports inside functions obey the same rules (except in the cli), and so do imports under
`if TYPE_CHECKING:` (a type is a dependency too). The cycle check looks only at the imports
that run when a module is imported, which is what `if TYPE_CHECKING:` and function-level
imports are there to avoid.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import layering
from layering import FUNCTION, MODULE, TYPING, Import


@pytest.fixture(scope="module")
def imports() -> list[Import]:
    return layering.read_imports()


@pytest.fixture(scope="module")
def known() -> set[str]:
    return set(layering.modules())


def message(imp: Import, rule: str) -> str:
    return f"{imp.where()}: {imp.importer} imports {imp.target} ({imp.kind}-level): {rule}"


# --- the reader ----------------------------------------------------------------------------
def test_the_reader_finds_pmon_as_setup_py_installs_it(known, imports):
    """supervisor/ is `pmon`; each package is its __init__.py; what the reader sees is real."""
    assert {"pmon", "pmon.core", "pmon.core.manager", "pmon.cli", "pmon.__main__",
            "pmon.extensions.pmon_tcp.face", "pmon.redundancy.settings"} <= known
    edges = {(i.importer, i.target, i.kind) for i in imports}
    assert ("pmon.runtime.supervisor", "pmon.core.project", MODULE) in edges
    assert ("pmon.app", "pmon.extensions.redundancy", FUNCTION) in edges
    assert ("pmon.runtime.adopt", "pmon.runtime.supervisor", TYPING) in edges
    assert ("pmon.redundancy.settings", "pmon.config", MODULE) in edges
    assert ("pmon.config", "pmon.redundancy.settings", FUNCTION) in edges
    assert ("pmon.commands", "pmon.commands.changes", MODULE) in edges  # from pmon.commands import changes


def test_every_module_has_a_layer(known):
    assert not [m for m in sorted(known) if layering.layer_of(m) is None], (
        "add these modules to a layer in tests/layering.py")


def test_the_checks_catch_a_cycle_a_relative_import_and_a_wrong_direction(tmp_path):
    """The checks on a small made-up package, so they are known to fail when they should."""
    files = {
        "__init__.py": "",
        "config.py": "from pmon.core import states\n",
        "core/__init__.py": "",
        "core/states.py": "import asyncio\nfrom . import change\n",
        "core/change.py": "from .states import X\nfrom typing import TYPE_CHECKING\n"
                          "if TYPE_CHECKING:\n    from pmon.runtime.api import Api\n",
        "runtime/__init__.py": "",
        "runtime/api.py": "from ..core import states\n"
                          "def run():\n    from pmon.control import server\n",
        "control/__init__.py": "",
        "control/server.py": "",
        "cli/__init__.py": "from pmon.control import client\n"
                           "def run():\n    from pmon.runtime import api\n",
        "control/client.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    imports = layering.read_imports(tmp_path)
    edges = {(i.importer, i.target, i.kind) for i in imports}
    assert ("pmon.core.states", "pmon.core.change", MODULE) in edges  # relative, `from . import`
    assert ("pmon.runtime.api", "pmon.core.states", MODULE) in edges  # `from ..core import`
    assert ("pmon.core.change", "pmon.runtime.api", TYPING) in edges

    found = {(i.importer, i.target) for i, _ in
             layering.violations(imports, set(layering.modules(tmp_path)))}
    assert found == {
        ("pmon.config", "pmon.core.states"),  # base -> core
        ("pmon.core.states", "asyncio"),  # core is pure
        ("pmon.core.change", "pmon.runtime.api"),  # core -> runtime, even for types only
        ("pmon.runtime.api", "pmon.control.server"),  # runtime -> face, even in a function
    }  # not the cli's: client at module level, anything in a function

    cycles = layering.cycles(layering.module_graph(imports))
    assert [layering.describe_cycle(c, tmp_path) for c in cycles] == [
        "pmon.core.change (core/change.py:1) -> pmon.core.states (core/states.py:2) -> "
        "pmon.core.change"]


# --- the rules -----------------------------------------------------------------------------
def test_module_level_imports_form_no_cycle(imports):
    found = layering.cycles(layering.module_graph(imports))
    if found:
        pytest.fail("import cycles among module-level imports:\n" + "\n".join(
            layering.describe_cycle(c) for c in found), pytrace=False)


def test_imports_point_down_the_layers(imports, known):
    bad = layering.violations(imports, known)
    new = [message(i, rule) for i, rule in bad]
    if new:
        pytest.fail("imports against the direction of the layers:\n" + "\n".join(new),
                    pytrace=False)


def loaded_modules(code: str, cwd: Path) -> list[str]:
    """The modules a fresh interpreter has loaded after `code`, which must print nothing."""
    probe = code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    result = subprocess.run([sys.executable, "-c", probe], cwd=cwd, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_importing_the_cli_loads_only_the_client_side(tmp_path):
    """`pmon status` must not pay for the daemon: no runtime, core, extensions, commands,
    no asyncio, no psutil."""
    loaded = loaded_modules("import pmon.cli", tmp_path)
    assert "pmon.cli" in loaded
    pmon = [m for m in loaded if m == "pmon" or m.startswith("pmon.")]
    heavy = [m for m in pmon if layering.layer_of(m) not in ("base", "client", "cli")]
    heavy += [m for m in ("asyncio", "psutil") if m in loaded]
    assert not heavy, f"import pmon.cli loads {heavy}"


DAEMON = """
import json, sys
from pathlib import Path
from pmon.app import build
from pmon.config import parse
build(parse(json.loads(sys.argv[1]), Path(sys.argv[2])))
"""
MANAGERS = [{"name": "a", "command": ["sleep", "1000"]}]
REDUNDANCY = {"name": "a", "partner": "b",
              "links": [{"local": "127.0.0.1:7101", "partner": "127.0.0.1:7201"}]}
NOT_STANDALONE = ("pmon.extensions.redundancy", "pmon.extensions.pmon_tcp",
                  "pmon.redundancy.arbitration")


def daemon_modules(data: dict, tmp_path: Path) -> list[str]:
    probe = textwrap.dedent(DAEMON) + (
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('pmon'))))\n")
    result = subprocess.run(
        [sys.executable, "-c", probe, json.dumps(data), str(tmp_path / "pmon.toml")],
        cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_standalone_daemon_loads_neither_redundancy_nor_pmon_tcp(tmp_path):
    loaded = daemon_modules({"project": {"name": "alone"}, "managers": MANAGERS}, tmp_path)
    assert "pmon.runtime.supervisor" in loaded and "pmon.extensions.plugin_host" in loaded
    extra = [m for m in loaded if any(m == n or m.startswith(n + ".") for n in NOT_STANDALONE)]
    assert not extra, f"a project without [pmon_tcp] and [redundancy] loads {extra}"


def test_the_sections_load_their_extensions(tmp_path):
    """The other side of the check above: the probe sees what a configured section loads."""
    loaded = daemon_modules({"project": {"name": "pair"}, "managers": MANAGERS,
                             "pmon_tcp": {}, "redundancy": REDUNDANCY}, tmp_path)
    assert {"pmon.extensions.redundancy", "pmon.extensions.pmon_tcp.server"} <= set(loaded)
    # the redundancy manager's decision runs in its own process, never in the daemon
    assert "pmon.redundancy.arbitration" not in loaded
