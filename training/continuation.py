"""Continued training (`train.init_from`): where a run starts when it continues a registered version.

The version is resolved in the registry (`NAME:VERSION` or `NAME:ALIAS`), must belong to the run's
project (or to nobody) and be trained on the same base, and its bytes are verified against the
registered hash before a worker reads them. It becomes the new version's parent.

An adapter continues as the same adapter (its own rank, alpha and target modules, which replace
`train.lora`), or is merged into the base when every weight is trained. A full version is the
starting weights of full training; a new LoRA adapter on top of it would need that version as the
served base, so that combination is refused with what to do instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rayft import storage
from rayft.config import ConfigError, LoraConfig, RayftConfig
from rayft.registry import ModelVersion, Registry, RegistryError, verified_artifact


@dataclass(frozen=True)
class StartingPoint:
    """The registered version a run continues, and a local folder with its verified bytes."""

    version: ModelVersion
    folder: str

    @property
    def adapter(self) -> bool:
        return self.version.kind == "adapter"


def starting_point(config: RayftConfig, registry: Registry, base_uri: str) -> StartingPoint | None:
    """Resolve and verify `train.init_from`; ConfigError naming the field when it cannot be used."""
    ref = config.train.init_from
    if not ref:
        return None
    try:
        version = registry.get(ref)
    except RegistryError as error:
        raise ConfigError(f"train.init_from: {error}") from None
    if version.project not in (None, config.project):
        raise ConfigError(f"train.init_from: no version {ref!r}")  # another project's: as if unknown
    if version.base_model != base_uri:
        raise ConfigError(
            f"train.init_from: {version.ref} was trained on {version.base_model}, not on model.base "
            f"{base_uri}; continue it on its own base"
        )
    if version.kind == "full" and config.train.adapter:
        raise ConfigError(
            f"train.init_from: {version.ref} is a full model; a new adapter on it would need it as the served "
            f"base: set model.base: registry:{version.ref} instead, or train it further with method: full"
        )
    try:
        folder = str(verified_artifact(version))
    except storage.ArtifactMismatch as error:
        raise ConfigError(f"train.init_from: {error}") from None
    return StartingPoint(version, folder)


def continued_lora(start: StartingPoint) -> LoraConfig:
    """The LoRA settings of the adapter a run continues (what it is exported with)."""
    saved = json.loads((Path(start.folder) / "adapter_config.json").read_text())
    targets = saved["target_modules"]
    return LoraConfig(
        r=saved["r"],
        alpha=saved["lora_alpha"],
        dropout=saved.get("lora_dropout", 0.0),
        target_modules=sorted(targets) if isinstance(targets, list | set) else targets,
    )
