"""The stores' one SQLite piece: schema upgrades in place, and claims that give each row to one claimer."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from scp_server.sqlite import Database

SCHEMA = "CREATE TABLE IF NOT EXISTS jobs (id INTEGER PRIMARY KEY, state TEXT NOT NULL, owner TEXT);"
ROWS = 200


def test_columns_a_newer_version_added_appear_in_an_older_file(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    old = Database(path, SCHEMA)
    old.execute("INSERT INTO jobs (state) VALUES ('pending')")
    old.close()

    new = Database(path, SCHEMA, added_columns={"jobs": {"note": "TEXT NOT NULL DEFAULT 'none'"}})

    assert new.query("SELECT id, state, note FROM jobs") == [(1, "pending", "none")]
    new.close()


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
