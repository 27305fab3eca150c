"""Layer 1, GDAL side: the tile grid, raster reading and scaling, GeoTIFF/vector writers (no torch)."""
