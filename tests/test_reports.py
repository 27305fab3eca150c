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
from helpers import hang_limit, last_line_json

from aid_xai_plugin.core.explain.engine import ExplainSettings
from aid_xai_plugin.core.pipelines.steps import ExplainedTile
from aid_xai_plugin.core.reports.explanation_report import ExplanationReport

SETTINGS = ExplainSettings(masker="blur(16,16)", max_evals=100, batch_size=32, seed=3)
NAMES = ["forest", "river", "farmland", "port"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _tile(seed, size=32, bands=3, indices=(0, 1), probabilities=None, outputs=None, bases=None, margin=0.5, values=None):
    """An explained tile as the explain step returns it: a model-input tile in [0, 1], its H×W×K
    SHAP values, and the facts per explained class."""
    rng = np.random.default_rng(seed)
    count = len(indices)
    return ExplainedTile(
        image=rng.random((size, size, bands), dtype=np.float32),
        values=rng.normal(0.0, 0.01, (size, size, count)) if values is None else values,
        class_indices=np.asarray(indices),
        output_values=np.asarray(outputs if outputs is not None else [1.5] * count),
        base_values=np.asarray(bases if bases is not None else [0.5] * count),
        probabilities=np.asarray(probabilities if probabilities is not None else [0.5] * count),
        margin=margin,
        valid=np.ones((size, size), bool),
    )


def _images(document):
    return [base64.b64decode(source) for source in re.findall(r"<img src='data:image/png;base64,([A-Za-z0-9+/=]+)'/>", document)]


def test_report_has_one_figure_and_the_facts_per_tile(tmp_path):
    path = tmp_path / "report.html"
    rgb = _tile(0, indices=[0, 3], probabilities=[0.8, 0.05], outputs=[2.5, -1.0], bases=[0.3, 0.2], margin=0.75)
    single_band = _tile(1, bands=1, indices=[1], probabilities=[0.6], outputs=[1.25], bases=[0.25], margin=0.3)
    multispectral = _tile(2, bands=4, indices=[2, 0, 1], probabilities=[0.4, 0.3, 0.2], outputs=[0.4, 0.3, 0.2], bases=[0.25] * 3, values=np.zeros((32, 32, 3)))
    with ExplanationReport(str(path), NAMES, SETTINGS, "fast") as report:
        report.add(0, 0, 0, rgb, label="forest")
        report.add(1, 0, 1, single_band)
        report.add(2, 1, 0, multispectral)
    document = path.read_text(encoding="utf-8")
    images = _images(document)
    assert len(images) == document.count("<img") == 3
    assert all(image.startswith(PNG_SIGNATURE) for image in images)
    assert "Engine fast, masker blur(16,16), max_evals 100, batch size 32, seed 3, output space <b>logit</b>." in document
    assert "All 3 explained tiles, in tile order." in document
    assert "<h3>Tile 0 (row 0, col 0), margin 0.750 — true label: <b>forest</b></h3>" in document
    assert "<h3>Tile 1 (row 0, col 1), margin 0.300</h3>" in document
    rgb_sums = rgb.values.sum(axis=(0, 1))
    assert f"forest: p=0.800, f=2.500, base=0.300, ΣSHAP={rgb_sums[0]:+.3f}, port: p=0.050, f=-1.000, base=0.200, ΣSHAP={rgb_sums[1]:+.3f}" in document
    assert f"<p>river: p=0.600, f=1.250, base=0.250, ΣSHAP={single_band.values.sum():+.3f}</p>" in document
    assert "farmland: p=0.400, f=0.400, base=0.250, ΣSHAP=+0.000" in document
    assert document.rstrip().endswith("</body></html>")
    assert os.listdir(tmp_path) == ["report.html"]


def test_the_report_keeps_the_least_confident_tiles_in_tile_order(tmp_path):
    path = tmp_path / "report.html"
    margins = np.random.default_rng(4).permutation(np.linspace(0.0, 1.0, 40))
    with ExplanationReport(str(path), NAMES, SETTINGS, "fast", max_tiles=5) as report:
        for index, margin in enumerate(margins):
            report.add(index, 0, index, _tile(index, size=8, margin=float(margin)))
            spooled = [name for name in os.listdir(tmp_path) if name != "report.html"]
            assert len(spooled) == 1 and len(os.listdir(tmp_path / spooled[0])) <= 5  # at most the cap, on disk
    document = path.read_text(encoding="utf-8")
    expected = sorted(np.argsort(margins, kind="stable")[:5])
    assert [int(found) for found in re.findall(r"<h3>Tile (\d+) ", document)] == expected
    assert "The 5 least confident of 40 explained tiles" in document
    assert os.listdir(tmp_path) == ["report.html"]


def test_a_cancelled_report_leaves_nothing(tmp_path):
    path = tmp_path / "report.html"
    with pytest.raises(KeyboardInterrupt):
        with ExplanationReport(str(path), NAMES, SETTINGS, "fast") as report:
            report.add(0, 0, 0, _tile(0))
            assert not path.exists() and len(os.listdir(tmp_path)) == 1  # only the spool folder, beside it
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def _run_python(script):
    """Run `script` in a fresh interpreter (imports of this test process don't leak in); its last stdout line as JSON."""
    env = dict(os.environ, PYTHONPATH=ROOT, MPLBACKEND="svg")  # a backend that Agg is not, so a switch would show
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, env=env, timeout=hang_limit(300))
    assert completed.returncode == 0, completed.stderr[-3000:]
    return last_line_json(completed.stdout)


def _writing_a_report(path):
    """Code that writes a small report to `path`."""
    return f"""
import numpy as np
from aid_xai_plugin.core.explain.engine import ExplainSettings
from aid_xai_plugin.core.pipelines.steps import ExplainedTile
from aid_xai_plugin.core.reports.explanation_report import ExplanationReport
tile = ExplainedTile(np.full((16, 16, 3), 0.5, np.float32), np.ones((16, 16, 2)), np.array([0, 1]), np.array([1.0, 0.5]), np.array([0.5, 0.5]), np.array([0.6, 0.4]), 0.2, np.ones((16, 16), bool))
with ExplanationReport({str(path)!r}, ["a", "b"], ExplainSettings(), "fast") as report:
    report.add(0, 0, 0, tile)
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
    """Each tile goes to disk when added: the report keeps no per-tile arrays and no figures."""
    from matplotlib.figure import Figure

    def figures_alive():
        gc.collect()
        return sum(type(thing) is Figure for thing in gc.get_objects())  # type(), not isinstance(): no lazy attribute lookups

    path = tmp_path / "report.html"
    tile = _tile(0, size=16)
    figures_before = figures_alive()
    with ExplanationReport(str(path), NAMES, SETTINGS, "fast", max_tiles=0) as report:
        report.add(0, 0, 0, tile)
        (spool,) = tmp_path.iterdir()
        bytes_after_one = sum(entry.stat().st_size for entry in spool.iterdir())
        for number in range(1, 60):
            report.add(number, number // 20, number % 20, tile)
        assert sum(entry.stat().st_size for entry in spool.iterdir()) > 50 * bytes_after_one  # the tiles are on disk already
        assert not any(isinstance(value, (np.ndarray, bytes)) for value in vars(report).values())
        assert all(str(row[2]).endswith(".npz") for row in report._kept)  # per tile: its facts and the name of its spooled arrays
        assert figures_alive() <= figures_before
    assert path.read_text(encoding="utf-8").count("<img") == 60
