"""pmon's layers and the imports between its modules, read from the source with `ast`.

Used by tests/test_layers.py (the rules) and scripts/import_graph.py (the graph, for the
docs). Nothing here imports pmon: the source is read, not run.

The folder supervisor/ installs under the import name `pmon` (setup.py), so
supervisor/runtime/api.py is the module pmon.runtime.api and supervisor/core/__init__.py is
the package pmon.core.

Each import is one of three kinds:
  module     runs when the module is imported (top level, class bodies, try/if at top level)
  function   inside a def or lambda: runs only when the function is called
  typing     under `if TYPE_CHECKING:`: never runs, only mypy sees it
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "supervisor"
PACKAGE = "pmon"

MODULE, FUNCTION, TYPING = "module", "function", "typing"


@dataclass(frozen=True)
class Import:
    importer: str  # module name of the importing file
    file: Path
    line: int
    target: str  # absolute name: a pmon module, or a module outside pmon
    kind: str  # MODULE, FUNCTION or TYPING

    @property
    def internal(self) -> bool:
        return self.target == PACKAGE or self.target.startswith(PACKAGE + ".")

    def where(self, root: Path = ROOT) -> str:
        try:
            shown = self.file.relative_to(root)
        except ValueError:
            shown = self.file
        return f"{shown}:{self.line}"


# --- the layers ------------------------------------------------------------------------
# Lowest first. The base modules are named one by one; every other module belongs to the
# layer of its longest matching prefix (a prefix names a module and everything under it).
BASE = frozenset({
    "pmon", "pmon.errors", "pmon.states", "pmon.config", "pmon.hookspecs", "pmon.plugin_types",
    "pmon.plugins", "pmon.redundancy.settings", "pmon.redundancy.beat_timer",
})
CLIENT = frozenset({"pmon.control.client", "pmon.control.protocol"})
PREFIXES = (
    ("pmon.core", "core"),
    ("pmon.runtime", "runtime"),
    ("pmon.extensions.pmon_tcp", "pmon_tcp"),
    ("pmon.extensions", "extensions"),
    ("pmon.commands", "commands"),
    ("pmon.control", "control"),
    ("pmon.app", "app"),
    ("pmon.service", "app"),
    ("pmon.cli", "cli"),
    ("pmon.__main__", "cli"),  # `python -m pmon` is the CLI
    ("pmon.redundancy", "redundancy"),
)
LAYERS = ("base", "core", "runtime", "extensions", "commands", "client", "control",
          "pmon_tcp", "app", "cli", "redundancy")

_BELOW_FACES = {"base", "core", "runtime", "extensions", "commands"}


@dataclass(frozen=True)
class Rule:
    allowed: frozenset[str]  # the layers this layer's imports may reach
    text: str
    anything_in_functions: bool = False  # the cli: a function may import what it runs


RULES = {
    "base": Rule(frozenset({"base"}), "base may import only base"),
    "core": Rule(frozenset({"base", "core"}), "core (pure) may import only base and core"),
    "runtime": Rule(frozenset({"base", "core", "runtime"}),
                    "runtime may import only base, core and runtime"),
    "extensions": Rule(frozenset({"base", "core", "runtime", "extensions"}),
                       "extensions may import only base, core, runtime and extensions"),
    "commands": Rule(frozenset({"base", "core", "runtime", "extensions", "commands"}),
                     "commands may import only base, core, runtime, extensions and commands"),
    "client": Rule(frozenset({"base", "client"}),
                   "the client side (pmon.control.client, pmon.control.protocol) may import "
                   "only base and itself"),
    "control": Rule(frozenset(_BELOW_FACES | {"client", "control"}),
                    "the control server (a face) may import only base, core, runtime, "
                    "extensions, commands and pmon.control.*"),
    "pmon_tcp": Rule(frozenset(_BELOW_FACES | {"pmon_tcp"}),
                     "pmon.extensions.pmon_tcp (a face) may import only base, core, runtime, "
                     "extensions, commands and pmon.extensions.pmon_tcp.*"),
    "app": Rule(frozenset(_BELOW_FACES | {"client", "control", "pmon_tcp", "app"}),
                "the app (pmon.app, pmon.service.*) may import base, core, runtime, "
                "extensions, commands, the faces and the app, not the cli or the redundancy "
                "manager"),
    "cli": Rule(frozenset({"base", "client", "cli"}),
                "the cli may import only base, the client side and the cli at module level "
                "(inside functions: anything)", anything_in_functions=True),
    "redundancy": Rule(frozenset({"base", "client", "redundancy"}),
                       "the redundancy manager (its own process) may import only base, the "
                       "control client and pmon.redundancy.*"),
}

# core is pure: no I/O, no event loop, no threads, no processes, no clock of its own.
CORE_FORBIDDEN = frozenset({
    "asyncio", "concurrent", "multiprocessing", "threading", "_thread", "subprocess",
    "signal", "socket", "socketserver", "ssl", "select", "selectors", "psutil", "os",
    "shutil", "tempfile", "time",
})
CORE_FORBIDDEN_TEXT = ("core is pure: it must not import " + ", ".join(sorted(CORE_FORBIDDEN))
                       + " (no I/O, no asyncio, no threads or processes, no clock)")


def layer_of(module: str) -> str | None:
    if module in BASE:
        return "base"
    if module in CLIENT:
        return "client"
    best: tuple[int, str] | None = None
    for prefix, layer in PREFIXES:
        if module == prefix or module.startswith(prefix + "."):
            if best is None or len(prefix) > best[0]:
                best = (len(prefix), layer)
    return best[1] if best else None


# --- reading the source ----------------------------------------------------------------
def module_name(file: Path, source: Path = SOURCE, package: str = PACKAGE) -> str:
    parts = list(file.relative_to(source).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


def modules(source: Path = SOURCE, package: str = PACKAGE) -> dict[str, Path]:
    """Every module under `source`, by its import name."""
    found = {module_name(f, source, package): f for f in sorted(source.rglob("*.py"))
             if "__pycache__" not in f.parts}
    if not found:
        raise RuntimeError(f"no Python files under {source}")
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Reader(ast.NodeVisitor):
    def __init__(self, name: str, file: Path, known: set[str]) -> None:
        self.name, self.file, self.known = name, file, known
        self.is_package = file.name == "__init__.py"
        self.kind = MODULE
        self.found: list[Import] = []

    def _inside(self, kind: str, nodes: Sequence[ast.AST]) -> None:
        outer = self.kind
        # a def inside `if TYPE_CHECKING:` never runs either; typing wins over function
        self.kind = TYPING if TYPING in (outer, kind) else kind
        for node in nodes:
            self.visit(node)
        self.kind = outer

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        # decorators and defaults run when the def runs; the body runs when it is called
        for expr in [*node.decorator_list, *node.args.defaults, *node.args.kw_defaults]:
            if expr is not None:
                self.visit(expr)
        self._inside(FUNCTION, node.body)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self._inside(FUNCTION, [node.body])

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self._inside(TYPING, node.body)
            for stmt in node.orelse:  # the else branch runs
                self.visit(stmt)
        else:
            self.generic_visit(node)

    def _add(self, line: int, target: str) -> None:
        self.found.append(Import(self.name, self.file, line, target, self.kind))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(node.lineno, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            package = self.name if self.is_package else self.name.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            if not package:
                raise ValueError(f"{self.file}:{node.lineno}: relative import beyond the top")
            base = f"{package}.{node.module}" if node.module else package
        else:
            base = node.module or ""
        for alias in node.names:
            # `from pmon import config` imports the module pmon.config; `from pmon.config
            # import Config` imports pmon.config
            sub = f"{base}.{alias.name}"
            self._add(node.lineno, sub if alias.name != "*" and sub in self.known else base)


def read_imports(source: Path = SOURCE, package: str = PACKAGE) -> list[Import]:
    """Every import statement of every module under `source`, absolute and relative."""
    found = modules(source, package)
    known = set(found)
    imports: list[Import] = []
    for name, file in found.items():
        reader = _Reader(name, file, known)
        reader.visit(ast.parse(file.read_text(encoding="utf-8"), filename=str(file)))
        # one per module a statement imports (`from x import a, b` of x counts once)
        imports += dict.fromkeys(reader.found)
    return imports


# --- the checks --------------------------------------------------------------------------
def violations(imports: list[Import], known: set[str]) -> list[tuple[Import, str]]:
    """Each import against the direction of the layers, with the rule it breaks."""
    bad: list[tuple[Import, str]] = []
    for imp in imports:
        layer = layer_of(imp.importer)
        if layer is None:
            bad.append((imp, f"{imp.importer} belongs to no layer (add it to tests/layering.py)"))
            continue
        if not imp.internal:
            if layer == "core" and imp.target.partition(".")[0] in CORE_FORBIDDEN:
                bad.append((imp, CORE_FORBIDDEN_TEXT))
            continue
        if imp.target not in known:
            bad.append((imp, f"{imp.target} is not a module of pmon"))
            continue
        rule = RULES[layer]
        if imp.kind == FUNCTION and rule.anything_in_functions:
            continue
        target_layer = layer_of(imp.target)
        if target_layer not in rule.allowed:
            bad.append((imp, f"{rule.text}; {imp.target} is {target_layer}"))
    return bad


def module_graph(imports: list[Import], known: set[str] | None = None) -> dict[str, list[Import]]:
    """module -> its imports of pmon modules that run at import time (kind MODULE), for
    every module in `known` (default: every importer)."""
    graph: dict[str, list[Import]] = {name: [] for name in known or ()}
    for imp in imports:
        graph.setdefault(imp.importer, [])
        if imp.internal and imp.kind == MODULE and imp.target != imp.importer:
            graph[imp.importer].append(imp)
    return graph


def cycles(graph: dict[str, list[Import]]) -> list[list[Import]]:
    """One cycle (as its import edges) for each strongly connected group of modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def connect(node: str) -> None:  # Tarjan
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for edge in graph.get(node, []):
            nxt = edge.target
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            connect(node)

    found = []
    for group in groups:
        start = min(group)
        # breadth-first from start back to start, inside the group: a shortest cycle
        paths: dict[str, list[Import]] = {start: []}
        queue = [start]
        cycle: list[Import] | None = None
        while queue and cycle is None:
            node = queue.pop(0)
            for edge in sorted(graph.get(node, []), key=lambda e: e.target):
                if edge.target == start:
                    cycle = paths[node] + [edge]
                    break
                if edge.target in group and edge.target not in paths:
                    paths[edge.target] = paths[node] + [edge]
                    queue.append(edge.target)
        assert cycle is not None
        found.append(cycle)
    return found


def describe_cycle(cycle: list[Import], root: Path = ROOT) -> str:
    steps = [f"{edge.importer} ({edge.where(root)}) -> " for edge in cycle]
    return "".join(steps) + cycle[0].importer
