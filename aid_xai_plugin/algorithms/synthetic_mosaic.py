"""aid_xai:synthetic_mosaic — a georeferenced GeoTIFF of synthetic scenes with a ground-truth layer."""

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsProcessingParameterCrs,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterVectorDestination,
)

from ..core.common.atomic import atomic_output
from ..core.common.errors import AidXaiError
from ..core.data.synthetic import NIR_MODES, make_scene_mosaic
from ..core.geo.vector import write_polygons
from ..qgis_compat import NUMBER_DOUBLE, NUMBER_INTEGER
from .base import AidXaiAlgorithm, choice_parameter, open_raster_output
from .synthetic_scenes import NIR_BAND_HELP


class SyntheticMosaicAlgorithm(AidXaiAlgorithm):
    algorithm_id = "synthetic_mosaic"
    display_name = "Create synthetic scene mosaic"
    group_id = "data"
    group_name = "Sample data"
    required_imports = ()
    help_text = (
        "Writes a north-up, georeferenced RGB GeoTIFF made of rows × columns synthetic scenes, and a "
        "GeoPackage of the scene footprints with their true class (field 'label'). Classify it with a "
        "model trained on synthetic scenes of the same size to check the whole chain; explain tiles by "
        "choosing features of the truth layer. "
        f"{NIR_BAND_HELP} Band 4 of the GeoTIFF is then named NIR."
    )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterNumber("ROWS", "Rows of scenes", NUMBER_INTEGER, 4, minValue=1, maxValue=500))
        self.addParameter(QgsProcessingParameterNumber("COLUMNS", "Columns of scenes", NUMBER_INTEGER, 6, minValue=1, maxValue=500))
        self.addParameter(QgsProcessingParameterNumber("SCENE_SIZE", "Scene size (pixels)", NUMBER_INTEGER, 64, minValue=24, maxValue=2048))
        self.addParameter(QgsProcessingParameterNumber("PIXEL_SIZE", "Pixel size (map units)", NUMBER_DOUBLE, 2.0, minValue=1e-9))
        self.addParameter(QgsProcessingParameterCrs("CRS", "CRS (a projected CRS in metres; origin 500000, 5600000)", "EPSG:32633", optional=True))
        self.addParameter(QgsProcessingParameterNumber("SEED", "Random seed", NUMBER_INTEGER, 0))
        self.addParameter(choice_parameter("NIR_BAND", "Near-infrared band (4th band)", NIR_MODES, "none"))
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT", "Mosaic"))
        self.addParameter(QgsProcessingParameterVectorDestination("TRUTH", "Ground-truth scene footprints", optional=True, createByDefault=True))

    def process(self, parameters, context, feedback, progress):
        crs = self.parameterAsCrs(parameters, "CRS", context)
        if not crs.isValid():
            crs = QgsCoordinateReferenceSystem("EPSG:32633")
        epsg = crs.postgisSrid()
        if not crs.isValid() or crs.isGeographic() or not epsg:
            raise AidXaiError("CRS must be a projected CRS with an EPSG code (e.g. EPSG:32633), since the mosaic's origin is given in metres.")
        output = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        truth_path = self.optional_output(parameters, "TRUTH", context, layer=True)
        with atomic_output(output) as temporary:
            truth = make_scene_mosaic(
                temporary,
                rows=self.parameterAsInt(parameters, "ROWS", context),
                cols=self.parameterAsInt(parameters, "COLUMNS", context),
                scene_px=self.parameterAsInt(parameters, "SCENE_SIZE", context),
                pixel_size=self.parameterAsDouble(parameters, "PIXEL_SIZE", context),
                epsg=epsg,
                seed=self.parameterAsInt(parameters, "SEED", context),
                nir=self.choice(parameters, "NIR_BAND", context),
            )
        results = {"OUTPUT": output}
        open_raster_output(context, output)
        if truth_path:
            fields = [("scene_id", int), ("row", int), ("col", int), ("label", str)]
            records = [((index, t["row"], t["col"], t["class_name"]), t["bounds"]) for index, t in enumerate(truth)]
            write_polygons(truth_path, f"EPSG:{epsg}", fields, records)
            results["TRUTH"] = truth_path
        feedback.pushInfo(f"Wrote {len(truth)} scenes to {output}")
        return results
