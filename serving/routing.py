"""Which model a request's `model` field means: the base, an adapter version, or an alias.

Names resolve through the registry on every request (a read of the local SQLite file), so a new
version, an alias re-pointed by `rayft promote`/`rayft registry alias`, or a rollback is served from
the next request on, without a restart. An alias with a traffic split (e.g. 90/10) picks a version
per request in proportion to the weights; with a `user` field the pick is sticky for that user.
Requests name models, never paths: anything that is not the base or a registry ref is a 404. A
caller sees the base, the endpoint's own adapters (registered with no project) and its project's
(`rayft.projects`); another project's model or alias is a 404 exactly like one that does not exist.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

from rayft.projects import Caller
from rayft.registry import ModelVersion, Registry, RegistryError


class UnknownModel(LookupError):
    """The request's `model` is not served here; the message says why."""


@dataclass(frozen=True)
class Route:
    """Where one request goes: `adapter` is None for the base."""

    served: str  # the exact version answered, e.g. "support:3", or the base name
    adapter: ModelVersion | None = None


@dataclass(frozen=True)
class ServedBase:
    """The base model an endpoint serves: the id clients send for it, where it is, and what it is (a
    registry version's ref and weights hash, or a local folder's content hash; None for a hub id)."""

    name: str
    path: str
    ref: str | None = None
    weights_hash: str | None = None
    quantization: dict | None = None  # a quantized version's scheme and source (`rayft quantize`)
    source_path: str | None = None  # a quantized version's source, whose adapters it serves too

    @property
    def trained_on(self) -> str:
        """The base fine-tuning jobs train on: a quantized base's full-precision source (its
        adapters are served here), else the base itself."""
        return self.source_path or self.path

    def serves_adapters_of(self, base_model: str) -> bool:
        """Whether an adapter trained on `base_model` is served on this base: on it, or on the
        full-precision version it was quantized from."""
        return base_model in (self.path, self.source_path)


def default_base_name(base: str, base_ref: str | None) -> str:
    """The id clients send for the base: the registry name, the hub id, or the folder's name."""
    if base_ref:
        return base_ref.split(":")[0]
    path = Path(base).expanduser()
    return path.name if path.exists() else base


def sticky_fraction(key: str, user: str) -> float:
    """A stable number in [0, 1) for (alias, user): the same user always lands on the same version."""
    digest = hashlib.sha256(f"{key}\0{user}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def pick_weighted(targets: list[tuple[ModelVersion, float]], fraction: float) -> ModelVersion:
    """The target whose cumulative weight range holds `fraction` (targets in version order)."""
    ordered = sorted(targets, key=lambda t: t[0].version)
    total = sum(weight for _, weight in ordered)
    point, upto = fraction * total, 0.0
    for version, weight in ordered:
        upto += weight
        if point < upto:
            return version
    return ordered[-1][0]


def gate_verdict(version: ModelVersion | None) -> dict | None:
    """A version's promotion-gate verdict from its eval report, for model cards: `passed` or
    `failed` (with the failed and waived checks), `not_evaluated` when no report is about these
    weights; None for a base that is no registry version."""
    if version is None:
        return None
    report = version.eval_report or {}
    if not report or report.get("weights_hash") != version.weights_hash:
        return {"status": "not_evaluated"}
    checks = report.get("verdict", [])
    failed = [c["name"] for c in checks if not c["passed"]]
    return {
        "status": "failed" if failed else "passed",
        "failed": failed,
        "waived": [c["name"] for c in checks if c.get("waived")],
    }


class ModelRouter:
    """Resolves `model` names for one served base against the registry."""

    def __init__(self, registry: Registry, base: ServedBase):
        self.registry, self.base = registry, base

    def resolve(self, model: str, user: str | None, caller: Caller) -> Route:
        """The route for `model`, for `caller`; raises UnknownModel when it is not served here or
        is not the caller's to see."""
        if model in (self.base.name, self.base.ref):
            return Route(served=self.base.name)
        try:
            targets = self.registry.alias_targets(model)
            version = self.registry.get(model) if targets is None else self.pick(model, targets, user)
        except RegistryError:
            raise UnknownModel(f"model {model!r} does not exist") from None
        if not caller.sees(version.project):  # every version of a name has the name's project
            raise UnknownModel(f"model {model!r} does not exist")
        if version.kind == "full" and version.artifact_uri == self.base.path:
            return Route(served=self.base.name)
        if version.kind != "adapter" or not self.base.serves_adapters_of(version.base_model):
            raise UnknownModel(
                f"model {model!r} is not served here: this server serves {self.base.name!r} and its adapters"
            )
        return Route(served=version.ref, adapter=version)

    @staticmethod
    def pick(alias: str, targets: list[tuple[ModelVersion, float]], user: str | None) -> ModelVersion:
        if len(targets) == 1:
            return targets[0][0]
        return pick_weighted(targets, sticky_fraction(alias, user) if user else random.random())

    def model_cards(self, caller: Caller) -> list[tuple[str, dict]]:
        """(id, extra card fields) for the base, every adapter version of it `caller` sees, each
        adapter name (its latest version) and each alias whose versions are all served here. Every
        card that stands for one version carries its weights hash and gate verdict."""
        base = self.registry.get(self.base.ref) if self.base.ref else None
        quantized = {"quantization": self.base.quantization} if self.base.quantization else {}
        cards: list[tuple[str, dict]] = [
            (self.base.name, {"weights_hash": self.base.weights_hash, "gate": gate_verdict(base)} | quantized)
        ]
        latest: dict[str, ModelVersion] = {}
        served: dict[str, ModelVersion] = {}
        for version in self.registry.list():
            if (
                version.kind == "adapter"
                and self.base.serves_adapters_of(version.base_model)
                and caller.sees(version.project)
            ):
                cards.append((version.ref, provenance(version)))
                latest[version.name] = served[version.ref] = version
        cards += [(name, {"resolves_to": v.ref} | provenance(v)) for name, v in sorted(latest.items())]
        for alias in self.registry.aliases():
            refs = {f"{alias.name}:{v}": w for v, w in alias.targets.items()}
            if not refs or not set(refs) <= set(served):
                continue
            if len(refs) == 1:
                cards.append((alias.ref, {"resolves_to": next(iter(refs))} | provenance(served[next(iter(refs))])))
            else:
                cards.append((alias.ref, {"resolves_to": refs}))
        return cards


def provenance(version: ModelVersion) -> dict:
    """The card fields that say exactly what a version is: its weights hash and gate verdict."""
    return {"weights_hash": version.weights_hash, "gate": gate_verdict(version)}
