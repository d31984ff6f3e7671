"""OpenAI wire format, built on vLLM's own protocol models (requests, responses, SSE stream chunks).

Requests reach these parsers only after the edge checks (`validation.py`) passed, so vLLM's own
validation sees fields within range; whatever it still refuses becomes an `ApiError` (`.errors`)
with an HTTP status and an OpenAI-style body, so the server answers 4xx, never 500. Importing this
module imports vLLM's protocol (seconds): only the deployments' replicas do, never the process that
starts the app.
"""

from __future__ import annotations

import json
import time
import warnings

from pydantic import ValidationError
from vllm.entrypoints.generate.base.protocol import (
    DeltaFunctionCall,
    DeltaMessage,
    DeltaToolCall,
    FunctionCall,
    ToolCall,
)
from vllm.entrypoints.openai.chat_completion.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionResponseChoice,
    ChatCompletionResponseStreamChoice,
    ChatCompletionStreamResponse,
    ChatMessage,
)
from vllm.entrypoints.openai.completion.protocol import (
    CompletionRequest,
    CompletionResponse,
    CompletionResponseChoice,
    CompletionResponseStreamChoice,
    CompletionStreamResponse,
)
from vllm.entrypoints.serve.engine.protocol import ModelCard, ModelList, UsageInfo
from vllm.exceptions import VLLMValidationError

from rayft.serving.errors import ApiError


def _validate(model, body: dict):
    try:
        return model.model_validate(body)
    except ValidationError as error:
        first = error.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise ApiError(400, f"{param}: {first['msg']}" if param else first["msg"], param=param) from None
    except (VLLMValidationError, ValueError) as error:
        raise ApiError(400, str(error), param=getattr(error, "parameter", None)) from None


def parse_chat(body: dict) -> ChatCompletionRequest:
    """A chat completion request as vLLM's protocol model (its body passed `validation.checked`)."""
    return _validate(ChatCompletionRequest, body)


def parse_completion(body: dict) -> CompletionRequest:
    """A completion request as vLLM's protocol model (its body passed `validation.checked`)."""
    return _validate(CompletionRequest, body)


def requested_max_tokens(request) -> int | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(request, "max_completion_tokens", None) or request.max_tokens


def sampling_params(request, max_tokens: int, stream: bool):
    """vLLM SamplingParams for a parsed request, streaming deltas or one final output."""
    from vllm.sampling_params import RequestOutputKind

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        params = request.to_sampling_params(max_tokens, {})
    params.output_kind = RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY
    return params


def usage(prompt_tokens: int, completion_tokens: int) -> UsageInfo:
    return UsageInfo(
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, total_tokens=prompt_tokens + completion_tokens
    )


def openai_json(response, choice: dict, message: dict | None = None) -> str:
    """A vLLM response model as compact JSON without its unset fields, except those OpenAI's schema
    wants present even when null (`choice`'s and its `message`'s keys, with their defaults)."""
    body = response.model_dump(mode="json", exclude_none=True)
    for shown in body["choices"]:
        for key, value in choice.items():
            shown.setdefault(key, value)
        for key, value in (message or {}).items():
            shown["message"].setdefault(key, value)
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def tool_calls_of(calls: list[dict] | None) -> list[ToolCall]:
    return [ToolCall(id=c["id"], type="function", function=FunctionCall(**c["function"])) for c in calls or []]


def chat_response(
    request_id: str,
    created: int,
    model: str,
    text: str | None,
    finish: str | None,
    prompt_tokens: int,
    completion_tokens: int,
    tool_calls: list[dict] | None = None,
) -> bytes:
    """A whole chat completion as the JSON bytes sent (and cached), with its tool calls."""
    message = ChatMessage(role="assistant", content=text, tool_calls=tool_calls_of(tool_calls))
    response = ChatCompletionResponse(
        id=request_id,
        created=created,
        model=model,
        usage=usage(prompt_tokens, completion_tokens),
        choices=[ChatCompletionResponseChoice(index=0, message=message, finish_reason=finish)],
    )
    return openai_json(response, choice={"logprobs": None}, message={"content": None, "refusal": None}).encode()


def chat_chunk(
    request_id: str,
    model: str,
    created: int,
    text: str | None,
    finish: str | None,
    role: bool = False,
    usage_info: UsageInfo | None = None,
    tool_calls: list[dict] | None = None,
) -> str:
    deltas = [
        DeltaToolCall(index=i, id=c["id"], type="function", function=DeltaFunctionCall(**c["function"]))
        for i, c in enumerate(tool_calls or [])
    ]
    delta = DeltaMessage(role="assistant" if role else None, content=text, tool_calls=deltas)
    choices = [] if usage_info else [ChatCompletionResponseStreamChoice(index=0, delta=delta, finish_reason=finish)]
    chunk = ChatCompletionStreamResponse(id=request_id, created=created, model=model, choices=choices, usage=usage_info)
    return f"data: {openai_json(chunk, choice={'finish_reason': None})}\n\n"


def completion_response(
    request_id: str, created: int, model: str, text: str, finish: str | None, prompt_tokens: int, completion_tokens: int
) -> bytes:
    """A whole text completion as the JSON bytes sent (and cached)."""
    response = CompletionResponse(
        id=request_id,
        created=created,
        model=model,
        usage=usage(prompt_tokens, completion_tokens),
        choices=[CompletionResponseChoice(index=0, text=text, finish_reason=finish)],
    )
    return openai_json(response, choice={"logprobs": None}).encode()


def completion_chunk(
    request_id: str, model: str, created: int, text: str, finish: str | None, usage_info: UsageInfo | None = None
) -> str:
    choices = [] if usage_info else [CompletionResponseStreamChoice(index=0, text=text, finish_reason=finish)]
    chunk = CompletionStreamResponse(id=request_id, created=created, model=model, choices=choices, usage=usage_info)
    return f"data: {openai_json(chunk, choice={'finish_reason': None, 'logprobs': None})}\n\n"


def model_list(base: str, ids: list[tuple[str, dict]], max_model_len: int) -> dict:
    """`/v1/models` body: one card per (id, extra fields); every card's root is the base."""
    now = int(time.time())
    cards = [
        ModelCard(
            id=name,
            created=now,
            owned_by="rayft",
            root=base,
            parent=None if name == base else base,
            max_model_len=max_model_len,
            **extra,
        )
        for name, extra in ids
    ]
    return json.loads(ModelList(data=cards).model_dump_json(exclude_none=True))


def model_page(listed: dict, limit: int | None, after: str | None) -> dict:
    """One page of a `/v1/models` body: the `limit` cards after the card `after` (a 400 naming
    `after` when no card has that id), with `has_more`, `first_id` and `last_id` as OpenAI's other
    lists have them."""
    cards = listed["data"]
    start = 0
    if after is not None:
        ids = [card["id"] for card in cards]
        if after not in ids:
            raise ApiError(400, f"after: no model {after!r} is listed here", param="after")
        start = ids.index(after) + 1
    page = cards[start : start + limit] if limit else cards[start:]
    return listed | {
        "data": page,
        "has_more": start + len(page) < len(cards),
        "first_id": page[0]["id"] if page else "",
        "last_id": page[-1]["id"] if page else "",
    }


DONE = "data: [DONE]\n\n"


async def sse_events(first: dict, rest, request_id: str, model: str, chat: bool, include_usage: bool, done):
    """Server-sent events of a streamed answer (engine delta items `first`, then `rest`), ending
    with an optional usage chunk and [DONE]; `done(final_item)` runs when the stream ends, however
    it ends."""
    created, last = int(time.time()), first
    try:
        if chat:
            yield chat_chunk(request_id, model, created, "", None, role=True)
        async for item in _prepend(first, rest):
            last = item
            if chat:
                yield chat_chunk(
                    request_id, model, created, item["text"], item["finish"], tool_calls=item.get("tool_calls")
                )
            else:
                yield completion_chunk(request_id, model, created, item["text"], item["finish"])
        if include_usage:
            totals = usage(last["prompt_tokens"], last["completion_tokens"])
            if chat:
                yield chat_chunk(request_id, model, created, None, None, usage_info=totals)
            else:
                yield completion_chunk(request_id, model, created, "", None, usage_info=totals)
        yield DONE
    finally:
        done(last)


async def _prepend(first, rest):
    yield first
    async for item in rest:
        yield item
