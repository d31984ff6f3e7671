"""Projects: the teams sharing one endpoint. A key belongs to the project `serve.projects` lists it
under; a key listed nowhere is a project of its own (named by a digest of the key, never the key).
Files, jobs, the models and aliases jobs register, sampled traffic and review items belong to a
project; what another project owns does not exist for a caller (a 404). Admin keys see everything.

A leaf module: serving and the fine-tuning service both ask it who a caller is.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from rayft.config_serve import FineTuningConfig, ProjectConfig, ProjectLimits
from rayft.keys import known

ANONYMOUS = "anonymous"  # every caller of an endpoint without keys


def key_project(key: str | None) -> str:
    """The project of a key listed in no project: a digest of it (16 hex digits, never the key)."""
    return hashlib.sha256(key.encode()).hexdigest()[:16] if key else ANONYMOUS


@dataclass(frozen=True)
class Caller:
    """Who a request comes from: its project, and whether its key is an admin key."""

    project: str
    admin: bool = False

    def sees(self, owner: str | None) -> bool:
        """Whether something owned by `owner` exists for this caller (None: the endpoint's own)."""
        return self.admin or owner is None or owner == self.project

    def owns(self, owner: str | None) -> bool:
        """Whether this caller may act on something owned by `owner` (admins may act on all)."""
        return self.admin or owner == self.project


class ProjectDirectory:
    """The configured projects: which a key belongs to, and each project's limits."""

    def __init__(self, limits: dict[str, ProjectLimits], defaults: ProjectLimits, keys: dict[str, frozenset[str]]):
        self.own_limits, self.defaults, self.keys = limits, defaults, keys

    @classmethod
    def of(cls, projects: dict[str, ProjectConfig], fine_tuning: FineTuningConfig) -> ProjectDirectory:
        limits = {name: ProjectLimits(**p.model_dump(exclude={"keys"})) for name, p in projects.items()}
        return cls(limits, fine_tuning.project_limits, {name: frozenset(p.keys) for name, p in projects.items()})

    def without_keys(self) -> ProjectDirectory:
        """The limits alone, for a process that checks no keys (the job runner)."""
        return ProjectDirectory(self.own_limits, self.defaults, {})

    def project_of(self, key: str | None) -> str:
        """The project `key` belongs to (compared in constant time, as keys are checked)."""
        for name, keys in self.keys.items():
            if known(key, keys):
                return name
        return key_project(key)

    def caller(self, key: str | None, admin: bool) -> Caller:
        return Caller(self.project_of(key), admin)

    def limits(self, project: str) -> ProjectLimits:
        """The project's limits: its own where `serve.projects` sets them, else the defaults."""
        own = self.own_limits.get(project)
        if own is None:
            return self.defaults
        return self.defaults.model_copy(update=own.model_dump(exclude_none=True))

    def limit_setting(self, project: str, limit: str) -> str:
        """Where the project's `limit` is set, for messages: its own entry or the defaults."""
        own = self.own_limits.get(project)
        if own is not None and getattr(own, limit) is not None:
            return f"serve.projects.{project}.{limit}"
        return f"serve.fine_tuning.project_limits.{limit}"

    def all_keys(self) -> list[str]:
        """Every project key (they are API keys of the endpoint too)."""
        return [key for keys in self.keys.values() for key in keys]
