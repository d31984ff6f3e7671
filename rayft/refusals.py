"""How a pydantic refusal reads in an OpenAI error body: the first bad field as a dotted `param`
(`hyperparameters.n_epochs`, `messages.0.role`) and a message that names it. Serving's edge and the
fine-tuning service's requests both use it. A leaf module."""

from __future__ import annotations

from pydantic import ValidationError


def first_refusal(error: ValidationError, skip: int = 0) -> tuple[str | None, str]:
    """(param, message) for the first error; `skip` leading loc parts (FastAPI's "query", "body")."""
    first = error.errors()[0]
    return refusal(first, skip)


def refusal(item: dict, skip: int = 0) -> tuple[str | None, str]:
    """(param, message) for one pydantic error item."""
    param = ".".join(str(p) for p in item["loc"][skip:]) or None
    message = item["msg"].removeprefix("Value error, ")
    if item["type"] == "extra_forbidden":
        message = "not a field this server accepts (see /openapi.json)"
    elif item["type"] == "missing":
        message = "is required"
    return param, f"{param}: {message}" if param else message
