"""Polygon layers written with OGR, feature by feature, under a temporary name.

The format is the one the file name says: .gpkg (GeoPackage), .geojson/.json (GeoJSON) or .shp
(shapefile, whose field names OGR cuts to 10 characters); anything else is a clear error.
"""

import os
import sys

from ..common.atomic import atomic_output
from ..common.errors import AidXaiError
from ..common.gdal_context import raising_gdal_errors
from .writers import writing

_OGR_TYPES = {int: "OFTInteger64", float: "OFTReal", str: "OFTString"}
VECTOR_DRIVERS = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".json": "GeoJSON", ".shp": "ESRI Shapefile"}


def vector_driver(path):
    """OGR driver name for the output `path`, from its extension."""
    extension = os.path.splitext(path)[1].lower()
    if extension not in VECTOR_DRIVERS:
        raise AidXaiError(f"Cannot write the vector output '{path}': use a .gpkg, .geojson or .shp file name.")
    return VECTOR_DRIVERS[extension]


class PolygonWriter:
    """Open with a path, CRS (WKT or 'EPSG:n') and [(name, python type)]; `add(values, corners)`.
    Use it inside `gdal_exceptions()` (the pipelines and `write_polygons` run in one), so a failing
    write raises instead of returning an error code."""

    def __init__(self, path, crs, fields, layer_name=None):
        from osgeo import ogr, osr

        self._ogr = ogr
        self.path = path
        driver_name = vector_driver(path)
        self._atomic = atomic_output(path)
        temporary = self._atomic.__enter__()
        self._dataset = self._layer = None
        try:
            with writing(path):
                self._dataset = ogr.GetDriverByName(driver_name).CreateDataSource(temporary)
                if self._dataset is None:
                    raise RuntimeError(f"OGR could not create '{temporary}'")
                srs = osr.SpatialReference()
                if crs:
                    srs.SetFromUserInput(crs)
                srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
                name = layer_name or os.path.splitext(os.path.basename(path))[0]
                self._layer = self._dataset.CreateLayer(name, srs if crs else None, ogr.wkbPolygon)
                for field_name, python_type in fields:
                    self._layer.CreateField(ogr.FieldDefn(field_name, getattr(ogr, _OGR_TYPES[python_type])))
                self._transactions = bool(self._layer.TestCapability(ogr.OLCTransactions))  # GeoPackage: one commit
                if self._transactions:
                    self._layer.StartTransaction()
        except BaseException:
            self._layer = self._dataset = None
            self._atomic.__exit__(*sys.exc_info())
            raise

    def add(self, values, corners):
        """`corners`: polygon ring as (x, y) pairs, or a (xmin, ymin, xmax, ymax) box."""
        ogr = self._ogr
        if len(corners) == 4 and not hasattr(corners[0], "__len__"):
            xmin, ymin, xmax, ymax = corners
            corners = [(xmin, ymax), (xmax, ymax), (xmax, ymin), (xmin, ymin)]
        ring = ogr.Geometry(ogr.wkbLinearRing)
        for x, y in list(corners) + [corners[0]]:
            ring.AddPoint_2D(float(x), float(y))
        polygon = ogr.Geometry(ogr.wkbPolygon)
        polygon.AddGeometry(ring)
        feature = ogr.Feature(self._layer.GetLayerDefn())
        for index, value in enumerate(values):  # by position: a shapefile may have shortened the names
            feature.SetField(index, value.item() if hasattr(value, "item") else value)
        feature.SetGeometry(polygon)
        with writing(self.path):
            self._layer.CreateFeature(feature)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback):
        self.close(success=exc_type is None)

    def close(self, success=True):
        if self._dataset is not None:
            if success:
                try:  # a full disk may show only at the commit or when the file is closed
                    with writing(self.path) as messages:
                        if self._transactions:
                            self._layer.CommitTransaction()
                        self._layer = None
                        self._dataset = None
                        if messages.errors:
                            raise RuntimeError(messages.errors[-1])
                except AidXaiError:
                    self._layer = self._dataset = None
                    self._atomic.__exit__(*sys.exc_info())
                    raise
            self._layer = None
            self._dataset = None
            if success:
                self._atomic.__exit__(None, None, None)
            else:
                self._atomic.__exit__(RuntimeError, RuntimeError(), None)


@raising_gdal_errors
def write_polygons(path, crs, fields, records):
    """Write [(values, corners)] as a polygon layer in one go."""
    with PolygonWriter(path, crs, fields) as writer:
        for values, corners in records:
            writer.add(values, corners)
