"""QGIS entry point of the deployed plugin folder; the code lives in the aid_xai_plugin package."""


def classFactory(iface):  # noqa: N802 (QGIS's name)
    from .aid_xai_plugin import classFactory as package_class_factory

    return package_class_factory(iface)
