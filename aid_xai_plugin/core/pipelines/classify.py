"""Classify a raster tile by tile into a class raster, a probability raster and a tile layer.

Data flows once: tile windows → batches (read ahead in a thread) → the classify step → sinks, one
output row at a time, so memory stays flat however large the raster is. Every output is a sink in
one ExitStack: all appear at their paths when the run completes, none when it fails or is cancelled.
"""

import contextlib
import dataclasses

import numpy as np

from ..common.errors import AidXaiError
from ..common.failures import out_of_memory_as_error
from ..common.gdal_context import raising_gdal_errors
from ..common.palette import class_colors
from ..geo.vector import PolygonWriter
from ..geo.writers import GeoTiffSink, check_geotiff_path
from .execution import EXECUTION_MODES, DaskSettings, dask_client, job_key, run_ordered, step_for
from .run import check_outputs, with_progress
from .steps import ClassifyJob, ClassifyStep, classify_images
from .tiles import TileSource, chunks

CLASS_NODATA = 255
PROBABILITY_NODATA = -1.0


@dataclasses.dataclass
class ClassifyOutputs:
    class_raster: str = None
    probability_raster: str = None
    tile_layer: str = None
    raster_format: str = "GTiff"  # of the class and probability rasters: GTiff or COG (geo/writers.py)


@dataclasses.dataclass(frozen=True)
class ClassifyResult:
    tiles: int
    classified: int
    skipped: int  # below the minimum valid fraction
    rows: int
    cols: int
    tile_px: tuple  # (width, height) in source pixels
    stride_px: tuple
    class_counts: dict  # class name → tiles, for the classes that occur
    device: str
    class_names: list


def tile_layer_fields(k):
    fields = [("tile_id", int), ("row", int), ("col", int), ("class_name", str), ("probability", float)]
    for rank in range(1, k + 1):
        fields += [(f"class_{rank}", str), (f"prob_{rank}", float)]
    return fields + [("margin", float), ("entropy", float), ("valid_fraction", float)]


@raising_gdal_errors
def classify_raster(raster_path, model_path, options, outputs, k=4, batch_size=32, device="auto", progress=None, execution="local", dask=None):
    """Run the classifier over the raster, here or on a Dask cluster (`execution`, `dask`: a
    DaskSettings); returns a ClassifyResult (tile counts, class histogram)."""
    from osgeo import gdal

    if execution not in EXECUTION_MODES:
        raise AidXaiError(f"Unknown EXECUTION '{execution}'; use one of: {', '.join(EXECUTION_MODES)}.")
    for path in (outputs.class_raster, outputs.probability_raster):
        if path:
            check_geotiff_path(path, outputs.raster_format)
    source = TileSource(raster_path, model_path, options, device)
    check_outputs(outputs.class_raster, outputs.probability_raster, outputs.tile_layer)
    grid, classifier = source.grid, source.classifier
    names = classifier.class_names
    k = max(1, min(k, len(names)))
    tags = source.provenance()
    cells = (grid.cols, grid.rows)
    with contextlib.ExitStack() as sinks:
        sinks.enter_context(out_of_memory_as_error(f"classifying on {classifier.device}", f"BATCH_SIZE (now {batch_size}) or TILE_SIZE"))
        classes = probabilities = table = None
        if outputs.class_raster:
            classes = sinks.enter_context(
                GeoTiffSink(outputs.class_raster, *cells, 1, gdal.GDT_Byte, grid.cell_geotransform(), source.projection, CLASS_NODATA, ["class"], tags, outputs.raster_format, "MODE")
            )
            _describe_classes(classes.dataset.GetRasterBand(1), names)
        if outputs.probability_raster:
            probabilities = sinks.enter_context(
                GeoTiffSink(outputs.probability_raster, *cells, len(names), gdal.GDT_Float32, grid.cell_geotransform(), source.projection, PROBABILITY_NODATA, names, tags, outputs.raster_format, "AVERAGE")
            )
        if outputs.tile_layer:
            table = sinks.enter_context(PolygonWriter(outputs.tile_layer, source.projection, tile_layer_fields(k)))

        class_row = np.full((1, 1, grid.cols), CLASS_NODATA, np.uint8)
        probability_row = np.full((len(names), 1, grid.cols), PROBABILITY_NODATA, np.float32)
        histogram = np.zeros(len(names), int)
        skipped = 0
        job = ClassifyJob(source.inputs, model_path, classifier.device, k, batch_size, model_sha256=classifier.sha256)
        batches = _classified_batches(source, job, execution, dask or DaskSettings(), progress)
        for batch, result in with_progress(batches, len(grid), progress, count=lambda item: len(item[0])):
            results = iter(range(len(result.probabilities) if result else 0))
            for tile, fraction, usable in batch:
                if not usable:
                    skipped += 1
                else:
                    i = next(results)
                    best = result.ranks[i, 0]
                    histogram[best] += 1
                    class_row[0, 0, tile.col] = best
                    probability_row[:, 0, tile.col] = result.probabilities[i]
                    if table:
                        values = [tile.index, tile.row, tile.col, names[best], float(result.probabilities[i, best])]
                        for j in result.ranks[i]:
                            values += [names[j], float(result.probabilities[i, j])]
                        table.add(values + [float(result.margins[i]), float(result.entropies[i]), fraction], grid.footprint(tile))
                if tile.col == grid.cols - 1:
                    for sink, row in ((classes, class_row), (probabilities, probability_row)):
                        if sink is not None:
                            sink.write(row, 0, tile.row)
                    class_row.fill(CLASS_NODATA)
                    probability_row.fill(PROBABILITY_NODATA)
    result = ClassifyResult(
        tiles=len(grid),
        classified=int(histogram.sum()),
        skipped=skipped,
        rows=grid.rows,
        cols=grid.cols,
        tile_px=(grid.tile_w, grid.tile_h),
        stride_px=(grid.stride_x, grid.stride_y),
        class_counts={names[i]: int(n) for i, n in enumerate(histogram) if n},
        device=classifier.device,
        class_names=names,
    )
    if progress:
        progress.log(f"Classified {result.classified} of {result.tiles} tiles ({skipped} skipped: below the minimum valid fraction) on {classifier.device}.")
    return result


def _classified_batches(source, job, execution, dask, progress):
    """Yield ([(tile, valid fraction, usable)], ClassifiedImages of the usable tiles or None) per batch
    of tiles in grid order: read ahead in a thread and classified here, or read and classified by
    Dask workers (a batch per task) and handed back in order."""
    if execution == "local":
        for batch in source.batches(source.grid.tiles(), job.batch_size):
            kept = [image for _, image, _ in batch if image is not None]
            result = classify_images(source.classifier, np.stack(kept), job.k, job.batch_size) if kept else None
            yield [(tile, fraction, image is not None) for tile, image, fraction in batch], result
        return
    batches = list(chunks(source.grid.tiles(), job.batch_size))
    with dask_client(dask, progress) as client:
        key = job_key(job)
        tasks = [(key, job, dask.threads, [tile.window for tile in batch]) for batch in batches]
        for batch, (fractions, usable, result) in zip(batches, run_ordered(client, classify_on_worker, tasks, progress)):
            yield list(zip(batch, fractions, usable)), result


def classify_on_worker(key, job, threads, windows):
    """The classify step of one batch of tile windows, run by a Dask worker: (valid fractions, usable
    flags, ClassifiedImages of the usable tiles or None)."""
    return step_for(key, job, ClassifyStep, threads)(windows)


def _describe_classes(band, names):
    """Class names as GDAL category names plus a colour table (readable by any GDAL client)."""
    from osgeo import gdal

    band.SetCategoryNames(list(names))
    table = gdal.ColorTable()
    for index, (r, g, b) in enumerate(class_colors(names)):
        table.SetColorEntry(index, (r, g, b, 255))
    band.SetRasterColorTable(table)
    band.SetRasterColorInterpretation(gdal.GCI_PaletteIndex)
