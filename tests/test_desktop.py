"""What a GIS analyst sees in QGIS desktop: the real QGIS main window on a virtual X screen (Xvfb).

tests/desktop/desktop_session.py runs inside `qgis --code` with the AID-XAI plugin enabled in a
throwaway profile: it opens every AID-XAI dialog, runs synthetic mosaic → classify → explain and the
shipped model from their dialogs (outputs loaded and styled as a user gets them), opens the modeler,
and writes build/desktop/session.json plus screenshots (build/desktop/*.png). The tests here read that
JSON. Needs `xvfb-run` and `qgis` (`make test` installs xvfb and xauth); skipped without them.
"""

import os
import re
import shutil
import subprocess

import pytest
from conftest import ROOT
from helpers import run_qgis_desktop_session

OUT = os.path.join(ROOT, "build", "desktop")
SESSION = os.path.join(ROOT, "tests", "desktop", "desktop_session.py")
MODEL3 = os.path.join(ROOT, "resources", "models", "classify_explain_least_confident.model3")
PLUGIN_TAGS = ("AID XAI", "AID-XAI", "aid_xai")
MIN_BOX = (200.0, 60.0)  # a component box in the modeler is at most about this large

pytestmark = pytest.mark.skipif(
    not (shutil.which("xvfb-run") and shutil.which("qgis")),
    reason="needs xvfb-run and qgis (apt-get install xvfb xauth qgis; `make test` installs them)",
)


def _profile(tmp_path):
    """A throwaway QGIS profile folder with the checkout linked in as the aid_xai plugin, enabled;
    the other Processing providers off (they only slow the start down)."""
    profiles = tmp_path / "profiles"
    profile = profiles / "profiles" / "default"
    (profile / "python" / "plugins").mkdir(parents=True)
    os.symlink(ROOT, profile / "python" / "plugins" / "aid_xai")
    (profile / "QGIS").mkdir()
    (profile / "QGIS" / "QGIS3.ini").write_text(
        "[PythonPlugins]\naid_xai=true\nprocessing=true\ndb_manager=false\nMetaSearch=false\n"
        "grassprovider=false\nsagaprovider=false\notbprovider=false\n"
        "[Processing]\nConfiguration\\KEEP_DIALOG_OPEN=true\n"
        "[qgis]\ncheckVersion=false\nallowVersionCheck=false\n"
        "[core]\nNewsFeed\\httpsfeedqgisorg\\disabled=true\n"
    )
    return profiles


@pytest.fixture(scope="module")
def session(tmp_path_factory, synthetic_model):
    """Run the desktop session once (about a minute); its session.json."""
    tmp_path = tmp_path_factory.mktemp("desktop")
    profiles = _profile(tmp_path)
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    site = next(iter(sorted((p for p in (os.path.join(ROOT, ".venv", "lib", d, "site-packages") for d in os.listdir(os.path.join(ROOT, ".venv", "lib"))) if os.path.isdir(p)))), "")
    environment = dict(
        PYTHONPATH=os.pathsep.join(filter(None, (site, os.environ.get("PYTHONPATH")))),
        XDG_RUNTIME_DIR=os.environ.get("XDG_RUNTIME_DIR") or str(tmp_path / "runtime"),
        HOME=str(tmp_path / "home"),
        AID_XAI_DESKTOP_OUT=OUT,
        AID_XAI_DESKTOP_WORK=str(tmp_path / "work"),
        AID_XAI_DESKTOP_MODEL=synthetic_model,
        AID_XAI_DESKTOP_MODEL3=MODEL3,
        AID_XAI_DESKTOP_TIMEOUT="150",
    )
    return run_qgis_desktop_session(SESSION, profiles, OUT, "session.json", environment, 150, ROOT)


def _role(session, role):
    details = session.get("role_details", {}).get(role)
    assert details is not None, f"no {role} layer in the project; errors: {session['errors']}"
    return details


def test_the_session_ran_every_step_from_the_dialogs(session):
    assert session["provider_loaded"]
    assert session["errors"] == [], "\n".join(session["errors"])
    assert session["message_boxes"] == []
    for name in ("synthetic_mosaic", "classify", "explain", "model3"):
        run = session["runs"][name]
        assert run["ok"], f"{name} failed from its dialog:\n{run['log'][-3000:]}"
    assert set(session["algorithm_dialogs"]) == {"synthetic_scenes", "synthetic_mosaic", "train", "evaluate", "classify", "explain", "explanation_quality"}
    for shot in session["screenshots"].values():
        assert os.path.getsize(shot["path"]) > 1000, shot


def _rgba(entry):
    return entry["r"], entry["g"], entry["b"], entry["a"]


def _check_shap_renderer(details, where):
    assert details["type"] == "singlebandpseudocolor", where
    assert details["source_ramp"] is not None and details["source_ramp"]["type"] == "gradient", f"{where}: source colour ramp {details.get('source_ramp')}"
    assert details["minimum"] == pytest.approx(-details["maximum"]) and details["maximum"] > 0, f"{where}: min/max {details['minimum']}, {details['maximum']}"
    at = details["colour_at"]
    assert at["0"]["a"] == 0, f"{where}: colour at 0 {_rgba(at['0'])}"
    assert at["+max"]["r"] > at["+max"]["b"], f"{where}: colour at +max {_rgba(at['+max'])}"
    assert at["-max"]["b"] > at["-max"]["r"], f"{where}: colour at -max {_rgba(at['-max'])}"


def test_shap_layer_is_a_symmetric_diverging_pseudocolour_map(session):
    shap = _role(session, "shap")
    assert shap["renderer"] == "singlebandpseudocolor"
    _check_shap_renderer(shap["pseudocolor"], "as loaded")


def test_shap_symbology_widget_styles_band_2_like_band_1(session):
    symbology = session["shap_symbology"]
    _check_shap_renderer(symbology["band1_widget"], "widget, band 1")
    band2 = symbology["band2_widget"]
    assert band2 is not None
    assert band2["band"] == 2
    _check_shap_renderer(band2, "widget, band 2")
    band1 = symbology["band1_widget"]
    assert (band2["minimum"], band2["maximum"]) == pytest.approx((band1["minimum"], band1["maximum"]))
    for at in ("-max", "0", "+max"):  # the same colours (the widget regenerates its ramp: ±3 of rounding)
        assert _rgba(band2["colour_at"][at]) == pytest.approx(_rgba(band1["colour_at"][at]), abs=3), (at, band1["colour_at"][at], band2["colour_at"][at])


def test_shap_bands_have_descriptive_names(session):
    shap = _role(session, "shap")
    for name in shap["band_names"]:
        assert name and not re.fullmatch(r"Band 0*\d+", name.strip()), shap["band_names"]


def test_probability_raster_is_not_shown_as_rgb(session):
    assert _role(session, "probabilities")["renderer"] != "multibandcolor"


def test_class_raster_is_paletted_with_class_names(session, synthetic_model):
    from aid_xai_plugin.core.ml.model_file import load_model

    classes = _role(session, "classes")
    assert classes["renderer"] == "paletted"
    assert [c["label"] for c in classes["classes"]] == list(load_model(synthetic_model).info.class_names)


@pytest.mark.parametrize("role", ["tiles", "table"])
def test_vector_layers_do_not_hide_the_rasters_and_are_labelled(session, role):
    layer = _role(session, role)
    assert layer["symbols"], layer
    for symbol in layer["symbols"]:
        no_brush = symbol.get("brush_style") == 0  # Qt.NoBrush
        assert no_brush or symbol.get("fill_alpha", 255) == 0, f"{layer['name']}: a filled symbol hides what lies below: {symbol}"
    assert layer["labels_enabled"], f"{layer['name']} has no labels"


def test_modeler_shows_a_valid_model_with_no_overlapping_boxes(session):
    modeler = session["modeler"]
    assert modeler["valid"], modeler["issues"]
    boxes = modeler["boxes"]
    assert len(boxes) >= 12, boxes  # 4 inputs, 4 steps, 4 outputs
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            ax, ay, aw, ah = a["rect"]
            bx, by, bw, bh = b["rect"]
            overlap = ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah
            assert not overlap, f"{a['label']} overlaps {b['label']}"


def test_model_dialog_lists_raster_first(session):
    parameters = session["model_dialog"]["parameters"]
    inputs = [name for name in parameters if ":" not in name]
    assert inputs == ["input_raster", "model_file", "number_of_tiles", "shap_evaluations"]


def _plugin_problems(session):
    problems = []
    for entry in session["messages_live"]:
        text = entry["message"]
        mentions_plugin = any(tag.lower() in (entry["tag"] + " " + text).lower() for tag in PLUGIN_TAGS)
        if entry["level"] >= 1 and (entry["tag"] in PLUGIN_TAGS or mentions_plugin or entry["tag"] in ("Python error", "Python warning")):
            problems.append(f"[{entry['tag']}] {text}")
        if "Traceback" in text or "Duplicate output" in text or re.search(r"Cannot open .*\.tif", text):
            problems.append(f"[{entry['tag']}] {text}")
    for tab, text in session["log_panel"].items():
        for line in text.splitlines():
            if "Duplicate output" in line or "Traceback" in line or (tab in PLUGIN_TAGS and re.search(r"WARNING|CRITICAL", line)):
                problems.append(f"[{tab} panel] {line}")
            if tab == "Processing" and "aid_xai" in line.lower() and re.search(r"WARNING|CRITICAL", line):
                problems.append(f"[{tab} panel] {line}")
    if "Traceback" in session["_stderr"]:
        problems.append("stderr: " + session["_stderr"][session["_stderr"].index("Traceback") :][:2000])
    return sorted(set(problems))


def test_no_warnings_or_errors_from_the_plugin(session):
    assert _plugin_problems(session) == []


def test_the_session_stays_short(session):
    assert session["elapsed_s"] < 120, session["steps"]
