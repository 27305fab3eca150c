"""Partition-SHAP explanations of one model-input tile, behind a small engine interface."""
