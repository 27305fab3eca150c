"""Layer 0: what every other layer uses — errors, progress/cancel, atomic files, dependencies, palette."""
