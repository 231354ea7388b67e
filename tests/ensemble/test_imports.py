"""`lmfuse.ensemble` imports downward only: no cycle among its modules, nothing from the layers above it."""

from __future__ import annotations

import ast
from pathlib import Path

import lmfuse.ensemble

PACKAGE = Path(lmfuse.ensemble.__file__).parent
ABOVE = ("lmfuse.eval", "lmfuse.cli", "lmfuse.serve", "lmfuse.fuse")


def imports(path: Path) -> set[str]:
    """Every ``lmfuse...`` module a file imports, anywhere in it (type-checking and function-level too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lmfuse"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("lmfuse"))
    return out


def test_ensemble_modules_import_no_layer_above_and_form_no_cycle() -> None:
    modules = {p.stem: imports(p) for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    for name, deps in modules.items():
        assert not [d for d in deps if d.startswith(ABOVE)], (name, deps)
    graph = {name: {d.split(".")[2] for d in deps if d.startswith("lmfuse.ensemble.") and d.split(".")[2] in modules}
             for name, deps in modules.items()}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            assert state.get(nxt) != 1, f"import cycle: {' -> '.join([*path, node, nxt])}"
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [])
