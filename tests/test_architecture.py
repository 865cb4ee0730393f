"""The layout's rules, checked on the source: the library core knows nothing of the jobs, the jobs do not
import each other, kernels never import heads, nobody reaches into another module's privates across
the core/job line, and the module import graph has no cycle.

Every ``import`` counts, at module level or inside a function (a lazy import still ties two modules).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "bigsoftmax"
JOBS = ("bigsoftmax.lm", "bigsoftmax.recsys")
#: modules outside the library core: the jobs, what they share, the dispatcher, compatibility aliases
NOT_CORE = JOBS + ("bigsoftmax._jobs", "bigsoftmax.cli", "bigsoftmax.__main__", "bigsoftmax._compat",
                   "bigsoftmax.integrations")


def _modname(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules():
    return {_modname(p): p for p in SRC.rglob("*.py")}


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = mod.split(".")
    if not is_pkg:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(mods):
    """module -> set of (imported bigsoftmax module, imported names)."""
    out = {}
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_pkg = path.name == "__init__.py"
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("bigsoftmax"):
                        deps.add((a.name, ()))
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(mod, is_pkg, node)
                if not target.startswith("bigsoftmax"):
                    continue
                names = tuple(a.name for a in node.names)
                # `from . import functional` imports a module, not a name
                sub = [f"{target}.{n}" for n in names if f"{target}.{n}" in mods]
                for s in sub:
                    deps.add((s, ()))
                rest = tuple(n for n in names if f"{target}.{n}" not in mods)
                if rest or not sub:
                    deps.add((target, rest))
        out[mod] = deps
    return out


def _within(mod: str, prefixes) -> bool:
    return any(mod == p or mod.startswith(p + ".") for p in prefixes)


MODS = _modules()
IMPORTS = _imports(MODS)


def test_core_never_imports_a_job():
    bad = [(m, d) for m, deps in IMPORTS.items() if not _within(m, NOT_CORE)
           for d, _ in deps if _within(d, NOT_CORE) and (m, d) != ("bigsoftmax", "bigsoftmax._compat")]
    assert not bad, f"library core imports job code: {bad}"


def test_jobs_do_not_import_each_other():
    bad = []
    for m, deps in IMPORTS.items():
        for job in JOBS:
            other = [j for j in JOBS if j != job]
            if _within(m, (job,)):
                bad += [(m, d) for d, _ in deps if _within(d, other)]
    assert not bad, f"a job imports the other job: {bad}"


def test_jobs_use_no_private_name_of_the_core():
    bad = []
    for m, deps in IMPORTS.items():
        if not _within(m, JOBS):
            continue
        for d, names in deps:
            if _within(d, NOT_CORE):
                continue
            if any(part.startswith("_") for part in d.split(".")[1:]) and d != "bigsoftmax.__init__":
                bad.append((m, d))
            bad += [(m, f"{d}.{n}") for n in names if n.startswith("_")]
    assert not bad, f"jobs reach into private core code: {bad}"


def test_kernels_never_import_heads():
    bad = [(m, d) for m, deps in IMPORTS.items() if _within(m, ("bigsoftmax.ops",))
           for d, _ in deps if _within(d, ("bigsoftmax.heads",))]
    assert not bad, bad


def _graph():
    g = {}
    for m, deps in IMPORTS.items():
        edges = set()
        for d, _ in deps:
            while d and d not in MODS:  # `from bigsoftmax.heads.base import X` -> that module
                d = d.rpartition(".")[0]
            if d and d != m:
                edges.add(d)
        g[m] = edges
    return g


def _cycles(g):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
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

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    g = _graph()
    # a package's __init__ re-exporting its submodules is not a cycle of logic: drop package -> child edges
    for m in g:
        g[m] = {d for d in g[m] if not (MODS[m].name == "__init__.py" and d.startswith(m + "."))}
    # and a child importing its own package's __init__ only for re-exports: drop child -> ancestor edges
    for m in g:
        g[m] = {d for d in g[m] if not (MODS[d].name == "__init__.py" and m.startswith(d + "."))}
    assert _cycles(g) == []


def test_checker_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
