"""Structure the code must keep: no import cycle among nar modules (lazy imports inside functions
included), no assertion that cannot fail, no path outside the package."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph(package: str = "nar") -> dict[str, set[str]]:
    """module -> the package's modules it imports anywhere in its body (top level or inside functions)."""
    files = {_module_name(p): p for p in (ROOT / package).rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                names = [f"{base}.{a.name}" for a in node.names] + [base]
            else:
                continue
            for name in names:
                # the longest known module the name starts with ("nar.corpus.read_table" -> "nar.corpus")
                while name and name not in files:
                    name = name.rpartition(".")[0]
                if name and name != mod:
                    graph[mod].add(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_nar_modules():
    graph = import_graph("nar")
    assert "nar.corpus" in graph and graph["nar.fit"]  # the graph was read
    assert cycles(graph) == []


def test_package_does_not_reach_outside_itself():
    """No module finds files relative to its own location (in a checkout that is the repo, installed it is
    site-packages): bundled files are read through importlib.resources (nar.assets)."""
    for path in (ROOT / "nar").rglob("*.py"):
        assert "__file__" not in path.read_text(), path


def _cannot_fail(test: ast.expr) -> bool:
    """An `or` with a truthy constant operand, a truthy constant alone, or an equality whose two sides are the
    same expression."""
    if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.Or):
        return any(isinstance(v, ast.Constant) and bool(v.value) for v in test.values)
    if isinstance(test, ast.Constant):
        return bool(test.value)
    if isinstance(test, ast.Compare) and all(isinstance(o, (ast.Eq, ast.Is)) for o in test.ops):
        sides = [ast.dump(test.left)] + [ast.dump(c) for c in test.comparators]
        return any(a == b for a, b in zip(sides, sides[1:]))
    return False


def _item(key: str) -> ast.expr:
    return ast.Subscript(ast.Name("d"), ast.Constant(key))


CHECKER_CASES = [  # (expression, must the checker flag it?), built as trees so no test file spells one out
    (ast.BoolOp(ast.Or(), [ast.Name("x"), ast.Constant(True)]), True),
    (ast.Compare(_item("a"), [ast.Eq(), ast.Eq()], [_item("a"), ast.Constant(3)]), True),
    (ast.Compare(_item("a"), [ast.Eq()], [_item("b")]), False),
    (ast.BoolOp(ast.Or(), [ast.Name("x"), ast.Name("y")]), False),
]


def test_no_assertion_that_cannot_fail():
    assert [_cannot_fail(expr) for expr, _ in CHECKER_CASES] == [flag for _, flag in CHECKER_CASES]
    bad = []
    for path in (ROOT / "tests").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assert) and _cannot_fail(node.test):
                bad.append(f"{path.name}:{node.lineno}")
    assert bad == []
