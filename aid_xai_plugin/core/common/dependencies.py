"""Which optional Python packages are importable, and how to install the missing ones.

The plugin must load in QGIS without torch/shap/cv2; algorithms call `missing_packages_message`
before they run and turn its answer into a one-line, actionable error (pointing to the dependency
dialog, or to `python -m aid_xai_plugin.install` without the desktop).
"""

import importlib.util
import os

# import name -> pip requirement (as in requirements.txt)
REQUIRED_PACKAGES = {
    "torch": "torch",
    "torchvision": "torchvision",
    "shap": "shap",
    "cv2": "opencv-python-headless",
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
    "sklearn": "scikit-learn",
}


def missing_packages(import_names=None):
    """Pip names of the packages (of `import_names`, default all) that cannot be imported."""
    names = import_names or list(REQUIRED_PACKAGES)
    return [REQUIRED_PACKAGES[name] for name in names if importlib.util.find_spec(name) is None]


def missing_packages_message(import_names=None):
    """None when everything is importable, else a one-line message saying how to install them."""
    missing = missing_packages(import_names)
    if not missing:
        return None
    plugin_folder = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    return (
        f"AID-XAI needs the Python package(s) {', '.join(missing)}, which QGIS's Python cannot import. "
        f"In QGIS: Plugins › AID-XAI › Install or update Python packages… (nothing else of QGIS changes). "
        f"Without the desktop, with the Python QGIS uses: cd '{plugin_folder}' && python3 -m aid_xai_plugin.install "
        f"(--cpu for the smaller CPU-only torch); it installs into the QGIS profile, where QGIS and qgis_process find them."
    )
