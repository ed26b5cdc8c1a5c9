"""The one check every configured AE title passes: the node's own, the peers it admits, its destinations.

A DICOM Application Entity title (PS3.5 6.2, VR AE) is 1 to 16 characters of
the default repertoire without backslash, and not all spaces (leading and
trailing spaces are not significant). A title that breaks this is refused when
the configuration is read, with a message that says so, rather than at the
first association, where a peer's rejection says much less.
"""

from __future__ import annotations

import re
from typing import Annotated

from annotated_types import MaxLen
from pydantic import AfterValidator

#: Characters an AE title may hold: printable ASCII (space included) but the backslash.
_REPERTOIRE = re.compile(r"[ -\[\]-~]*")


def check_ae_title(title: str) -> str:
    """``title`` unchanged when it is an AE title; ``ValueError`` saying what is wrong otherwise."""
    if not title.strip():
        problem = "blank"
    elif "\\" in title:
        problem = "it holds a backslash"
    elif _REPERTOIRE.fullmatch(title) is None:
        problem = "it holds characters outside printable ASCII"
    else:
        return title
    raise ValueError(
        f"{title!r} is not an AE title ({problem}): 1-16 printable ASCII characters, "
        "not all spaces, no backslash"
    )


#: An AE title as configured; the length bound also shows in docs/configuration.md.
AETitle = Annotated[str, MaxLen(16), AfterValidator(check_ae_title)]
