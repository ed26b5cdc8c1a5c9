"""The one way the node opens its SQLite files: durable, shared by threads and processes, schema in place."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Literal

Journal = Literal["wal", "delete"]

#: Seconds a writer waits for another process's write lock (workers share the spool's databases).
BUSY_TIMEOUT_S = 30.0


def open_database(path: Path, schema: str, journal: Journal = "wal") -> sqlite3.Connection:
    """A connection in autocommit mode with ``synchronous=FULL`` (a commit is on disk).

    The connection is shared by pynetdicom's association threads and the worker,
    so callers serialise access with their own lock; other processes (``n2d
    worker``, ``n2d status``) open their own and SQLite's file locks order them.
    WAL needs shared memory, which network filesystems do not have: a spool
    shared by several machines uses the ``delete`` journal.
    """
    connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, check_same_thread=False, isolation_level=None)
    connection.execute(f"PRAGMA journal_mode={'WAL' if journal == 'wal' else 'DELETE'}")
    connection.execute("PRAGMA synchronous=FULL")
    connection.executescript(schema)
    return connection


def add_missing_columns(connection: sqlite3.Connection, table: str, columns: dict[str, str]) -> None:
    """Add ``columns`` (name -> declaration) that ``table`` lacks: older versions' spools open as-is."""
    present = {str(row[1]) for row in connection.execute(f"PRAGMA table_info({table})")}
    for name, declaration in columns.items():
        if name not in present:
            connection.execute(f"ALTER TABLE {table} ADD COLUMN {name} {declaration}")
