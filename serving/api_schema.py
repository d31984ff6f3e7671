"""What `/openapi.json` says: every route's request and response bodies, so schema-driven clients
and fuzzers see the contract the ingress enforces.

The routes read their bodies themselves (size limit, nesting limit, then `validation.py` or the
fine-tuning service's request models), so FastAPI cannot infer them; each route names its bodies
here by model, and `openapi()` adds the models' JSON schemas: the request models the routes check
against, vLLM's own response models, and the error body every refusal has. Query and path
parameters are declared on the routes themselves; a bad one is a 400 (`http_app.py`), so FastAPI's
own 422 is taken out of the schema.
"""

from __future__ import annotations

from pydantic import BaseModel

from rayft.service.requests import FileUploadForm

COMPONENTS = "#/components/schemas/{model}"


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str


class ErrorBody(BaseModel):
    """Every 4xx and 5xx: the OpenAI error shape."""

    error: ErrorDetail


class LoadAdapter(BaseModel):
    """`POST /admin/adapters`."""

    model: str


class FileUpload(FileUploadForm):
    """`POST /v1/files` (multipart): the file and the form fields the route checks."""

    file: bytes


ERRORS = {
    "400": "a field out of range or not served; a pause or resume of a job in another state",
    "401": "no valid key",
    "403": "a user key on an admin route",
    "404": "an unknown model, file or job (or the fine-tuning API is off)",
    "409": "a finished job cannot be cancelled; a file a job still reads cannot be deleted",
    "411": "an upload without Content-Length",
    "413": "a body over serve.max_request_bytes, or a file over serve.fine_tuning's limits or its project's bytes",
    "429": "over serve.max_concurrent_requests, or a project at its files or unfinished jobs limit",
    "503": "the engine is restarting or busy, the server is draining, or a version's files do not match the registry",
}


def ref(model: str) -> dict:
    return {"$ref": COMPONENTS.format(model=model)}


def route(request: str | None, response: str | None) -> dict:
    """`openapi_extra` for a route: its JSON request body and its 200 body, by model name, plus the
    error body of every refusal."""
    extra: dict = {
        "responses": {
            code: {"description": why, "content": {"application/json": {"schema": ref("ErrorBody")}}}
            for code, why in ERRORS.items()
        }
    }
    if request:
        extra["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref(request)}}}
    if response:
        extra["responses"]["200"] = {"description": "OK", "content": {"application/json": {"schema": ref(response)}}}
    return extra


def upload_route() -> dict:
    """`openapi_extra` for the multipart file upload."""
    extra = route(None, None)
    form = {"schema": ref("FileUpload"), "encoding": {"file": {"contentType": "application/octet-stream"}}}
    extra["requestBody"] = {"required": True, "content": {"multipart/form-data": form}}
    return extra


def component_models() -> list[type[BaseModel]]:
    """Every model the routes name (vLLM's response models are imported here, in the replica)."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionResponse
    from vllm.entrypoints.openai.completion.protocol import CompletionResponse
    from vllm.entrypoints.serve.engine.protocol import ModelList

    from rayft.service.requests import CreateFineTuningJobRequest
    from rayft.serving.validation import ChatRequest, CompletionRequest

    return [
        ChatRequest,
        CompletionRequest,
        ChatCompletionResponse,
        CompletionResponse,
        ModelList,
        ErrorBody,
        LoadAdapter,
        CreateFineTuningJobRequest,
        FileUpload,
    ]


def add_components(schema: dict) -> dict:
    """FastAPI's generated schema with the named models' JSON schemas in `components.schemas`, and
    without FastAPI's 422 (a bad parameter is a 400 with the error body)."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            operation.get("responses", {}).pop("422", None)
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    for model in component_models():
        generated = model.model_json_schema(ref_template=COMPONENTS, mode="validation")
        schemas.update(generated.pop("$defs", {}))
        schemas[model.__name__] = generated
    return schema
