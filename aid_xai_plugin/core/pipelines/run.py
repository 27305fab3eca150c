"""What every pipeline does around its tiles: check the outputs first, report progress, honour Cancel."""

from ..common.atomic import check_writable


def check_outputs(*paths):
    """Refuse unwritable output paths before any work (a run can take hours)."""
    for path in paths:
        if path:
            check_writable(path)


def with_progress(items, total, progress, count=lambda item: 1):
    """Yield `items`, checking Cancel before each and reporting the share of `total` done after each
    (`count(item)` units per item). A cancelled or failed run closes `items` (e.g. a reader thread)."""
    done = 0
    try:
        for item in items:
            if progress:
                progress.check_cancel()
            yield item
            done += count(item)
            if progress:
                progress.fraction(done / total)
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()
