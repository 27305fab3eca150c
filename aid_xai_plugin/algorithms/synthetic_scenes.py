"""aid_xai:synthetic_scenes — a labelled folder of procedural scenes to try training on."""

from qgis.core import QgsProcessingParameterFolderDestination, QgsProcessingParameterNumber

from ..core.data.synthetic import NIR_MODES, SYNTHETIC_CLASSES, make_scene_folder
from ..qgis_compat import NUMBER_INTEGER
from .base import AidXaiAlgorithm, choice_parameter

NIR_BAND_HELP = (
    "NIR_BAND adds a 4th, near-infrared band: 'physical' makes vegetation bright and water dark, so a "
    "model can learn NIR evidence; 'noise' gives each scene a random NIR level unrelated to the class, "
    "so NIR carries nothing and its explanations should show none. The RGB bands are the same in every mode."
)


class SyntheticScenesAlgorithm(AidXaiAlgorithm):
    algorithm_id = "synthetic_scenes"
    display_name = "Create synthetic scene dataset"
    group_id = "data"
    group_name = "Sample data"
    required_imports = ()
    help_text = (
        "Writes a labelled image folder in AID's folder-per-class layout with procedurally drawn scenes "
        f"({', '.join(SYNTHETIC_CLASSES)}). Use it to try Train/Evaluate in a minute, or as a sanity check "
        "of your set-up. The same seed gives the same images. "
        f"{NIR_BAND_HELP} With a NIR band the images are 4-band GeoTIFFs (band 4 named NIR) instead of PNGs."
    )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterNumber("PER_CLASS", "Images per class", NUMBER_INTEGER, 40, minValue=1, maxValue=10000))
        self.addParameter(QgsProcessingParameterNumber("SIZE", "Image size (pixels)", NUMBER_INTEGER, 64, minValue=24, maxValue=2048))
        self.addParameter(QgsProcessingParameterNumber("SEED", "Random seed", NUMBER_INTEGER, 0))
        self.addParameter(choice_parameter("NIR_BAND", "Near-infrared band (4th band)", NIR_MODES, "none"))
        # The destination parameter registers the OUTPUT output itself (a second addOutput would log
        # "Duplicate output OUTPUT registered" at every start); results still carry OUTPUT.
        self.addParameter(QgsProcessingParameterFolderDestination("OUTPUT", "Dataset folder"))

    def process(self, parameters, context, feedback, progress):
        folder = self.parameterAsString(parameters, "OUTPUT", context)
        count = make_scene_folder(
            folder,
            per_class=self.parameterAsInt(parameters, "PER_CLASS", context),
            size=self.parameterAsInt(parameters, "SIZE", context),
            seed=self.parameterAsInt(parameters, "SEED", context),
            progress=progress,
            nir=self.choice(parameters, "NIR_BAND", context),
        )
        feedback.pushInfo(f"Wrote {count} scenes in {len(SYNTHETIC_CLASSES)} class folders to {folder}")
        return {"OUTPUT": folder}
