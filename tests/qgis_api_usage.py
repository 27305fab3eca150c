"""The QGIS and Qt names the plugin's code uses, read from its source with `ast`, and the Qt5-only
spellings that QGIS 4 (Qt6) refuses.

`tests/test_qgis4_api.py` checks every use against the names extracted from QGIS 4's own API files
(`tests/data/qgis4_api.json`, made by `scripts/qgis4_api_names.py`, which uses the same walk to know
which classes to keep). What is checked:
- every name imported from `qgis.core`/`qgis.gui`/`qgis.analysis` and `qgis.PyQt.*`;
- every attribute chain on such a name (`Qgis.ProcessingSourceType.VectorPoint`,
  `QgsProcessingParameterFile.File`): an unscoped Qt5/QGIS 3 enum spelling is missing in QGIS 4;
- `self.x` in classes derived from a QGIS/Qt class, where `x` is not the plugin's own, and every
  camelCase method such a class defines (a QGIS virtual renamed in QGIS 4 would silently never run);
- `x.y` on a local name bound once to a QGIS/Qt constructor call (`layer = QgsRasterLayer(…)`).
Code under `if hasattr(A, "name"):` … `else:` (or the same as an `x if hasattr(…) else y` expression)
is version-guarded: the `if` side must exist in QGIS 4, the `else` side is the QGIS 3 fallback and is
not checked against QGIS 4 (the QGIS 3.22 and 3.40 test runs execute it).
"""

import ast
import re
from dataclasses import dataclass
from pathlib import Path

QGIS_MODULES = ("qgis.core", "qgis.gui", "qgis.analysis")
QT_PACKAGE = "qgis.PyQt"
CAMEL_CASE = re.compile(r"^[a-z]+[A-Z]\w*$")


@dataclass(frozen=True)
class Use:
    """`dotted` (e.g. "Qgis.ProcessingSourceType.VectorPoint") from `module`, at path:line."""

    path: str
    line: int
    module: str
    dotted: str


@dataclass(frozen=True)
class Problem:
    path: str
    line: int
    message: str

    def __str__(self):
        return f"{self.path}:{self.line}: {self.message}"


def _attribute_chain(node):
    """(root name, [attr, attr, …]) of `a.b.c`, or None when the root is not a plain name."""
    attributes = []
    while isinstance(node, ast.Attribute):
        attributes.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return node.id, list(reversed(attributes))
    return None


def _is_version_guard(test):
    """`hasattr(...)`, possibly combined with and/or/not: the body is the new API, else the old."""
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "hasattr" for n in ast.walk(test))


def _qt5_only(node, path):
    """The migration tool's Qt5-only spellings (scripts/pyqt5_to_pyqt6 in QGIS's repository)."""
    line = getattr(node, "lineno", 0)
    if isinstance(node, (ast.ImportFrom, ast.Import)):
        modules = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
        for module in modules:
            if module.split(".")[0] in ("PyQt5", "PyQt6", "sip"):
                yield Problem(path, line, f"imports {module} directly: import it from qgis.PyQt (Qt5 and Qt6 alike)")
            if module == "qgis.PyQt.Qt":
                yield Problem(path, line, "qgis.PyQt.Qt is gone with Qt6: import Qt from qgis.PyQt.QtCore")
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.name == "QRegExp":
                    yield Problem(path, line, "QRegExp is removed in Qt6: use QRegularExpression")
                if alias.name == "resources_rc":
                    yield Problem(path, line, "compiled resources are removed in Qt6: load icons by file path")
                if alias.name == "qApp":
                    yield Problem(path, line, "qApp is removed in Qt6: use QApplication.instance()")
    elif isinstance(node, ast.Attribute) and node.attr == "exec_":
        yield Problem(path, line, "exec_() is removed in Qt6: call exec()")
    elif isinstance(node, ast.FunctionDef) and node.name == "exec_":
        yield Problem(path, line, "exec_ is removed in Qt6: name the method exec")
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "desktop" and not node.args:
        yield Problem(path, line, "QDesktopWidget (QApplication.desktop()) is removed in Qt6: use QScreen")
    elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) and node.value.attr == "activated":
        yield Problem(path, line, "activated[str] is removed in Qt6: use textActivated")


class _ModuleWalk:
    """One module: its imported QGIS/Qt names, and the uses and problems found in it."""

    def __init__(self, tree, path):
        self.path = path
        self.imported = {}  # local name → (module, exported name)
        self.uses = []
        self.problems = []
        self.classes = {}  # class name → (bases as names, own attribute names, camelCase methods with lines)
        self._skipped = set()  # ids of nodes in a version guard's QGIS 3 branch
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and (node.module in QGIS_MODULES or node.module.startswith(QT_PACKAGE + ".") or node.module == QT_PACKAGE):
                for alias in node.names:
                    if node.module == QT_PACKAGE:
                        continue  # `from qgis.PyQt import sip`: a module, not a class
                    self.imported[alias.asname or alias.name] = (node.module, alias.name)
                    self.uses.append(Use(path, node.lineno, node.module, alias.name))
            self.problems.extend(_qt5_only(node, path))
            if isinstance(node, (ast.If, ast.IfExp)) and _is_version_guard(node.test):
                fallback = node.orelse if isinstance(node.orelse, list) else [node.orelse]
                for branch in fallback:
                    self._skipped.update(id(n) for n in ast.walk(branch))
        self._collect_chains(tree)
        self._collect_classes(tree)
        self._collect_constructed_locals(tree)

    def _record(self, root, attributes, line):
        module, name = self.imported[root]
        self.uses.append(Use(self.path, line, module, ".".join([name, *attributes])))

    def _collect_chains(self, tree):
        for node in ast.walk(tree):
            if id(node) in self._skipped or not isinstance(node, ast.Attribute):
                continue
            chain = _attribute_chain(node)
            if chain and chain[0] in self.imported:
                self._record(chain[0], chain[1], node.lineno)

    def _collect_classes(self, tree):
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef):
                continue
            bases = [b.id for b in node.bases if isinstance(b, ast.Name)]
            own = set()
            camel_methods = []
            for item in ast.walk(node):
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    own.add(item.name)
                    if item in node.body and CAMEL_CASE.match(item.name):
                        camel_methods.append((item.name, item.lineno))
                elif isinstance(item, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                    targets = item.targets if isinstance(item, ast.Assign) else [item.target]
                    for target in targets:
                        for leaf in ast.walk(target):
                            if isinstance(leaf, ast.Attribute) and isinstance(leaf.value, ast.Name) and leaf.value.id == "self":
                                own.add(leaf.attr)
                            elif isinstance(leaf, ast.Name) and item in node.body:
                                own.add(leaf.id)
            self_attributes = [
                (n.attr, n.lineno)
                for n in ast.walk(node)
                if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "self" and id(n) not in self._skipped
            ]
            self.classes[node.name] = (bases, own, camel_methods, self_attributes)

    def _collect_constructed_locals(self, tree):
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            bound = {}
            for node in ast.walk(function):
                if isinstance(node, ast.Assign):
                    for target in node.targets:
                        if isinstance(target, ast.Name):
                            value = node.value
                            constructed = (
                                isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id in self.imported
                            )
                            bound.setdefault(target.id, []).append(value.func.id if constructed else None)
            typed = {name: kinds[0] for name, kinds in bound.items() if len(kinds) == 1 and kinds[0]}
            for node in ast.walk(function):
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in typed and id(node) not in self._skipped:
                    self._record(typed[node.value.id], [node.attr], node.lineno)


def plugin_api_usage(package_dir):
    """(uses, problems) of every .py file under `package_dir`, with inherited `self.x` resolved."""
    package_dir = Path(package_dir)
    walks = []
    for path in sorted(package_dir.rglob("*.py")):
        relative = str(path.relative_to(package_dir.parent))
        walks.append(_ModuleWalk(ast.parse(path.read_text(encoding="utf-8"), filename=relative), relative))
    return _resolve(walks)


def source_api_usage(source, path="<source>"):
    """(uses, problems) of one piece of source code (the tests inject removed names with it)."""
    return _resolve([_ModuleWalk(ast.parse(source, filename=path), path)])


def _resolve(walks):
    uses = [use for walk in walks for use in walk.uses]
    problems = [problem for walk in walks for problem in walk.problems]
    plugin_classes = {}
    for walk in walks:
        for name, (bases, own, camel_methods, self_attributes) in walk.classes.items():
            plugin_classes[name] = (walk, bases, own, camel_methods, self_attributes)

    def api_bases(name, seen=()):
        """QGIS/Qt classes a plugin class derives from (through other plugin classes), and the names
        the plugin classes on the way define themselves."""
        walk, bases, own, _, _ = plugin_classes[name]
        found, defined = [], set(own)
        for base in bases:
            if base in walk.imported:
                found.append(walk.imported[base])
            elif base in plugin_classes and base not in seen:
                more, more_defined = api_bases(base, (*seen, name))
                found += more
                defined |= more_defined
        return found, defined

    for name, (walk, _, _, camel_methods, self_attributes) in plugin_classes.items():
        qgis_bases, defined = api_bases(name)
        if not qgis_bases:
            continue
        # Subclasses defined further down may define what a base uses through self: count them too.
        for other, (_, other_bases, other_own, _, _) in plugin_classes.items():
            if name in other_bases:
                defined |= other_own
        for module, base in qgis_bases:
            for method, line in camel_methods:
                uses.append(Use(walk.path, line, module, f"{base}.{method}"))
            for attribute, line in self_attributes:
                if attribute not in defined:
                    uses.append(Use(walk.path, line, module, f"{base}.{attribute}"))
    return uses, problems


def missing_from(api, uses):
    """Messages for the uses that the names file `api` (tests/data/qgis4_api.json) lacks.

    A member path is followed while it names an enum or a nested class (the file lists their members
    as "Enum.Member"); past a method or attribute the chain is about its result and is not checked."""
    classes = api["classes"]
    cache = {}

    def members(name, seen=()):
        if name not in cache:
            found = set(classes[name]["members"]) if name in classes else set()
            for base in classes.get(name, {}).get("bases", ()):
                if base not in seen:
                    found |= members(base, (*seen, name))
            cache[name] = found
        return cache[name]

    messages = []
    for use in uses:
        root, *attributes = use.dotted.split(".")
        if root not in classes or use.module not in (classes[root]["module"], *classes[root].get("also_in", ())):
            messages.append(f"{use.path}:{use.line}: {use.module}.{root} is not in QGIS 4's API names file")
            continue
        known = members(root)
        path = []
        for attribute in attributes:
            if attribute.startswith("__") and attribute.endswith("__"):
                break
            candidate = ".".join([*path, attribute])
            if candidate not in known:
                messages.append(f"{use.path}:{use.line}: QGIS 4 has no {root}.{candidate} ({use.module})")
                break
            if not any(name.startswith(candidate + ".") for name in known):
                break
            path.append(attribute)
    return sorted(set(messages))


def _alias_of(parent, attribute, value):
    """The canonical name when `parent.attribute` reaches an enum (member) under another name: the
    compatibility aliases QGIS 3 adds for enums moved to `Qgis` (QGIS 4's Qt6 builds have none)."""
    import enum

    if isinstance(value, enum.Enum) and type(value) is not parent:  # (equal values in one enum are C++'s own aliases)
        return f"{type(value).__qualname__}.{value.name}"
    if isinstance(value, type) and issubclass(value, enum.Enum) and value.__name__ != attribute:
        return value.__qualname__
    return None


def _every_overload_deprecated(name, doc):
    """sip writes one "name(…) -> …" signature line per overload, each followed by its text: a call
    is deprecated for sure only when every overload is (otherwise sip warns at the call itself)."""
    overloads = re.split(rf"^(?={re.escape(name)}\()", doc, flags=re.M)
    overloads = [text for text in overloads if text.startswith(name + "(")] or [doc]
    return all(".. deprecated::" in text for text in overloads)


def qgis3_only_at_runtime(uses):
    """Messages for uses that the running QGIS reaches through a QGIS 3 compatibility alias or that it
    documents as deprecated (QGIS 3.44 deprecates what 4.0 removes). Names this QGIS lacks are left to
    `missing_from` (a version-guarded new name is absent from QGIS 3.22)."""
    import importlib
    import inspect

    messages = []
    for use in uses:
        root, *attributes = use.dotted.split(".")
        value = getattr(importlib.import_module(use.module), root, None)
        shown = root
        for attribute in attributes:
            parent, value = value, getattr(value, attribute, None)
            shown = f"{shown}.{attribute}"
            if value is None:
                break
            canonical = _alias_of(parent, attribute, value)
            if canonical:
                messages.append(f"{use.path}:{use.line}: {shown} is QGIS 3's alias of {canonical}, gone in QGIS 4: write {canonical}")
                break
            if inspect.isroutine(value) and _every_overload_deprecated(attribute, value.__doc__ or ""):
                since = re.search(r"\.\. deprecated:: (?:QGIS )?([\d.]+)", value.__doc__)
                messages.append(f"{use.path}:{use.line}: {shown} is deprecated since QGIS {since.group(1) if since else '3.x'} and goes with QGIS 4")
                break
            if not (isinstance(value, type) or hasattr(value, "__members__")):
                break
    return sorted(set(messages))
