"""Layer 1: partition-SHAP engines for one model-input tile (shap reference, exact, fast incremental)."""
