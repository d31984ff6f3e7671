"""The model registry: every trained version with its lineage, in an embedded SQLite database.

This module is a leaf: it imports no stage. Training registers versions, eval attaches reports,
serving resolves names. The database lives at `$RAYFT_HOME/registry.db` unless given a path.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rayft.home import home_path

SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    kind TEXT NOT NULL,
    base_model TEXT NOT NULL,
    artifact_uri TEXT NOT NULL,
    weights_hash TEXT,
    dataset_hash TEXT,
    config TEXT NOT NULL DEFAULT '{}',
    metrics TEXT NOT NULL DEFAULT '{}',
    eval_report TEXT,
    parent TEXT,
    code_revision TEXT,
    created_at REAL NOT NULL,
    PRIMARY KEY (name, version)
);
"""


REGISTRY_PREFIX = "registry:"


class RegistryError(LookupError):
    """A registry lookup or change that cannot be done; the message says which name and why."""


@dataclass
class ModelVersion:
    """One registered model version."""

    name: str
    version: int
    kind: str  # "adapter" or "full"
    base_model: str
    artifact_uri: str
    weights_hash: str | None = None
    dataset_hash: str | None = None
    config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    eval_report: dict | None = None
    parent: str | None = None
    code_revision: str | None = None
    created_at: float = 0.0

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def to_dict(self) -> dict:
        return asdict(self) | {"ref": self.ref}


_JSON_COLUMNS = ("config", "metrics", "eval_report")


def _row_to_version(row: sqlite3.Row) -> ModelVersion:
    values = dict(row)
    for column in _JSON_COLUMNS:
        if values[column] is not None:
            values[column] = json.loads(values[column])
    return ModelVersion(**values)


class Registry:
    """A SQLite-backed registry; safe for several processes writing at once."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else home_path("registry.db")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    @contextmanager
    def _connect(self):
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            yield db
        finally:
            db.close()

    @contextmanager
    def _write(self):
        """A transaction that takes the write lock at once, so concurrent writers queue up."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def register(
        self,
        name: str,
        kind: str,
        base_model: str,
        artifact_uri: str,
        *,
        weights_hash: str | None = None,
        dataset_hash: str | None = None,
        config: dict | None = None,
        metrics: dict | None = None,
        parent: str | None = None,
        code_revision: str | None = None,
    ) -> ModelVersion:
        """Add the next version of `name` and return it."""
        if kind not in ("adapter", "full"):
            raise RegistryError(f"kind must be 'adapter' or 'full', got {kind!r}")
        with self._write() as db:
            (latest,) = db.execute("SELECT COALESCE(MAX(version), 0) FROM versions WHERE name = ?", (name,)).fetchone()
            version = ModelVersion(
                name=name, version=latest + 1, kind=kind, base_model=base_model, artifact_uri=artifact_uri,
                weights_hash=weights_hash, dataset_hash=dataset_hash, config=config or {},
                metrics=metrics or {}, parent=parent, code_revision=code_revision, created_at=time.time(),
            )
            row = version.to_dict()
            row.pop("ref")
            for column in _JSON_COLUMNS:
                row[column] = None if row[column] is None else json.dumps(row[column], sort_keys=True)
            columns = ", ".join(row)
            db.execute(f"INSERT INTO versions ({columns}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))
        return version

    def set_eval_report(self, ref: str, report: dict) -> None:
        """Attach an eval report to a version."""
        version = self.get(ref)
        with self._write() as db:
            db.execute(
                "UPDATE versions SET eval_report = ? WHERE name = ? AND version = ?",
                (json.dumps(report, sort_keys=True), version.name, version.version),
            )

    def get(self, ref: str) -> ModelVersion:
        """Resolve `name` (latest version) or `name:version`."""
        name, _, version = ref.partition(":")
        with self._connect() as db:
            if not version:
                row = db.execute(
                    "SELECT * FROM versions WHERE name = ? ORDER BY version DESC LIMIT 1", (name,)
                ).fetchone()
            elif version.isdigit():
                row = db.execute(
                    "SELECT * FROM versions WHERE name = ? AND version = ?", (name, int(version))
                ).fetchone()
            else:
                raise RegistryError(f"{ref!r}: version must be a number")
        if row is None:
            raise RegistryError(f"{ref!r} is not in the registry")
        return _row_to_version(row)

    def list(self, name: str | None = None) -> list[ModelVersion]:
        """All versions (of `name` if given), oldest first."""
        with self._connect() as db:
            if name:
                rows = db.execute("SELECT * FROM versions WHERE name = ? ORDER BY version", (name,)).fetchall()
            else:
                rows = db.execute("SELECT * FROM versions ORDER BY name, version").fetchall()
        return [_row_to_version(r) for r in rows]


def resolve_model_path(model: str, registry: Registry) -> tuple[str, str | None]:
    """A model given as a path/hub id or as `registry:NAME[:VERSION]` (a full model), resolved to a
    loadable path, with the registry ref it came from (None for plain paths)."""
    if not model.startswith(REGISTRY_PREFIX):
        return model, None
    version = registry.get(model[len(REGISTRY_PREFIX):])
    if version.kind != "full":
        raise RegistryError(f"{version.ref} is an adapter; a base model must be a full model")
    return version.artifact_uri, version.ref
