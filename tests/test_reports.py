"""The explanation report: one figure and facts line per tile, written as tiles come (memory stays flat),
committed atomically, and drawn without touching the matplotlib state of a running QGIS."""

import base64
import gc
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT
from helpers import last_line_json

from aid_xai_plugin.core.explain.engine import ExplainSettings
from aid_xai_plugin.core.reports.explanation_report import ExplanationReport

SETTINGS = ExplainSettings(masker="blur(16,16)", max_evals=100, batch_size=32, seed=3)
NAMES = ["forest", "river", "farmland", "port"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _tile(seed, size=32, bands=3, classes=2):
    """A model-input tile in [0, 1] and its H×W×K SHAP values."""
    rng = np.random.default_rng(seed)
    return rng.random((size, size, bands), dtype=np.float32), rng.normal(0.0, 0.01, (size, size, classes))


def _images(document):
    return [base64.b64decode(source) for source in re.findall(r"<img src='data:image/png;base64,([A-Za-z0-9+/=]+)'/>", document)]


def test_report_has_one_figure_and_the_facts_per_tile(tmp_path):
    path = tmp_path / "report.html"
    rgb, rgb_values = _tile(0)
    single_band, single_values = _tile(1, bands=1, classes=1)
    multispectral, _ = _tile(2, bands=4, classes=3)
    with ExplanationReport(str(path), NAMES, SETTINGS, "fast") as report:
        report.add(0, 0, 0, rgb, rgb_values, [0, 3], [0.8, 0.05], [0.3, 0.2], label="forest")
        report.add(1, 0, 1, single_band, single_values, [1], np.array([0.6]), np.array([0.25]))
        report.add(2, 1, 0, multispectral, np.zeros((32, 32, 3)), [2, 0, 1], [0.4, 0.3, 0.2], [0.25, 0.25, 0.25])
    document = path.read_text(encoding="utf-8")
    images = _images(document)
    assert len(images) == document.count("<img") == 3
    assert all(image.startswith(PNG_SIGNATURE) for image in images)
    assert "Engine fast, masker blur(16,16), max_evals 100, batch size 32, seed 3." in document
    assert "<h3>Tile 0 (row 0, col 0) — true label: <b>forest</b></h3>" in document
    assert "<h3>Tile 1 (row 0, col 1)</h3>" in document
    assert f"forest: p=0.800, base=0.300, ΣSHAP={rgb_values[..., 0].sum():+.3f}, port: p=0.050, base=0.200, ΣSHAP={rgb_values[..., 1].sum():+.3f}" in document
    assert f"<p>river: p=0.600, base=0.250, ΣSHAP={single_values.sum():+.3f}</p>" in document
    assert "farmland: p=0.400, base=0.250, ΣSHAP=+0.000" in document
    assert document.rstrip().endswith("</body></html>")
    assert os.listdir(tmp_path) == ["report.html"]


def test_a_cancelled_report_leaves_nothing(tmp_path):
    path = tmp_path / "report.html"
    image, values = _tile(0)
    with pytest.raises(KeyboardInterrupt):
        with ExplanationReport(str(path), NAMES, SETTINGS, "fast") as report:
            report.add(0, 0, 0, image, values, [0, 1], [0.5, 0.5], [0.5, 0.5])
            assert not path.exists() and len(os.listdir(tmp_path)) == 1  # only the temporary file, beside it
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def _run_python(script):
    """Run `script` in a fresh interpreter (imports of this test process don't leak in); its last stdout line as JSON."""
    env = dict(os.environ, PYTHONPATH=ROOT, MPLBACKEND="svg")  # a backend that Agg is not, so a switch would show
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return last_line_json(completed.stdout)


def _writing_a_report(path):
    """Code that writes a small report to `path`."""
    return f"""
import numpy as np
from aid_xai_plugin.core.explain.engine import ExplainSettings
from aid_xai_plugin.core.reports.explanation_report import ExplanationReport
with ExplanationReport({str(path)!r}, ["a", "b"], ExplainSettings(), "fast") as report:
    report.add(0, 0, 0, np.full((16, 16, 3), 0.5, np.float32), np.ones((16, 16, 2)), [0, 1], [0.6, 0.4], [0.5, 0.5])
"""


def test_the_report_does_not_import_pyplot_nor_switch_the_backend(tmp_path):
    write_report = _writing_a_report(tmp_path / "report.html")
    script = f"""
import json, sys, matplotlib
before = {{"pyplot": "matplotlib.pyplot" in sys.modules, "backend": matplotlib.get_backend()}}
{write_report}
after = {{"pyplot": "matplotlib.pyplot" in sys.modules, "backend": matplotlib.get_backend()}}
print(json.dumps([before, after]))
"""
    before, after = _run_python(script)
    assert before == after == {"pyplot": False, "backend": "svg"}
    assert (tmp_path / "report.html").exists()


def test_the_report_leaves_the_users_pyplot_figures_open(tmp_path):
    write_report = _writing_a_report(tmp_path / "report.html")
    script = f"""
import json
from matplotlib import pyplot
user_figure = pyplot.figure()
before = {{"figures": pyplot.get_fignums(), "backend": pyplot.get_backend()}}
{write_report}
after = {{"figures": pyplot.get_fignums(), "backend": pyplot.get_backend()}}
print(json.dumps([before, after, pyplot.gcf() is user_figure]))
"""
    before, after, still_current = _run_python(script)
    assert before == after == {"figures": [1], "backend": "svg"}
    assert still_current and (tmp_path / "report.html").exists()


def test_memory_stays_flat_over_many_tiles(tmp_path):
    """Each tile goes to disk when added: the report keeps no per-tile data and no figures."""
    from matplotlib.figure import Figure

    def figures_alive():
        gc.collect()
        return sum(type(thing) is Figure for thing in gc.get_objects())  # type(), not isinstance(): no lazy attribute lookups

    def sizes(report):
        return {name: len(value) for name, value in vars(report).items() if hasattr(value, "__len__")}

    path = tmp_path / "report.html"
    image, values = _tile(0)
    figures_before = figures_alive()
    with ExplanationReport(str(path), NAMES, SETTINGS, "fast") as report:
        (temporary,) = tmp_path.iterdir()
        report.add(0, 0, 0, image, values, [0, 1], [0.6, 0.3], [0.4, 0.4])
        sizes_after_one, bytes_after_one = sizes(report), temporary.stat().st_size
        for number in range(1, 200):
            report.add(number, number // 20, number % 20, image, values, [0, 1], [0.6, 0.3], [0.4, 0.4])
        assert sizes(report) == sizes_after_one
        assert temporary.stat().st_size > 100 * bytes_after_one  # the tiles are on disk already
        assert not any(isinstance(value, (np.ndarray, bytes)) for value in vars(report).values())
        assert figures_alive() <= figures_before
    assert path.read_text(encoding="utf-8").count("<img") == 200
