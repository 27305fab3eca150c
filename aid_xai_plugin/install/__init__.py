"""Installing the plugin's Python packages (requirements.txt) for the Python QGIS runs, into a folder
the plugin owns in the user's QGIS profile, one per Python ABI, without touching QGIS's own packages.

Used by the dependency dialog (gui/) and headless: `python -m aid_xai_plugin.install`. QGIS-free and
Qt-free, so the same code runs in the dialog's background task and on a server.
"""
