"""Named shims for the QGIS API differences between QGIS 3.22 LTR and QGIS 4.

QGIS 3.30–3.42 moved many enums into scoped enums on `Qgis`; QGIS 3 keeps the old class-level names
as deprecated aliases, QGIS 4 (Qt6) has only the new ones. Each name here is the new value where this
QGIS has it and the old one otherwise (spelt through its enum type, as Qt6 wants and PyQt5 accepts),
so the rest of the plugin is written once for all. Every `if hasattr(…)` side must exist in QGIS 4
and every `else` side in QGIS 3.22: tests/test_qgis4_api.py checks the first by name, the QGIS 3.22
test run executes the second.
"""

from qgis.core import (
    Qgis,
    QgsColorRampShader,
    QgsCoordinateReferenceSystem,
    QgsProcessing,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsRasterMinMaxOrigin,
    QgsWkbTypes,
)

if hasattr(Qgis, "ProcessingNumberParameterType"):  # QGIS 3.36
    NUMBER_INTEGER = Qgis.ProcessingNumberParameterType.Integer
    NUMBER_DOUBLE = Qgis.ProcessingNumberParameterType.Double
else:
    NUMBER_INTEGER = QgsProcessingParameterNumber.Type.Integer
    NUMBER_DOUBLE = QgsProcessingParameterNumber.Type.Double

if hasattr(Qgis, "ProcessingFileParameterBehavior"):  # QGIS 3.36
    FILE_BEHAVIOR_FILE = Qgis.ProcessingFileParameterBehavior.File
    FILE_BEHAVIOR_FOLDER = Qgis.ProcessingFileParameterBehavior.Folder
else:
    FILE_BEHAVIOR_FILE = QgsProcessingParameterFile.Behavior.File
    FILE_BEHAVIOR_FOLDER = QgsProcessingParameterFile.Behavior.Folder

if hasattr(Qgis, "ProcessingParameterFlag"):  # QGIS 3.36
    PARAMETER_FLAG_ADVANCED = Qgis.ProcessingParameterFlag.Advanced
else:
    PARAMETER_FLAG_ADVANCED = QgsProcessingParameterDefinition.Flag.FlagAdvanced

if hasattr(Qgis, "ProcessingSourceType"):  # QGIS 3.36
    SOURCE_VECTOR_POINT = Qgis.ProcessingSourceType.VectorPoint
    SOURCE_VECTOR_POLYGON = Qgis.ProcessingSourceType.VectorPolygon
else:
    SOURCE_VECTOR_POINT = QgsProcessing.SourceType.TypeVectorPoint
    SOURCE_VECTOR_POLYGON = QgsProcessing.SourceType.TypeVectorPolygon

if hasattr(Qgis, "GeometryType"):  # QGIS 3.30
    POINT_GEOMETRY = Qgis.GeometryType.Point
else:
    POINT_GEOMETRY = QgsWkbTypes.GeometryType.PointGeometry

if hasattr(Qgis, "CrsWktVariant"):  # QGIS 3.36
    CRS_WKT_PREFERRED_GDAL = Qgis.CrsWktVariant.PreferredGdal
else:
    CRS_WKT_PREFERRED_GDAL = QgsCoordinateReferenceSystem.WktVariant.WKT_PREFERRED_GDAL

if hasattr(Qgis, "ShaderInterpolationMethod"):  # QGIS 3.30
    RAMP_INTERPOLATED = Qgis.ShaderInterpolationMethod.Linear
    RAMP_CONTINUOUS = Qgis.ShaderClassificationMethod.Continuous
else:
    RAMP_INTERPOLATED = QgsColorRampShader.Type.Interpolated
    RAMP_CONTINUOUS = QgsColorRampShader.ClassificationMode.Continuous

# Min/max limits of a ramp: none (the renderer's own minimum and maximum are kept). QGIS 3.42 moved
# them to Qgis.RasterRangeLimit; in QGIS 3.44 the old alias QgsRasterMinMaxOrigin.None_ even names the
# extent enum's WholeRaster.
if hasattr(Qgis, "RasterRangeLimit"):
    RANGE_LIMIT_NONE = Qgis.RasterRangeLimit.NotSet
else:
    RANGE_LIMIT_NONE = QgsRasterMinMaxOrigin.Limits.None_


def with_advanced_flag(parameter):
    parameter.setFlags(parameter.flags() | PARAMETER_FLAG_ADVANCED)
    return parameter

