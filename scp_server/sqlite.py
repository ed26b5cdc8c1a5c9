"""The one way the node opens its SQLite files: durable, shared by threads and processes, schema in place."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, TypeVar

Journal = Literal["wal", "delete"]
#: Values bound to an SQL statement's ``?`` placeholders.
Params = Sequence[Any]
Row = TypeVar("Row")

#: Seconds a writer waits for another process's write lock (workers share the spool's databases).
BUSY_TIMEOUT_S = 30.0


#: SQLite result codes (primary) that say "not now" about the database, not "this is wrong".
TRANSIENT_CODES = frozenset(
    {sqlite3.SQLITE_FULL, sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_IOERR}
)


def primary_code(exc: sqlite3.Error) -> int | None:
    """The primary SQLite result code of ``exc`` (extended codes carry it in their low byte)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def is_transient(exc: sqlite3.Error) -> bool:
    """Whether the database failed for now: full, busy, locked by another writer, or an I/O error."""
    return primary_code(exc) in TRANSIENT_CODES


def is_full(exc: sqlite3.Error) -> bool:
    """Whether the database's disk (or its size limit) is full."""
    return primary_code(exc) == sqlite3.SQLITE_FULL


class SchemaMismatch(ValueError):
    """A store's file was written with another schema than this n2d-dicom's; the message says which."""


def open_database(path: Path, schema: str, journal: Journal = "wal", version: int = 1) -> sqlite3.Connection:
    """A connection in autocommit mode with ``synchronous=FULL`` (a commit is on disk), schema in place.

    The connection is shared by pynetdicom's association threads and the worker,
    so callers serialise access with their own lock; other processes (``n2d
    worker``, ``n2d status``) open their own and SQLite's file locks order them.
    WAL needs shared memory, which network filesystems do not have: a spool
    shared by several machines uses the ``delete`` journal. A new file gets
    ``schema`` and ``PRAGMA user_version = version``; an existing one must carry
    that version (:class:`SchemaMismatch` otherwise: there are no migrations).
    """
    connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, check_same_thread=False, isolation_level=None)
    connection.execute(f"PRAGMA journal_mode={'WAL' if journal == 'wal' else 'DELETE'}")
    connection.execute("PRAGMA synchronous=FULL")
    try:
        _schema_in_place(connection, path, schema, version)
    except BaseException:
        connection.close()
        raise
    return connection


def _schema_in_place(connection: sqlite3.Connection, path: Path, schema: str, version: int) -> None:
    """Create the schema in a new file, or check an existing file's version; one writer at a time."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        found = int(connection.execute("PRAGMA user_version").fetchone()[0])
        tables = int(connection.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0])
        if found == 0 and tables == 0:
            for statement in filter(str.strip, schema.split(";")):  # the schemas hold no other ";"
                connection.execute(statement)
            connection.execute(f"PRAGMA user_version = {int(version)}")
        elif found != version:
            written = f"with schema version {found}" if found else "with no schema version"
            raise SchemaMismatch(
                f"{path}: written {written}, this n2d-dicom reads version {version}; "
                "give the node a new spool_dir (or run the n2d-dicom that wrote it)"
            )
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise


class Database:
    """One SQLite file of a store: the connection, the lock that serialises its threads, and the schema.

    The spool index, the series tracker and the outbox each own one. Every
    statement runs in autocommit (see :func:`open_database`) while holding the
    lock, because pynetdicom's association threads and the worker share the
    connection; :meth:`locked` holds the lock over several statements that must
    not interleave with another thread's (a read and the updates it decides).
    """

    def __init__(self, path: Path, schema: str, journal: Journal = "wal", version: int = 1) -> None:
        """Open ``path`` with ``schema`` at schema ``version`` (see :func:`open_database`)."""
        self._lock = threading.Lock()
        self._connection = open_database(path, schema, journal, version)

    def close(self) -> None:
        """Close the connection (waiting for a statement another thread is running)."""
        with self._lock:
            self._connection.close()

    def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement that returns no rows; returns how many rows it changed."""
        with self._lock:
            return self._connection.execute(sql, params).rowcount

    def execute_many(self, sql: str, rows: Iterable[Params]) -> None:
        """Run one statement once for each of ``rows``."""
        with self._lock:
            self._connection.executemany(sql, rows)

    def query(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        """The rows a statement returns."""
        with self._lock:
            return [tuple(row) for row in self._connection.execute(sql, params).fetchall()]

    def query_as(self, make: Callable[..., Row], sql: str, params: Params = ()) -> list[Row]:
        """The rows a statement returns, each made into ``make(*columns)`` (a record of its columns)."""
        return [make(*row) for row in self.query(sql, params)]

    def query_one(self, sql: str, params: Params = ()) -> tuple[Any, ...] | None:
        """The first row a statement returns, or ``None``."""
        with self._lock:
            row = self._connection.execute(sql, params).fetchone()
        return None if row is None else tuple(row)

    def count(self, table: str, where: str = "1", params: Params = ()) -> int:
        """How many rows of ``table`` match ``where`` (both written by the store, never by a user)."""
        row = self.query_one(f"SELECT COUNT(*) FROM {table} WHERE {where}", params)
        return 0 if row is None else int(row[0])

    def update_each(
        self,
        select: str,
        params: Params,
        update: str,
        values_of: Callable[[tuple[Any, ...]], Params | None],
    ) -> list[tuple[Any, ...]]:
        """The rows ``select`` finds that ``update`` then changed, all under one hold of the lock.

        ``values_of`` gives ``update``'s parameters for a row, or ``None`` to leave
        the row be. ``update`` re-checks the state the row was selected in, so a row
        another process changed in between is left out: what claims a row (a series
        to queue, an instance to send) gets each row once, whoever else is claiming.
        """
        changed = []
        with self._lock:
            for found in self._connection.execute(select, params).fetchall():
                row = tuple(found)
                values = values_of(row)
                if values is not None and self._connection.execute(update, values).rowcount == 1:
                    changed.append(row)
        return changed

    @contextmanager
    def locked(self) -> Iterator[sqlite3.Connection]:
        """The connection, with no other thread's statement in between until the block ends.

        Statements still commit one by one: what must hold across processes is
        written as conditional UPDATEs, as the stores' docstrings say.
        """
        with self._lock:
            yield self._connection
