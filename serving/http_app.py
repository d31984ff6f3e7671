"""The FastAPI app behind the ingress deployment: its routes are methods of `OpenAIServer`
(`ingress.py`) and of the fine-tuning routes it inherits (`fine_tuning_routes.py`); errors are
OpenAI-style bodies (`errors.ApiError`); `/openapi.json` names every route's bodies (`api_schema.py`)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from rayft.serving import api_schema
from rayft.serving.errors import ApiError

app = FastAPI(title="rayft")


def openapi() -> dict:
    """FastAPI's schema of the routes, with the bodies they name (`api_schema.py`)."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        app.openapi_schema = api_schema.add_components(get_openapi(title=app.title, version="1", routes=app.routes))
    return app.openapi_schema


app.openapi = openapi


@app.exception_handler(ApiError)
async def _api_error(_request: Request, error: ApiError) -> JSONResponse:
    return JSONResponse(status_code=error.status, content=error.body(), headers=error.headers())
