"""The one rayft config: a YAML file validated by pydantic, with sections per stage.

This module is a leaf: it imports no stage. Every stage reads its own section. Errors name the file
and the dotted field (`train.lora.r: Input should be greater than 0`), before any work starts.
Strings may use `${RAYFT_HOME}` and other environment variables.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from rayft.config_base import UNSET_VARIABLE, Auto, ConfigError, Section  # noqa: F401  (re-exported)
from rayft.config_errors import format_errors
from rayft.config_serve import (  # noqa: F401  (re-exported)
    PROJECT_NAME,
    FineTuningConfig,
    ProjectConfig,
    ProjectLimits,
    ServeConfig,
    TrafficConfig,
)
from rayft.config_train import DeepSpeedConfig, DpoConfig, LoraConfig, TrainConfig  # noqa: F401  (re-exported)
from rayft.config_watch import DriftConfig, ReviewConfig
from rayft.home import rayft_home


class SplitConfig(Section):
    train: float = Field(0.8, ge=0, le=1)
    val: float = Field(0.1, ge=0, le=1)
    test: float = Field(0.1, ge=0, le=1)

    @model_validator(mode="after")
    def _sums_to_one(self):
        if abs(self.train + self.val + self.test - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1.0, got {self.train + self.val + self.test:g}")
        return self


class DataConfig(Section):
    inputs: list[str] = Field(default_factory=list, description="JSONL/Parquet files or HF dataset folders")
    out: str | None = Field(None, description="prepared dataset folder; default $RAYFT_HOME/datasets/<name>")
    format: Literal["auto", "messages", "prompt_completion", "preference"] = Field(
        "auto", description="record format (auto: told per record); the container comes from each file"
    )
    split: SplitConfig = Field(default_factory=SplitConfig)
    seed: int = 0
    label_field: str | None = Field(None, description="record field holding the class label")
    label_regex: str | None = Field(None, description="regex with one group, applied to the last assistant turn")
    label_json: str | None = Field(None, description="dotted path into the last assistant turn parsed as JSON")
    max_tokens: int = Field(4096, gt=0, description="records longer than this (model tokenizer) are rejected")
    pii: Literal["scrub", "drop", "off"] = Field(
        "scrub", description="replace PII with placeholders, drop the record, or keep it"
    )
    pii_detector: str | None = Field(None, description="'module:function' NER detector for names and addresses")
    dedup: bool = Field(True, description="drop exact duplicates (normalised text), keeping the first")
    near_dup_threshold: float | None = Field(
        0.8, gt=0, le=1, description="MinHash Jaccard for near duplicates; null turns it off"
    )
    leak_threshold: float | None = Field(
        0.8, gt=0, le=1, description="val/test records this similar to a train record are dropped"
    )
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations")
    stratify_by: Literal["label", "called_tool"] = Field(
        "label", description="what the split keeps in proportion: the label, or the tools a record calls"
    )
    warn_min_class: int = Field(50, ge=0, description="warn when a class has fewer examples")
    warn_min_records: int = Field(200, ge=0, description="warn when the kept set is smaller")

    @field_validator("format", mode="before")
    @classmethod
    def _record_format_not_container(cls, value):
        if value in ("jsonl", "parquet", "hf", "arrow"):
            raise ValueError(
                f"{value!r} is a container, not a record format: the container is always taken "
                "from each input's file name or folder; give auto, messages, prompt_completion or preference"
            )
        return value

    @field_validator("label_regex")
    @classmethod
    def _one_group(cls, value):
        if value is None:
            return value
        try:
            groups = re.compile(value).groups
        except re.error as error:
            raise ValueError(f"label_regex {value!r} is not a valid regular expression: {error}") from None
        if groups != 1:
            raise ValueError("label_regex must have exactly one capture group")
        return value

    @model_validator(mode="after")
    def _one_label_source(self):
        given = [k for k in ("label_field", "label_regex", "label_json") if getattr(self, k)]
        if len(given) > 1:
            raise ValueError(f"give at most one of label_field, label_regex, label_json (got {', '.join(given)})")
        return self


class ModelConfig(Section):
    base: str = Field(..., description="base model: a local folder or a hub id")
    chat_template: str | None = Field(None, description="override the tokenizer's chat template (Jinja)")
    tool_parser: str = Field(
        "hermes",
        pattern=r"^[a-z0-9_]+$",
        description="vLLM tool parser that reads calls back from this base's (and its versions') text; "
        "recorded with every version",
    )


# Metrics each eval task reports, the first being its default primary metric (the one the gate compares).
TASK_METRICS = {
    "classification": ("accuracy", "macro_f1"),
    "extraction": ("exact_match", "json_parse_rate"),
    "generation": ("rouge_l", "bleu", "chrf"),
    "structured": ("schema_valid_rate", "json_parse_rate"),
    "perplexity": ("perplexity",),
    "tool_call": ("tool_name_accuracy", "arguments_exact_match", "arguments_json_valid", "text_instead_of_call"),
    "preference": ("preference_accuracy", "reward_margin"),
}
LOWER_IS_BETTER = ("perplexity", "nll", "text_instead_of_call")


class GateConfig(Section):
    margin: float = Field(
        0.01,
        ge=0,
        description="the candidate must beat the base and the few-shot base by at "
        "least this much on the primary metric (in the metric's units)",
    )
    max_forgetting_drop: float = Field(
        0.1, ge=0, le=1, description="largest allowed drop of the forgetting set's answer rate, base minus candidate"
    )
    max_forgetting_perplexity_increase: float | None = Field(
        None,
        gt=0,
        description="largest allowed relative rise "
        "of perplexity on the forgetting set (1.0 = doubled); "
        "null: not checked",
    )
    regression_tolerance: float = Field(
        0.0,
        ge=0,
        description="how much worse than the version the alias points "
        "at now the candidate may be on the primary metric (in its units)",
    )
    min_test_records: int = Field(20, ge=1, description="fewer test records than this refuse promotion")
    parent_margin: float | None = Field(
        0.0,
        description="a version that continues another (train.init_from) must beat that parent by at least "
        "this much on the primary metric (negative: may be this much worse); null: not checked",
    )
    min_human_win_rate: float | None = Field(
        None,
        ge=0,
        le=1,
        description="reviewers must prefer the candidate over the alias's current version (or the base) at "
        "least this often, ties left out (docs/review.md); null: not checked",
    )
    max_quantization_drop: float = Field(
        0.01,
        ge=0,
        description="a quantized version (rayft quantize) may be at most this much worse than its source on the "
        "primary metric (in its units), and so may each adapter served on it",
    )
    max_quantization_perplexity_increase: float = Field(
        0.05, ge=0, description="largest allowed relative rise of a quantized version's test perplexity over its source"
    )
    min_human_judgments: int = Field(
        30, ge=1, description="pairwise judgments the human win rate needs before it counts"
    )
    waive: list[Literal["beats_few_shot", "forgetting", "forgetting_perplexity"]] = Field(
        default_factory=list,
        description="checks that pass when the eval could not run them (a skipped check "
        "fails otherwise); shown and recorded as waived",
    )


class EvalConfig(Section):
    task: Literal[
        "classification", "extraction", "generation", "structured", "perplexity", "tool_call", "preference"
    ] = "classification"
    label_regex: str | None = Field(
        r"Category:\s*(\w+)", description="classification: regex with one group that extracts the label"
    )
    label_json: str | None = Field(
        None,
        description="classification: dotted path to the label in the answer parsed as JSON (instead of label_regex)",
    )
    fields: list[str] | None = Field(None, description="extraction: JSON fields compared (default: the reference's)")
    json_schema: dict | str | None = Field(
        None, description="structured: JSON schema the output must follow (inline, or a .json file)"
    )
    primary_metric: str | None = Field(None, description="metric the promotion gate compares; default per task")
    few_shot: int = Field(3, ge=0, description="training examples shown to the few-shot base; 0 skips it")
    perplexity: bool = Field(True, description="also teacher-forced perplexity of the reference answers")
    forgetting: bool = Field(True, description="score base and candidate on a general-purpose held-out set")
    forgetting_set: str | None = Field(None, description="JSONL of {messages, expected}; default the set rayft ships")
    max_new_tokens: int = Field(16, gt=0)
    max_model_len: int | None = Field(None, gt=0, description="engine context length; default serve.max_model_len")
    limit: int | None = Field(None, gt=0, description="evaluate at most this many test records")
    batch_size: int = Field(32, gt=0, description="records per engine call (and per progress step)")
    quantized_adapters: int | list[str] = Field(
        4,
        description="adapters of a quantized version's source that answer on both, each beside itself on the "
        "source: a count (the most recently registered names, latest version each) or registry refs",
    )
    engines: int = Field(1, gt=0, description="vLLM engine actors in the Ray Data actor pool")
    use_gpu: bool = Field(False, description="each engine actor takes one GPU (vLLM's CUDA build)")
    seed: int = 0
    report_path: str | None = Field(None, description="report folder (local, s3:// or gs://); default $RAYFT_HOME/eval")
    gate: GateConfig = Field(default_factory=GateConfig)

    @field_validator("label_regex")
    @classmethod
    def _one_group(cls, value):
        return DataConfig._one_group(value)

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, value):
        if isinstance(value, str):  # a file
            try:
                value = json.loads(Path(value).read_text(encoding="utf-8"))
            except OSError as error:
                raise ValueError(f"schema file {value}: {error.strerror}") from None
            except json.JSONDecodeError as error:
                raise ValueError(f"schema file {value}: not valid JSON: {error}") from None
        if value is not None:
            import jsonschema

            try:
                jsonschema.validators.validator_for(value).check_schema(value)
            except jsonschema.SchemaError as error:
                raise ValueError(f"not a valid JSON schema: {error.message}") from None
        return value

    @model_validator(mode="after")
    def _task_settings(self):
        if self.label_json and "label_regex" in self.model_fields_set and self.label_regex:
            raise ValueError("give label_regex or label_json, not both")
        if self.label_json:
            self.label_regex = None
        if self.task == "classification" and not (self.label_regex or self.label_json):
            raise ValueError("task classification needs label_regex or label_json")
        if self.task == "structured" and self.json_schema is None:
            raise ValueError("task structured needs json_schema")
        if self.task == "perplexity":
            self.perplexity = True
        allowed = TASK_METRICS[self.task] + (("perplexity",) if self.perplexity and self.task != "perplexity" else ())
        if self.primary_metric is None:
            self.primary_metric = allowed[0]
        elif self.primary_metric not in allowed:
            raise ValueError(
                f"primary_metric {self.primary_metric!r} is not reported for task {self.task}; "
                f"choose one of {', '.join(allowed)}"
            )
        return self


class RayftConfig(Section):
    """A whole rayft config file."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="model name in the registry")
    project: str | None = Field(
        None,
        pattern=PROJECT_NAME,
        description="the project (team) that owns what this config registers; set by the fine-tuning API "
        "for its jobs (none: the endpoint's own models, served to every key)",
    )
    model: ModelConfig
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    review: ReviewConfig = Field(default_factory=ReviewConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)

    def dataset_dir(self) -> str:
        """The prepared dataset folder this config reads and writes: a local path, or an `s3://`,
        `gs://` or `file://` URI that every node of a cluster can read."""
        return self.train.dataset or self.data.out or str(rayft_home() / "datasets" / self.name)


def _expand(value):
    if isinstance(value, str):
        return os.path.expandvars(value)
    if isinstance(value, list):
        return [_expand(v) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    return value


def parse_config(data: dict, source: str = "<config>") -> RayftConfig:
    """Validate a config mapping; raises ConfigError naming `source` and each bad field."""
    os.environ.setdefault("RAYFT_HOME", str(rayft_home()))
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a config must be a YAML mapping, got {type(data).__name__}")
    expanded = _expand(data)
    try:
        return RayftConfig.model_validate(expanded)
    except ValidationError as error:
        raise ConfigError(format_errors(source, error, expanded)) from None


def parse_data_config(data: dict, source: str) -> DataConfig:
    """Validate a data section alone (`rayft data prepare` without a config file, or with flags
    over one); raises ConfigError naming `source` and each bad field."""
    try:
        return DataConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(format_errors(source, error)) from None


def load_config(path: str | Path) -> RayftConfig:
    """Read and validate a YAML config file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    return parse_config(data, str(path))
