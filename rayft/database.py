"""rayft's embedded SQLite database (`$RAYFT_HOME/registry.db`): connections for the registry and
the fine-tuning service's tables, safe for several processes reading and writing at once.

Every write takes SQLite's write lock first (BEGIN IMMEDIATE), so concurrent writers queue up and a
read-modify-write never interleaves with another; readers keep one connection per thread, in
autocommit mode, so each SELECT sees the latest commit. A leaf module: it imports no stage.
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path


class Database:
    """One SQLite file with a schema (CREATE ... IF NOT EXISTS statements) applied on open; pickles
    as its path and schema, so it can travel to Ray workers and Serve replicas."""

    def __init__(self, path: str | Path, schema: str, added_columns: dict[str, dict[str, str]] | None = None):
        """`added_columns`: table → {column: declaration} for columns added after the table was
        first created; a file made by an older rayft gets them (ALTER TABLE) on open."""
        self.path, self.schema = Path(path), schema
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self.connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(schema)
            for table, columns in (added_columns or {}).items():
                present = {row["name"] for row in db.execute(f"PRAGMA table_info({table})")}
                for column, declaration in columns.items():
                    if column not in present:
                        db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")

    def __getstate__(self) -> dict:
        return {"path": self.path, "schema": self.schema}

    def __setstate__(self, state: dict) -> None:
        self.path, self.schema, self._local = state["path"], state["schema"], threading.local()

    @contextmanager
    def connect(self):
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            yield db
        finally:
            db.close()

    def reader(self) -> sqlite3.Connection:
        """This thread's read connection, kept open: serving reads per request, and opening the file
        costs more than the query."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.row_factory = sqlite3.Row
        return db

    @contextmanager
    def write(self):
        """A transaction that takes the write lock at once, so concurrent writers queue up."""
        with self.connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
