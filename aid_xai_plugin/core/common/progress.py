"""A QGIS-free progress/cancel/log channel, so core functions report the same way everywhere."""

from .errors import Cancelled


class Progress:
    """Wraps optional callbacks; QGIS's feedback object is adapted to this in the Processing layer."""

    def __init__(self, set_progress=None, is_canceled=None, log=None):
        self._set_progress = set_progress
        self._is_canceled = is_canceled
        self._log = log

    def fraction(self, done):
        """Report progress as a fraction 0..1 of the whole job."""
        if self._set_progress is not None:
            self._set_progress(100.0 * min(max(done, 0.0), 1.0))

    def check_cancel(self):
        """Raise Cancelled when the user asked to stop; call between batches."""
        if self._is_canceled is not None and self._is_canceled():
            raise Cancelled()

    def log(self, message):
        if self._log is not None:
            self._log(message)

    def part(self, start, end):
        """A Progress whose 0..1 maps onto [start, end] of this one (for multi-stage jobs)."""
        return Progress(
            lambda pct: self.fraction(start + (end - start) * pct / 100.0),
            self._is_canceled,
            self._log,
        )
