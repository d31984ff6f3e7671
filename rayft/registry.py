"""The model registry: every trained version with its lineage, and aliases, in an embedded SQLite database.

This module is a leaf: it imports no stage. Training registers versions, eval attaches reports,
promotion moves aliases, serving resolves refs. The database lives at `$RAYFT_HOME/registry.db`
unless given a path. Artifacts themselves stay where training exported them (a local folder or an
`s3://` / `gs://` URI); the registry records where, with a content hash of the weights.

Refs: `NAME` (latest version), `NAME:VERSION` (digits) or `NAME:ALIAS` (an alias name starts with a
letter). An alias points at one version or splits traffic across several by weight (`{3: 90, 4: 10}`);
its primary target is the version with the highest weight (ties: the higher version). Every alias
change is recorded in a history table, and `rollback` undoes the latest change not yet undone.
Every write takes SQLite's write lock first (`rayft.database`), so concurrent writers queue up and a
read-modify-write never interleaves with another.

A version is immutable: its artifact folder holds that version only (registering a folder that
already holds one, even a deleted one, is refused), it holds no pickle files (only safetensors and
plain files), and its content hash over every file (`storage.content_hash`) is recorded, so every
use can check the bytes (`verified_artifact`). Gated aliases (`RAYFT_GATED_ALIASES`, default
`prod`) move only through the promotion gate (`rayft promote`) or a forced move with a reason.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from rayft import storage
from rayft.database import Database
from rayft.home import home_path
from rayft.registry_records import (  # noqa: F401  (re-exported: the registry's public records)
    ALIAS_PATTERN,
    DEFAULT_GATED_ALIASES,
    GATED_ALIASES_ENV,
    JSON_COLUMNS,
    NAME_PATTERN,
    NAME_RULE,
    PICKLE_SUFFIXES,
    REGISTRY_PREFIX,
    Alias,
    AliasChange,
    ModelVersion,
    Ref,
    RegistryError,
    alias_weights,
    artifact_key,
    check_safe_format,
    current_code_revision,
    decode_targets,
    encode_targets,
    gated_aliases,
    parse_ref,
    project_label,
    row_to_change,
    row_to_version,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    name TEXT NOT NULL, version INTEGER NOT NULL, kind TEXT NOT NULL, base_model TEXT NOT NULL,
    artifact_uri TEXT NOT NULL, weights_hash TEXT, dataset_hash TEXT, config TEXT NOT NULL DEFAULT '{}',
    metrics TEXT NOT NULL DEFAULT '{}', eval_report TEXT, parent TEXT, code_revision TEXT,
    created_at REAL NOT NULL, project TEXT, PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS deleted_versions (
    name TEXT NOT NULL, version INTEGER NOT NULL, artifact_uri TEXT NOT NULL, deleted_at REAL NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS alias_targets (
    name TEXT NOT NULL, alias TEXT NOT NULL, version INTEGER NOT NULL, weight REAL NOT NULL,
    updated_at REAL NOT NULL, PRIMARY KEY (name, alias, version)
);
CREATE TABLE IF NOT EXISTS alias_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, alias TEXT NOT NULL, action TEXT NOT NULL,
    targets TEXT NOT NULL, previous TEXT, undoes INTEGER, reason TEXT, actor TEXT, details TEXT,
    created_at REAL NOT NULL
);
"""

ADDED_COLUMNS = {"versions": {"project": "TEXT"}}  # registries made before projects existed
# An alias's versions with their weights, primary first; the one query behind alias lookups.
ALIAS_ROWS = (
    "SELECT v.*, a.weight FROM alias_targets a JOIN versions v ON v.name = a.name AND v.version = a.version"
    " WHERE a.name = ? AND a.alias = ? ORDER BY a.weight DESC, a.version DESC"
)


class Registry:
    """A SQLite-backed registry; safe for several processes writing at once."""

    def __init__(self, path: str | Path | None = None):
        self.db = Database(Path(path) if path else home_path("registry.db"), SCHEMA, ADDED_COLUMNS)
        self.path = self.db.path

    # versions

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
        project: str | None = None,
    ) -> ModelVersion:
        """Add the next version of `name` and return it. Version numbers are never reused, even after
        a delete. The artifact must be a folder (local or a URI) no other version was registered from
        and hold no pickle files. `weights_hash` defaults to its content hash, and `code_revision` to
        the code doing the registering (see `current_code_revision()`). `project`: the team that owns
        the name (every version of a name has the same one; None: the endpoint's own models)."""
        if kind not in ("adapter", "full"):
            raise RegistryError(f"kind must be 'adapter' or 'full', got {kind!r}")
        if not NAME_PATTERN.fullmatch(name):
            raise RegistryError(f"{name!r}: {NAME_RULE}")
        revision = code_revision or current_code_revision()
        readable = storage.exists(artifact_uri)
        if readable:
            check_safe_format(artifact_uri)
            if weights_hash is None:
                weights_hash = storage.content_hash(artifact_uri)
        key = artifact_key(artifact_uri)
        with self.db.write() as db:
            for row in db.execute(
                "SELECT name, version, artifact_uri, 'registered' AS state FROM versions UNION ALL"
                " SELECT name, version, artifact_uri, 'deleted' FROM deleted_versions"
            ):
                if artifact_key(row["artifact_uri"]) == key:
                    raise RegistryError(
                        f"{artifact_uri} already holds {row['name']}:{row['version']} ({row['state']}): a version's "
                        "artifact never changes, so a new version needs a folder of its own"
                    )
            owner = db.execute("SELECT project FROM versions WHERE name = ? LIMIT 1", (name,)).fetchone()
            if owner is not None and owner["project"] != project:
                raise RegistryError(
                    f"{name!r} belongs to {project_label(owner['project'])}, not {project_label(project)}"
                )
            (latest,) = db.execute(
                "SELECT COALESCE(MAX(version), 0) FROM (SELECT version FROM versions WHERE name = ?"
                " UNION ALL SELECT version FROM deleted_versions WHERE name = ?)",
                (name, name),
            ).fetchone()
            version = ModelVersion(
                name=name,
                version=latest + 1,
                kind=kind,
                base_model=base_model,
                artifact_uri=artifact_uri,
                weights_hash=weights_hash,
                dataset_hash=dataset_hash,
                config=config or {},
                metrics=metrics or {},
                parent=parent,
                code_revision=revision,
                created_at=time.time(),
                project=project,
            )
            row = version.to_dict()
            row.pop("ref")
            for column in JSON_COLUMNS:
                row[column] = None if row[column] is None else json.dumps(row[column], sort_keys=True)
            columns = ", ".join(row)
            db.execute(f"INSERT INTO versions ({columns}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))
        return version

    def set_eval_report(self, ref: str, report: dict) -> None:
        """Attach an eval report to a version."""
        version = self.get(ref)
        with self.db.write() as db:
            db.execute(
                "UPDATE versions SET eval_report = ? WHERE name = ? AND version = ?",
                (json.dumps(report, sort_keys=True), version.name, version.version),
            )

    def get(self, ref: str) -> ModelVersion:
        """Resolve `NAME` (latest version), `NAME:VERSION`, or `NAME:ALIAS` (the alias's primary target)."""
        parsed = parse_ref(ref)
        db = self.db.reader()
        if parsed.alias:
            row = db.execute(ALIAS_ROWS, (parsed.name, parsed.alias)).fetchone()
        elif parsed.version is None:
            row = db.execute(
                "SELECT * FROM versions WHERE name = ? ORDER BY version DESC LIMIT 1", (parsed.name,)
            ).fetchone()
        else:
            row = db.execute(
                "SELECT * FROM versions WHERE name = ? AND version = ?", (parsed.name, parsed.version)
            ).fetchone()
        if row is None:
            what = "is not an alias in the registry" if parsed.alias else "is not in the registry"
            raise RegistryError(f"{ref!r} {what}")
        return row_to_version(row)

    def find_by_artifact(self, uri: str) -> ModelVersion | None:
        """The version registered from the artifact at `uri` (any spelling of it), if any."""
        key = artifact_key(uri)
        return next((v for v in self.list() if artifact_key(v.artifact_uri) == key), None)

    def list(self, name: str | None = None) -> list[ModelVersion]:
        """All versions (of `name` if given), oldest first."""
        db = self.db.reader()
        if name:
            rows = db.execute("SELECT * FROM versions WHERE name = ? ORDER BY version", (name,)).fetchall()
        else:
            rows = db.execute("SELECT * FROM versions ORDER BY name, version").fetchall()
        return [row_to_version(r) for r in rows]

    def delete(self, ref: str) -> ModelVersion:
        """Remove `NAME:VERSION` from the registry (its artifact stays where it is); refused while an
        alias points to it. Returns the deleted entry."""
        parsed = parse_ref(ref)
        if parsed.version is None:
            raise RegistryError(f"{ref!r}: delete takes an exact NAME:VERSION")
        with self.db.write() as db:
            row = db.execute(
                "SELECT * FROM versions WHERE name = ? AND version = ?", (parsed.name, parsed.version)
            ).fetchone()
            if row is None:
                raise RegistryError(f"{ref!r} is not in the registry")
            aliases = [
                r["alias"]
                for r in db.execute(
                    "SELECT alias FROM alias_targets WHERE name = ? AND version = ? ORDER BY alias",
                    (parsed.name, parsed.version),
                )
            ]
            if aliases:
                names = ", ".join(f"{parsed.name}:{a}" for a in aliases)
                raise RegistryError(
                    f"{ref!r} cannot be deleted: alias {names} points to it; move or roll back the alias first"
                )
            db.execute("DELETE FROM versions WHERE name = ? AND version = ?", (parsed.name, parsed.version))
            db.execute(
                "INSERT INTO deleted_versions VALUES (?, ?, ?, ?)",
                (parsed.name, parsed.version, row["artifact_uri"], time.time()),
            )
        return row_to_version(row)

    # aliases

    def alias_targets(self, ref: str) -> list[tuple[ModelVersion, float]] | None:
        """For `NAME:ALIAS`, its versions with their weights, primary first; None for any other ref."""
        parsed = parse_ref(ref)
        if not parsed.alias:
            return None
        db = self.db.reader()
        rows = db.execute(ALIAS_ROWS, (parsed.name, parsed.alias)).fetchall()
        if not rows:
            raise RegistryError(f"{ref!r} is not an alias in the registry")
        return [(row_to_version(row), row["weight"]) for row in rows]

    def aliases(self, name: str | None = None) -> list[Alias]:
        """All aliases (of `name` if given), by name and alias."""
        db = self.db.reader()
        query = "SELECT * FROM alias_targets" + (" WHERE name = ?" if name else "") + " ORDER BY name, alias, version"
        rows = db.execute(query, (name,) if name else ()).fetchall()
        found: dict[tuple[str, str], Alias] = {}
        for row in rows:
            alias = found.setdefault((row["name"], row["alias"]), Alias(row["name"], row["alias"], {}, 0.0))
            alias.targets[row["version"]] = row["weight"]
            alias.updated_at = max(alias.updated_at, row["updated_at"])
        return list(found.values())

    def history(self, name: str, alias: str | None = None) -> list[AliasChange]:
        """Recorded alias changes of `name` (of one alias if given), oldest first."""
        db = self.db.reader()
        query = "SELECT * FROM alias_history WHERE name = ?" + (" AND alias = ?" if alias else "") + " ORDER BY id"
        rows = db.execute(query, (name, alias) if alias else (name,)).fetchall()
        return [row_to_change(r) for r in rows]

    def set_alias(
        self,
        name: str,
        alias: str,
        targets: int | dict[int, float],
        *,
        reason: str | None = None,
        actor: str | None = None,
        details: dict | None = None,
        gated: bool = False,
    ) -> Alias:
        """Point `name:alias` at a version, or at several with traffic weights, in one atomic step that
        is recorded in the alias history (with `reason`, `actor` and e.g. the gate's verdict in `details`).
        A gated alias (`gated_aliases()`) moves only with `gated=True`: the caller is the promotion gate,
        or a forced move that records its reason and the gate's checks."""
        if not ALIAS_PATTERN.fullmatch(alias):
            raise RegistryError(f"alias {alias!r}: an alias starts with a letter, then letters, digits, '_', '.', '-'")
        if alias in gated_aliases() and not gated:
            raise RegistryError(
                f"'{name}:{alias}' is a gated alias ({GATED_ALIASES_ENV}): move it with `rayft promote NAME:VERSION "
                f'--alias {alias}`, which checks the version\'s eval first, or with --force --reason "..."'
            )
        weights = alias_weights(targets)
        with self.db.write() as db:
            self._require_versions(db, name, weights, "{ref!r} is not in the registry")
            return self._move_alias(
                db, name, alias, weights, "set", undoes=None, reason=reason, actor=actor, details=details
            )

    def rollback(self, name: str, alias: str, *, reason: str | None = None, actor: str | None = None) -> Alias:
        """Re-point `name:alias` to what it pointed at before its latest change not yet rolled back,
        in one atomic step that is recorded; rolling back again goes one step further back."""
        with self.db.write() as db:
            last = db.execute(
                "SELECT * FROM alias_history h WHERE name = ? AND alias = ? AND action = 'set'"
                " AND NOT EXISTS (SELECT 1 FROM alias_history u WHERE u.undoes = h.id) ORDER BY id DESC LIMIT 1",
                (name, alias),
            ).fetchone()
            if last is None and not self._current_targets(db, name, alias):
                raise RegistryError(f"'{name}:{alias}' is not an alias in the registry")
            if last is None or last["previous"] is None:
                raise RegistryError(f"'{name}:{alias}' has no earlier state to roll back to")
            previous = decode_targets(last["previous"])
            self._require_versions(db, name, previous, f"cannot roll back '{name}:{alias}': {{ref!r}} was deleted")
            return self._move_alias(
                db, name, alias, previous, "rollback", undoes=last["id"], reason=reason, actor=actor, details=None
            )

    @staticmethod
    def _require_versions(db: sqlite3.Connection, name: str, versions, message: str) -> None:
        for version in versions:
            if not db.execute("SELECT 1 FROM versions WHERE name = ? AND version = ?", (name, version)).fetchone():
                raise RegistryError(message.format(ref=f"{name}:{version}"))

    @staticmethod
    def _current_targets(db: sqlite3.Connection, name: str, alias: str) -> dict[int, float] | None:
        rows = db.execute("SELECT version, weight FROM alias_targets WHERE name = ? AND alias = ?", (name, alias))
        return {r["version"]: r["weight"] for r in rows} or None

    def _move_alias(
        self,
        db: sqlite3.Connection,
        name: str,
        alias: str,
        weights: dict[int, float],
        action: str,
        *,
        undoes: int | None,
        reason: str | None,
        actor: str | None,
        details: dict | None,
    ) -> Alias:
        """Replace the alias's targets and record the change; runs inside the caller's write transaction."""
        previous = self._current_targets(db, name, alias)
        now = time.time()
        db.execute("DELETE FROM alias_targets WHERE name = ? AND alias = ?", (name, alias))
        db.executemany(
            "INSERT INTO alias_targets VALUES (?, ?, ?, ?, ?)", [(name, alias, v, w, now) for v, w in weights.items()]
        )
        db.execute(
            "INSERT INTO alias_history (name, alias, action, targets, previous, undoes, reason, actor, details,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                name,
                alias,
                action,
                encode_targets(weights),
                None if previous is None else encode_targets(previous),
                undoes,
                reason,
                actor,
                None if details is None else json.dumps(details, sort_keys=True),
                now,
            ),
        )
        return Alias(name, alias, dict(weights), now)


def resolve_model_path(model: str, registry: Registry) -> tuple[str, str | None]:
    """A model given as a path/hub id or as `registry:NAME[:VERSION|:ALIAS]` (a full model), resolved
    to a loadable path, with the registry ref it came from (None for plain paths)."""
    version = registry_base(model, registry)
    return (model, None) if version is None else (version.artifact_uri, version.ref)


def registry_base(model: str, registry: Registry) -> ModelVersion | None:
    """The full-model version `registry:NAME[:VERSION|:ALIAS]` names; None for a plain path or hub id."""
    if not model.startswith(REGISTRY_PREFIX):
        return None
    version = registry.get(model[len(REGISTRY_PREFIX) :])
    if version.kind != "full":
        raise RegistryError(f"{version.ref} is an adapter; a base model must be a full model")
    return version


def verified_artifact(version: ModelVersion) -> Path:
    """A local folder with exactly `version`'s registered bytes (see `storage.verified_dir`); raises
    `storage.ArtifactMismatch` naming the version and both hashes when they differ."""
    if not version.weights_hash:
        raise storage.ArtifactMismatch(
            f"{version.ref} has no weights hash in the registry, so its bytes cannot be "
            "verified; register the artifact again"
        )
    return storage.verified_dir(version.artifact_uri, version.weights_hash, version.ref)
