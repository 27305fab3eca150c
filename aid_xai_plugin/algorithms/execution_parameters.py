"""Where explain and classify run: here, or on a Dask cluster (advanced parameters)."""

from qgis.core import QgsProcessingParameterNumber, QgsProcessingParameterString

from ..core.pipelines.execution import EXECUTION_MODES, DaskSettings
from ..qgis_compat import NUMBER_INTEGER, with_advanced_flag
from .base import choice_parameter


def add_execution_parameters(algorithm):
    algorithm.addParameter(choice_parameter("EXECUTION", "Run tiles", EXECUTION_MODES, "local"))
    for parameter in (
        QgsProcessingParameterString("DASK_SCHEDULER", "Dask scheduler address, e.g. tcp://host:8786 (empty = a local cluster for this run)", optional=True),
        QgsProcessingParameterNumber("DASK_WORKERS", "Local cluster: worker processes", NUMBER_INTEGER, 2, minValue=1),
        QgsProcessingParameterNumber("DASK_THREADS", "Threads per worker (torch threads per task)", NUMBER_INTEGER, 1, minValue=1),
    ):
        algorithm.addParameter(with_advanced_flag(parameter))


def read_execution(algorithm, parameters, context):
    """(execution mode, DaskSettings)."""
    return algorithm.choice(parameters, "EXECUTION", context), DaskSettings(
        scheduler=(algorithm.parameterAsString(parameters, "DASK_SCHEDULER", context) or "").strip(),
        workers=algorithm.parameterAsInt(parameters, "DASK_WORKERS", context),
        threads=algorithm.parameterAsInt(parameters, "DASK_THREADS", context),
    )
