"""Layer 3: tile pipelines (tiles → per-tile work → sinks) composing the layers below: classify, explain."""
