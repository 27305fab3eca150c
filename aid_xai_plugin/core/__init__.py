"""QGIS-free core of AID-XAI: everything here runs in plain Python (tests, scripts, notebooks).

Layers, lowest first; a module imports only from its own package and from lower layers
(tests/test_architecture.py checks this from the import graph):
  0  common/     errors, progress, atomic files, dependencies, palette
  1  geo/        grid, raster reading, writers, mosaic     ml/       model, classifier, training,
                 (GDAL)                                              randomised copies (torch)
     reports/    HTML reports
  2  explain/    partition-SHAP engines, faithfulness      data/     synthetic scenes and mosaics
                 measures (they run ml's classifiers)
  3  pipelines/  tiles → per-tile work → sinks: classify, explain, explanation quality
"""

__version__ = "0.4.0"
