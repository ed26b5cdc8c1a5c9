"""The one way the node opens its SQLite files: durable, shared by threads, schema in place."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def open_database(path: Path, schema: str) -> sqlite3.Connection:
    """A connection in autocommit mode with WAL and ``synchronous=FULL`` (a commit is on disk).

    The connection is shared by pynetdicom's association threads and the worker,
    so callers serialise access with their own lock.
    """
    connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.executescript(schema)
    return connection
