"""The start of every pipeline: raster + model + tile grid → model-ready tiles.

`TileSource` opens the raster and the model once in the process that runs the pipeline, builds the
grid and the band scaling, and hands out `TileInputs`: plain values (paths, bands, scaling) from
which a `TileReader` in any process can read the same model-ready tiles. The valid-pixel rule lives
in `TileReader.read`, once for classify and explain.
"""

import dataclasses

from ..common.errors import AidXaiError
from ..common.gdal_context import raising_gdal_errors
from ..geo.grid import make_grid, tile_size_in_pixels
from ..geo.ground import metres_per_map_unit, same_crs
from ..geo.raster import BandScaling, band_scaling, check_bands, open_raster, parse_bands, read_tile
from ..geo.remote import forget_cached
from ..ml.classifier import Classifier
from ..ml.model_file import load_model
from ..ml.preprocess import resize_to_input

DEFAULT_MIN_VALID_FRACTION = 0.5


@dataclasses.dataclass
class TilingOptions:
    tile_size: float = 0  # 0 → the model's input size, in source pixels
    tile_unit: str = "pixels"  # pixels | map units | metres
    stride: float = 0  # 0 → tile size (no overlap); same unit as tile_size
    extent: tuple = None  # (xmin, ymin, xmax, ymax) in the raster's CRS
    crs: str = ""  # the raster's CRS (WKT, 'EPSG:n') when the caller knows better than the file (one assigned in QGIS); empty: the file's
    metres_at: tuple = None  # (x, y) where sizes in metres are ground metres; None: the extent's centre, else the raster's
    bands: str = ""  # "1,2,3"; empty → the model's band order
    scaling: str = "auto"
    min_valid_fraction: float = DEFAULT_MIN_VALID_FRACTION


@dataclasses.dataclass(frozen=True)
class TileInputs:
    """What reading model-ready tiles needs, as plain values (no GDAL handle): picklable."""

    raster_path: str
    bands: tuple
    scaling: BandScaling
    input_size: int
    min_valid_fraction: float

    @property
    def model_input_shape(self):
        """H×W×C of the tiles as the model sees them."""
        return (self.input_size, self.input_size, len(self.bands))


class TileReader:
    """Reads tile windows of the raster as the model sees them."""

    def __init__(self, inputs, dataset=None):
        self.inputs = inputs
        self.dataset = dataset if dataset is not None else open_raster(inputs.raster_path)

    def model_input(self, window):
        """(model-input image size×size×C in [0, 1], valid source pixels h×w bool)."""
        image, valid = read_tile(self.dataset, list(self.inputs.bands), window, self.inputs.scaling)
        return resize_to_input(image, self.inputs.input_size), valid

    def read_masked(self, window):
        """(image, valid source pixels, their fraction); the image is None when the tile has too few
        valid pixels to use."""
        image, valid = self.model_input(window)
        fraction = float(valid.mean())
        usable = fraction >= self.inputs.min_valid_fraction and fraction > 0
        return (image if usable else None), valid, fraction

    def read(self, window):
        """(image or None as in read_masked, fraction of valid source pixels)."""
        image, _, fraction = self.read_masked(window)
        return image, fraction

    def drop_cache(self):
        """Forget the source blocks GDAL cached (tiles come row by row: rows above are done)."""
        self.dataset.FlushCache()


class TileSource:
    """Opens the raster and model once; the grid, the classifier and a reader for this process."""

    def __init__(self, raster_path, model_path, options, device="auto"):
        self.options = options
        forget_cached(raster_path)  # a raster on the network as its server has it now, not as an earlier run saw it
        dataset = open_raster(raster_path)
        self.classifier = Classifier(load_model(model_path), device)
        info = self.classifier.info
        self.bands = parse_bands(options.bands, info.bands)
        check_bands(dataset, self.bands, info.num_bands)
        if not 0.0 <= options.min_valid_fraction <= 1.0:
            raise AidXaiError("MIN_VALID_FRACTION must be between 0 and 1.")
        geotransform = dataset.GetGeoTransform()
        size = (dataset.RasterXSize, dataset.RasterYSize)
        # A CRS assigned to the layer in QGIS places the file's coordinates (the extent and features are
        # in it): the outputs carry it; the file's own definition when both are the same CRS.
        file_crs = dataset.GetProjection()
        self.projection = options.crs if options.crs and not same_crs(options.crs, file_crs) else file_crs
        tile, stride = tile_and_stride_pixels(options, geotransform, self.projection, options.metres_at or _centre(options.extent, geotransform, size), info.input_size)
        self.grid = make_grid(geotransform, size, tile, stride, options.extent)
        scaling = band_scaling(dataset, self.bands, options.scaling, self.grid.window)
        self.inputs = TileInputs(raster_path, tuple(self.bands), scaling, info.input_size, options.min_valid_fraction)
        self.reader = TileReader(self.inputs, dataset)

    def batches(self, tiles, batch_size, masked=False):
        """Yield lists of (tile, image, valid_fraction) — with `masked`, (tile, image, valid source
        pixels, valid_fraction); tiles with too few valid pixels come through with image None so
        callers can count and mark them. The next batch is read in a background
        thread while the caller runs the model on this one (GDAL releases the GIL while it reads).

        Tiles come row by row, so when a new tile row starts, the source blocks GDAL cached for the
        rows above are dropped: memory stays flat however large the raster (an overlapping stride
        re-reads at most the shared blocks)."""
        from concurrent.futures import ThreadPoolExecutor

        current_row = [None]

        @raising_gdal_errors  # GDAL's exception mode is per thread: set it in the reader's too
        def read(chunk):
            batch = []
            for tile in chunk:
                if tile.row != current_row[0]:
                    self.reader.drop_cache()
                    current_row[0] = tile.row
                batch.append((tile, *(self.reader.read_masked if masked else self.reader.read)(tile.window)))
            return batch

        with ThreadPoolExecutor(max_workers=1) as reader:
            pending = None
            for chunk in chunks(tiles, batch_size):
                upcoming = reader.submit(read, chunk)
                if pending is not None:
                    yield pending.result()
                pending = upcoming
            if pending is not None:
                yield pending.result()

    def provenance(self):
        from .. import __version__

        grid = self.grid
        return {
            "AIDXAI_PLUGIN_VERSION": __version__,
            "AIDXAI_MODEL_SHA256": self.classifier.sha256,
            "AIDXAI_MODEL_CLASSES": ",".join(self.classifier.class_names),
            "AIDXAI_TILE_SIZE_PX": f"{grid.tile_w}x{grid.tile_h}",
            "AIDXAI_STRIDE_PX": f"{grid.stride_x}x{grid.stride_y}",
            "AIDXAI_BANDS": ",".join(map(str, self.bands)),
            "AIDXAI_SCALING": self.inputs.scaling.description,
            "AIDXAI_MIN_VALID_FRACTION": self.options.min_valid_fraction,
        }


def tile_and_stride_pixels(options, geotransform, crs, metres_at, default_size):
    """((w, h), (x, y) or None) in pixels of `geotransform` for the tile size and stride of `options`
    (tile size 0: `default_size` pixels; stride 0: None, the tile size), sizes in metres taken as ground
    metres at `metres_at` in `crs`. The one conversion for files and for layers read through QGIS."""
    ground = metres_per_map_unit(crs, metres_at) if options.tile_unit == "metres" and (options.tile_size or options.stride) else None
    tile = tile_size_in_pixels(options.tile_size, options.tile_unit, geotransform, ground) if options.tile_size else (default_size, default_size)
    stride = tile_size_in_pixels(options.stride, options.tile_unit, geotransform, ground) if options.stride else None
    return tile, stride


def _centre(extent, geotransform, size):
    """The centre of the extent, or of the raster when there is none."""
    if extent is not None:
        return ((extent[0] + extent[2]) / 2, (extent[1] + extent[3]) / 2)
    g, (width, height) = geotransform, size
    return (g[0] + width / 2 * g[1] + height / 2 * g[2], g[3] + width / 2 * g[4] + height / 2 * g[5])


def chunks(items, size):
    """Lists of `size` consecutive items (the last one shorter)."""
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
