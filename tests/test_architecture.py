"""The shape of the package: no import cycles, and imports point down one way (docs/design.md).

Layers, bottom to top: the plug-in kinds and their support (``plugins``, ``facts``, ``io``,
``privacy``, ``faces``, ``latent``, ``anonymize``, ``attributes``); ``config`` (the manifest schema, built from
their registries); ``audit`` and ``pipeline`` (compose them); ``evaluate`` and ``cli`` on top.
Function-level imports count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "deid"

LAYER = {"plugins": 0, "facts": 0, "io": 0, "privacy": 0, "faces": 0, "latent": 0, "anonymize": 0, "attributes": 0,
         "config": 1, "audit": 2, "pipeline": 3, "evaluate": 4, "cli": 5}


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        name = ".".join(p.relative_to(PKG.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = p
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rsplit(".", 1)[0] if "." in name else ""
    return name or None


def _type_only(tree: ast.AST) -> set[int]:
    """Nodes under ``if TYPE_CHECKING:``: imports for annotations, never executed."""
    return {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
            and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING"
            for stmt in node.body for n in ast.walk(stmt)}


def _imports(mod: str) -> set[str]:
    out = set()
    tree = ast.parse(MODULES[mod].read_text())
    skip = _type_only(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for n in names:
            t = _resolve(n) if n.startswith("deid") else None
            # a package and its own submodules (re-exports) are one unit
            if t and t != mod and not t.startswith(mod + ".") and not mod.startswith(t + "."):
                out.add(t)
    return out


GRAPH = {m: _imports(m) for m in MODULES}


def _cycles() -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                found.append(sorted(scc))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    assert _cycles() == []


def _layer(mod: str) -> int | None:
    parts = mod.split(".")
    return LAYER.get(parts[1]) if len(parts) > 1 else None


@pytest.mark.parametrize("mod", sorted(m for m in MODULES if _layer(m) is not None))
def test_imports_point_down(mod):
    up = sorted(t for t in GRAPH[mod] if _layer(t) is not None and _layer(t) > _layer(mod))
    assert not up, f"{mod} (layer {_layer(mod)}) imports higher layers: {up}"
