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

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from rayft.refusals import first_refusal
from rayft.serving.errors import ApiError

INT64 = 2**63 - 1
ROLES = ("system", "developer", "user", "assistant", "tool")
NAME = r"^[A-Za-z0-9_-]{1,64}$"


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


def json_schema(schema: dict | None) -> dict | None:
    """`schema`, refused (ValueError) unless it is a valid JSON Schema."""
    if schema is not None:
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as error:
            raise ValueError(f"not a JSON Schema: {error.message}") from None
    return schema


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class FunctionSpec(Strict):
    name: str = Field(pattern=NAME)
    description: str | None = Field(None, max_length=4096)
    parameters: dict | None = Field(None, description="a JSON Schema of the arguments")
    strict: bool | None = None

    _schema = field_validator("parameters")(json_schema)


class ToolSpec(Strict):
    type: Literal["function"]
    function: FunctionSpec


class ChosenFunction(Strict):
    name: str = Field(pattern=NAME)


class NamedToolChoice(Strict):
    type: Literal["function"]
    function: ChosenFunction


class CallFunction(Strict):
    name: str = Field(pattern=NAME)
    arguments: str = Field(max_length=1 << 20, description="the arguments object, as a JSON string")


class ToolCall(Strict):
    id: str = Field(min_length=1, max_length=256)
    type: Literal["function"] = "function"
    function: CallFunction


class JsonSchemaFormat(Strict):
    name: str = Field(pattern=NAME)
    description: str | None = None
    schema_: dict | None = Field(None, alias="schema")
    strict: bool | None = None

    _schema = field_validator("schema_")(json_schema)


class ResponseFormat(Strict):
    """`text`, `json_object` (any JSON object) or `json_schema` (an object of that schema), enforced
    while sampling by vLLM's structured-output backend."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self):
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is given with type 'json_schema', and only then")
        return self


class Message(Strict):
    role: Literal[ROLES] = Field(description="system, developer, user, assistant or tool")
    tool_calls: list[ToolCall] | None = Field(None, max_length=128, description="an assistant turn's calls")
    tool_call_id: str | None = Field(
        None, min_length=1, max_length=256, validate_default=True, description="the call a tool turn answers"
    )
    content: str | None = Field(
        None, validate_default=True, description="none only on an assistant turn that calls tools"
    )
    name: str | None = Field(None, max_length=64)

    @field_validator("tool_calls")
    @classmethod
    def _calls_by_the_assistant(cls, calls, info: ValidationInfo):
        if calls is not None and info.data.get("role") != "assistant":
            raise ValueError("only an assistant turn calls tools")
        return calls

    @field_validator("tool_call_id")
    @classmethod
    def _answers_a_call(cls, call_id, info: ValidationInfo):
        if (info.data.get("role") == "tool") != (call_id is not None):
            raise ValueError("a tool turn answers one call: given on tool turns, and only there")
        return call_id

    @field_validator("content")
    @classmethod
    def _content_unless_calling(cls, content, info: ValidationInfo):
        if content is None and not (info.data.get("role") == "assistant" and info.data.get("tool_calls")):
            raise ValueError("is required (only an assistant turn that calls tools may leave it out)")
        return content


class ChatRequest(Sampling):
    """`POST /v1/chat/completions`."""

    messages: list[Message] = Field(min_length=1, max_length=1000)
    tools: list[ToolSpec] | None = Field(None, min_length=1, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None

    @field_validator("tool_choice", mode="before")
    @classmethod
    def _choice_shape(cls, choice):
        """One message for any shape that is neither of the two (a union names each member)."""
        if choice is None or choice in ("none", "auto", "required"):
            return choice
        try:
            return NamedToolChoice.model_validate(choice)
        except ValidationError:
            raise ValueError(
                '\'none\', \'auto\', \'required\' or {"type": "function", "function": {"name": ...}}'
            ) from None

    @field_validator("tool_choice")
    @classmethod
    def _choice_among_tools(cls, choice, info: ValidationInfo):
        tools = info.data.get("tools") or []
        if choice not in (None, "none") and not tools:
            raise ValueError("a tool_choice needs tools")
        if isinstance(choice, NamedToolChoice) and choice.function.name not in {t.function.name for t in tools}:
            raise ValueError(f"{choice.function.name!r} is not one of the request's tools")
        return choice

    @field_validator("response_format")
    @classmethod
    def _one_constraint(cls, fmt, info: ValidationInfo):
        forced = info.data.get("tool_choice") not in (None, "none", "auto")
        if fmt is not None and fmt.type != "text" and forced:
            raise ValueError("cannot be combined with a tool_choice that forces a call (required or a function)")
        return fmt


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
    characters = (
        sum(len(m.content or "") + sum(len(c.function.arguments) for c in m.tool_calls or []) for m in request.messages)
        if chat
        else len(request.prompt)
    )
    if limits.max_prompt_chars is not None and characters > limits.max_prompt_chars:
        raise ApiError(
            400,
            f"prompt has {characters} characters, more than the {limits.max_prompt_chars} that "
            "serve.max_prompt_tokens tokens can hold",
            param="messages" if chat else "prompt",
        )
    return request
