"""The import rules of docs/architecture.md, checked over the code's syntax trees: which folder may import which,
and no circle of imports between files. Imports inside functions and under `if TYPE_CHECKING:` count too: a
guarded import that runs upward is still the core depending on what is built on it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Each part of the code, and the parts it may import (itself included). app is app.py.
MAY_IMPORT = {
    "model": {"model"},
    "ui": {"ui", "model"},
    "app": {"app", "ui", "model"},
    "training": {"training", "model"},
    "studies": {"studies", "training", "model"},
    "benchmarks": {"benchmarks", "app", "ui", "training", "model"},
}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(root: Path = ROOT) -> dict[str, set[str]]:
    """Each project module -> the project modules it imports (a `from package import name` of a submodule counts
    as importing that submodule)."""
    files = [root / "app.py", *(p for part in MAY_IMPORT if part != "app" for p in (root / part).rglob("*.py"))]
    modules = {module_name(p, root): p for p in files if p.is_file()}
    imports = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[:len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                found |= {target, *(f"{target}.{alias.name}" for alias in node.names)}
        imports[name] = {m for m in found if m in modules and m != name}
    return imports


def circles(imports: dict[str, set[str]]) -> list[list[str]]:
    """Every group of modules that import each other, directly or round a circle (Tarjan's strongly connected
    components of more than one module)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for other in sorted(imports[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(imports):
        if node not in index:
            visit(node)
    return found


def test_no_circle_of_imports_between_files():
    assert circles(project_imports()) == []


def test_each_part_imports_only_what_the_map_allows():
    imports = project_imports()
    assert {"model.pipeline", "ui.events", "training.train", "studies.quality_study", "app"} <= set(imports)
    wrong = sorted(f"{name} imports {other}" for name, others in imports.items() for other in others
                   if other.split(".")[0] not in MAY_IMPORT[name.split(".")[0]])
    assert wrong == []


def test_the_checks_find_a_circle_and_an_upward_import(tmp_path):
    """The checks themselves, on a small tree with one circle and one import running upward."""
    for part in MAY_IMPORT:
        if part != "app":
            (tmp_path / part).mkdir()
            (tmp_path / part / "__init__.py").write_text("")
    (tmp_path / "app.py").write_text("import ui.page\n")
    (tmp_path / "ui" / "page.py").write_text("from model import core\n")
    (tmp_path / "model" / "core.py").write_text("def fit():\n    from training.data import load\n")
    (tmp_path / "training" / "data.py").write_text("from . import steps\n")
    (tmp_path / "training" / "steps.py").write_text("from training.data import load\n")
    imports = project_imports(tmp_path)
    assert circles(imports) == [["training.data", "training.steps"]]
    assert imports["model.core"] == {"training.data"}  # inside a function, and upward
