"""Ground metres in any CRS: how many metres on the ellipsoid one map unit spans at a point.

A tile size in metres means ground metres at one point (the processing extent's centre): in a
geographic CRS a degree of longitude is 111 km × cos(latitude), in Web Mercator a map "metre" is
cos(latitude) ground metres, in UTM it is within 0.1 % of one. One conversion for every CRS: the
two map axes are stepped from the point, the steps are transformed to the CRS's own geographic
CRS, and their length on its ellipsoid is the arc element ds² = (M·dφ)² + (N·cos φ·dλ)², exact to
(step / Earth radius)² ≈ 2.5e-10 for the 100-metre steps used here.
"""

import math

from ..common.errors import AidXaiError
from ..common.gdal_context import gdal_error_details, raising_gdal_errors

STEP_METRES = 100.0  # half the central-difference step: far above PROJ's inverse-projection tolerance, far below curvature


@raising_gdal_errors
def same_crs(first, second):
    """Whether two CRS definitions (WKT, 'EPSG:n') are the same CRS (a geographic one in either axis order); two empty ones are."""
    from osgeo import osr

    if not first or not second:
        return not first and not second
    return bool(_spatial_reference(first, osr).IsSame(_spatial_reference(second, osr)))


@raising_gdal_errors
def metres_per_map_unit(crs, point):
    """(metres along the map's x axis, metres along its y axis) on the ground per map unit of `crs`
    (WKT or 'EPSG:n') at `point` (x, y in `crs`)."""
    from osgeo import osr

    if not crs:
        raise AidXaiError(
            "The raster has no coordinate reference system, so a tile size in metres cannot be converted to pixels; "
            "assign the layer its CRS in QGIS (Layer Properties → Source) or give the tile size in pixels or map units."
        )
    srs = _spatial_reference(crs, osr)
    if srs.IsLocal():  # an engineering CRS: its unit is all there is to know
        return (srs.GetLinearUnits(), srs.GetLinearUnits())
    geographic = srs.CloneGeogCS()
    geographic.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    radians_per_unit = geographic.GetAngularUnits()
    if srs.IsGeographic():
        step = STEP_METRES / geographic.GetSemiMajor() / srs.GetAngularUnits()
    else:
        step = STEP_METRES / srs.GetLinearUnits()
    to_geographic = osr.CoordinateTransformation(srs, geographic)
    a, b = geographic.GetSemiMajor(), geographic.GetSemiMinor()
    x, y = point
    try:
        ends = [to_geographic.TransformPoint(px, py)[:2] for px, py in ((x - step, y), (x + step, y), (x, y - step), (x, y + step))]
    except RuntimeError as error:
        raise AidXaiError(f"Cannot measure metres at ({x:g}, {y:g}) in the raster's CRS: {gdal_error_details(error)}. Draw the processing extent where the CRS is defined, or give the tile size in pixels or map units.") from error
    return (
        _arc_length(ends[0], ends[1], radians_per_unit, a, b) / (2 * step),
        _arc_length(ends[2], ends[3], radians_per_unit, a, b) / (2 * step),
    )


def _spatial_reference(crs, osr):
    srs = osr.SpatialReference()
    try:
        srs.SetFromUserInput(crs)
    except RuntimeError as error:
        raise AidXaiError(f"The raster's CRS could not be read ({gdal_error_details(error)}); assign the layer a valid CRS in QGIS.") from error
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


def _arc_length(start, end, radians_per_unit, a, b):
    """Length on the ellipsoid (a, b) of a short step between two (longitude, latitude) points."""
    (lon0, lat0), (lon1, lat1) = start, end
    latitude = (lat0 + lat1) / 2 * radians_per_unit
    e2 = 1 - (b / a) ** 2
    w = math.sqrt(1 - e2 * math.sin(latitude) ** 2)
    meridian, normal = a * (1 - e2) / w**3, a / w  # radii of curvature M and N
    d_lat = (lat1 - lat0) * radians_per_unit
    d_lon = ((lon1 - lon0) * radians_per_unit + math.pi) % (2 * math.pi) - math.pi  # a step across the antimeridian
    return math.hypot(meridian * d_lat, normal * math.cos(latitude) * d_lon)
