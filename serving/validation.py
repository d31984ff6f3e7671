"""The edge: what a request may ask for, checked before it is routed or reaches an engine.

These pydantic models are the server's contract: the fields rayft serves, with the OpenAI API's
ranges (`temperature` 0–2, `top_p` in (0, 1], penalties −2–2, `logit_bias` values −100–100, …),
and they are what `/openapi.json` publishes. Anything else (an unknown field, a feature this server
does not serve such as tools or `n` > 1, a token id outside the vocabulary, more `stop` strings than
`serve.max_stop`, a prompt longer in characters than its token limit can hold) is a 400 naming the
field and what is allowed. Only then is the request handed to vLLM's own protocol models
(`openai_api.py`), which turn it into sampling parameters, so their checks in the engine never see
a request that could fail there.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from rayft.refusals import first_refusal
from rayft.serving.errors import ApiError

INT64 = 2**63 - 1
ROLES = ("system", "developer", "user", "assistant")


class Limits(BaseModel):
    """What depends on the server: its settings and its base model's vocabulary."""

    vocab_size: int | None = None
    max_stop: int = 4
    max_prompt_chars: int | None = None  # a prompt longer than this has more tokens than allowed


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    include_usage: bool = False


class Sampling(BaseModel):
    """The generation fields chat and completion requests share (strict: a number is not a string
    or a boolean)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(min_length=1, max_length=256, description="the base, an adapter version or an alias")
    max_tokens: int | None = Field(None, ge=1, le=INT64)
    max_completion_tokens: int | None = Field(None, ge=1, le=INT64)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1, le=INT64, description="vLLM's: -1 or 0 consider every token")
    min_p: float | None = Field(None, ge=0, le=1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, gt=0, le=2)
    logit_bias: dict[str, float] | None = Field(None, max_length=300, description="token id → bias, −100 to 100")
    stop: str | list[str] | None = Field(None, description="up to serve.max_stop strings")
    seed: int | None = Field(None, ge=-INT64 - 1, le=INT64)
    n: int = Field(1, ge=1, le=1, description="one choice per request")
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=256)
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0, le=INT64)
    logprobs: Literal[False] | None = Field(None, description="log probabilities are not served")

    @field_validator("logit_bias")
    @classmethod
    def _known_tokens(cls, bias: dict[str, float] | None, info: ValidationInfo):
        if not bias:
            return bias
        vocab = (info.context or {}).get("limits", Limits()).vocab_size
        for token, value in bias.items():
            if not token.isdigit() or (vocab is not None and int(token) >= vocab):
                raise ValueError(f"token id {token!r} is not in the vocabulary (0 to {vocab - 1 if vocab else 'n'})")
            if not -100 <= value <= 100:
                raise ValueError(f"bias {value!r} for token {token} is outside -100 to 100")
        return bias

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, stop: str | list[str] | None, info: ValidationInfo):
        limit = (info.context or {}).get("limits", Limits()).max_stop
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > limit:
            raise ValueError(f"at most {limit} stop strings (serve.max_stop), got {len(stops)}")
        if any(not s or len(s) > 256 for s in stops):
            raise ValueError("each stop string has 1 to 256 characters")
        return stop

    @field_validator("min_tokens")
    @classmethod
    def _min_below_max(cls, least: int, info: ValidationInfo):
        most = info.data.get("max_completion_tokens") or info.data.get("max_tokens")
        if most is not None and least > most:
            raise ValueError(f"{least} is above max_tokens {most}")
        return least


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal[ROLES] = Field(description="system, developer, user or assistant")
    content: str
    name: str | None = Field(None, max_length=64)


class ChatRequest(Sampling):
    """`POST /v1/chat/completions`."""

    messages: list[Message] = Field(min_length=1, max_length=1000)


class CompletionRequest(Sampling):
    """`POST /v1/completions`."""

    prompt: str = Field(min_length=1)


async def read_body(request, limit: int) -> bytes:
    """The body of a Starlette request, refused with a 413 as soon as it is known to exceed `limit`
    bytes: by its Content-Length before any of it is read, else while it streams in."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(
            413,
            f"request body of {int(declared)} bytes is over the {limit} bytes allowed (serve.max_request_bytes)",
            code="request_too_large",
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(
                413,
                f"request body is over the {limit} bytes allowed (serve.max_request_bytes)",
                code="request_too_large",
            )
        chunks.append(chunk)
    return b"".join(chunks)


def checked(body: dict, chat: bool, limits: Limits) -> ChatRequest | CompletionRequest:
    """`body` as a request this server can answer, or an ApiError(400) naming the first bad field
    and what it allows."""
    model = ChatRequest if chat else CompletionRequest
    try:
        request = model.model_validate(body, context={"limits": limits})
    except ValidationError as error:
        param, message = first_refusal(error)
        raise ApiError(400, message, param=param) from None
    characters = sum(len(m.content) for m in request.messages) if chat else len(request.prompt)
    if limits.max_prompt_chars is not None and characters > limits.max_prompt_chars:
        raise ApiError(
            400,
            f"prompt has {characters} characters, more than the {limits.max_prompt_chars} that "
            "serve.max_prompt_tokens tokens can hold",
            param="messages" if chat else "prompt",
        )
    return request
