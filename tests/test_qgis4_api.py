"""The plugin against QGIS 4 (Qt6): only names QGIS 4's API has, no Qt5-only spelling, no QGIS 3 alias
or deprecated method, and metadata that lets QGIS 4 list and load it.

No QGIS 4 build can be installed here; tests/data/qgis4_api.json holds the names (see
scripts/qgis4_api_names.py for where they come from), and the QGIS running the suite (3.22, 3.40 or
3.44) shows which of the plugin's calls reach QGIS 3's compatibility aliases or deprecated methods.
"""

import configparser
import importlib.util
import json
import os
import shutil

import pytest
from conftest import ROOT
from qgis_api_usage import missing_from, plugin_api_usage, qgis3_only_at_runtime, source_api_usage

PLUGIN = os.path.join(ROOT, "aid_xai_plugin")
NAMES_FILE = os.path.join(ROOT, "tests", "data", "qgis4_api.json")


@pytest.fixture(scope="module")
def qgis4_api():
    with open(NAMES_FILE, encoding="utf-8") as names:
        return json.load(names)


def test_the_plugin_uses_only_names_qgis4_has(qgis4_api):
    uses, problems = plugin_api_usage(PLUGIN)
    assert len(uses) > 100  # the walk sees the plugin's QGIS calls (about 300 today)
    assert not problems, "\n".join(map(str, problems))
    missing = missing_from(qgis4_api, uses)
    assert not missing, "\n".join(missing)


def test_the_plugin_reaches_no_qgis3_alias_or_deprecated_method_in_this_qgis():
    uses, _ = plugin_api_usage(PLUGIN)
    found = qgis3_only_at_runtime(uses)
    assert not found, "\n".join(found)


def _plugin_copy(tmp_path, file, old, new):
    """The plugin's own tree with one line of `file` changed, as a developer's edit would."""
    copy = tmp_path / "aid_xai_plugin"
    shutil.copytree(PLUGIN, copy)
    path = copy / file
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new), encoding="utf-8")
    return copy


@pytest.mark.parametrize(
    "file, old, new, reported",
    [
        # A QGIS 3 enum spelling outside its version guard (QGIS 4 has only Qgis.ProcessingSourceType).
        ("qgis_compat.py", "SOURCE_VECTOR_POINT = Qgis.ProcessingSourceType.VectorPoint", "SOURCE_VECTOR_POINT = QgsProcessing.TypeVectorPoint", "QGIS 4 has no QgsProcessing.TypeVectorPoint"),
        ("qgis_compat.py", "NUMBER_INTEGER = Qgis.ProcessingNumberParameterType.Integer", "NUMBER_INTEGER = QgsProcessingParameterNumber.Integer", "QGIS 4 has no QgsProcessingParameterNumber.Integer"),
        # The new side of a guard is checked too: a misspelt scoped enum fails.
        ("qgis_compat.py", "RANGE_LIMIT_NONE = Qgis.RasterRangeLimit.NotSet", "RANGE_LIMIT_NONE = Qgis.RasterRangeLimit.None_", "QGIS 4 has no Qgis.RasterRangeLimit.None_"),
        # A Qt5 unscoped enum (PyQt6 has QColor.Spec.Rgb only).
        ("styling.py", "from .qgis_compat import", "_SPEC = QColor.Rgb\nfrom .qgis_compat import", "QGIS 4 has no QColor.Rgb"),
        # A QGIS virtual misspelt in a subclass would never be called.
        ("algorithms/base.py", "def displayName(self):", "def displayTitle(self):", "QGIS 4 has no QgsProcessingAlgorithm.displayTitle"),
        # QGIS 3's unscoped members of its own (sip) enums: Qt6 reaches them through the enum only.
        ("plugin.py", "Qgis.MessageLevel.Warning", "Qgis.Warning", "QGIS 4 has no Qgis.Warning"),
        ("gui/install_task.py", "QgsTask.Flag.CanCancel", "QgsTask.CanCancel", "QGIS 4 has no QgsTask.CanCancel"),
        # A method on a layer the plugin constructs.
        ("raster_layers.py", 'writer.setOutputFormat("GTiff")', 'writer.setOutputFormatName("GTiff")', "QGIS 4 has no QgsRasterFileWriter.setOutputFormatName"),
    ],
)
def test_an_injected_removed_name_fails_the_check(tmp_path, qgis4_api, file, old, new, reported):
    uses, _ = plugin_api_usage(_plugin_copy(tmp_path, file, old, new))
    missing = missing_from(qgis4_api, uses)
    assert any(reported in message for message in missing), missing


def test_a_qgis3_fallback_behind_a_version_guard_passes(qgis4_api):
    guarded = (
        "from qgis.core import Qgis, QgsProcessing\n"
        "if hasattr(Qgis, 'ProcessingSourceType'):\n    SOURCE = Qgis.ProcessingSourceType.VectorPoint\n"
        "else:\n    SOURCE = QgsProcessing.TypeVectorPoint\n"
        "OTHER = Qgis.ProcessingSourceType.Raster if hasattr(Qgis, 'ProcessingSourceType') else QgsProcessing.TypeRaster\n"
    )
    uses, problems = source_api_usage(guarded)
    assert not problems and not missing_from(qgis4_api, uses)
    unguarded = guarded.replace("if hasattr(Qgis, 'ProcessingSourceType'):\n", "if SOME_FLAG:\n")
    assert "QGIS 4 has no QgsProcessing.TypeVectorPoint" in "\n".join(missing_from(qgis4_api, source_api_usage(unguarded)[0]))


@pytest.mark.parametrize(
    "source, reported",
    [
        ("from PyQt5.QtCore import Qt\n", "imports PyQt5.QtCore directly"),
        ("from qgis.PyQt.Qt import Qt\n", "qgis.PyQt.Qt is gone with Qt6"),
        ("from qgis.PyQt.QtCore import QRegExp\n", "QRegExp is removed in Qt6"),
        ("def run(dialog):\n    return dialog.exec_()\n", "exec_() is removed in Qt6"),
        ("def screens(app):\n    return app.desktop()\n", "QDesktopWidget"),
        ("def wire(box, slot):\n    box.activated[str].connect(slot)\n", "activated[str] is removed in Qt6"),
    ],
)
def test_qt5_only_spellings_are_refused(source, reported):
    _, problems = source_api_usage(source)
    assert any(reported in str(problem) for problem in problems), problems


def test_a_qgis3_alias_is_seen_at_runtime():
    """An enum member or enum reached under another class's name is QGIS 3's compatibility alias:
    checked on an enum made here (every QGIS), and on QGIS's own aliases where it has them (3.36+)."""
    import enum
    import types

    from qgis_api_usage import _alias_of

    class ProcessingSourceType(enum.IntEnum):
        VectorPolygon = 2

    legacy = types.SimpleNamespace(TypeVectorPolygon=ProcessingSourceType.VectorPolygon, SourceType=ProcessingSourceType)
    assert _alias_of(legacy, "TypeVectorPolygon", ProcessingSourceType.VectorPolygon).endswith("ProcessingSourceType.VectorPolygon")
    assert _alias_of(legacy, "SourceType", ProcessingSourceType).endswith("ProcessingSourceType")
    assert _alias_of(ProcessingSourceType, "VectorPolygon", ProcessingSourceType.VectorPolygon) is None
    from qgis.core import Qgis

    uses, _ = source_api_usage("from qgis.core import QgsProcessing\nSOURCE = QgsProcessing.TypeVectorPolygon\n")
    found = "\n".join(qgis3_only_at_runtime(uses))
    if hasattr(Qgis, "ProcessingSourceType"):  # QGIS 3.36+: the old name is an alias there
        assert "QgsProcessing.TypeVectorPolygon is QGIS 3's alias of" in found and "ProcessingSourceType.VectorPolygon" in found
    else:  # QGIS 3.22: the old name is the real enum member, nothing to report at run time (the names file does)
        assert found == ""


def test_a_deprecated_method_is_seen_at_runtime():
    """QgsRasterLayer.hasAutoRefreshEnabled is deprecated since 3.40 (QgsMapLayer in 3.22 documents it
    as such too); writeRaster has a deprecated overload and a current one, so it is not reported."""
    uses, _ = source_api_usage(
        "from qgis.core import QgsRasterFileWriter, QgsRasterLayer\n"
        "def f(path):\n    layer = QgsRasterLayer(path)\n    writer = QgsRasterFileWriter(path)\n"
        "    return writer.writeRaster, layer.setCrs\n"
    )
    assert not qgis3_only_at_runtime(uses)
    from qgis.core import QgsRasterLayer

    deprecated = [name for name in dir(QgsRasterLayer) if not name.startswith("_") and ".. deprecated::" in (getattr(getattr(QgsRasterLayer, name), "__doc__", "") or "")]
    assert deprecated  # QGIS 3.22, 3.40 and 3.44 each document some
    uses, _ = source_api_usage(f"from qgis.core import QgsRasterLayer\ndef f(path):\n    layer = QgsRasterLayer(path)\n    return layer.{deprecated[0]}\n")
    assert any(f"QgsRasterLayer.{deprecated[0]} is deprecated" in message for message in qgis3_only_at_runtime(uses))


def test_metadata_lets_qgis4_list_and_load_the_plugin():
    """QGIS's own installer code decides: isCompatible(QGIS version, qgisMinimumVersion,
    qgisMaximumVersion) for the repository listing and for loading (pyplugin_installer). QGIS 4 reads
    no supportsQt6 (qgis/QGIS#65168); QGIS 3.34–3.44's Qt6 builds refuse a plugin without it."""
    spec = importlib.util.spec_from_file_location("version_compare", "/usr/share/qgis/python/pyplugin_installer/version_compare.py")
    version_compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(version_compare)
    isCompatible = version_compare.isCompatible  # noqa: N806 (QGIS's name)
    metadata = configparser.ConfigParser(interpolation=None)
    metadata.read(os.path.join(ROOT, "metadata.txt"), encoding="utf-8")
    general = metadata["general"]
    low, high = general["qgisMinimumVersion"], general["qgisMaximumVersion"]
    for version in ("3.22.16", "3.40.12", "3.44.15", "4.0.0", "4.2.1", "4.99.0"):
        assert isCompatible(version, low, high), version
    for version in ("3.16.0", "5.0.0"):
        assert not isCompatible(version, low, high), version
    assert general["supportsQt6"] == "True"


def test_sip_declarations_are_read_as_python_names():
    """scripts/qgis4_api_names.py --qgis-source reads QGIS 4's PyQt6 sip files; this is their syntax."""
    spec = importlib.util.spec_from_file_location("qgis4_api_names", os.path.join(ROOT, "scripts", "qgis4_api_names.py"))
    names = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(names)
    sip = """
class QgsExample : QgsBase, QObject
{
%Docstring(signature="appended")
Text with a ``code( sample );`` inside.
%End

%TypeHeaderCode
#include "qgsexample.h"
%End
  public:
    enum class Mode /BaseType=IntEnum/
    {
      First,
      Second /PyName=SecondOne/,
    };
    typedef QFlags<QgsExample::Mode> Modes;

    struct Item
    {
      QString label;
    };

    QgsExample( const QString &name = QString() );
    static QString describe( Qgis::ProcessingSourceType type ) const;
    QList< QPair< int, int > > ranges() const;
    void setValue( double value ) /PyName=setNumber/;
%If ( HAVE_EXTRA )
    int extra() const;
%End
    bool operator==( const QgsExample &other ) const;

  signals:
    void changed();

  private:
    QgsExample( const QgsExample &other );
    void hidden();
};

%Exception QgsExampleException(SIP_Exception) /PyName=QgsExampleException/
{
%RaiseCode
  SIP_BLOCK_THREADS
%End
};
"""
    classes = names.parse_sip(sip, "qgis.core")
    assert classes["QgsExample"]["bases"] == ["QgsBase", "QObject"]
    assert classes["QgsExample"]["members"] == {
        "Mode", "Mode.First", "Mode.SecondOne", "Modes", "Item", "Item.label",
        "describe", "ranges", "setNumber", "extra", "changed",
    }
    assert classes["QgsExampleException"] == {"module": "qgis.core", "bases": [], "members": set()}
