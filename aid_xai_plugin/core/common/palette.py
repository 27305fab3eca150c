"""Class colours that mean something on a map: water blue, vegetation green, built-up red and grey,
bare land tan, sports and leisure orange/purple, transport grey-violet.

AID's 30 classes (and the synthetic scenes') have fixed colours; any other class name is matched by
keywords (`lake` → water blue, `orchard` → vegetation green…) or, failing that, gets a colour
derived from its name, so the same class has the same colour in every output and every run,
whatever the model's class order.
"""

import colorsys
import hashlib
import re

AID_COLORS = {
    # water
    "river": (31, 120, 200),
    "pond": (90, 170, 230),
    "port": (20, 70, 150),
    "beach": (140, 205, 215),
    "water": (31, 120, 200),
    # vegetation
    "forest": (20, 100, 40),
    "meadow": (150, 210, 100),
    "farmland": (190, 210, 90),
    "park": (70, 170, 70),
    "resort": (110, 190, 140),
    # bare land
    "bareland": (210, 180, 130),
    "desert": (235, 205, 150),
    "mountain": (150, 120, 90),
    # built-up: residential reds, commercial and industrial greys
    "denseresidential": (170, 20, 30),
    "mediumresidential": (215, 60, 60),
    "sparseresidential": (240, 130, 120),
    "residential": (215, 60, 60),
    "commercial": (120, 120, 130),
    "center": (150, 70, 90),
    "square": (180, 150, 160),
    "industrial": (90, 90, 95),
    "storagetanks": (60, 60, 70),
    "storagetank": (60, 60, 70),
    "church": (160, 90, 140),
    "school": (200, 110, 150),
    # sports and leisure
    "baseballfield": (235, 140, 40),
    "playground": (250, 180, 60),
    "stadium": (200, 100, 20),
    # transport
    "airport": (150, 140, 200),
    "railwaystation": (110, 90, 160),
    "parking": (170, 170, 175),
    "bridge": (130, 110, 100),
    "viaduct": (100, 80, 130),
}

# For class names outside AID: the first keyword found in the name decides the colour group.
KEYWORD_COLORS = [
    (("water", "river", "lake", "sea", "ocean", "pond", "reservoir", "harbo", "wetland", "canal"), AID_COLORS["river"]),
    (("forest", "tree", "wood", "vegetation", "meadow", "grass", "crop", "farm", "agri", "orchard", "park", "pasture", "vineyard"), AID_COLORS["park"]),
    (("bare", "desert", "sand", "soil", "rock", "mountain", "quarry"), AID_COLORS["bareland"]),
    (("residential", "house", "building", "urban", "settlement"), AID_COLORS["mediumresidential"]),
    (("industrial", "commercial", "factory", "tank", "solar"), AID_COLORS["industrial"]),
    (("road", "highway", "rail", "airport", "runway", "parking", "bridge"), AID_COLORS["parking"]),
]


def _key(name):
    return re.sub(r"[^a-z]", "", str(name).lower())


def class_color(name):
    """The RGB colour of class `name`: fixed for AID classes, by keyword or by name otherwise."""
    key = _key(name)
    if key in AID_COLORS:
        return AID_COLORS[key]
    for keywords, color in KEYWORD_COLORS:
        if any(word in key for word in keywords):
            return color
    digest = hashlib.sha256(key.encode()).digest()  # stable across runs, unlike hash()
    r, g, b = colorsys.hsv_to_rgb(digest[0] / 255.0, 0.55 + digest[1] / 255.0 * 0.3, 0.6 + digest[2] / 255.0 * 0.3)
    return (int(r * 255), int(g * 255), int(b * 255))


def class_colors(names):
    """RGB tuples for `names`, in order."""
    return [class_color(name) for name in names]
