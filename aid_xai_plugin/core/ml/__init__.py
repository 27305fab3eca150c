"""Layer 1, torch side: the Net, model files, the classifier, datasets, training and metrics (no GDAL)."""
