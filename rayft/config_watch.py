"""The `review` and `drift` sections of the rayft config: the review page where experts judge
versions, and what `rayft drift` compares. A leaf module like `rayft.config`, which embeds them."""

from __future__ import annotations

from pydantic import Field, field_validator

from rayft.config_base import Section
from rayft.config_serve import checked_keys


class ReviewConfig(Section):
    """The review page (`rayft review serve`) where experts judge answers (docs/review.md)."""

    host: str = "127.0.0.1"
    port: int = Field(8300, gt=0, lt=65536)
    reviewers: dict[str, str] = Field(
        default_factory=dict,
        description="reviewer name → key, e.g. {ana: '${ANA_KEY}'} (also RAYFT_REVIEWER_KEYS=name=key,...)",
    )
    allow_unauthenticated: bool = Field(
        False, description="serve without reviewer keys (reviewers type their name); refused otherwise"
    )
    judgments_per_item: int = Field(
        2, ge=1, le=10, description="reviewers who see each item (2+: agreement between them can be measured)"
    )

    @field_validator("reviewers")
    @classmethod
    def _real_keys(cls, reviewers: dict[str, str]):
        for name, key in reviewers.items():
            if not name.strip():
                raise ValueError("a reviewer's name is empty")
            try:
                checked_keys([key])
            except ValueError as error:  # say whose key, never what it is
                raise ValueError(f"reviewer {name!r}: {str(error).removeprefix('key 0 ')}") from None
        return reviewers


class DriftConfig(Section):
    """What `rayft drift` compares and when it calls a shift drift (docs/drift.md)."""

    window_days: float = Field(7, gt=0, description="recent traffic: the days before now that are compared")
    psi_threshold: float = Field(
        0.2, gt=0, description="a feature drifts when its population stability index reaches this"
    )
    p_value: float = Field(0.01, gt=0, lt=1, description="... and its two-sample test's p-value is below this")
    min_records: int = Field(30, ge=1, description="fewer traffic records than this: not enough to tell")
    top_tokens: int = Field(
        50, ge=2, description="the training prompts' most frequent tokens compared (the rest pooled)"
    )
    report_path: str | None = Field(None, description="report folder; default $RAYFT_HOME/drift")
