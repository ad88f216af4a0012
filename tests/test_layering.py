"""The package's layering, read from the import graph of the source (no module is imported).

data <- embeddings, optim, models <- the training engine <- the command line and demo; ``mlet_jax`` never imports
``theory``, ``experiments`` or ``benchmarks``; ``theory`` never imports ``experiments`` or ``benchmarks``; no import
circles; first-party imports inside functions say why in a comment.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = ("mlet_jax", "theory", "experiments", "benchmarks")

# A module may import modules of its own layer or below. Every mlet_jax module must be placed here (subpackages by
# prefix), so a new module's place in the layering is a decision, not an accident.
LAYERS = {
    0: ("mlet_jax.data", "mlet_jax.io", "mlet_jax.metrics", "mlet_jax.oov", "mlet_jax.runtime"),
    1: ("mlet_jax.embeddings", "mlet_jax.optim", "mlet_jax.models", "mlet_jax.compression", "mlet_jax.spectra"),
    2: ("mlet_jax.row_sparse", "mlet_jax.distributed", "mlet_jax.checkpoint", "mlet_jax.training",
        "mlet_jax.serving", "mlet_jax.runlog", "mlet_jax.multirun"),
    3: ("mlet_jax.train", "mlet_jax.demo", "mlet_jax.plot"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def sources() -> dict[str, Path]:
    out = {}
    for top in FIRST_PARTY:
        for path in sorted((ROOT / top).rglob("*.py")) if (ROOT / top).is_dir() else []:
            out[module_name(path)] = path
    return out


def imports(path: Path, known: set[str]) -> list[tuple[str, int, bool, str]]:
    """``(imported module, line, inside a function, source line and the one above)`` for first-party imports."""
    tree = ast.parse(path.read_text(), str(path))
    lines = path.read_text().splitlines()
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            names = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - child.level + 1] + [base]).strip(".")
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in child.names]
            for name in names:
                if name.split(".")[0] in FIRST_PARTY:
                    context = "\n".join(lines[max(child.lineno - 2, 0): child.lineno])
                    found.append((name, child.lineno, in_function, context))
            visit(child, inner)

    visit(tree, False)
    return found


def graph() -> dict[str, set[str]]:
    src = sources()
    known = set(src)
    edges: dict[str, set[str]] = {m: set() for m in src}
    for mod, path in src.items():
        for name, *_ in imports(path, known):
            while name not in known and "." in name:
                name = name.rpartition(".")[0]
            # importing a.b.c also runs a/__init__ and a/b/__init__ (the top-level mlet_jax one imports nothing)
            parts = name.split(".")
            targets = {name} | {".".join(parts[:i]) for i in range(2, len(parts))}
            edges[mod] |= {t for t in targets if t in known and t != mod and not mod.startswith(t + ".")}
    return edges


def layer(mod: str) -> int | None:
    for rank, prefixes in LAYERS.items():
        if any(mod == p or mod.startswith(p + ".") for p in prefixes):
            return rank
    return None


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def strong(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            strong(v)
    return out


def test_no_import_circles():
    assert cycles(graph()) == []


def test_a_circle_is_found():
    # the check itself: a -> b -> c -> a is one circle, d -> a is not part of it
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_library_layers():
    edges = graph()
    mods = [m for m in edges if m.startswith("mlet_jax.")]
    unplaced = [m for m in mods if layer(m) is None]
    assert not unplaced, f"place these modules in LAYERS: {unplaced}"
    upward = [(m, t) for m in mods for t in sorted(edges[m]) if t.startswith("mlet_jax.") and layer(t) > layer(m)]
    assert not upward, f"imports from a higher layer: {upward}"
    outward = [(m, t) for m in mods for t in sorted(edges[m]) if not t.startswith("mlet_jax")]
    assert not outward, f"mlet_jax imports theory/experiments/benchmarks: {outward}"


def test_theory_does_not_import_experiments():
    edges = graph()
    bad = [(m, t) for m in edges if m.split(".")[0] == "theory" for t in edges[m]
           if t.split(".")[0] in ("experiments", "benchmarks")]
    assert not bad


@pytest.mark.parametrize("top", ["mlet_jax", "theory"])
def test_function_level_imports_say_why(top):
    src = sources()
    bare = [f"{path.relative_to(ROOT)}:{line}" for mod, path in src.items() if mod.split(".")[0] == top
            for _, line, inside, context in imports(path, set(src)) if inside and "#" not in context]
    assert not bare, f"first-party imports inside functions without a comment saying why: {bare}"
