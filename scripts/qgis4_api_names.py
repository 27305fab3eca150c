#!/usr/bin/env python3
"""Extract the names of QGIS 4's and PyQt6's Python API that the plugin refers to (its classes, with
all their methods, enums and enum members, and their base classes) into tests/data/qgis4_api.json.

    python3 scripts/qgis4_api_names.py --qgis-source ~/src/QGIS --pyqt6 PyQt6-6.x.whl > tests/data/qgis4_api.json
    python3 scripts/qgis4_api_names.py --qgis-runtime --pyqt6 PyQt6-6.x.whl > tests/data/qgis4_api.json

--qgis-source DIR: a QGIS 4.x checkout; its PyQt6 sip files (python/PyQt6/{core,gui,analysis}/,
  auto_generated/**/*.sip.in and the hand-written *.sip) are read. Its tag comes from `git describe`.
--qgis-runtime: the QGIS this Python imports (3.44, the last 3.x, which deprecates what 4.0 removes;
  `make qgis4-api-names` runs it in Debian forky), less what QGIS 4 does not keep: the QGIS 3
  aliases of enums moved to `Qgis` and the methods deprecated in every overload. Members a QGIS class
  inherits from Qt come from PyQt6 instead.
--pyqt6: a PyQt6 wheel (`pip download --no-deps PyQt6`) or its unpacked folder: its .pyi stubs are
  Qt 6's Python API as PyQt6 exposes it (QGIS 4 is built on PyQt6).

Only classes the plugin refers to (tests/qgis_api_usage.py's walk of aid_xai_plugin/) and their bases
are written, each with all of its member names, so the test can say "QGIS 4 has no X.Y" for any member.
"""

import argparse
import ast
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from qgis_api_usage import _alias_of, _every_overload_deprecated, plugin_api_usage  # noqa: E402  (the test's own walk)

SIP_MODULES = {"core": "qgis.core", "gui": "qgis.gui", "analysis": "qgis.analysis"}
QT_MODULES = ("QtCore", "QtGui", "QtWidgets", "QtNetwork", "QtXml", "QtSvg", "QtSql", "QtPrintSupport", "QtTest")
ANNOTATION = re.compile(r'/\s*[A-Z]\w*(?:\s*=\s*(?:"[^"]*"|[^/,]*))?(?:\s*,\s*[A-Z]\w*(?:\s*=\s*(?:"[^"]*"|[^/,]*))?)*\s*/')
PY_NAME = re.compile(r'/[^/]*\bPyName\s*=\s*(\w+)[^/]*/')
ACCESS = re.compile(r"^\s*(public|protected|private)?\s*(slots|signals|Q_SIGNALS|Q_SLOTS)?\s*:(?!:)\s*")
IDENTIFIER_BEFORE_PAREN = re.compile(r"(~?\w+)\s*\($")


def _declarations(text):
    """sip text without comments, docstrings and C++ code blocks, %If/%End lines or other directives;
    a %Exception becomes a class."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    kept, stack = [], []  # "keep" (%If: declarations inside) or "skip" (%Docstring, %…Code), until %End
    for line in text.splitlines():
        stripped = line.strip()
        directive = re.match(r"%(\w+)", stripped)
        if directive:
            name = directive.group(1)
            if name == "End":
                if stack:
                    stack.pop()
            elif name == "If":
                stack.append("keep")
            elif name == "Docstring" or name.endswith("Code"):
                stack.append("skip")
            elif name == "Exception" and "skip" not in stack:
                kept.append("class " + stripped[len("%Exception"):].strip())
            continue  # any other directive is one line
        if "skip" not in stack:
            kept.append(line)
    return "\n".join(kept)


def _python_name(statement, default):
    found = PY_NAME.search(statement)
    return found.group(1) if found else default


def _member_name(statement, class_name):
    """The Python name a declaration inside a class adds, or None (constructors, operators…)."""
    python_name = _python_name(statement, None)
    statement = ANNOTATION.sub(" ", statement).strip()
    if not statement or statement.startswith(("friend ", "using ", "Q_", "SIP_")):
        return None
    if statement.startswith("typedef "):
        return python_name or re.findall(r"\w+", statement)[-1]
    depth, cut = 0, None
    for index, char in enumerate(statement):  # the first '(' outside any template argument list
        if char == "<":
            depth += 1
        elif char == ">":
            depth -= 1
        elif char == "(" and depth <= 0:
            cut = index
            break
    if cut is not None:
        head = IDENTIFIER_BEFORE_PAREN.search(statement[: cut + 1])
        if not head or re.search(r"\boperator\b", statement[:cut]):
            return None
        name = head.group(1)
        if name.startswith("~") or name == class_name:
            return None
        return python_name or name
    names = re.findall(r"\w+", statement.split("=")[0].split("[")[0])
    return python_name or (names[-1] if names else None)


def parse_sip(text, module):
    """{class name: {"module", "bases", "members"}} declared in one sip file."""
    classes = {}
    text = _declarations(text)
    position, length = 0, len(text)
    scopes = []  # (kind, name, members set, access) of the open class/struct/enum/namespace bodies

    def members():
        for kind, _, scope_members, _ in reversed(scopes):
            if kind == "class":
                return scope_members
        return None

    def prefix():
        names = [name for kind, name, _, _ in scopes if kind in ("class", "enum")]
        return ".".join(names[1:])  # members of the outermost class are unprefixed

    buffer, parens = [], 0
    while position < length:
        char = text[position]
        position += 1
        if char == "(":
            parens += 1
        elif char == ")":
            parens -= 1
        if parens > 0 or char not in "{};":
            buffer.append(char)
            continue
        statement = " ".join("".join(buffer).split())
        buffer = []
        access_match = ACCESS.match(statement)
        while access_match and (access_match.group(1) or access_match.group(2)):
            if scopes and scopes[-1][0] == "class":
                kind, name, scope_members, _ = scopes[-1]
                scopes[-1] = (kind, name, scope_members, access_match.group(1) or "public")  # signals: public
            statement = statement[access_match.end():]
            access_match = ACCESS.match(statement)
        if char == "{":
            header = re.match(r"(class|struct|namespace|union|enum(?:\s+class|\s+struct)?)\s+(\w+)?(.*)", statement)
            if not header:
                scopes.append(("other", "", set(), "public"))
                continue
            kind = "enum" if header.group(1).startswith("enum") else "class" if header.group(1) in ("class", "struct") else "other"
            name = _python_name(statement, header.group(2) or "")
            outer = members()
            hidden = bool(scopes) and scopes[-1][3] == "private"
            if kind == "enum":
                if outer is not None and name and not hidden:
                    outer.add(f"{prefix()}.{name}".lstrip("."))
                scopes.append(("enum", name, outer if not hidden else set(), "public"))
                enum_items = []
                depth = 1
                while position < length and depth:
                    if text[position] == "{":
                        depth += 1
                    elif text[position] == "}":
                        depth -= 1
                    enum_items.append(text[position])
                    position += 1
                body = "".join(enum_items[:-1])
                for item in body.split(","):
                    item_name = re.match(r"\s*(\w+)", ANNOTATION.sub(" ", item))
                    if item_name and outer is not None and name and not hidden:
                        outer.add(f"{prefix()}.{_python_name(item, item_name.group(1))}".lstrip("."))
                scopes.pop()
                continue
            if kind == "class":
                bases = []
                if ":" in header.group(3) or "(" in header.group(3):
                    base_text = ANNOTATION.sub(" ", header.group(3)).replace("(", ":").replace(")", "")
                    base_text = base_text.split(":", 1)[1] if ":" in base_text else ""
                    bases = [re.findall(r"[\w:]+", part)[-1].split("::")[-1] for part in base_text.split(",") if re.findall(r"[\w:]+", part)]
                    bases = [base for base in bases if base not in ("public", "protected", "private", "SIP_Exception")]
                if not scopes:
                    classes[name] = {"module": module, "bases": bases, "members": set()}
                    scopes.append(("class", name, classes[name]["members"], "private" if header.group(1) == "class" else "public"))
                else:
                    if outer is not None and not hidden:
                        outer.add(f"{prefix()}.{name}".lstrip("."))
                    scopes.append(("class", name, outer if not hidden else set(), "private" if header.group(1) == "class" else "public"))
                continue
            scopes.append((kind, name, set(), "public"))
            continue
        if char == "}":
            if scopes:
                scopes.pop()
            continue
        # ';' ends a declaration
        if not statement or not scopes or scopes[-1][0] != "class" or scopes[-1][3] == "private":
            continue
        name = _member_name(statement, scopes[-1][1])
        if name:
            scopes[-1][2].add(f"{prefix()}.{name}".lstrip("."))
    return classes


def qgis_classes(source):
    classes = {}
    for folder, module in SIP_MODULES.items():
        base = source / "python" / "PyQt6" / folder
        for path in sorted(list(base.rglob("*.sip.in")) + list(base.rglob("*.sip"))):
            for name, declared in parse_sip(path.read_text(encoding="utf-8"), module).items():
                if name in classes:
                    classes[name]["members"] |= declared["members"]
                    classes[name]["bases"] = classes[name]["bases"] or declared["bases"]
                else:
                    classes[name] = declared
    return classes


def _pyi_members(class_node, prefix=""):
    names = set()
    for item in class_node.body:
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(prefix + item.name)
        elif isinstance(item, ast.Assign):
            names.update(prefix + t.id for t in item.targets if isinstance(t, ast.Name))
        elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            names.add(prefix + item.target.id)
        elif isinstance(item, ast.ClassDef):
            names.add(prefix + item.name)
            names |= _pyi_members(item, f"{prefix}{item.name}.")
    return names


def _last_name(expression):
    while isinstance(expression, ast.Attribute):
        return expression.attr
    return expression.id if isinstance(expression, ast.Name) else None


# QGIS's qgis.PyQt.QtWidgets keeps offering what Qt6 moved to QtGui, for plugins that run on QGIS 3 and
# 4 alike (qgis/QGIS#55658 and #57467; kept for QGIS 4.0).
QT6_MOVED_TO_QTGUI = ("QAction", "QActionGroup", "QShortcut", "QUndoCommand", "QUndoGroup", "QUndoStack", "QFileSystemModel")


def pyqt6_classes(pyqt6):
    """{class: {...}} from PyQt6's .pyi stubs (a wheel file or an unpacked folder), and the version."""
    stubs, version = {}, "unknown"
    if pyqt6.is_file():
        with zipfile.ZipFile(pyqt6) as wheel:
            for name in wheel.namelist():
                module = Path(name).stem
                if name.startswith("PyQt6/") and name.endswith(".pyi") and module in QT_MODULES:
                    stubs[module] = wheel.read(name).decode("utf-8")
        version = re.match(r"(?i)pyqt6-([\d.]+)", pyqt6.name).group(1)
    else:
        for module in QT_MODULES:
            path = pyqt6 / "PyQt6" / f"{module}.pyi"
            if path.exists():
                stubs[module] = path.read_text(encoding="utf-8")
    classes = {}
    for module, text in stubs.items():
        for node in ast.parse(text).body:
            if isinstance(node, ast.ClassDef):
                bases = [b for b in (_last_name(base) for base in node.bases) if b and b not in ("simplewrapper", "wrapper", "Enum", "Flag", "IntEnum", "IntFlag")]
                classes[node.name] = {"module": f"qgis.PyQt.{module}", "bases": bases, "members": _pyi_members(node)}
                if module == "QtGui" and node.name in QT6_MOVED_TO_QTGUI:
                    classes[node.name]["also_in"] = ["qgis.PyQt.QtWidgets"]
    return classes, version


def runtime_classes(names):
    """{class: {...}} for the named classes of the running QGIS, without QGIS 3's enum aliases and
    fully deprecated methods; Qt classes in a class's ancestry become its bases (names from PyQt6)."""
    import enum
    import importlib
    import inspect

    classes = {}
    for module_name in SIP_MODULES.values():
        module = importlib.import_module(module_name)
        for name in names:
            cls = getattr(module, name, None)
            if not isinstance(cls, type) or name in classes:
                continue
            members, bases = set(), []
            sip_enums = {}  # QGIS 3's sip enums: their members sit on the class too (unscoped), not in Qt6
            for attribute in dir(cls):
                value = inspect.getattr_static(cls, attribute, None)
                if type(type(value)).__name__ == "enumtype" and getattr(cls, type(value).__name__, None) is type(value):
                    sip_enums[attribute] = type(value).__name__
            for attribute in dir(cls):
                if attribute.startswith("__"):
                    continue
                owner = next((k for k in cls.__mro__ if attribute in vars(k)), cls)
                if owner.__module__.startswith("PyQt5"):
                    if owner.__name__ not in bases:
                        bases.append(owner.__name__)
                    continue
                if owner.__module__ in ("sip", "PyQt5.sip", "builtins"):
                    continue
                if attribute in sip_enums:
                    members.add(f"{sip_enums[attribute]}.{attribute}")  # Qt6 reaches it through its enum only
                    continue
                try:
                    value = getattr(cls, attribute)
                except AttributeError:  # a sip instance attribute (a struct's field)
                    value = inspect.getattr_static(cls, attribute)
                if _alias_of(cls, attribute, value) or (inspect.isroutine(value) and _every_overload_deprecated(attribute, value.__doc__ or "")):
                    continue
                members.add(attribute)
                if isinstance(value, type) and issubclass(value, enum.Enum):
                    members.update(f"{attribute}.{member}" for member in value.__members__)
                elif type(value).__name__ == "enumtype":
                    continue  # a sip enum: its members were added with their enum's name above
                elif isinstance(value, type) and value.__name__ == attribute:  # a nested class
                    members.update(f"{attribute}.{inner}" for inner in dir(value) if not inner.startswith("__"))
            classes[name] = {"module": module_name, "bases": bases, "members": members}
    return classes


def source_files(source):
    manifest = source / "MANIFEST.tsv"
    if manifest.exists():
        return {line.split("\t")[0]: line.split("\t")[1] for line in manifest.read_text().splitlines() if line.strip()}
    described = subprocess.run(["git", "-C", str(source), "describe", "--tags"], capture_output=True, text=True)
    return described.stdout.strip() or "unknown"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--qgis-source", type=Path, help="a QGIS 4.x checkout")
    where.add_argument("--qgis-runtime", action="store_true", help="the QGIS (>= 3.44) this Python imports")
    parser.add_argument("--pyqt6", type=Path, required=True)
    parser.add_argument("--source-label", default=None, help="what the QGIS source is (e.g. its tag), for the record")
    arguments = parser.parse_args()

    uses, _ = plugin_api_usage(ROOT / "aid_xai_plugin")
    wanted = [use.dotted.split(".")[0] for use in uses]
    if arguments.qgis_runtime:
        from qgis.core import Qgis

        if Qgis.QGIS_VERSION_INT < 34400:
            sys.exit(f"--qgis-runtime needs QGIS 3.44 or later (this is {Qgis.QGIS_VERSION}): older releases do not yet "
                     "deprecate all that QGIS 4 removes. Run `make test-debian RELEASE=forky GOAL=qgis4-api-names`.")
        api = runtime_classes(set(wanted))
        origin = {"label": arguments.source_label or f"QGIS {Qgis.version()} (running), less its QGIS 3 aliases and deprecated methods"}
    else:
        api = qgis_classes(arguments.qgis_source)
        origin = {"label": arguments.source_label, "files": source_files(arguments.qgis_source)}
    qt_api, pyqt6_version = pyqt6_classes(arguments.pyqt6)
    for name, declared in qt_api.items():
        api.setdefault(name, declared)
    kept = {}
    while wanted:
        name = wanted.pop()
        if name in kept or name not in api:
            continue
        kept[name] = api[name]
        wanted.extend(api[name]["bases"])
    document = {
        "what": "Names of the Python API of QGIS 4 (Qt6), for the classes the plugin refers to and their bases: "
        "tests/test_qgis4_api.py checks the plugin's code against it. Regenerate with `make qgis4-api-names` (see there).",
        "qgis": origin,
        "pyqt6": pyqt6_version,
        "classes": {
            name: {**{key: value for key, value in kept[name].items() if key != "members"}, "members": sorted(kept[name]["members"])}
            for name in sorted(kept)
        },
    }
    # One class a line: a regenerated file's diff shows which classes changed.
    header = json.dumps({key: value for key, value in document.items() if key != "classes"}, indent=1)[:-2]
    lines = [f" {json.dumps(name)}: {json.dumps(body)}" for name, body in document["classes"].items()]
    sys.stdout.write(header + ',\n "classes": {\n' + ",\n".join(lines) + "\n }\n}\n")


if __name__ == "__main__":
    main()
