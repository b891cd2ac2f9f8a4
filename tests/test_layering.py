"""The package's layering, read from its source with ``ast`` (nothing is imported).

Each rule is one arrow of the design (docs/api.md, "Layers"): search is pure algorithms, the
measurement floor knows no runtime, the device TOML reader knows no adapter, the library never
draws (``rich`` belongs to the CLI), and nothing imports in a circle.

For the direction rules every import counts: at module level, inside functions (a lazy import
still ties the modules together) and under ``if TYPE_CHECKING:`` (a type-only arrow that points
up is still an arrow that points up). For cycles, imports at module level count, those under
``if TYPE_CHECKING:`` included (``devices -> adapters.base`` was such an arrow); imports inside
functions do not (a lazy import is how a module may call one that imports it).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "compofa_bench"
MAX_LINES = 700


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package ``__init__``)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_pkg)
    return out


MODULES = _modules()


def _walk(tree: ast.AST, module_level: bool) -> list[ast.AST]:
    """Every node, or (``module_level``) every node outside function bodies."""
    if not module_level:
        return list(ast.walk(tree))
    out: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        todo.extend(
            c
            for c in ast.iter_child_nodes(node)
            if not isinstance(c, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        )
    return out


def _imports(name: str, module_level: bool = False) -> set[str]:
    """The modules ``name`` imports (anywhere in its source, or at module level only);
    ``from pkg import x`` counts as ``pkg.x`` when that is a module of this package, else as
    ``pkg``."""
    path, is_pkg = MODULES[name]
    out: set[str] = set()
    for node in _walk(ast.parse(path.read_text(encoding="utf-8")), module_level):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".") if is_pkg else name.split(".")[:-1]
                here = here[: len(here) - (node.level - 1)]
                base = ".".join(here + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.add(sub if sub in MODULES else base)
    out.discard(name)
    return out


GRAPH = {m: _imports(m) for m in MODULES}
TOP_LEVEL = {m: _imports(m, module_level=True) for m in MODULES}


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _offending(importers: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{m} imports {dep}"
        for m, deps in GRAPH.items()
        if _under(m, importers)
        for dep in deps
        if any(_under(dep, f) for f in forbidden)
    )


def test_the_package_is_found():
    # a rule over an empty graph would pass on anything
    assert "compofa_bench.spaces" in GRAPH and "compofa_bench.measure" in GRAPH
    assert "compofa_bench.spaces" in GRAPH["compofa_bench.encoding"]


def test_no_module_over_700_lines():
    long = {
        str(path.relative_to(PACKAGE.parent)): n
        for path, _ in MODULES.values()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}


def test_search_is_pure_algorithms():
    assert MODULES["compofa_bench.search"][1], "compofa_bench.search must be a package"
    allowed = ("compofa_bench.search", "compofa_bench.spaces", "compofa_bench.encoding")
    allowed += ("compofa_bench.errors",)
    ours = sorted(
        f"{m} imports {dep}"
        for m, deps in GRAPH.items()
        if _under(m, "compofa_bench.search")
        for dep in deps
        if _under(dep, "compofa_bench") and not any(_under(dep, a) for a in allowed)
    )
    assert ours == []
    forbidden = ("devices", "profile", "store", "lut", "supernet", "cli")
    assert _offending("compofa_bench.search", tuple(f"compofa_bench.{f}" for f in forbidden)) == []


def test_measurement_floor_knows_no_runtime():
    assert _offending("compofa_bench.measure", ("compofa_bench.adapters",)) == []
    # devices.py reads TOML; opening an adapter is the adapters package's business
    assert _offending("compofa_bench.devices", ("compofa_bench.adapters",)) == []


def test_rich_only_in_the_cli():
    users = sorted(
        m
        for m, deps in GRAPH.items()
        if any(_under(d, "rich") for d in deps) and not _under(m, "compofa_bench.cli")
    )
    assert users == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next((x for x in it if x in graph), None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop()
                    on_stack.discard(x)
                    comp.append(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    ours = {m: {d for d in deps if d in GRAPH} for m, deps in TOP_LEVEL.items()}
    assert _cycles(ours) == []
