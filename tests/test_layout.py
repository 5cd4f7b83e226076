"""The package's layering, read from the source's imports (docs/development.md, Where things are):
each folder imports only the folders below it, no import cycle, writing a checkpoint imports
neither the config builder nor the algorithms, and no import chain is longer than ten modules."""

from __future__ import annotations

import ast
import functools
import subprocess
import sys

from tests.conftest import ROOT

#: folders (and base modules) from the top floor down; a module may import its own floor or lower
FLOORS = [("metalearn", "metalearn.api", "metalearn.cli"), ("metalearn.run",),
          ("metalearn.algorithms",), ("metalearn.evaluation",),
          ("metalearn.data", "metalearn.models"),
          ("metalearn.errors", "metalearn.files", "metalearn.paths")]
MAX_CHAIN = 10


def module_name(path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def import_graph() -> dict[str, set[str]]:
    """Every module of the package and the package modules it imports (anywhere in the file)."""
    modules = {module_name(path): path for path in (ROOT / "metalearn").rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                candidates = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            imported |= {c for c in candidates if c in modules and c != name}
        graph[name] = imported
    return graph


def floor(module: str) -> int:
    """Floors counted from the top: the longest prefix among FLOORS' entries decides."""
    best = max((entry for entries in FLOORS for entry in entries
                if module == entry or module.startswith(entry + ".")), key=len)
    return next(number for number, entries in enumerate(FLOORS) if best in entries)


def reachable(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        for imported in import_graph()[todo.pop()] - seen:
            seen.add(imported)
            todo.append(imported)
    return seen


def longest_chain(module: str, visiting: tuple[str, ...] = ()) -> list[str]:
    assert module not in visiting, f"import cycle: {' -> '.join((*visiting, module))}"
    chains = [longest_chain(imported, (*visiting, module)) for imported in import_graph()[module]]
    return [module, *max(chains, key=len, default=[])]


def test_every_module_imports_only_its_floor_or_below():
    upward = [f"{module} -> {imported}" for module, imports in import_graph().items()
              for imported in imports if floor(imported) < floor(module)]
    assert not upward, upward


def test_no_cycle_and_no_chain_longer_than_ten_modules():
    chain = max((longest_chain(module) for module in import_graph()), key=len)
    assert len(chain) <= MAX_CHAIN, " -> ".join(chain)


def test_writing_a_checkpoint_imports_neither_the_builder_nor_the_algorithms():
    below = reachable("metalearn.run.checkpoints")
    assert not {m for m in below if m in ("metalearn.run.build", "metalearn.run.compose")
                or m.startswith("metalearn.algorithms")}, below


def test_nothing_below_the_faces_imports_the_api():
    importers = {module for module, imports in import_graph().items()
                 if any(m == "metalearn.api" or m.startswith("metalearn.api.") for m in imports)}
    assert {m for m in importers if floor(m) > 0} == set()


def test_importing_the_package_loads_neither_torch_nor_lightning():
    # every entry point imports the package before it checks the command line: a configuration
    # mistake is reported before the heavy imports (about a second, not ten)
    code = "import sys, metalearn; print(sorted({'torch', 'lightning'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          check=True)
    assert done.stdout.strip() == "[]"
