"""Plain helpers several test packages share; fixtures live in the conftest.py files.

Test modules import from here, never from one another, so that collecting or moving one test
module does not drag another one's tests along.
"""

from __future__ import annotations

import shutil
import socket
import sys
from pathlib import Path

#: The ``n2d`` console script pip installed beside the interpreter running the tests.
N2D = Path(sys.executable).with_name("n2d")
#: The calling AE title the node under test allows, as dcmtk's storescu calls itself by default.
CALLER = "STORESCU"


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def dcmtk(tool: str) -> str:
    """Path of a dcmtk command-line tool (pynetdicom installs look-alikes into the venv's bin)."""
    path = shutil.which(tool, path="/usr/bin:/usr/local/bin")
    assert path, f"dcmtk's {tool} not found: apt-get install dcmtk"
    return path
