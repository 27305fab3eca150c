"""Which optional Python packages are importable, and how to install the missing ones.

The plugin must load in QGIS without torch/shap/cv2; algorithms call `missing_packages_message`
before they run and turn its answer into a one-line, actionable error.
"""

import importlib.util

# import name -> pip requirement (as in requirements.txt)
REQUIRED_PACKAGES = {
    "torch": "torch",
    "torchvision": "torchvision",
    "shap": "shap",
    "cv2": "opencv-python-headless",
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
}


def missing_packages(import_names=None):
    """Pip names of the packages (of `import_names`, default all) that cannot be imported."""
    names = import_names or list(REQUIRED_PACKAGES)
    return [REQUIRED_PACKAGES[name] for name in names if importlib.util.find_spec(name) is None]


def missing_packages_message(import_names=None):
    """None when everything is importable, else a one-line message with the install command."""
    missing = missing_packages(import_names)
    if not missing:
        return None
    return (
        f"AID-XAI needs the Python package(s) {', '.join(missing)}, which QGIS's Python cannot "
        f"import. Install them into the Python QGIS uses, e.g. `python3 -m pip install "
        f"{' '.join(missing)} numpy==$(python3 -c 'import numpy; print(numpy.__version__)')` "
        f"(keeping numpy at QGIS's version; the README's 'Installing into your own QGIS' keeps every "
        f"compiled package of QGIS's Python as it is), or run `make setup` in the AID-XAI checkout "
        f"and start QGIS with its venv on PYTHONPATH, then restart QGIS."
    )
