"""The fine-tuning API's requests as types: one strict pydantic model per request body and form, the
same models `/openapi.json` publishes. OpenAI's fields and ranges (CreateFineTuningJobRequest,
CreateFileRequest in OpenAI's OpenAPI document), with rayft's tighter bounds where its stages need
them; anything else is a 400 naming the field (`parse`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from rayft.refusals import first_refusal
from rayft.registry_records import ALIAS_PATTERN
from rayft.service.objects import FINE_TUNE, PROMOTE_KEY, ServiceError

SUFFIX_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
MAX_SEED = 2**31 - 1


def auto_or_number(low: float, high: float, integer: bool):
    """A hyperparameter: "auto" (or null, meaning auto) or a number from `low` to `high`; one error
    message naming both forms, and the schema OpenAI publishes for it."""
    kind = "an integer" if integer else "a number"

    def check(value):
        if value is None or value == "auto":
            return "auto"
        number = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not number or not low <= value <= high:
            raise ValueError(f'"auto" or {kind} from {low:g} to {high:g}, got {value!r}')
        return value

    schema = {
        "anyOf": [{"const": "auto"}, {"type": "integer" if integer else "number", "minimum": low, "maximum": high}]
    }
    return Annotated[int | float | str, PlainValidator(check), WithJsonSchema(schema)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class HyperparametersRequest(Strict):
    n_epochs: auto_or_number(1, 50, integer=True) = "auto"
    batch_size: auto_or_number(1, 256, integer=True) = Field("auto", description="the global batch")
    learning_rate_multiplier: auto_or_number(1e-3, 100, integer=False) = Field(
        "auto", description="times 2e-4 for LoRA, 2e-5 for full fine-tuning (DPO: 5e-6, 5e-7)"
    )


class DpoHyperparametersRequest(HyperparametersRequest):
    beta: auto_or_number(1e-3, 2, integer=False) = Field(
        "auto", description="how far the model may move from where it started (train.dpo.beta)"
    )


class SupervisedSettings(Strict):
    hyperparameters: HyperparametersRequest | None = None


class DpoSettings(Strict):
    hyperparameters: DpoHyperparametersRequest | None = None


class MethodRequest(Strict):
    """OpenAI's `method`: supervised fine-tuning, or DPO on preference pairs (reinforcement is not
    supported); the settings of its type only."""

    type: Literal["supervised", "dpo"]
    supervised: SupervisedSettings | None = None
    dpo: DpoSettings | None = None

    def settings(self) -> SupervisedSettings | DpoSettings | None:
        """The settings of its type; a 400 naming the other type's, when given."""
        other = "dpo" if self.type == "supervised" else "supervised"
        if getattr(self, other) is not None:
            param = f"method.{other}"
            raise ServiceError(400, f"{param}: not used by a method of type {self.type!r}", param)
        return getattr(self, self.type)


class RayftOptions(Strict):
    """rayft's own field: what the job trains (full only with `serve.fine_tuning.allow_full`)."""

    adaptation: Literal["lora", "full"] = "lora"


class CreateFineTuningJobRequest(Strict):
    """`POST /v1/fine_tuning/jobs`."""

    model: str = Field(
        min_length=1,
        max_length=256,
        description="the base this server serves (GET /v1/models), or a fine-tuned model of yours to train further",
    )
    training_file: str = Field(min_length=1, max_length=128, description="a file id from POST /v1/files")
    validation_file: str | None = Field(None, min_length=1, max_length=128)
    hyperparameters: HyperparametersRequest | None = None
    method: MethodRequest | None = None
    suffix: str | None = Field(None, pattern=SUFFIX_PATTERN, description="registered as ft-<project>-<suffix>")
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    metadata: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]] | None = Field(
        None, max_length=16, description=f"up to 16 pairs; `{PROMOTE_KEY}`: an alias moved through the gate"
    )
    integrations: list[dict] | None = Field(None, description="none are supported")
    x_rayft: RayftOptions | None = None

    @field_validator("integrations")
    @classmethod
    def _no_integrations(cls, integrations: list[dict] | None):
        if integrations:
            raise ValueError("not supported by this server")
        return integrations

    def chosen_method(self) -> tuple[Literal["supervised", "dpo"], HyperparametersRequest]:
        """The method's type and its hyperparameters, from `hyperparameters` or the method's own
        (given once); a DPO job's hyperparameters always carry `beta`."""
        method = self.method.type if self.method else "supervised"
        settings = self.method.settings() if self.method else None
        inside = settings.hyperparameters if settings else None
        if inside is not None and self.hyperparameters is not None:
            raise ServiceError(400, "hyperparameters: give them once, here or in method", "hyperparameters")
        chosen = inside or self.hyperparameters or HyperparametersRequest()
        if method == "dpo" and not isinstance(chosen, DpoHyperparametersRequest):
            chosen = DpoHyperparametersRequest(**chosen.model_dump())
        return method, chosen

    def promote_to(self) -> str | None:
        alias = (self.metadata or {}).get(PROMOTE_KEY)
        if alias is not None and not ALIAS_PATTERN.fullmatch(alias):
            param = f"metadata.{PROMOTE_KEY}"
            raise ServiceError(400, f"{param}: {alias!r} is not an alias name", param)
        return alias


class FileUploadForm(BaseModel):
    """`POST /v1/files` (multipart): the fields beside `file`, named as OpenAI's client sends them
    (`expires_after[anchor]`, `expires_after[seconds]`: OpenAI's `expires_after`)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    purpose: Literal["fine-tune"] = Field(description=f"'{FINE_TUNE}': this server keeps training data only")
    expires_anchor: Literal["created_at"] | None = Field(None, alias="expires_after[anchor]")
    expires_seconds: int | None = Field(
        None, alias="expires_after[seconds]", ge=3600, le=2_592_000, description="the file expires this long after"
    )

    @model_validator(mode="after")
    def _both_or_neither(self):
        if (self.expires_anchor is None) != (self.expires_seconds is None):
            raise ValueError("expires_after: give both anchor ('created_at') and seconds, or neither")
        return self


def parse(model: type[BaseModel], data: dict):
    """`data` as `model`, or a ServiceError(400) naming the first bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        param, message = first_refusal(error)
        raise ServiceError(400, message, param) from None
