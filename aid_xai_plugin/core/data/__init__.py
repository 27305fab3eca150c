"""Layer 2: synthetic scenes and mosaics with known labels (written with the geo layer)."""
