"""No import circle between the modules of pretune: each layer imports only from the layers
below it, so every module can be read (and imported) without the ones above it.

The graph is read from the source with ``ast``: module-level imports and those inside
functions alike (an import deferred into a function still ties the two modules together), with
relative imports resolved against the importing module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pretune

PACKAGE_DIR = Path(pretune.__file__).parent


def module_names(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module under ``package_dir`` (a package's name is
    its ``__init__.py``)."""
    out = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool,
              modules: dict[str, Path]) -> list[str]:
    """The modules of ``modules`` that an import statement in ``module`` names."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        if node.level:  # relative: from the importing module's package, up level - 1 packages
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[:len(base) - (node.level - 1)]
            origin = ".".join(base + ([node.module] if node.module else []))
        else:
            origin = node.module or ""
        # ``from package import name`` imports the module package.name when there is one
        targets = [f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in modules else origin
                   for alias in node.names]
    found = []
    for target in targets:
        while target and target not in modules:  # ``import a.b.c`` of a name inside a module
            target = target.rpartition(".")[0]
        if target and target != module:
            found.append(target)
    return found


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports, anywhere in its source."""
    modules = module_names(package_dir)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[name].update(_imported(node, name, path.name == "__init__.py", modules))
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle (``[a, b, ..., a]``) through each group of modules that import each other,
    found by a depth-first search; [] when the graph has none."""
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_a_circle_through_a_function_local_relative_import_is_found(tmp_path):
    package = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/low.py": "def f():\n    from .high import g\n    return g\n",
        "pkg/high.py": "from pkg import low\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/leaf.py": "from ..low import f\n",
    })
    graph = import_graph(package)
    assert graph["pkg.low"] == {"pkg.high"}
    assert graph["pkg.high"] == {"pkg.low"}
    assert graph["pkg.sub.leaf"] == {"pkg.low"}
    assert circles(graph) == [["pkg.high", "pkg.low", "pkg.high"]]


def test_layers_that_import_one_way_have_no_circle(tmp_path):
    package = _write(tmp_path, {
        "pkg/__init__.py": "from pkg.top import run\n",
        "pkg/top.py": "import pkg.low.base\nfrom pkg.low import base\n\ndef run():\n"
                      "    from .low.base import value\n    return value\n",
        "pkg/low/__init__.py": "",
        "pkg/low/base.py": "import json\nvalue = 1\n",
    })
    graph = import_graph(package)
    assert graph["pkg.top"] == {"pkg.low.base"}
    assert circles(graph) == []


def test_no_module_of_pretune_imports_itself_through_others():
    found = circles(import_graph(PACKAGE_DIR))
    assert not found, "import circles in pretune (break each by moving the shared part down a " \
                      "layer): " + "; ".join(" -> ".join(c) for c in found)
