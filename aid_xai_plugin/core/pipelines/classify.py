"""Classify a raster tile by tile into a class raster, a probability raster and a tile layer.

Data flows once: tile windows → batches → model → one output row at a time, so memory stays flat
however large the raster is. Outputs are written under temporary names and only appear at their
paths when complete.
"""

import contextlib
import dataclasses

import numpy as np

from ..common.atomic import atomic_output, check_writable
from ..common.palette import class_colors
from ..geo.gdal_context import raising_gdal_errors
from ..geo.raster import create_geotiff
from ..geo.vector import PolygonWriter
from .tiles import TileSource, top_k

CLASS_NODATA = 255
PROBABILITY_NODATA = -1.0


@dataclasses.dataclass
class ClassifyOutputs:
    class_raster: str = None
    probability_raster: str = None
    tile_layer: str = None


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


def confidence(probabilities):
    """Margin (p1 − p2) and entropy normalised to [0, 1] per row: low margin / high entropy = unsure."""
    ordered = -np.sort(-probabilities, axis=1)
    margin = ordered[:, 0] - (ordered[:, 1] if probabilities.shape[1] > 1 else 0.0)
    p = np.clip(probabilities, 1e-12, 1.0)
    entropy = -(p * np.log(p)).sum(axis=1) / np.log(max(probabilities.shape[1], 2))
    return margin, entropy


@raising_gdal_errors
def classify_raster(raster_path, model_path, options, outputs, k=4, batch_size=32, device="auto", progress=None):
    """Run the classifier over the raster; returns a summary (tile counts, class histogram)."""
    from osgeo import gdal

    source = TileSource(raster_path, model_path, options, device)
    for path in (outputs.class_raster, outputs.probability_raster, outputs.tile_layer):
        if path:
            check_writable(path)
    grid, classifier = source.grid, source.classifier
    names = classifier.class_names
    k = max(1, min(k, len(names)))
    tags = source.provenance()
    cell_transform = grid.cell_geotransform()
    with contextlib.ExitStack() as stack:
        class_dataset = class_band = probability_dataset = tile_writer = None
        if outputs.class_raster:
            temporary = stack.enter_context(atomic_output(outputs.class_raster))
            class_dataset = create_geotiff(temporary, grid.cols, grid.rows, 1, gdal.GDT_Byte, cell_transform, source.projection, CLASS_NODATA, ["class"], tags)
            class_band = class_dataset.GetRasterBand(1)
            _describe_classes(class_band, names)
        if outputs.probability_raster:
            temporary = stack.enter_context(atomic_output(outputs.probability_raster))
            probability_dataset = create_geotiff(temporary, grid.cols, grid.rows, len(names), gdal.GDT_Float32, cell_transform, source.projection, PROBABILITY_NODATA, names, tags)
        if outputs.tile_layer:
            tile_writer = PolygonWriter(outputs.tile_layer, source.projection, tile_layer_fields(k))

        class_row = np.full(grid.cols, CLASS_NODATA, np.uint8)
        probability_row = np.full((len(names), grid.cols), PROBABILITY_NODATA, np.float32)
        histogram = np.zeros(len(names), int)
        done = skipped = 0
        try:
            for batch in source.batches(grid.tiles(), batch_size):
                if progress:
                    progress.check_cancel()
                kept = [item for item in batch if item[1] is not None]
                probabilities = classifier.predict_probabilities(np.stack([item[1] for item in kept]), batch_size) if kept else np.zeros((0, len(names)))
                ranks = top_k(probabilities, k)
                margins, entropies = confidence(probabilities) if kept else ((), ())
                results = iter(range(len(kept)))
                for tile, image, fraction in batch:
                    if image is None:
                        skipped += 1
                    else:
                        i = next(results)
                        best = ranks[i, 0]
                        histogram[best] += 1
                        class_row[tile.col] = best
                        probability_row[:, tile.col] = probabilities[i]
                        if tile_writer:
                            values = [tile.index, tile.row, tile.col, names[best], float(probabilities[i, best])]
                            for j in ranks[i]:
                                values += [names[j], float(probabilities[i, j])]
                            tile_writer.add(values + [float(margins[i]), float(entropies[i]), fraction], grid.footprint(tile))
                    if tile.col == grid.cols - 1:
                        if class_band is not None:
                            class_band.WriteArray(class_row[None, :], 0, tile.row)
                        if probability_dataset is not None:
                            for band in range(len(names)):
                                probability_dataset.GetRasterBand(band + 1).WriteArray(probability_row[band][None, :], 0, tile.row)
                        class_row.fill(CLASS_NODATA)
                        probability_row.fill(PROBABILITY_NODATA)
                done += len(batch)
                if progress:
                    progress.fraction(done / len(grid))
        except BaseException:
            if tile_writer:
                tile_writer.close(success=False)
            class_band = None
            class_dataset = probability_dataset = None  # closed now, so GDAL writes no sidecar after the cleanup
            raise
        if tile_writer:
            tile_writer.close()
        class_band = None
        class_dataset = probability_dataset = None  # closes the GeoTIFFs before they move into place
    summary = ClassifyResult(
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
        progress.log(f"Classified {summary.classified} of {summary.tiles} tiles ({skipped} skipped: below the minimum valid fraction) on {classifier.device}.")
    return summary


def _describe_classes(band, names):
    """Class names as GDAL category names plus a colour table (readable by any GDAL client)."""
    from osgeo import gdal

    band.SetCategoryNames(list(names))
    table = gdal.ColorTable()
    for index, (r, g, b) in enumerate(class_colors(len(names))):
        table.SetColorEntry(index, (r, g, b, 255))
    band.SetRasterColorTable(table)
    band.SetRasterColorInterpretation(gdal.GCI_PaletteIndex)
