"""What an eval found, typed: `evaluate()` returns an `EvalReport`, the registry stores it as JSON
(`to_record()`), and the gate reads it back (`EvalReport.from_record`)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from rayft.config import GateConfig
from rayft.eval.review_report import ReviewSummary


class Check(BaseModel):
    """One check of the promotion gate and its outcome."""

    name: str
    passed: bool
    detail: str
    waived: bool = False


class Forgetting(BaseModel):
    """Base and candidate on the general-purpose forgetting set."""

    n: int
    base: dict[str, float | int | None]
    candidate: dict[str, float | int | None]
    drop: float  # answer rate, base minus candidate
    perplexity_increase: float | None = None


class Compared(BaseModel):
    """A registered version answered beside the candidate: one a gated alias pointed at during the
    eval (named by its ref in the metrics), or the candidate's parent (named "parent")."""

    ref: str
    weights_hash: str | None


class Quantization(BaseModel):
    """A quantized candidate (`rayft quantize`) beside its source: the scheme, the weights' size,
    tokens/s of each engine on the eval's rows, and each adapter of the source on both: its primary
    metric and perplexity there (variant `REF` on the source, `REF@quantized` on the candidate)."""

    scheme: str
    method: str
    source: str
    weights_mib: dict[str, float]  # "base" (the source), "candidate"
    tokens_per_s: dict[str, float | None]  # by variant
    adapters: dict[str, dict[str, float | None]] = Field(default_factory=dict)  # ref -> metrics on each side


class ReportFiles(BaseModel):
    json_name: str = Field(alias="json")
    markdown: str
    plots: dict[str, str]

    model_config = {"populate_by_name": True}


class EvalReport(BaseModel):
    """Metrics per variant (base, few_shot, candidate, parent, and each compared version by its ref)
    on one test split, the forgetting check, the gate settings it ran with and the gate's verdict.
    `parent`: the registered version the candidate continues (other than its base), None when it
    continues none."""

    candidate: str
    kind: str
    base_model: str
    weights_hash: str | None
    dataset_hash: str | None
    n: int
    task: str
    primary_metric: str
    lower_is_better: bool
    metrics: dict[str, dict]
    few_shot: dict | None = None
    forgetting: Forgetting | None = None
    gate: GateConfig
    compared: dict[str, Compared] = Field(default_factory=dict)
    parent: Compared | None = None
    quantization: Quantization | None = None
    decoding: dict = Field(default_factory=dict)
    samples: list[dict] = Field(default_factory=list)
    verdict: list[Check] = Field(default_factory=list)
    human_review: ReviewSummary | None = None
    seconds: float | None = None
    files: ReportFiles | None = None
    folder: str | None = None
    path: str | None = None

    def primary(self, variant: str) -> float | None:
        """The primary metric of `variant`, if it was measured."""
        return self.metrics.get(variant, {}).get(self.primary_metric)

    def to_record(self) -> dict:
        """The report as JSON data (report.json, the registry)."""
        return self.model_dump(mode="json", by_alias=True)

    @classmethod
    def from_record(cls, record: dict) -> EvalReport:
        return cls.model_validate(record)
