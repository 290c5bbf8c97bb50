"""The import graph stays a DAG and the rooms keep their contracts
(docs/architecture.md, "What may import what").

Every `import`/`from … import` of a project module counts, including those
inside functions (a cycle hidden in a function is still a cycle); only
`if TYPE_CHECKING:` blocks are left out, since they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("geodns", "checker", "demo")

# checker/ may use only the server's documented contract (docs/architecture.md)
CHECKER_MAY_USE = (
    "geodns.model",
    "geodns.errors",
    "geodns.settings",
    "geodns.store",
    "geodns.config",
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _imports(mod: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Project modules `mod` imports (resolved to the longest known module name)."""
    out: set[str] = set()
    is_pkg = path.name == "__init__.py"

    def resolve(name: str) -> None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != mod:
            out.add(name)

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and _is_type_checking(node):
                visit(node.orelse)
                continue
            for child in ast.walk(node):
                if isinstance(child, ast.Import):
                    for a in child.names:
                        resolve(a.name)
                elif isinstance(child, ast.ImportFrom):
                    base = child.module or ""
                    if child.level:
                        pkg = mod if is_pkg else mod.rpartition(".")[0]
                        for _ in range(child.level - 1):
                            pkg = pkg.rpartition(".")[0]
                        base = f"{pkg}.{base}" if base else pkg
                    for a in child.names:
                        full = f"{base}.{a.name}"
                        resolve(full if full in known else base)

    visit(ast.parse(path.read_text(), str(path)).body)
    return out


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {m: _imports(m, p, known) for m, p in known.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
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
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return found


def _package_init_edges(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """A package's __init__ re-exports its own modules; those edges are not
    dependencies between rooms, so `a.b` → `a` (the package) is not a cycle."""
    return {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}


def test_no_import_cycles_between_project_modules() -> None:
    cycles = _cycles(_package_init_edges(_graph()))
    assert cycles == [], "import cycles: " + "; ".join(" ↔ ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_rooms_keep_their_contracts() -> None:
    bad: list[str] = []
    for mod, deps in _graph().items():
        for d in sorted(deps):
            if mod.startswith("geodns") and d.startswith(("checker", "demo")):
                bad.append(f"{mod} → {d} (geodns never imports checker or demo)")
            if mod.startswith("checker") and d.startswith("demo"):
                bad.append(f"{mod} → {d} (the checker never imports the demo)")
            if mod.startswith("checker") and d.startswith("geodns"):
                if not any(d == c or d.startswith(c + ".") for c in CHECKER_MAY_USE):
                    bad.append(f"{mod} → {d} (checker uses only {', '.join(CHECKER_MAY_USE)})")
            # data flows one way inside the server: config/steering/dns never reach
            # up into the runtime or the CLI, and nothing below the CLI imports it
            low = ("geodns.config", "geodns.steering", "geodns.dns", "geodns.store")
            if mod.startswith(low) and d.startswith(("geodns.runtime", "geodns.cli")):
                bad.append(f"{mod} → {d} (lower rooms never import runtime/cli)")
            if mod.startswith("geodns.runtime") and d.startswith("geodns.cli"):
                bad.append(f"{mod} → {d} (the runtime never imports the CLI)")
    assert bad == []


def test_code_cites_only_files_in_the_repository() -> None:
    """Comments and docstrings may point at design notes only inside the repo."""
    offenders = []
    for pkg in (*PACKAGES, "tests", "bench"):
        for p in (REPO / pkg).rglob("*"):
            if p.suffix not in (".py", "") or not p.is_file() or p.name == "test_layout.py":
                continue
            text = p.read_text(errors="replace")
            for name in ("DESIGN.md", "STYLE.md", "CONVENTIONS.md"):
                if name in text:
                    offenders.append(f"{p.relative_to(REPO)}: {name}")
    assert offenders == []
