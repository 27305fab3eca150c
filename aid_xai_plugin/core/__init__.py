"""QGIS-free core of AID-XAI: everything here runs in plain Python (tests, scripts, notebooks).

Layers, lowest first; a module imports only from its own package and from lower layers
(tests/test_architecture.py checks this from the import graph):
  0  common/     errors, progress, atomic files, dependencies, palette
  1  geo/        grid, raster reading, writers (GDAL)      ml/       model, classifier, training (torch)
     explain/    partition-SHAP engines                    reports/  HTML reports
  2  data/       synthetic scenes and mosaics
  3  pipelines/  tiles → per-tile work → sinks: classify, explain
"""

__version__ = "0.2.0"
