"""The layer rules of DESIGN.md, checked on the source of every module under ``src/lmfuse`` (by AST: nothing is
imported, and imports inside functions and ``TYPE_CHECKING`` blocks count like any other).

1. **Imports point downward only**: a package imports from its own package or from a layer below it
   (`LAYERS`); packages of one layer do not import each other. ``lmfuse/__init__.py`` (the lazy public API)
   is the top and may name anything.
2. **transformers only in `models/`**: no other module imports it.
3. **Forward passes only in `models/`** (`Member`, and the models/ helpers for training and reward
   models): outside ``models/`` no call passes ``input_ids=``/``inputs_embeds=``, and nothing calls
   ``model(...)``, ``<x>.model(...)`` or ``.generate``/``.forward`` on a model.
4. **No import cycle** among the modules of ``src/lmfuse``.

Each rule has a test on the real tree and one on a planted violation, so none of them can pass vacuously.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import lmfuse

SRC = Path(lmfuse.__file__).parent

# Top to bottom. A package (or top-level module) may import from its own entry or from any entry below it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("cli",),
    ("serve",),
    ("fuse", "eval"),  # siblings: neither imports the other
    ("ensemble",),
    ("alignment",),
    ("models",),
    ("served",),
    ("assets", "config"),  # siblings: neither imports the other
    ("atomic", "paths", "registry"),
    ("errors",),
)
TOP = "__init__"  # lmfuse/__init__.py: the public API, above every layer
FORWARD_KEYWORDS = {"input_ids", "inputs_embeds"}

# Named exceptions: (importing module, imported module or "forward") -> why it stands and what ends it. Each
# one is an import edge the checks skip; keep this short and remove entries as they are fixed.
ALLOWED: dict[tuple[str, str], str] = {}


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path) -> dict[str, ast.Module]:
    """Every module under ``root`` (the ``lmfuse`` package directory), by dotted name, parsed."""
    return {module_name(p, root): ast.parse(p.read_text(encoding="utf-8"), str(p)) for p in sorted(root.rglob("*.py"))}


def imported(tree: ast.Module, known: set[str]) -> Iterator[tuple[str, int]]:
    """``(module, line)`` for every import in ``tree``: ``from a.b import c`` is ``a.b.c`` when that is a
    module of ``known``, else ``a.b``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                yield (full if full in known else node.module), node.lineno


def layer_of(module: str, package: str) -> str:
    """The `LAYERS` entry of a module of ``package``: its subpackage or top-level module, or `TOP`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == package else TOP


def rank(entry: str) -> int:
    for depth, layer in enumerate(LAYERS):
        if entry in layer:
            return depth
    raise AssertionError(f"{entry!r} is in no layer of LAYERS: add it where it belongs (and to DESIGN.md)")


def downward_violations(root: Path) -> list[str]:
    package, mods = root.name, modules(root)
    out = []
    for name, tree in mods.items():
        here = layer_of(name, package)
        if here == TOP:
            continue
        for target, line in imported(tree, set(mods)):
            if not target.startswith(package + "."):
                continue
            there = layer_of(target, package)
            if there != here and rank(there) <= rank(here) and (name, target) not in ALLOWED:
                out.append(f"{name}:{line} imports {target} ({there!r} is not below {here!r})")
    return out


def transformers_violations(root: Path) -> list[str]:
    package, mods = root.name, modules(root)
    return [f"{name}:{line} imports {target}"
            for name, tree in mods.items() if layer_of(name, package) != "models"
            for target, line in imported(tree, set(mods))
            if target.split(".")[0] == "transformers" and (name, target) not in ALLOWED]


def _is_model(node: ast.expr) -> bool:
    """``model`` or ``<anything>.model``."""
    return (isinstance(node, ast.Name) and node.id == "model") or (isinstance(node, ast.Attribute) and node.attr == "model")


def forward_violations(root: Path) -> list[str]:
    package, mods = root.name, modules(root)
    out = []
    for name, tree in mods.items():
        if layer_of(name, package) == "models":
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            called_model = _is_model(func)
            model_method = isinstance(func, ast.Attribute) and func.attr in ("generate", "forward") and _is_model(func.value)
            forward_args = any(k.arg in FORWARD_KEYWORDS for k in node.keywords)
            if (called_model or model_method or forward_args) and (name, "forward") not in ALLOWED:
                out.append(f"{name}:{node.lineno} runs a model: {ast.unparse(node)[:80]}")
    return out


def cycles(root: Path) -> list[str]:
    """One message per import cycle found (depth-first; a cycle is reported once, from where it was entered)."""
    mods = modules(root)
    graph = {name: sorted({t for t, _ in imported(tree, set(mods)) if t in mods and t != name})
             for name, tree in mods.items()}
    # A package's __init__ is imported on the way to any of its modules; it is not a dependency of them.
    graph = {name: [t for t in deps if not name.startswith(t + ".") and (name, t) not in ALLOWED]
             for name, deps in graph.items()}
    state: dict[str, int] = {}
    found = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                found.append(" -> ".join([*path[path.index(nxt):], nxt]) if nxt in path else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])
    return found


CHECKS = {"downward": downward_violations, "transformers": transformers_violations, "forward": forward_violations,
          "cycles": cycles}


@pytest.mark.parametrize("rule", CHECKS)
def test_src_obeys_the_layer_rule(rule: str) -> None:
    assert CHECKS[rule](SRC) == []


def test_every_package_has_a_layer() -> None:
    entries = {layer_of(name, "lmfuse") for name in modules(SRC)} - {TOP}
    assert entries <= {e for layer in LAYERS for e in layer}, entries - {e for layer in LAYERS for e in layer}


PLANTED = {
    "downward": ("lmfuse/ensemble/bad.py", "from lmfuse.eval.tasks import load_task\n"),
    "siblings": ("lmfuse/fuse/bad.py", "def f():\n    from lmfuse.eval import runner\n"),
    "transformers": ("lmfuse/ensemble/bad.py", "from transformers import AutoModel\n"),
    "forward": ("lmfuse/fuse/bad.py", "def f(member, ids):\n    return member.model(ids).logits\n"),
    "generate": ("lmfuse/fuse/bad.py", "def f(m, ids):\n    return m.model.generate(ids)\n"),
    "keywords": ("lmfuse/eval/bad.py", "def f(net, ids):\n    return net(input_ids=ids)\n"),
    "cycles": ("lmfuse/models/bad.py", "from lmfuse.models import zoo\nimport lmfuse.models.load\n"),
}


@pytest.mark.parametrize("plant", PLANTED)
def test_a_planted_violation_fails_its_rule(plant: str, tmp_path: Path) -> None:
    """A copy of the real tree plus one bad module breaks the rule it violates, and says where."""
    root = tmp_path / "lmfuse"
    for path in SRC.rglob("*.py"):
        target = root / path.relative_to(SRC)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    rel, text = PLANTED[plant]
    bad = tmp_path / rel
    bad.write_text(text, encoding="utf-8")
    module = module_name(bad, root)
    if plant == "cycles":  # close the loop: models.load imports the planted module
        load = root / "models" / "load.py"
        load.write_text(load.read_text(encoding="utf-8") + "\nimport lmfuse.models.bad\n", encoding="utf-8")
    rule = {"siblings": "downward", "generate": "forward", "keywords": "forward"}.get(plant, plant)
    found = CHECKS[rule](root)
    assert any(module in line for line in found), found
