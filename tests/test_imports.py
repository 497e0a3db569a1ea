"""The import graph, read from the source with ast (module-level and function-level imports alike):
drafting and training do not import each other, and the TUI's screens reach panza_local only through
tui/backend.py (plus panza_local.errors, the exceptions they catch)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("panza_local", "tui")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    """Every module of the project's packages, by dotted name."""
    return {module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `name` imports anywhere in its body (inside functions too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `import a.b.c` of a non-module attribute: its nearest module
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_the_graph_sees_function_level_and_relative_imports():
    g = graph()
    assert "panza_local.retrieval.index" in g["panza_local.cli.index"]  # `from ..retrieval import index`, in a function
    assert "tui.backend" in g["tui.screens.chat"]  # `from .. import backend`
    assert "panza_local.engine" in g["tui.backend"]


def path(g: dict[str, set[str]], start: str, goal) -> list[str] | None:
    """An import chain from `start` to a module `goal(name)` accepts, or None."""
    parent, todo = {start: None}, [start]
    while todo:
        node = todo.pop()
        if goal(node) and node != start:
            chain = [node]
            while parent[chain[-1]]:
                chain.append(parent[chain[-1]])
            return chain[::-1]
        for dep in sorted(g.get(node, ())):
            if dep not in parent:
                parent[dep] = node
                todo.append(dep)
    return None


def test_drafting_and_training_do_not_import_each_other():
    """Drafting reads the adapter registry (train.registry.adapter_for); nothing under train reaches draft,
    directly or through other modules, so the two never form a cycle."""
    g = graph()
    direct = [(a, b) for a, deps in g.items() if within(a, "panza_local.train")
              for b in deps if within(b, "panza_local.draft")]
    assert direct == [], f"train -> draft imports (the profile and prompt live in panza_local.profile): {direct}"
    chains = [c for a in g if within(a, "panza_local.train")
              if (c := path(g, a, lambda n: within(n, "panza_local.draft")))]
    assert chains == [], f"train reaches draft through: {chains[0]}"
    assert path({"a": {"b"}, "b": {"c"}}, "a", lambda n: n == "c") == ["a", "b", "c"]  # the search can fail


def test_tui_screens_reach_panza_local_only_through_the_backend():
    g = graph()
    allowed = {"panza_local.errors"}
    edges = [(a, b) for a, deps in g.items() if within(a, "tui.screens") or within(a, "tui.widgets")
             for b in deps if within(b, "panza_local") and b not in allowed]
    assert edges == [], f"screens and widgets call panza_local through tui/backend.py only: {edges}"
