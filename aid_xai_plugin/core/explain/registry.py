"""The explanation engines by name, as the ENGINE parameter offers them."""

from ..common.errors import AidXaiError
from .exact_engine import ExactPartitionEngine
from .fast_engine import FastPartitionEngine
from .shap_engine import ShapPartitionEngine

ENGINES = {"fast": FastPartitionEngine, "exact": ExactPartitionEngine, "shap": ShapPartitionEngine}


def engine_by_name(name):
    """A new engine called `name` ('fast', 'exact' or 'shap')."""
    key = str(name).strip().lower()
    if key not in ENGINES:
        raise AidXaiError(f"Unknown explanation engine '{name}'; use one of: {', '.join(ENGINES)}.")
    return ENGINES[key]()
