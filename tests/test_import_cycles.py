"""No import cycles inside ``medrs_diff``: a static scan of every module's imports.

Every ``import`` / ``from ... import`` counts, at module level and inside functions, classes and
``if`` blocks alike; relative imports are resolved against the importing module's package. ``from
pkg import name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg``. No implicit edge
to parent packages is added (importing ``a.b.c`` is an edge to ``a.b.c`` only), so a package's
``__init__`` re-exporting its submodules is not itself a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import medrs_diff

PACKAGE_DIR = Path(medrs_diff.__file__).resolve().parent


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file under ``root`` (the package ``package``)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("").parts
        if "__pycache__" in rel:
            continue
        parts = (package, *rel[:-1]) if rel[-1] == "__init__" else (package, *rel)
        out[".".join(parts)] = path
    return out


def _own(name: str, modules: dict[str, Path]) -> str | None:
    """The longest known module that ``name`` is or lies inside (``a.b.func`` -> ``a.b``), else None."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        candidate = ".".join(parts[:i])
        if candidate in modules:
            return candidate
    return None


def import_edges(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules of ours it imports anywhere in its source."""
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        package = mod if is_pkg else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base_parts = package.split(".")
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                    base = ".".join(p for p in (*base_parts, node.module or "") if p)
                else:
                    base = node.module or ""
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in modules else base)
            for t in targets:
                own = _own(t, modules)
                if own is not None and own != mod:
                    edges[mod].add(own)
    return edges


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One concrete cycle (``[a, b, ..., a]``) per strongly connected component of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    sccs: list[list[str]] = []
    counter = 0

    def strongconnect(v: str) -> None:  # Tarjan (graphs here are small: recursion is fine)
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            strongconnect(v)

    cycles = []
    for comp in sccs:
        members, start = set(comp), comp[0]
        # shortest path back to start inside the component (BFS)
        prev: dict[str, str] = {}
        frontier, seen, found = [start], {start}, None
        while frontier and found is None:
            nxt = []
            for v in frontier:
                for w in sorted(edges[v] & members):
                    if w == start:
                        found = v
                        break
                    if w not in seen:
                        seen.add(w)
                        prev[w] = v
                        nxt.append(w)
                if found is not None:
                    break
            frontier = nxt
        path = [found]
        while path[-1] != start:
            path.append(prev[path[-1]])
        cycles.append([*reversed(path), start])
    return cycles


def test_scanner_finds_function_level_relative_and_from_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("def f():\n    from .sub import b  # function-level, submodule via from-import\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("import pkg.c\n")
    (pkg / "c.py").write_text("if True:\n    from pkg.a import f  # a name, so an edge to pkg.a\n")
    (pkg / "d.py").write_text("from . import c\nfrom .sub.b import thing\n")
    modules = module_files(pkg, "pkg")
    edges = import_edges(modules)
    assert edges["pkg"] == {"pkg.a"}
    assert edges["pkg.a"] == {"pkg.sub.b"}
    assert edges["pkg.sub.b"] == {"pkg.c"} and edges["pkg.c"] == {"pkg.a"}
    assert edges["pkg.d"] == {"pkg.c", "pkg.sub.b"} and edges["pkg.sub"] == set()
    assert find_cycles(edges) == [["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]]
    (pkg / "c.py").write_text("import os\n")
    assert find_cycles(import_edges(module_files(pkg, "pkg"))) == []


def test_no_import_cycles_in_medrs_diff():
    modules = module_files(PACKAGE_DIR, "medrs_diff")
    assert "medrs_diff.train.checkpoint" in modules and len(modules) > 50
    cycles = find_cycles(import_edges(modules))
    assert not cycles, "import cycles (function-level imports included):\n" + "\n".join(
        "  " + " -> ".join(c) for c in cycles)
