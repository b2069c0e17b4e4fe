"""The code's shape, checked: few reaches into other objects' privates, short functions,
no import cycle (TYPE_CHECKING imports included).

These are static checks of the source tree (an ast walk), as tests/test_layers.py is for
the import layers: they fail with a list of the offending lines, so a change that makes
the structure worse says where.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "triosrv"

# Reaches into another object's ``_private`` attribute allowed in triosrv/, at most; each
# must carry a comment (on its line or the three above) saying why.
MAX_PRIVATE_REACHES = 4
# Names that look private but are public API of their module.
PUBLIC_UNDERSCORE = {("os", "_exit")}
MAX_FUNCTION_LINES = 60


def _modules() -> Iterator[tuple[str, Path, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path, ast.parse(path.read_text(), str(path))


def private_reaches(tree: ast.Module) -> list[tuple[int, str]]:
    """``X._name`` where X is not ``self`` or ``cls`` (dunders aside), with line numbers."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        name = node.attr
        if not name.startswith("_") or name.startswith("__"):
            continue
        owner = node.value
        if isinstance(owner, ast.Name) and (
            owner.id in ("self", "cls") or (owner.id, name) in PUBLIC_UNDERSCORE
        ):
            continue
        found.append((node.lineno, ast.unparse(node)))
    return found


def test_private_reaches_counts_what_it_should() -> None:
    tree = ast.parse(
        "self._a; cls._b; x._c; x.__d__; f()._e; a.b._g; os._exit(0); x.public\n"
        "class C:\n    def m(self, other):\n        return other._h\n"
    )
    assert [what for _, what in private_reaches(tree)] == [
        "x._c",
        "f()._e",
        "a.b._g",
        "other._h",
    ]


def test_private_reaches_are_a_handful_and_each_says_why() -> None:
    reaches = []
    uncommented = []
    for _, path, tree in _modules():
        lines = path.read_text().splitlines()
        seen_lines = set()
        for lineno, what in private_reaches(tree):
            where = f"{path.relative_to(PACKAGE.parent)}:{lineno}: {what}"
            reaches.append(where)
            if lineno in seen_lines:
                continue  # a.b._c and a.b on one line: one reach
            seen_lines.add(lineno)
            context = lines[max(0, lineno - 4) : lineno]
            if not any("#" in line for line in context):
                uncommented.append(where)
    assert not uncommented, "private reaches without a comment saying why:\n" + "\n".join(
        uncommented
    )
    sites = {where.rsplit(":", 1)[0] for where in reaches}
    assert len(sites) <= MAX_PRIVATE_REACHES, "\n".join(reaches)


def test_no_function_body_is_over_60_lines() -> None:
    long = []
    for _, path, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                first = node.body[0]
                # The body without its docstring: what the function does, not says.
                if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                    body = node.body[1:] or node.body
                else:
                    body = node.body
                size = (node.end_lineno or 0) - body[0].lineno + 1
                if size > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}")
    assert not long, "functions over 60 lines:\n" + "\n".join(long)


def _imports(name: str, tree: ast.Module, is_package: bool) -> set[str]:
    # Every import anywhere in the module: top level, functions, TYPE_CHECKING blocks.
    found = set()
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")
                parent = parent[: len(parent) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m == "triosrv" or m.startswith("triosrv.")}


def import_graph() -> dict[str, set[str]]:
    """triosrv module -> the triosrv modules it imports (names that are modules only)."""
    trees = {name: (path, tree) for name, path, tree in _modules()}
    graph = {}
    for name, (path, tree) in trees.items():
        targets = _imports(name, tree, path.name == "__init__.py") & trees.keys()
        graph[name] = {t for t in targets if t != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    # Depth-first search for a back edge; returns one cycle, or None.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_cycle_finder_finds_a_type_checking_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_among_triosrv_modules() -> None:
    # A package imports its submodules and a submodule may import a sibling through
    # the package (``from ..lowlevel import X``): that edge from a module to its own
    # ancestor package is how Python packages work, not a cycle of the design.
    graph = {
        name: {t for t in targets if not name.startswith(t + ".")}
        for name, targets in import_graph().items()
    }
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def test_backends_and_their_host_do_not_know_the_server() -> None:
    # The server imports the backends and hands them a BackendHost; the reverse edge
    # (even under TYPE_CHECKING) is what made the old cycle.
    graph = import_graph()
    near = [n for n in graph if n.startswith("triosrv._backends") or n == "triosrv._host"]
    assert len(near) >= 7
    assert [n for n in near if "triosrv._server" in graph[n]] == []
