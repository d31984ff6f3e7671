"""`rayft serve`: one OpenAI-compatible endpoint for a base model and all its adapters, on Ray Serve.

setup   resolve the base (a path, hub id or `registry:NAME`), build two deployments: the OpenAI
        ingress (FastAPI) and the vLLM engine
run     the ingress resolves each request's `model` (the base's served name, an adapter name for its
        latest version, or `name:version`) through the registry, loads the adapter on first use,
        and streams the engine's output back as OpenAI responses or SSE chunks
report  every response names the exact version served in the `x-rayft-model` header
"""

from __future__ import annotations

import time
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve

from rayft.config import RayftConfig
from rayft.registry import Registry, RegistryError, resolve_model_path
from rayft.serving import openai_api as api
from rayft.serving.engine import ENGINE_ENV, EngineServer

APP_NAME = "rayft"
MODEL_HEADER = "x-rayft-model"

app = FastAPI(title="rayft")


@app.exception_handler(api.ApiError)
async def _api_error(_request: Request, error: api.ApiError) -> JSONResponse:
    return JSONResponse(status_code=error.status, content=error.body())


# Defined before the ingress class: Serve pickles the class at decoration time.
async def _sse(first: dict, outputs, request_id: str, model: str, chat: bool, include_usage: bool):
    """Server-sent events for a streamed response, ending with an optional usage chunk and [DONE]."""
    created = int(time.time())
    if chat:
        yield api.chat_chunk(request_id, model, created, "", None, role=True)
    last = first
    async for item in _prepend(first, outputs):
        last = item
        if chat:
            yield api.chat_chunk(request_id, model, created, item["text"], item["finish"])
        else:
            yield api.completion_chunk(request_id, model, created, item["text"], item["finish"])
    if include_usage:
        usage = api.usage(last["prompt_tokens"], last["completion_tokens"])
        if chat:
            yield api.chat_chunk(request_id, model, created, None, None, usage_info=usage)
        else:
            yield api.completion_chunk(request_id, model, created, "", None, usage_info=usage)
    yield api.DONE


async def _prepend(first, rest):
    yield first
    async for item in rest:
        yield item


@serve.deployment(name="openai", max_ongoing_requests=1024, ray_actor_options={"num_cpus": 0.25})
@serve.ingress(app)
class OpenAIServer:
    """The OpenAI routes; resolves models through the registry and calls the engine deployment."""

    def __init__(self, engine, base_name: str, base_path: str, registry_path: str):
        self.engine = engine
        self.stream_engine = engine.options(stream=True)
        self.base_name, self.base_path = base_name, base_path
        self.registry = Registry(registry_path)

    async def resolve(self, model: str) -> tuple[str | None, str]:
        """(adapter ref or None for the base, the exact version served) for a request's `model`."""
        if model == self.base_name:
            return None, self.base_name
        try:
            version = self.registry.get(model)
        except RegistryError:
            raise api.ApiError(404, f"model {model!r} does not exist", param="model", code="model_not_found") from None
        if version.kind != "adapter" or version.base_model != self.base_path:
            raise api.ApiError(404, f"model {model!r} is not served here (this server serves adapters of "
                                    f"{self.base_name})", param="model", code="model_not_found")
        error = await self.engine.add_adapter.remote(version.ref, version.artifact_uri)
        if error:
            raise api.ApiError(400, error, param="model")
        return version.ref, version.ref

    async def preload(self, refs: list[str]) -> None:
        """Load the adapters named in `serve.adapters` before the first request."""
        for ref in refs:
            await self.resolve(ref)

    @app.get("/health")
    async def health(self) -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models(self) -> dict:
        names = [(self.base_name, self.base_name)]
        latest: dict[str, str] = {}
        for version in self.registry.list():
            if version.kind == "adapter" and version.base_model == self.base_path:
                names.append((version.ref, self.base_name))
                latest[version.name] = self.base_name
        names += sorted(latest.items())
        return api.model_list(names)

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request):
        parsed = api.parse_chat(api.parse_json(await request.body()))
        return await self.respond(parsed, chat=True)

    @app.post("/v1/completions")
    async def completions(self, request: Request):
        parsed = api.parse_completion(api.parse_json(await request.body()))
        return await self.respond(parsed, chat=False)

    async def respond(self, parsed, chat: bool):
        adapter, served = await self.resolve(parsed.model)
        request_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        outputs = self.stream_engine.generate.remote(parsed, adapter, request_id, bool(parsed.stream))
        first = await outputs.__anext__()
        if "error" in first:
            raise api.ApiError(first["status"], first["error"])
        headers = {MODEL_HEADER: served}
        if not parsed.stream:
            build = api.chat_response if chat else api.completion_response
            body = build(parsed.model, first["text"], first["finish"], first["prompt_tokens"], first["completion_tokens"])
            return JSONResponse(body | {"id": request_id}, headers=headers)
        include_usage = bool(parsed.stream_options and parsed.stream_options.include_usage)
        events = _sse(first, outputs, request_id, parsed.model, chat, include_usage)
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)


def served_base_name(config: RayftConfig, base_ref: str | None) -> str:
    """The `model` id clients use for the base: a registry name, or the path/hub id as given."""
    return base_ref.split(":")[0] if base_ref else config.model.base


def build_app(config: RayftConfig):
    """The Serve application (ingress bound to one engine deployment) for `config`."""
    registry = Registry()
    base_path, base_ref = resolve_model_path(config.model.base, registry)
    engine = serve.deployment(
        EngineServer, name="engine", max_ongoing_requests=config.serve.max_num_seqs * 2,
        health_check_period_s=10, ray_actor_options={"num_cpus": 1, "runtime_env": {"env_vars": ENGINE_ENV}},
    ).bind(base_path, config.serve.model_dump())
    return OpenAIServer.bind(engine, served_base_name(config, base_ref), base_path, str(registry.path))


def start(config: RayftConfig) -> str:
    """Start the app on Ray Serve (returns once it answers) and return its base URL."""
    from rayft.runtime import ensure_ray

    ensure_ray()
    serve.start(http_options={"host": config.serve.host, "port": config.serve.port})
    handle = serve.run(build_app(config), name=APP_NAME, route_prefix="/", blocking=False)
    if config.serve.adapters:
        handle.preload.remote(config.serve.adapters).result()
    return f"http://{config.serve.host}:{config.serve.port}"


def shutdown() -> None:
    """Stop the app and Ray Serve (Ray itself keeps running)."""
    serve.shutdown()


def serve_forever(config: RayftConfig) -> None:
    """Start the app and block until interrupted."""
    url = start(config)
    base_ref = resolve_model_path(config.model.base, Registry())[1]
    print(f"rayft serving {served_base_name(config, base_ref)} and its adapters on {url}/v1", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        shutdown()
