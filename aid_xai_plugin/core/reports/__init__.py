"""Layer 1: HTML reports (evaluation, explanations) drawn with matplotlib's object API."""
