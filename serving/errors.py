"""Refusals in the OpenAI error shape, with no vLLM import (the ingress module loads this at start-up).

`ApiError` carries an HTTP status, a message and the offending parameter, and renders the body
OpenAI clients expect: `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import json

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


class ApiError(Exception):
    """A request the server refuses, with its HTTP status and the offending parameter."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        retry_after: int | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.retry_after else {}

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": ERROR_TYPES.get(self.status, "error"),
                "param": self.param,
                "code": self.code or str(self.status),
            }
        }


def parse_json(raw: bytes, max_depth: int = 32) -> dict:
    """The request body as a JSON object nested at most `max_depth` deep, or a 400 saying why: not
    UTF-8, not JSON, a number too long to read, nesting too deep, or not an object."""
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError as error:
        raise ApiError(400, f"request body is not UTF-8: {error.reason} at byte {error.start}") from None
    except RecursionError:
        raise ApiError(400, f"request body is nested deeper than {max_depth} levels") from None
    except ValueError as error:  # invalid JSON, or an integer of more digits than Python reads
        raise ApiError(400, f"request body is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    if depth(body) > max_depth:
        raise ApiError(400, f"request body is nested deeper than {max_depth} levels")
    return body


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def depth(value) -> int:
    """How deep containers nest in a parsed JSON value (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest
