"""Print pmon's module-level import graph, for the docs: first layer -> the layers it
imports, then one line per module: module -> the pmon modules it imports.

Only the imports that run when a module is imported: not those inside functions, not those
under `if TYPE_CHECKING:`. The layers and the reader are tests/layering.py (the rules are
checked by tests/test_layers.py). Plain text on stdout:

    python scripts/import_graph.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import layering  # noqa: E402


def main() -> None:
    graph = layering.module_graph(layering.read_imports(), set(layering.modules()))
    by_layer: dict[str, list[str]] = {}
    for module in graph:
        by_layer.setdefault(layering.layer_of(module) or "?", []).append(module)
    order = [layer for layer in (*layering.LAYERS, "?") if layer in by_layer]

    print("layers (module-level imports):")
    for layer in order:
        reached = {layering.layer_of(edge.target) or "?"
                   for module in by_layer[layer] for edge in graph[module]} - {layer}
        targets = ", ".join(sorted(reached, key=order.index)) or "-"
        print(f"  {layer} -> {targets}")
    for layer in order:
        print(f"\n[{layer}]")
        for module in sorted(by_layer[layer]):
            imported = sorted({edge.target for edge in graph[module]})
            print(f"{module} -> {', '.join(imported) or '-'}")


if __name__ == "__main__":
    main()
