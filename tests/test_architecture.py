"""The package's layers, checked from its import graph (every import statement, also inside functions).

core/ is QGIS-free and layered (see core/__init__.py); a module may import from its own package and
from lower layers only, and no chain of imports may come back to where it started. The Processing
layer (algorithms/, styling, provider, plugin) sits on top and nothing in core imports it.
"""

import ast
import os

import pytest
from conftest import ROOT

PACKAGE = "aid_xai_plugin"
CORE_LAYERS = {"common": 0, "geo": 1, "ml": 1, "reports": 1, "explain": 2, "data": 2, "pipelines": 3}
PROCESSING_LAYER = 10


def module_name(package_root, path):
    relative = os.path.relpath(path, os.path.dirname(package_root))[: -len(".py")].replace(os.sep, ".")
    return relative[: -len(".__init__")] if relative.endswith(".__init__") else relative


def import_graph(package_root):
    """{module: {imported module of this package, …}} for every .py file under `package_root`."""
    package = os.path.basename(package_root)
    modules = {}
    for folder, _, files in os.walk(package_root):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                modules[module_name(package_root, path)] = path
    graph = {}
    for module, path in modules.items():
        with open(path, encoding="utf-8") as stream:
            tree = ast.parse(stream.read(), path)
        here = module.split(".") if path.endswith("__init__.py") else module.split(".")[:-1]
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here[: len(here) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                candidates = [target] + [f"{target}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            targets.update(candidate for candidate in candidates if candidate in modules and candidate != module)
        graph[module] = {target for target in targets if target.split(".")[0] == package}
    return graph


def layer_of(module):
    parts = module.split(".")
    if parts[1:2] != ["core"]:
        return "processing", PROCESSING_LAYER
    if len(parts) == 2:  # core/__init__.py: the version only
        return "core", 0
    return parts[2], CORE_LAYERS.get(parts[2], -1)


def layering_problems(package_root):
    graph = import_graph(package_root)
    problems = []
    for module, targets in sorted(graph.items()):
        package, rank = layer_of(module)
        if rank < 0:
            problems.append(f"{module} is in no known layer; add its folder to CORE_LAYERS")
        for target in sorted(targets):
            target_package, target_rank = layer_of(target)
            if target_package != package and target_rank >= rank:
                problems.append(f"{module} (layer {package}) imports {target} (layer {target_package}), which is not below it")
    for cycle in import_cycles(graph):
        problems.append("import circle: " + " -> ".join(cycle))
    return problems


def import_cycles(graph):
    cycles, state = [], {}

    def visit(module, path):
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return cycles


def test_core_layers_import_only_downwards_and_without_circles():
    assert layering_problems(os.path.join(ROOT, PACKAGE)) == []


@pytest.mark.parametrize(
    "module, source, expected",
    [
        ("core/common/errors.py", "from ..pipelines.tiles import TileSource\n", "imports aid_xai_plugin.core.pipelines.tiles"),
        ("core/geo/grid.py", "def f():\n    from ..ml.net import Net\n", "imports aid_xai_plugin.core.ml.net"),
        ("core/ml/net.py", "from aid_xai_plugin.styling import sidecar_path\n", "imports aid_xai_plugin.styling"),
        ("core/ml/metrics.py", "from .training import train_model\n", "import circle"),
    ],
)
def test_layering_check_catches_upward_imports_and_circles(tmp_path, module, source, expected):
    """The check itself: copy the package, add one bad import, and it must be reported."""
    import shutil

    copy = tmp_path / PACKAGE
    shutil.copytree(os.path.join(ROOT, PACKAGE), copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / module
    target.write_text(target.read_text(encoding="utf-8") + "\n" + source, encoding="utf-8")
    problems = layering_problems(str(copy))
    assert any(expected in problem for problem in problems), problems


def _external_imports(path):
    with open(path, encoding="utf-8") as stream:
        tree = ast.parse(stream.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and not node.level and node.module:
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


@pytest.mark.parametrize("room", ["core", "install"])
def test_the_qgis_free_rooms_import_neither_qgis_nor_qt(room):
    """core/ runs in Dask workers and plain Python; install/ runs as `python -m aid_xai_plugin.install`
    on a server, and in the dependency dialog's background task."""
    found = []
    for folder, _, files in os.walk(os.path.join(ROOT, PACKAGE, room)):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                found += [f"{os.path.relpath(path, ROOT)}: {module}" for module in _external_imports(path) if module.split(".")[0] in ("qgis", "PyQt5", "PyQt6", "sip")]
    assert found == []


def test_the_installer_needs_nothing_of_the_plugin_but_itself():
    graph = import_graph(os.path.join(ROOT, PACKAGE))
    outside = {f"{module} -> {target}" for module, targets in graph.items() if module.startswith(f"{PACKAGE}.install") for target in targets if not target.startswith(f"{PACKAGE}.install")}
    assert outside == set()
