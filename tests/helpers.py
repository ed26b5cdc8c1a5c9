"""Plain helpers several test packages share; fixtures live in the conftest.py files.

Test modules import from here, never from one another, so that collecting or moving one test
module does not drag another one's tests along.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import Iterable
from pathlib import Path

#: The ``n2d`` console script pip installed beside the interpreter running the tests.
N2D = Path(sys.executable).with_name("n2d")
#: The calling AE title the node under test allows, as dcmtk's storescu calls itself by default.
CALLER = "STORESCU"


#: Ports handed to tests: below the kernel's ephemeral range (32768 and up on Linux), so that no
#: client socket is given one, in a block of its own for each pytest-xdist worker, so that two
#: workers never pick the same port between a probe and the bind of the server it is for.
PORT_BASE, PORT_BLOCK = 20000, 1500
_next_port = itertools.count()


def free_port() -> int:
    """A loopback port nothing listens on now, never handed out twice in a test session."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    first = PORT_BASE + PORT_BLOCK * (int(worker.removeprefix("gw") or 0) % 8)
    return first_free_port(first + next(_next_port) % PORT_BLOCK for _ in range(PORT_BLOCK))


def first_free_port(candidates: Iterable[int]) -> int:
    """The first of ``candidates`` that loopback can bind now."""
    for port in candidates:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port among the candidates")


def dcmtk(tool: str) -> str:
    """Path of a dcmtk command-line tool (pynetdicom installs look-alikes into the venv's bin)."""
    path = shutil.which(tool, path="/usr/bin:/usr/local/bin")
    assert path, f"dcmtk's {tool} not found: apt-get install dcmtk"
    return path


def descendants(pid: int) -> list[int]:
    """Live (not zombie) descendants of process ``pid``, read from /proc; parents before children."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, queue = [], list(children.get(pid, []))
    while queue:
        child = queue.pop(0)
        found.append(child)
        queue.extend(children.get(child, []))
    return found


def running(pid: int) -> bool:
    """Whether process ``pid`` exists and has not exited (a zombie waits only for its parent to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stop_processes(pids: list[int], grace_s: float = 10.0) -> None:
    """SIGTERM each of ``pids``, then SIGKILL what is still there after ``grace_s``."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(running(pid) for pid in pids):
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def database_full() -> sqlite3.OperationalError:
    """The error SQLite raises when its disk is full, result code included (as the node classifies it)."""
    error = sqlite3.OperationalError("database or disk is full")
    error.sqlite_errorcode = sqlite3.SQLITE_FULL
    error.sqlite_errorname = "SQLITE_FULL"
    return error
