"""Stable, distinguishable class colours (same class index → same colour in every output)."""

_BASE = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
    (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120),
    (152, 223, 138), (255, 152, 150), (197, 176, 213), (196, 156, 148), (247, 182, 210), (199, 199, 199),
    (219, 219, 141), (158, 218, 229), (57, 59, 121), (82, 84, 163), (107, 110, 207), (99, 121, 57),
    (140, 162, 82), (181, 207, 107), (140, 109, 49), (189, 158, 57), (231, 186, 82), (132, 60, 57),
]


def class_colors(count):
    """`count` RGB tuples; beyond the 30 base colours, hues are generated."""
    import colorsys

    colors = list(_BASE[:count])
    for index in range(len(colors), count):
        r, g, b = colorsys.hsv_to_rgb((index * 0.618034) % 1.0, 0.65, 0.85)
        colors.append((int(r * 255), int(g * 255), int(b * 255)))
    return colors
