"""The stores' one SQLite piece: schema upgrades in place, and claims that give each row to one claimer."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from scp_server.sqlite import Database

SCHEMA = "CREATE TABLE IF NOT EXISTS jobs (id INTEGER PRIMARY KEY, state TEXT NOT NULL, owner TEXT);"
ROWS = 200


@pytest.mark.slow
def test_claimers_on_separate_connections_each_get_a_row_once(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    setup = Database(path, SCHEMA)
    setup.execute_many("INSERT INTO jobs (state) VALUES (?)", [("pending",)] * ROWS)
    claimers = [Database(path, SCHEMA) for _ in range(2)]
    claimed: dict[str, list[int]] = {}

    def claim(name: str, database: Database) -> None:
        def take(row: tuple[Any, ...]) -> tuple[Any, ...]:
            return (name, row[0])

        rows = database.update_each(
            "SELECT id FROM jobs WHERE state = 'pending'",
            (),
            "UPDATE jobs SET state = 'claimed', owner = ? WHERE id = ? AND state = 'pending'",
            take,
        )
        claimed[name] = [row[0] for row in rows]

    threads = [threading.Thread(target=claim, args=(f"c{i}", db)) for i, db in enumerate(claimers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    everyone = claimed["c0"] + claimed["c1"]
    assert sorted(everyone) == list(range(1, ROWS + 1))  # every row claimed, none twice
    owners = dict(setup.query("SELECT id, owner FROM jobs"))
    assert all(owners[row] == name for name, rows in claimed.items() for row in rows)
    assert setup.count("jobs", "state = ?", ("pending",)) == 0
    for database in (setup, *claimers):
        database.close()


def test_a_row_the_caller_leaves_is_not_updated(tmp_path: Path) -> None:
    database = Database(tmp_path / "jobs.sqlite3", SCHEMA)
    database.execute_many("INSERT INTO jobs (state) VALUES (?)", [("pending",), ("pending",)])

    rows = database.update_each(
        "SELECT id FROM jobs",
        (),
        "UPDATE jobs SET state = 'claimed' WHERE id = ?",
        lambda row: (row[0],) if row[0] == 2 else None,
    )

    assert rows == [(2,)]
    assert database.query("SELECT id, state FROM jobs ORDER BY id") == [(1, "pending"), (2, "claimed")]
    database.close()


def test_a_full_or_locked_database_is_transient_by_its_result_code_not_its_message(tmp_path):
    """Transient errors were recognised by words in the message ("full", "locked"...)."""
    import sqlite3

    from scp_server.sqlite import is_full, is_transient

    full = sqlite3.connect(tmp_path / "small.sqlite3")
    full.execute("PRAGMA max_page_count = 2")
    full.execute("CREATE TABLE t (x BLOB)")
    with pytest.raises(sqlite3.OperationalError) as filled:
        for _ in range(100):
            full.execute("INSERT INTO t VALUES (?)", (bytes(4096),))
    assert is_full(filled.value) and is_transient(filled.value)

    holder = sqlite3.connect(tmp_path / "shared.sqlite3", isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    with pytest.raises(sqlite3.OperationalError) as locked:
        sqlite3.connect(tmp_path / "shared.sqlite3", timeout=0).execute("INSERT INTO t VALUES (1)")
    assert is_transient(locked.value) and not is_full(locked.value)

    with pytest.raises(sqlite3.OperationalError) as wrong:
        full.execute("SELECT * FROM no_such_table")
    assert not is_transient(wrong.value)
    assert not is_transient(sqlite3.OperationalError("database or disk is full"))  # words alone: no


def test_a_store_written_by_another_schema_version_is_refused_with_a_clear_error(tmp_path):
    """Each store has one schema and a PRAGMA user_version; no migrations from versions never released."""
    import sqlite3

    from scp_server.sqlite import Database, SchemaMismatch

    schema = "CREATE TABLE IF NOT EXISTS t (x INTEGER);"
    path = tmp_path / "store.sqlite3"
    Database(path, schema, version=1).close()
    Database(path, schema, version=1).close()  # reopened as it was written
    with pytest.raises(SchemaMismatch, match=r"store.sqlite3: written with schema version 1, this n2d-dicom"):
        Database(path, schema, version=2)
    unversioned = tmp_path / "unversioned.sqlite3"
    sqlite3.connect(unversioned).execute("CREATE TABLE t (x INTEGER)").connection.close()
    with pytest.raises(SchemaMismatch, match="no schema version"):
        Database(unversioned, schema, version=1)


def test_two_processes_opening_a_new_store_at_once_both_succeed(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from scp_server.sqlite import Database

    schema = "CREATE TABLE IF NOT EXISTS t (x INTEGER); CREATE INDEX IF NOT EXISTS t_x ON t (x);"
    with ThreadPoolExecutor(8) as pool:
        opened = list(pool.map(lambda _: Database(tmp_path / "new.sqlite3", schema, version=3), range(8)))
    for database in opened:
        assert database.query("PRAGMA user_version") == [(3,)]
        database.close()
