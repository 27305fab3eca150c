"""Named shims for the QGIS API differences between 3.22 LTR and 3.40 LTR.

QGIS 3.30/3.36 moved many enums into scoped enums on `Qgis` (the old class-level names still work
on 3.x but are deprecated and gone with PyQt6 builds). Each name here is the new enum value where
it exists and the old one otherwise, so the rest of the plugin is written once for both.
"""

from qgis.core import Qgis, QgsColorRampShader, QgsCoordinateReferenceSystem, QgsProcessing, QgsProcessingParameterDefinition, QgsProcessingParameterNumber, QgsWkbTypes


def _scoped(enum_name, member, old_value):
    """`Qgis.<enum_name>.<member>` where QGIS has it, else `old_value()` (never touched on new QGIS)."""
    enum = getattr(Qgis, enum_name, None)
    return getattr(enum, member) if enum is not None else old_value()


# QgsProcessingParameterNumber.Integer/Double → Qgis.ProcessingNumberParameterType (3.36)
NUMBER_INTEGER = _scoped("ProcessingNumberParameterType", "Integer", lambda: QgsProcessingParameterNumber.Integer)
NUMBER_DOUBLE = _scoped("ProcessingNumberParameterType", "Double", lambda: QgsProcessingParameterNumber.Double)

# QgsProcessingParameterDefinition.FlagAdvanced → Qgis.ProcessingParameterFlag.Advanced (3.36)
PARAMETER_FLAG_ADVANCED = _scoped("ProcessingParameterFlag", "Advanced", lambda: QgsProcessingParameterDefinition.FlagAdvanced)

# QgsProcessing.TypeVectorPoint/Polygon → Qgis.ProcessingSourceType (3.36)
SOURCE_VECTOR_POINT = _scoped("ProcessingSourceType", "VectorPoint", lambda: QgsProcessing.TypeVectorPoint)
SOURCE_VECTOR_POLYGON = _scoped("ProcessingSourceType", "VectorPolygon", lambda: QgsProcessing.TypeVectorPolygon)

# QgsWkbTypes.PointGeometry → Qgis.GeometryType.Point (3.30)
POINT_GEOMETRY = _scoped("GeometryType", "Point", lambda: QgsWkbTypes.PointGeometry)

# QgsCoordinateReferenceSystem.WKT_PREFERRED_GDAL → Qgis.CrsWktVariant.PreferredGdal (3.36)
CRS_WKT_PREFERRED_GDAL = _scoped("CrsWktVariant", "PreferredGdal", lambda: QgsCoordinateReferenceSystem.WKT_PREFERRED_GDAL)

# QgsColorRampShader.Interpolated → Qgis.ShaderInterpolationMethod.Linear (3.30)
RAMP_INTERPOLATED = _scoped("ShaderInterpolationMethod", "Linear", lambda: QgsColorRampShader.Interpolated)

# QgsColorRampShader.Continuous → Qgis.ShaderClassificationMethod.Continuous (3.30)
RAMP_CONTINUOUS = _scoped("ShaderClassificationMethod", "Continuous", lambda: QgsColorRampShader.Continuous)


def with_advanced_flag(parameter):
    parameter.setFlags(parameter.flags() | PARAMETER_FLAG_ADVANCED)
    return parameter
