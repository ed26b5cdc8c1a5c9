"""Which UIDs are valid: one rule for the node (what it stores) and the command line (what it derives from).

PS3.5 section 9.1: at most 64 characters, components of digits separated by
single dots, no empty component, and no leading zero in a component of more
than one digit. Many modalities write leading zeros (``1.2.840.01.5``), and
such a UID is harmless as an identifier and as a file name, so the leading-zero
rule is lenient by default: those UIDs are accepted. Everything else is refused,
which is also what makes a UID safe as a file name (no ``..``, no leading dot,
no separators, no control characters, bounded length).
"""

from __future__ import annotations

import re

#: Longest UID DICOM allows (PS3.5 9.1).
MAX_UID_LENGTH = 64

_COMPONENTS = re.compile(r"[0-9]+(\.[0-9]+)*")
_LEADING_ZERO = re.compile(r"(^|\.)0[0-9]")


def uid_problem(uid: str, strict: bool = False) -> str | None:
    """Why ``uid`` is not a valid UID, in words a user can act on; ``None`` when it is valid.

    ``strict`` also refuses leading zeros in multi-digit components.
    """
    if not uid:
        return "empty"
    if len(uid) > MAX_UID_LENGTH:
        return f"{len(uid)} characters, at most {MAX_UID_LENGTH} allowed"
    if _COMPONENTS.fullmatch(uid) is None:
        return "not digits separated by single dots"
    if strict and _LEADING_ZERO.search(uid):
        return "a component of more than one digit starts with 0"
    return None


def is_valid_uid(uid: str, strict: bool = False) -> bool:
    """Whether ``uid`` passes :func:`uid_problem`."""
    return uid_problem(uid, strict) is None


def printable(text: str, limit: int = 80) -> str:
    """``text`` safe to show in one log line: control characters escaped, cut at ``limit`` characters."""
    return escape_controls(text if len(text) <= limit else f"{text[:limit]}...")


def escape_controls(text: str) -> str:
    """``text`` with every control character written as an escape (``\\n``, ``\\x1b``...)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
