"""The OpenAI ingress deployment: auth, limits, model routing, the response cache, metrics.

Per request: check the API key and find the caller's project (401; admin routes want an admin key,
403 for a user key: `auth.py`, `guard.py`) → admit it under the replica's concurrency limit (429
with Retry-After; 503 while draining) → read the body up to `serve.max_request_bytes` (413) → check
every field at the edge (`validation.py`, 400 naming the field) and parse it with vLLM's protocol
models → resolve `model` through the registry for the caller (404 for what does not exist and for
another project's models; aliases and traffic splits included) → answer from the response cache, or
stream the engine's output back as an OpenAI response or SSE chunks. Every answer names the exact
version served in `x-rayft-model`, its weights hash in `x-rayft-weights-hash`, and the cache result
in `x-rayft-cache`. An adapter whose local files no longer hash to what the registry recorded is
refused (503, naming the version and both hashes) before the engine sees the request; every other
model keeps answering. Client mistakes are 4xx with an OpenAI-style error body; an engine replica
that dies mid-request, or whose adapter slots stayed busy for `serve.adapter_wait_s`, is a 503 with
Retry-After, never a hang. A client that hangs up cancels its request down to the engine, which
aborts it in vLLM. A configured share of chat answers is recorded, PII scrubbed, in the version's
traffic dataset (`traffic.py`). `/metrics` serves every ingress replica's series and the drift
scores `rayft drift` recorded (`metrics.py`); `/openapi.json` every route's bodies
(`api_schema.py`). The fine-tuning API and the admin routes are routers of the same app
(`fine_tuning_routes.py`, `admin_routes.py`), included here, before Serve takes the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
import weakref
from typing import Annotated

from fastapi import Query, Request
from fastapi.responses import Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from ray import serve
from ray.exceptions import RayActorError, WorkerCrashedError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

from rayft import storage
from rayft.config import ServeConfig
from rayft.feedback import FeedbackStore
from rayft.projects import Caller, ProjectDirectory
from rayft.registry import Registry
from rayft.service.jobs import FineTuningJobs
from rayft.service.pipeline import ServicePaths
from rayft.serving import admin_routes, api_schema, fine_tuning_routes
from rayft.serving.auth import KeyCheck
from rayft.serving.cache import ArtifactHashes, CachedAnswer, ResponseCache, cache_key, deterministic, tenant_of
from rayft.serving.drain import POLL_S, DrainBoard
from rayft.serving.errors import ApiError, parse_json
from rayft.serving.fine_tuning_routes import FineTuningService
from rayft.serving.guard import Guard
from rayft.serving.http_app import app
from rayft.serving.metrics import PUBLISH_S, MetricsBoard, ServingMetrics, drift_exposition
from rayft.serving.routing import ModelRouter, Route, ServedBase, UnknownModel
from rayft.serving.traffic import TrafficSampler
from rayft.serving.validation import Limits, checked, read_body

MODEL_HEADER = "x-rayft-model"
WEIGHTS_HEADER = "x-rayft-weights-hash"
CACHE_HEADER = "x-rayft-cache"
ENGINE_GONE = (
    RayActorError,
    WorkerCrashedError,
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
)
logger = logging.getLogger("ray.serve")
PageLimit = Annotated[int | None, Query(ge=1, le=1000, description="models per page (default: all)")]
PageAfter = Annotated[str | None, Query(max_length=256, description="the last id of the previous page")]


def protocol():
    """vLLM's OpenAI protocol (`openai_api`), imported in the replica on first use, so the process
    that builds the app never pays vLLM's import time."""
    from rayft.serving import openai_api

    return openai_api


def cache_bypassed(request: Request) -> bool:
    return (
        request.headers.get(CACHE_HEADER, "").lower() == "bypass"
        or "no-cache" in request.headers.get("cache-control", "").lower()
    )


def json_response(body: bytes, headers: dict[str, str]) -> Response:
    """A 200 with JSON bytes as they are (cached answers are stored serialised)."""
    return Response(body, media_type="application/json", headers=headers)


# Serve freezes the app when it decorates the class: the routers join it first.
app.include_router(fine_tuning_routes.router)
app.include_router(admin_routes.router)


@serve.deployment(name="openai", ray_actor_options={"num_cpus": 0.25})
@serve.ingress(app)
class OpenAIServer:
    """The OpenAI routes, `/health` and `/metrics` (see module docstring); the routers reach this
    instance's `guard`, `fine_tuning`, `load` and `route` through their dependencies."""

    def __init__(
        self,
        engine,
        base: ServedBase,
        serve_config: ServeConfig,
        keys: KeyCheck,
        projects: ProjectDirectory,
        registry_path: str,
        runner=None,
        paths: ServicePaths | None = None,
    ):
        """`runner` and `paths`: the fine-tuning job runner's handle and the service's folders, when
        `serve.fine_tuning.enabled` (`fine_tuning_routes.py`)."""
        self.engine = engine
        self.stream_engine = engine.options(stream=True)
        self.serve = serve_config
        self.router = ModelRouter(Registry(registry_path), base)
        self.cache = ResponseCache(serve_config.response_cache_size)
        self.traffic = TrafficSampler(serve_config.traffic)
        self.feedback = FeedbackStore(registry_path)  # drift scores for /metrics
        self.hashes = ArtifactHashes()
        context = serve.get_replica_context()
        self.metrics = ServingMetrics(replica=context.replica_id.unique_id)
        self.guard = Guard(serve_config, keys, projects, self.metrics)
        self.board = MetricsBoard(context.app_name, context.replica_id.unique_id)
        self.replica, self.drain = context.replica_id.unique_id, DrainBoard(context.app_name)
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self.publish_metrics()), loop.create_task(self.watch_drain())]
        self.fine_tuning = None
        if paths:
            bases = {base.name, base.ref} - {None}
            jobs = FineTuningJobs.open(serve_config.fine_tuning, bases, base.trained_on, paths, projects)
            self.fine_tuning = FineTuningService(
                jobs, runner, serve_config.max_request_bytes, serve_config.max_json_depth
            )
        self.limits: Limits | None = None  # asked of the engine on the first request
        protocol()  # load vLLM's protocol now, not on the first request
        for warning in keys.warnings():
            logger.warning("rayft serve: %s", warning)

    async def publish_metrics(self) -> None:
        """Put this replica's metrics snapshot on the board every PUBLISH_S seconds."""
        while True:
            try:
                await asyncio.to_thread(self.board.publish, self.metrics.snapshot())
            except Exception as error:  # the GCS is briefly unreachable: try again next period
                logger.warning("rayft serve: cannot publish metrics: %s", error)
            await asyncio.sleep(PUBLISH_S)

    async def watch_drain(self) -> None:
        """Every POLL_S: once `rayft serve` is stopping, refuse new requests and report the ones
        still in flight (`drain.py`)."""
        while True:
            try:
                self.guard.draining = self.guard.draining or await asyncio.to_thread(self.drain.requested)
                if self.guard.draining:
                    await asyncio.to_thread(self.drain.report, self.replica, self.guard.in_flight)
            except Exception as error:  # the GCS is briefly unreachable: look again next period
                logger.warning("rayft serve: cannot read the drain flag: %s", error)
            await asyncio.sleep(POLL_S)

    def __del__(self):  # Serve calls it at graceful shutdown; Python may call it again at exit
        for task in self.tasks:
            task.cancel()
        with contextlib.suppress(Exception):  # Ray already gone: readers drop the stale snapshot
            self.board.withdraw()

    # --- routing -------------------------------------------------------------------------------
    def route(self, model: str, user: str | None, caller: Caller) -> Route:
        try:
            return self.router.resolve(model, user, caller)
        except UnknownModel as error:
            raise ApiError(404, str(error), param="model", code="model_not_found") from None

    async def load(self, model: str, caller: Caller) -> tuple[Route, dict]:
        """Load the adapter `model` names for `caller` (`POST /admin/adapters`); its files are
        checked against the registered hash as they are now."""
        route = self.route(model, None, caller)
        spec = self.adapter_spec(route, fresh=True)
        if spec is None:
            raise ApiError(400, f"{model!r} is the base model, not an adapter", param="model")
        refused = await self.call_engine(self.engine_for(spec).load_adapter.remote(**spec))
        if refused:
            raise self.engine_refusal(refused, param="model")
        return route, spec

    def engine_for(self, adapter: dict | None, stream: bool = False):
        """The engine handle for a request: an adapter's carries its ref, so that Serve's router for
        the engine deployment (`adapter_router.py`) sends it to a replica that holds the adapter."""
        engine = self.stream_engine if stream else self.engine
        return engine.options(multiplexed_model_id=adapter["ref"]) if adapter else engine

    async def engine_startup(self) -> list:
        """Where an engine replica's start-up went ([phase, seconds]), for `rayft serve` to print."""
        return (await self.call_engine(self.engine.describe.remote()))["startup"]

    async def load_adapter_by_ref(self, ref: str) -> str | None:
        """Load an adapter through a deployment handle (`serve.adapters` at start-up: the
        operator's, whatever project owns it); returns an error message or None."""
        try:
            await self.load(ref, Caller("", admin=True))
        except ApiError as error:
            return error.message
        return None

    def adapter_spec(self, route: Route, fresh: bool = False) -> dict | None:
        """What the engine needs to load the route's adapter: its ref, URI and registered weights
        hash. A local artifact is checked against that hash first (its files at most a second old;
        `fresh`: now); the engine checks a remote one after download."""
        if route.adapter is None:
            return None
        version = route.adapter
        expected = version.weights_hash
        if not expected:
            raise ApiError(
                503,
                f"{version.ref} has no weights hash in the registry, so its bytes cannot be "
                "verified; register the artifact again",
                param="model",
                code="artifact_unverified",
            )
        if not storage.is_remote(version.artifact_uri):
            try:
                actual = self.hashes.of(version.artifact_uri, fresh=fresh)
            except OSError as error:
                actual = f"unreadable ({error.strerror})"
            if actual != expected:
                raise ApiError(
                    503,
                    f"{version.ref}: the artifact at {version.artifact_uri} has weights hash "
                    f"{actual}, but the registry records {expected}: its files changed after "
                    "registration; refusing to serve it",
                    param="model",
                    code="artifact_mismatch",
                )
        return {"ref": version.ref, "uri": version.artifact_uri, "digest": expected}

    def engine_refusal(self, item: dict, param: str | None) -> ApiError:
        """The ApiError for an engine's {'error', 'status', 'code'} item (a 503 that may clear says
        when to retry)."""
        retry = self.serve.retry_after_s if item.get("retry") else None
        return ApiError(
            item["status"], item["error"], param=item.get("param", param), code=item.get("code"), retry_after=retry
        )

    # --- routes -------------------------------------------------------------------------------
    @app.get("/health")
    async def health(self) -> dict:
        """ok, or a 503 while draining, so load balancers stop sending requests here."""
        self.guard.refuse_if_draining()
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus(self) -> Response:
        try:
            others = await asyncio.to_thread(self.board.others)
        except Exception as error:  # the GCS is unreachable: this replica's series alone
            logger.warning("rayft serve: cannot read other replicas' metrics: %s", error)
            others = []
        drift = await asyncio.to_thread(self.feedback.drift_scores)
        return Response(self.metrics.exposition(others) + drift_exposition(drift), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", openapi_extra=api_schema.route(None, "ModelList"))
    async def models(self, request: Request, limit: PageLimit = None, after: PageAfter = None) -> dict:
        """Every model the caller may use; with `limit` (and `after`, the last id of the previous
        page), one page of them with `has_more`, `first_id` and `last_id`."""
        caller = self.guard.caller(request)
        self.guard.refuse_if_draining()
        cards = await asyncio.to_thread(self.router.model_cards, caller)
        listed = protocol().model_list(self.router.base.name, cards, self.serve.max_model_len)
        return listed if limit is None and after is None else protocol().model_page(listed, limit, after)

    @app.post("/v1/chat/completions", openapi_extra=api_schema.route("ChatRequest", "ChatCompletionResponse"))
    async def chat_completions(self, request: Request):
        return await self.serve_completion(request, chat=True)

    @app.post("/v1/completions", openapi_extra=api_schema.route("CompletionRequest", "CompletionResponse"))
    async def completions(self, request: Request):
        return await self.serve_completion(request, chat=False)

    # --- answering ----------------------------------------------------------------------------
    async def call_engine(self, pending):
        try:
            return await pending
        except ENGINE_GONE as error:
            raise ApiError(
                503,
                f"the model engine is restarting ({type(error).__name__}); retry shortly",
                retry_after=self.serve.retry_after_s,
            ) from None

    async def request_limits(self) -> Limits:
        """What requests are checked against; the engine's vocabulary and longest token, asked once."""
        if self.limits is None:
            engine = await self.call_engine(self.engine.describe.remote())
            self.limits = Limits(
                vocab_size=engine["vocab_size"],
                max_stop=self.serve.max_stop,
                max_prompt_chars=self.serve.max_prompt_tokens * engine["max_token_chars"],
            )
        return self.limits

    async def serve_completion(self, request: Request, chat: bool):
        """A chat or text completion: guards, the body read and checked, the model routed, then
        the answer (`cached_or_generated`)."""
        key, caller = self.guard.identify(request)
        self.guard.admit()
        route, streaming = None, False
        try:
            raw = await read_body(request, self.serve.max_request_bytes)
            body = parse_json(raw, self.serve.max_json_depth)
            edge = checked(body, chat, await self.request_limits())
            parsed = protocol().parse_chat(body) if chat else protocol().parse_completion(body)
            route = self.route(edge.model, edge.user, caller)
            tenant = "shared" if self.serve.share_response_cache else tenant_of(key)
            response = await self.cached_or_generated(
                request, body, parsed, route, chat, tenant_of(key), tenant, caller.project
            )
            streaming = isinstance(response, StreamingResponse)
            return response
        except ApiError as error:
            self.metrics.failed(route.served if route else None, error.status)
            raise
        except Exception:  # a bug of ours: FastAPI answers 500; count it against the model
            self.metrics.failed(route.served if route else None, 500)
            raise
        finally:
            if not streaming:
                self.guard.release()

    async def cached_or_generated(
        self, request: Request, body: dict, parsed, route: Route, chat: bool, asker: str, tenant: str, project: str
    ):
        """Answer a checked request for `asker` (its key's tenant, of `project`) from the cache of
        `tenant` (itself, or everyone's when the cache is shared), or from the engine."""
        kind = "chat" if chat else "completion"
        adapter = self.adapter_spec(route)
        counted = self.metrics.model(route.served)
        weights = adapter["digest"] if adapter else self.router.base.weights_hash or "unregistered"
        headers = {MODEL_HEADER: route.served, WEIGHTS_HEADER: weights}
        request_id, created = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}", int(time.time())
        key = None
        if parsed.stream or cache_bypassed(request) or not deterministic(body):
            headers[CACHE_HEADER] = "bypass"
        else:
            key = cache_key(tenant, route.served, weights, kind, body)
            cached = self.cache.get(key)
            if cached:
                counted.cache["hit"].inc()
                counted.requests[kind].inc()
                if cached.filled_by == asker:  # only the asker who filled it learns it was cached
                    headers[CACHE_HEADER] = "hit"
                return json_response(cached.renewed(request_id, created), headers)
            headers[CACHE_HEADER] = "miss"
        counted.cache[headers[CACHE_HEADER]].inc()

        if parsed.stream:
            outputs = self.engine_for(adapter, stream=True).stream.remote(parsed, adapter, request_id)
            first = await self.call_engine(outputs.__anext__())
        else:
            first = await self.call_engine(self.engine_for(adapter).complete.remote(parsed, adapter, request_id))
        if "error" in first:
            raise self.engine_refusal(first, param="model" if adapter else None)
        if parsed.stream:
            include_usage = bool(parsed.stream_options and parsed.stream_options.include_usage)
            finished = []

            def done(final: dict) -> None:  # once: at the stream's end, or when a never-started one is dropped
                if not finished:
                    finished.append(final)
                    if not final.get("finish"):  # cut short: the client left, so stop the engine too
                        outputs.cancel()  # (closing the events stops it only if they awaited it)
                    counted.answered(kind, final)
                    self.guard.release()

            events = protocol().sse_events(first, outputs, request_id, parsed.model, chat, include_usage, done)
            weakref.finalize(events, done, first)
            return StreamingResponse(events, media_type="text/event-stream", headers=headers)
        build = protocol().chat_response if chat else protocol().completion_response
        calls = {"tool_calls": first.get("tool_calls")} if chat else {}
        answer = build(
            request_id,
            created,
            parsed.model,
            first["text"],
            first["finish"],
            first["prompt_tokens"],
            first["completion_tokens"],
            **calls,
        )
        counted.answered(kind, first)
        if key:
            self.cache.put(key, CachedAnswer(answer, request_id, created, asker))
        if chat and not body.get("tools") and self.traffic.chosen():  # scrubbed and written off the event loop
            record = (route.served, weights, body["messages"], first["text"], project)
            asyncio.get_running_loop().run_in_executor(None, self.traffic.save, *record)
        return json_response(answer, headers)
