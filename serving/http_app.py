"""The FastAPI app behind the ingress deployment: its routes are methods of `OpenAIServer`
(`ingress.py`) and the routers it includes (`fine_tuning_routes.py`, `admin_routes.py`); errors are
OpenAI-style bodies (`errors.ApiError`), a query or path parameter FastAPI refuses included (400
naming it); `/openapi.json` names every route's bodies (`api_schema.py`).

The routers' dependencies reach the replica that answers: `current_server` is the ingress
instance Serve runs the request on, `caller` who the request comes from (401/403 first), and
`admitted` holds one of the replica's concurrency slots for the request (429 when none is free).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from rayft.projects import Caller
from rayft.refusals import refusal
from rayft.serving import api_schema
from rayft.serving.errors import ApiError
from rayft.serving.guard import Guard

app = FastAPI(title="rayft")


def openapi() -> dict:
    """FastAPI's schema of the routes, with the bodies they name (`api_schema.py`)."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        app.openapi_schema = api_schema.add_components(get_openapi(title=app.title, version="1", routes=app.routes))
    return app.openapi_schema


app.openapi = openapi


async def api_error(_request: Request, error: ApiError) -> JSONResponse:
    return JSONResponse(status_code=error.status, content=error.body(), headers=error.headers())


async def bad_parameter(request: Request, error: RequestValidationError) -> JSONResponse:
    """A query or path parameter out of its declared type or range: a 400 naming it."""
    param, message = refusal(error.errors()[0], skip=1)  # loc: ("query", "limit")
    return await api_error(request, ApiError(400, message, param=param))


def answer_errors_as_openai(target: FastAPI) -> None:
    """Every refusal of `target`'s routes in OpenAI's error body."""
    target.add_exception_handler(ApiError, api_error)
    target.add_exception_handler(RequestValidationError, bad_parameter)


answer_errors_as_openai(app)


def current_server():
    """The ingress instance (`OpenAIServer`) of the replica answering this request."""
    from ray import serve

    return serve.get_replica_context().servable_object


Server = Annotated[object, Depends(current_server)]


def guard(server: Server) -> Guard:
    return server.guard


Checks = Annotated[Guard, Depends(guard)]


def caller(request: Request, checks: Checks) -> Caller:
    """Who the request comes from (401 without a valid key; 503 while draining)."""
    who = checks.caller(request)
    checks.refuse_if_draining()
    return who


def admin_caller(request: Request, checks: Checks) -> Caller:
    """An admin key's caller (401/403 otherwise; 503 while draining)."""
    who = checks.caller(request, admin=True)
    checks.refuse_if_draining()
    return who


async def admitted(checks: Checks):
    """One of the replica's concurrency slots, held while the route runs."""
    checks.admit()
    try:
        yield
    finally:
        checks.release()


Who = Annotated[Caller, Depends(caller)]
Admin = Annotated[Caller, Depends(admin_caller)]
Admitted = Annotated[None, Depends(admitted)]
