"""The registry's records: model versions, aliases and their history, refs, how rows map to them,
and the checks an artifact and an alias move pass before any row is written.

No database access (that is `rayft.registry`, which re-exports these). A
leaf like the registry: it imports no stage.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import sqlite3
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rayft import storage

REGISTRY_PREFIX = "registry:"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
ALIAS_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")
VERSION_PATTERN = re.compile(r"[0-9]+")
NAME_RULE = "a model name starts with a letter or digit, then letters, digits, '_', '.', '-'"


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
    project: str | None = None  # the team that owns it (`serve.projects`); None: the endpoint's own

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def to_dict(self) -> dict:
        return asdict(self) | {"ref": self.ref}


@dataclass
class Alias:
    """A named pointer (`support:prod`) to one version, or to several with traffic weights."""

    name: str
    alias: str
    targets: dict[int, float]
    updated_at: float

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.alias}"

    @property
    def primary(self) -> int:
        """The version with the highest weight (ties: the higher version)."""
        return max(self.targets, key=lambda v: (self.targets[v], v))

    def to_dict(self) -> dict:
        return asdict(self) | {"ref": self.ref, "primary": self.primary}


@dataclass
class AliasChange:
    """One recorded alias change: a `set` (promotion or manual move) or a `rollback`."""

    id: int
    name: str
    alias: str
    action: str
    targets: dict[int, float]
    previous: dict[int, float] | None
    undoes: int | None
    reason: str | None
    actor: str | None
    details: dict | None
    created_at: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Ref:
    """A parsed ref: a name with either a version number, an alias, or neither (latest)."""

    name: str
    version: int | None = None
    alias: str | None = None


def parse_ref(ref: str) -> Ref:
    """Split `NAME`, `NAME:VERSION` or `NAME:ALIAS`; a malformed ref raises RegistryError naming it."""
    name, colon, rest = ref.partition(":")
    if not NAME_PATTERN.fullmatch(name):
        raise RegistryError(f"{ref!r}: {NAME_RULE}")
    if not colon:
        return Ref(name)
    if VERSION_PATTERN.fullmatch(rest):
        return Ref(name, version=int(rest))
    if ALIAS_PATTERN.fullmatch(rest):
        return Ref(name, alias=rest)
    raise RegistryError(f"{ref!r}: expected NAME, NAME:VERSION (digits) or NAME:ALIAS (starting with a letter)")


@functools.lru_cache(maxsize=1)
def current_code_revision() -> str:
    """The code that is registering: `git:<commit>[+dirty]` for a source checkout, else `rayft==<version>`."""
    source = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(source), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() == source:
            dirty = git("status", "--porcelain", "--untracked-files=no")
            return f"git:{git('rev-parse', 'HEAD')}" + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"rayft=={version('rayft')}"
    except PackageNotFoundError:
        return "unknown"


JSON_COLUMNS = ("config", "metrics", "eval_report")


def row_to_version(row: sqlite3.Row) -> ModelVersion:
    values = {k: row[k] for k in row.keys() if k != "weight"}
    for column in JSON_COLUMNS:
        if values[column] is not None:
            values[column] = json.loads(values[column])
    return ModelVersion(**values)


def encode_targets(targets: dict[int, float]) -> str:
    return json.dumps({str(v): w for v, w in sorted(targets.items())})


def decode_targets(text: str | None) -> dict[int, float] | None:
    return None if text is None else {int(v): float(w) for v, w in json.loads(text).items()}


def row_to_change(row: sqlite3.Row) -> AliasChange:
    values = dict(row)
    values["targets"] = decode_targets(values["targets"])
    values["previous"] = decode_targets(values["previous"])
    values["details"] = None if values["details"] is None else json.loads(values["details"])
    return AliasChange(**values)


def alias_weights(targets: int | dict[int, float]) -> dict[int, float]:
    """`3` or `{3: 90, 4: 10}` as {version: weight}; versions are integers, weights finite and > 0."""
    if isinstance(targets, int) and not isinstance(targets, bool):
        targets = {targets: 1.0}
    if not isinstance(targets, dict) or not targets:
        raise RegistryError(
            f"alias targets must be a version number or a non-empty {{version: weight}}, got {targets!r}"
        )
    weights = {}
    for version, weight in targets.items():
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise RegistryError(f"alias target {version!r}: a version is a positive integer")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
            raise RegistryError(f"alias target {version}: weight must be a number > 0, got {weight!r}")
        weights[version] = float(weight)
    return weights


GATED_ALIASES_ENV = "RAYFT_GATED_ALIASES"
DEFAULT_GATED_ALIASES = ("prod",)
# Files a loader may unpickle (running code from whoever wrote them); artifacts hold safetensors instead.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def gated_aliases() -> tuple[str, ...]:
    """Aliases only the promotion gate (or a forced, reasoned move) may change: `RAYFT_GATED_ALIASES`
    (comma-separated; empty for none), default `prod`."""
    value = os.environ.get(GATED_ALIASES_ENV)
    if value is None:
        return DEFAULT_GATED_ALIASES
    return tuple(a.strip() for a in value.split(",") if a.strip())


def project_label(project: str | None) -> str:
    return f"project {project!r}" if project else "no project"


def artifact_key(uri: str) -> str:
    """An artifact location in one spelling: an absolute local path, or the URI without a trailing '/'."""
    return str(uri).rstrip("/") if storage.is_remote(uri) else str(Path(uri).expanduser().resolve())


def check_safe_format(uri: str) -> None:
    """Refuse an artifact that holds pickle files, naming them."""
    pickled = [name for name in storage.file_names(uri) if name.lower().endswith(PICKLE_SUFFIXES)]
    if pickled:
        raise RegistryError(
            f"{uri} holds pickle files ({', '.join(pickled)}), which run code when loaded; save the weights as "
            "safetensors (e.g. `model.save_pretrained(folder, safe_serialization=True)`) and register that folder"
        )
