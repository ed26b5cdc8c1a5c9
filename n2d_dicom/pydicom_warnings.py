"""pydicom's warnings, recorded while a file is read and quiet while checked values are copied.

``warnings.catch_warnings`` swaps process-wide state (the filters and
``showwarning``): two threads interleaving it (the node's worker threads, one
reading a series while another derives one) restore each other's state in the
wrong order and can leave a dead recorder installed for good. Every swap here
takes the same lock, so they take turns; pydicom's logger, which repeats each
warning, is held at ERROR meanwhile.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

_LOCK = threading.RLock()


@contextmanager
def _pydicom_logger_quiet() -> Iterator[None]:
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextmanager
def recorded() -> Iterator[list[warnings.WarningMessage]]:
    """Record every warning instead of showing it (a reader reports them as notes on the file)."""
    with _LOCK, _pydicom_logger_quiet(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


@contextmanager
def quiet_value_warnings() -> Iterator[None]:
    """Silence pydicom's value warnings (invalid value, value too long) while values are copied or written.

    The reader parsed every value of the source and reported the ones pydicom
    complained about; copying or writing them warns again about the same values,
    which would only repeat, on the user's terminal, what was reported.
    """
    with _LOCK, _pydicom_logger_quiet(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Invalid value for VR", category=UserWarning)
        warnings.filterwarnings("ignore", message="The value length", category=UserWarning)
        yield
