"""The `serve` section of the rayft config: the OpenAI endpoint, its keys and limits, the projects
(teams) sharing it, the fine-tuning API on it, and the traffic it samples. A leaf module like
`rayft.config`, which embeds it."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from rayft.config_base import UNSET_VARIABLE, Section
from rayft.vllm_setup import LORA_RANKS

# A project's name goes into the registry names its jobs make (`ft-<project>-<suffix>`): no '-', so
# two projects can never make the same name.
PROJECT_NAME = r"^[a-z0-9][a-z0-9_]{0,39}$"


def checked_keys(keys: list[str]) -> list[str]:
    """Keys as written in a config: none empty, none naming an unset environment variable. Errors
    say which key by position, never what it is."""
    for i, key in enumerate(keys):
        if not key.strip():
            raise ValueError(f"key {i} is empty: an empty key would let in requests that send no key")
        unset = UNSET_VARIABLE.search(key)
        if unset:
            raise ValueError(
                f"key {i} names the environment variable {unset.group(1) or unset.group(2)}, which "
                "is not set: set it, or remove the key"
            )
    return keys


class ProjectLimits(Section):
    """What one project (team) may hold and run on the fine-tuning API; each `serve.projects` entry
    may set its own, the rest come from `serve.fine_tuning`."""

    max_file_bytes_total: int | None = Field(None, gt=0, description="bytes of files the project may keep; beyond: 413")
    max_files: int | None = Field(None, gt=0, description="files the project may keep; beyond: 429")
    max_running_jobs: int | None = Field(None, gt=0, description="jobs of the project running at once")
    max_unfinished_jobs: int | None = Field(None, gt=0, description="jobs of the project not yet ended; beyond: 429")


class ProjectConfig(ProjectLimits):
    """A team on the endpoint: its keys, and its limits where they differ from the defaults."""

    keys: list[str] = Field(..., min_length=1, description="the project's bearer keys, e.g. ['${SUPPORT_KEY}']")

    @field_validator("keys")
    @classmethod
    def _real_keys(cls, keys: list[str]):
        return checked_keys(keys)


class FineTuningConfig(Section):
    """The OpenAI files and fine-tuning jobs API on the serving endpoint (docs/fine-tuning-api.md)."""

    enabled: bool = Field(False, description="serve /v1/files and /v1/fine_tuning/jobs")
    jobs_address: str | None = Field(
        None, description="Ray Jobs API the jobs run on; default RAY_ADDRESS, else http://127.0.0.1:8265"
    )
    files_path: str | None = Field(None, description="uploaded files folder; default $RAYFT_HOME/files")
    max_file_bytes: int = Field(256 * 2**20, gt=0, description="largest file one upload may be; beyond: 413")
    max_file_records: int = Field(1_000_000, gt=0, description="most records one uploaded file may hold; beyond: 413")
    max_rejected_fraction: float = Field(
        0.0, ge=0, lt=1, description="share of a training file's records that may be unusable; beyond: the job fails"
    )
    max_running_jobs: int = Field(1, gt=0, description="jobs running on the cluster at once; the rest wait in order")
    project_limits: ProjectLimits = Field(
        default_factory=lambda: ProjectLimits(
            max_file_bytes_total=4 * 2**30, max_files=1000, max_running_jobs=1, max_unfinished_jobs=4
        ),
        description="every project's limits unless `serve.projects.NAME` sets its own",
    )
    file_retention_days: float | None = Field(
        None, gt=0, description="uploads older than this are deleted (null: kept until deleted or expired)"
    )
    stage_cpus: float = Field(
        2,
        ge=0,
        description="logical CPUs one job stage holds at once (a Ray Data task beside an eval engine); on a "
        "smaller cluster the serving deployments reserve less to leave them",
    )
    stage_wait_s: float = Field(
        5, gt=0, description="a stage's work waiting this long for resources is reported in the job's events"
    )
    unschedulable_timeout_s: float = Field(
        600, gt=0, description="a stage whose work waits this long for resources fails the job"
    )
    on_lost_stage: Literal["fail", "resubmit"] = Field(
        "fail",
        description="a stage whose Ray job is gone (the head was replaced): fail the job, or run the stage "
        "again (training resumes from its last checkpoint)",
    )
    allow_full: bool = Field(False, description="jobs may ask for full fine-tuning instead of LoRA")
    poll_s: float = Field(1.0, gt=0, description="how often the job runner looks at its jobs")


class TrafficConfig(Section):
    """Sampling of served requests and answers into a traffic dataset per version (docs/drift.md)."""

    sample_share: float = Field(
        0.0, ge=0, le=1, description="share of answered requests recorded (0: none, the default; opt-in)"
    )
    path: str | None = Field(None, description="traffic dataset folder; default $RAYFT_HOME/traffic")
    retention_days: float = Field(30, gt=0, description="recorded days older than this are deleted")
    pii_detector: str | None = Field(
        None, description="a NER detector `module:function` run with the data stage's scrubber (as data.pii_detector)"
    )


class ServeConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, gt=0, lt=65536)
    adapters: list[str] = Field(default_factory=list, description="registry refs loaded at start-up")
    max_loras: int = Field(4, gt=0, description="distinct adapters in one batch")
    max_cpu_loras: int = Field(8, gt=0, description="adapters kept in host memory (LRU beyond)")
    adapter_wait_s: float = Field(
        30.0,
        ge=0,
        description="how long a request waits for an adapter slot while every slot is answering "
        "requests, before a 503 adapter_slots_busy (0: refuse at once)",
    )
    adapter_cache_gb: float = Field(
        20.0, gt=0, description="local disk cache of adapters fetched from object storage (LRU by bytes)"
    )
    max_lora_rank: Literal[LORA_RANKS] = 16
    max_model_len: int = Field(1024, gt=0)
    max_num_seqs: int = Field(64, gt=0, description="sequences one engine batches together")
    max_prompt_tokens: int = Field(4096, gt=0)
    block_size: int | None = Field(
        None,
        gt=0,
        description="KV block size (multiple of 32 on CPU); small values let short prompts hit the prefix cache",
    )
    base_name: str | None = Field(
        None,
        description="the `model` id of the base; default: its registry name, "
        "hub id, or folder name (clients never send a path)",
    )
    api_keys: list[str] = Field(
        default_factory=list,
        description="accepted bearer keys (also RAYFT_API_KEYS, "
        "comma-separated), e.g. ['${PROD_KEY}']; none = open, with a warning",
    )
    admin_keys: list[str] = Field(
        default_factory=list,
        description="bearer keys for /admin (also RAYFT_ADMIN_KEYS); "
        "none = admin routes take the API keys, with a warning",
    )
    allow_unauthenticated: bool = Field(
        False, description="start without API keys on a host other machines can reach (refused otherwise)"
    )
    max_concurrent_requests: int = Field(256, gt=0, le=4096, description="in flight per ingress replica; beyond: 429")
    max_request_bytes: int = Field(
        1 << 20, gt=0, le=1 << 30, description="larger request bodies are refused with 413 before they are read whole"
    )
    max_json_depth: int = Field(32, gt=1, le=1000, description="request bodies nested deeper are a 400")
    max_stop: int = Field(4, ge=0, le=64, description="stop strings a request may give")
    share_response_cache: bool = Field(
        False,
        description="let every API key's requests share cached answers "
        "(default: a cache per key, so no tenant learns what another asked)",
    )
    shutdown_grace_s: float = Field(
        30,
        ge=0,
        le=3600,
        description="on SIGTERM or Ctrl-C, how long requests in flight may take to finish while new ones get 503",
    )
    retry_after_s: int = Field(1, gt=0, description="Retry-After on 429 and 503 answers")
    response_cache_size: int = Field(1024, ge=0, description="deterministic responses kept (LRU); 0 turns it off")
    min_replicas: int = Field(1, ge=0, description="engine replicas (autoscaling lower bound)")
    max_replicas: int = Field(1, gt=0, description="engine replicas (autoscaling upper bound)")
    target_ongoing_requests: int = Field(32, gt=0, description="autoscaling target per engine replica")
    max_engines_per_node: int | None = Field(
        None,
        gt=0,
        description="engine replicas one node may hold (1: each on its own node, so losing a node loses one)",
    )
    ingress_replicas: int = Field(1, gt=0)
    direct_port: int | None = Field(
        None,
        gt=0,
        lt=65536,
        description="ingress replicas also answer HTTP themselves "
        "from this port up (Ray Serve's direct ingress), without the proxy hop",
    )
    use_gpu: bool = Field(False, description="each engine replica takes one GPU (vLLM's CUDA build)")
    cpus_per_engine: int | None = Field(
        None,
        gt=0,
        description="CPUs Ray reserves for each engine replica, and "
        "its compute threads on CPU; default: reserve 1, use every core of its node",
    )
    projects: dict[str, ProjectConfig] = Field(
        default_factory=dict,
        description="teams sharing the endpoint, by name: their keys and limits; a key in no project "
        "is a project of its own (docs/fine-tuning-api.md)",
    )
    fine_tuning: FineTuningConfig = Field(default_factory=FineTuningConfig)
    traffic: TrafficConfig = Field(default_factory=TrafficConfig)

    @field_validator("api_keys", "admin_keys")
    @classmethod
    def _real_keys(cls, keys: list[str]):
        return checked_keys(keys)

    @field_validator("projects")
    @classmethod
    def _distinct_projects(cls, projects: dict[str, ProjectConfig]):
        owner: dict[str, str] = {}
        for name, project in projects.items():
            if not re.fullmatch(PROJECT_NAME, name):
                raise ValueError(f"project name {name!r}: 1-40 lowercase letters, digits or '_', no '-'")
            for key in project.keys:
                if owner.setdefault(key, name) != name:
                    raise ValueError(f"a key of project {name!r} is also a key of project {owner[key]!r}")
        return projects

    @model_validator(mode="after")
    def _replica_bounds(self):
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})")
        return self
