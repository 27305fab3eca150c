"""Parameters shared by explain and explanation quality: which tiles, and how SHAP is computed."""

from qgis.core import (
    QgsFeatureRequest,
    QgsGeometry,
    QgsPointXY,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
    QgsSpatialIndex,
)

from ..core.common.errors import AidXaiError
from ..core.explain.engine import ExplainSettings
from ..core.explain.registry import ENGINES
from ..core.ml.classifier import OUTPUT_SPACES
from ..qgis_compat import NUMBER_DOUBLE, NUMBER_INTEGER, POINT_GEOMETRY, SOURCE_VECTOR_POINT, SOURCE_VECTOR_POLYGON, with_advanced_flag
from .base import choice_parameter
from .tiling_parameters import add_extent_parameter

MASKERS = ("blur", "inpaint_telea", "inpaint_ns", "constant")


def add_tile_choice_parameters(algorithm):
    """Which tiles: under features and/or in an extent (tiles of the raster's own grid either way)."""
    algorithm.addParameter(
        QgsProcessingParameterFeatureSource("FEATURES", "Explain the tiles under these features (not set: every tile in the extent)", [SOURCE_VECTOR_POINT, SOURCE_VECTOR_POLYGON], optional=True)
    )
    algorithm.addParameter(QgsProcessingParameterField("LABEL_FIELD", "True-label field (shown in the report)", parentLayerParameterName="FEATURES", optional=True))
    add_extent_parameter(algorithm)


def add_shap_parameters(algorithm, default_max_evals=500):
    """What is explained and how, in the order a user decides it; the seed is advanced."""
    algorithm.addParameter(choice_parameter("OUTPUT_SPACE", "Explain the model's", OUTPUT_SPACES, "logit"))
    algorithm.addParameter(QgsProcessingParameterNumber("MAX_EVALS", "Model evaluations per tile (max_evals)", NUMBER_INTEGER, default_max_evals, minValue=3))
    algorithm.addParameter(choice_parameter("MASKER", "Masker (what hidden pixels become)", MASKERS, "blur"))
    algorithm.addParameter(QgsProcessingParameterNumber("MASKER_KERNEL", "Blur kernel size (model-input pixels)", NUMBER_INTEGER, 256, minValue=1))
    algorithm.addParameter(QgsProcessingParameterNumber("MASKER_VALUE", "Constant for hidden pixels (0..1)", NUMBER_DOUBLE, 0.5, minValue=0.0, maxValue=1.0))
    algorithm.addParameter(choice_parameter("ENGINE", "Engine", tuple(ENGINES), "fast"))
    algorithm.addParameter(with_advanced_flag(QgsProcessingParameterNumber("SEED", "Random seed (shap's tie-breaks)", NUMBER_INTEGER, 0)))


def add_band_group_parameters(algorithm):
    """Evidence per group of bands (core/explain/band_groups.py)."""
    algorithm.addParameter(QgsProcessingParameterBoolean("BY_BAND_GROUP", "Explain by band group (a map per class and group of bands)", False))
    algorithm.addParameter(QgsProcessingParameterString("BAND_GROUPS", "Band groups, e.g. RGB=1,2,3;NIR=4 (empty: one group per band)", optional=True))


def read_band_groups(algorithm, parameters, context):
    """ExplainRequest fields (by_band_group, band_groups) from the parameters `add_band_group_parameters` adds."""
    return dict(
        by_band_group=algorithm.parameterAsBoolean(parameters, "BY_BAND_GROUP", context),
        band_groups=algorithm.parameterAsString(parameters, "BAND_GROUPS", context) or "",
    )


def read_shap_settings(algorithm, parameters, context):
    """ExplainSettings from the parameters `add_shap_parameters` and `add_tiling_parameters` add."""
    return ExplainSettings(
        masker=masker_spec(algorithm, parameters, context),
        max_evals=algorithm.parameterAsInt(parameters, "MAX_EVALS", context),
        batch_size=algorithm.parameterAsInt(parameters, "BATCH_SIZE", context),
        seed=algorithm.parameterAsInt(parameters, "SEED", context),
        output_space=algorithm.choice(parameters, "OUTPUT_SPACE", context),
    )


def masker_spec(algorithm, parameters, context):
    """shap's Image-masker spec from the drop-down and its number: 'blur(k,k)', 'inpaint_ns', '0.5'."""
    kind = algorithm.choice(parameters, "MASKER", context)
    if kind == "blur":
        kernel = algorithm.parameterAsInt(parameters, "MASKER_KERNEL", context)
        return f"blur({kernel},{kernel})"
    if kind == "constant":
        return repr(algorithm.parameterAsDouble(parameters, "MASKER_VALUE", context))
    return kind


def tile_selector(algorithm, parameters, context, layer):
    """A function footprint → [(feature id, label, distance)] over FEATURES, in the raster's CRS, or
    None: a polygon selects the tiles whose centre it contains (distance None); a point is a candidate
    of every tile it touches, at its distance from the tile's centre, and the core keeps the nearest."""
    if not parameters.get("FEATURES"):
        return None
    source = algorithm.parameterAsSource(parameters, "FEATURES", context)
    if source is None:
        raise AidXaiError("FEATURES could not be opened as a vector layer.")
    label_field = algorithm.parameterAsString(parameters, "LABEL_FIELD", context)
    request = QgsFeatureRequest().setDestinationCrs(layer.crs(), context.transformContext())
    geometries, labels = {}, {}
    index = QgsSpatialIndex()
    for feature in source.getFeatures(request):
        geometry = feature.geometry()
        if geometry is None or geometry.isEmpty():
            continue
        geometries[feature.id()] = geometry
        labels[feature.id()] = str(feature[label_field]) if label_field and feature[label_field] is not None else ""
        index.addFeature(feature)
    if not geometries:
        raise AidXaiError("FEATURES has no features with geometry (is a filter or selection empty?).")

    def select(corners):
        footprint = QgsGeometry.fromPolygonXY([[QgsPointXY(x, y) for x, y in corners]])
        centre = footprint.centroid()
        hits = []
        for fid in sorted(index.intersects(footprint.boundingBox())):
            geometry = geometries[fid]
            if geometry.type() == POINT_GEOMETRY:
                if footprint.intersects(geometry):
                    hits.append((fid, labels[fid], geometry.distance(centre)))
            elif geometry.contains(centre):
                hits.append((fid, labels[fid], None))
        return hits

    return select
