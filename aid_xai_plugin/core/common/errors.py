"""Errors the core raises for bad input; the Processing layer turns them into QgsProcessingException."""


class AidXaiError(ValueError):
    """A problem with the user's input, with a message that names the problem and the fix."""


class Cancelled(Exception):
    """The user cancelled; whatever was being written has been removed."""
