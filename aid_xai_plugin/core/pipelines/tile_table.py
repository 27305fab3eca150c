"""The rows of the explained-tiles table: one per tile and explained class. The quality table starts
with the same columns, so both read (and are styled) alike."""

TILE_CLASS_FIELDS = [("tile_id", int), ("row", int), ("col", int), ("rank", int), ("class_name", str), ("probability", float), ("output_space", str)]
TILE_TABLE_FIELDS = TILE_CLASS_FIELDS + [
    ("output_value", float),  # f(tile) in the output space
    ("base_value", float),  # f(fully masked tile) in the output space
    ("shap_sum", float),  # Σ SHAP over the tile = output_value − base_value
    ("margin", float),
    ("label", str),
    ("rival_class", str),  # OUTPUT_SPACE contrast: the class this one is explained against (else empty)
    ("band_group", str),  # explained by band group: the group of this row ("all bands" when explained together)
    ("group_value", float),  # the group's exact Shapley value; its map sums to it (all bands: output_value − base_value)
]
ALL_BANDS = "all bands"


def class_columns(tile, rank, class_name, probability, output_space):
    """The TILE_CLASS_FIELDS values of a tile's `rank`-th explained class (rank from 1)."""
    return [tile.index, tile.row, tile.col, rank, class_name, float(probability), output_space]


def explained_rows(tile, explained, class_names, output_space, label, groups=None):
    """TILE_TABLE_FIELDS rows of an ExplainedTile, one per explained class in rank order (and per
    band group, with `groups`)."""
    for rank, class_index in enumerate(explained.class_indices):
        output, base = float(explained.output_values[rank]), float(explained.base_values[rank])
        rival = class_names[explained.rival_indices[rank]] if explained.rival_indices is not None else ""
        columns = class_columns(tile, rank + 1, class_names[class_index], explained.probabilities[rank], output_space)
        if groups is None:
            yield columns + [output, base, float(explained.values[..., rank].sum()), explained.margin, label, rival, ALL_BANDS, output - base]
            continue
        for position, group in enumerate(groups):
            shap_sum = float(explained.group_maps[..., rank, position].sum())
            yield columns + [output, base, shap_sum, explained.margin, label, rival, group.name, float(explained.group_values[rank, position])]
