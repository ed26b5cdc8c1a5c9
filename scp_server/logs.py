"""The node's log: one event per line, whatever its text, and no library chatter per refused instance.

Log lines carry text a peer controls (UIDs, AE titles, decoder messages from
pydicom and pynetdicom). A newline in a SOP Instance UID must not become a
forged standalone line in the log, so every record, ours and our libraries',
has its control characters escaped, and the lines of a traceback are prefixed
so that none of them can pass for a record of its own. The C-STORE handler
logs one line per refused instance; the warnings pydicom and pynetdicom emit
about the same malformed values are kept out (they still reach the log at
ERROR and above).
"""

from __future__ import annotations

import logging

from n2d_dicom.uids import escape_controls

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Prefix of each traceback line: nothing a peer sends can start a line of its own.
CONTINUATION = "    | "
#: Libraries that repeat, per malformed instance, what the handler already says once.
CHATTY = ("pydicom", "py.warnings", "pynetdicom.utils", "pynetdicom.dimse_primitives")


class OneLineFormatter(logging.Formatter):
    """Formats a record as one line (tracebacks as prefixed lines below it), control characters escaped."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's API)
        record.message = escape_controls(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: object) -> str:  # noqa: N802
        text = super().formatException(ei)  # type: ignore[arg-type]
        return "\n".join(CONTINUATION + escape_controls(line) for line in text.splitlines())

    def formatStack(self, stack_info: str) -> str:  # noqa: N802
        return "\n".join(CONTINUATION + escape_controls(line) for line in stack_info.splitlines())


def configure_logging(level: str) -> None:
    """Log to stderr at ``level`` through :class:`OneLineFormatter`; warnings and libraries included."""
    handler = logging.StreamHandler()
    handler.setFormatter(OneLineFormatter(FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.captureWarnings(True)
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.ERROR)
