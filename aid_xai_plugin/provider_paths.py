"""Where the plugin's shared resources live (icon, QML styles, help, shipped models)."""

import os

PLUGIN_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESOURCES = os.path.join(PLUGIN_ROOT, "resources")
ICON_PATH = os.path.join(RESOURCES, "icons", "aid_xai.svg")
HELP_URL = "https://github.com/aid-xai/aid-xai-qgis/blob/main/README.md"
