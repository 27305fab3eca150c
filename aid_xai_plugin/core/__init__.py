"""QGIS-free core of AID-XAI: everything here runs in plain Python (tests, scripts, notebooks)."""
