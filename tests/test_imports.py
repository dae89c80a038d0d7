"""The package's modules import on their own, and none of them imports another in a circle.

A cycle works only while the imports happen in a lucky order (or sit inside
functions): each module must be importable first, in a fresh interpreter, and
the import graph read from the source, every import statement counted
wherever it stands, must have no cycle.
"""

from __future__ import annotations

import ast
import importlib.machinery
import importlib.util
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import require

PACKAGE = "pytcpecho"
_spec = importlib.util.find_spec(PACKAGE)  # finds it without importing it
assert _spec is not None and _spec.submodule_search_locations
PACKAGE_DIR = Path(next(iter(_spec.submodule_search_locations)))
MODULES = sorted(m.name for m in pkgutil.iter_modules([str(PACKAGE_DIR)]))
ENTRY_POINTS = {"__main__"}  # importing it runs the command


def cython_built() -> bool:
    return "_core" in MODULES and any(
        (PACKAGE_DIR / f"_core{suffix}").exists()
        for suffix in importlib.machinery.EXTENSION_SUFFIXES)


@pytest.mark.parametrize("name", [m for m in MODULES if m not in ENTRY_POINTS])
def test_each_module_imports_on_its_own(name: str) -> None:
    if name == "_splicecore":
        require(None if cython_built() else "the splice core needs the built Cython core",
                "the Cython core did not build, and CI must test it")
    result = subprocess.run([sys.executable, "-c", f"import {PACKAGE}.{name}"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_the_listing_finds_the_modules() -> None:
    assert {"cli", "core", "server", "serving", "supervisor", "switch"} <= set(MODULES)
    if cython_built():
        assert "_core" in MODULES


# -- the import graph ----------------------------------------------------------------

def module_files(package_dir: Path, package: str) -> dict[str, Path]:
    """{dotted name: file} of every module of the package, subpackages too: its source,
    or for a compiled one (which imports nothing of ours) its shared library."""
    files = {}
    for path in sorted(package_dir.rglob("*")):
        suffix = next((s for s in (".py", *importlib.machinery.EXTENSION_SUFFIXES)
                       if path.name.endswith(s)), None)
        if suffix is None:
            continue
        parts = [package, *path.relative_to(package_dir).parent.parts, path.name[:-len(suffix)]]
        if parts[-1] == "__init__":
            parts.pop()
        files.setdefault(".".join(parts), path)  # the source, where both exist
    return files


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name ``from <level dots><target> import ...`` means inside ``module``."""
    if level == 0:
        return target or ""
    base = module.split(".")
    if not is_package:
        base.pop()
    base = base[:len(base) - (level - 1)]
    return ".".join([*base, target] if target else base)


def _import_module_call(node: ast.AST) -> str | None:
    """'pytcpecho._core' for importlib.import_module("pytcpecho._core"), else None."""
    if not (isinstance(node, ast.Call) and node.args
            and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
        return None
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    return node.args[0].value if name == "import_module" else None


def import_graph(package_dir: Path, package: str) -> dict[str, set[str]]:
    """{module: the package's modules it imports}, from every import in its source:
    at the top, inside functions, under TYPE_CHECKING, relative or absolute, and
    importlib.import_module() of a literal name."""
    files = module_files(package_dir, package)
    graph: dict[str, set[str]] = {name: set() for name in files}
    for module, path in files.items():
        if path.suffix != ".py":
            continue
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, is_package, node.level, node.module)
                # from . import core: the submodule core if there is one, else the package
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base
                           for a in node.names]
            elif (name := _import_module_call(node)) is not None:
                targets = [name]
            graph[module].update(t for t in targets if t in files and t != module)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(node: str) -> list[str] | None:
        path.append(node)
        on_path.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt in on_path:
                return [*path[path.index(nxt):], nxt]
            if nxt not in done and (cycle := visit(nxt)):
                return cycle
        on_path.discard(path.pop())
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done and (cycle := visit(start)):
            return cycle
    return None


def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph(PACKAGE_DIR, PACKAGE)
    assert len(graph) >= len(MODULES) - 1  # every .py module (the compiled _core has no source)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or ())


def test_the_graph_sees_the_imports_that_hide_a_cycle(tmp_path: Path) -> None:
    """The checker itself: a cycle closed inside a function, or by a relative import
    of the package's name, is still a cycle."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import thing\n")
    (pkg / "b.py").write_text("def f():\n    from .sub import c\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("import importlib\n"
                                      "def g():\n    from .. import a\n")
    (pkg / "d.py").write_text("import importlib\nimportlib.import_module('pkg.a')\n")
    graph = import_graph(pkg, "pkg")
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.sub.c"},
                     "pkg.sub": set(), "pkg.sub.c": {"pkg.a"}, "pkg.d": {"pkg.a"}}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]
    (pkg / "sub" / "c.py").write_text("")
    assert find_cycle(import_graph(pkg, "pkg")) is None
