"""The admin routes of the serving endpoint: `/admin/adapters` lists the engine's loaded adapters,
loads one by registry ref before any request asks for it, and unloads one once its requests
finish; all behind the admin keys (`auth.py`). `OpenAIServer` inherits them, as it inherits the
fine-tuning routes; `rayft adapters list|load|unload` calls them.
"""

from __future__ import annotations

from fastapi import Request

from rayft.serving import api_schema
from rayft.serving.errors import ApiError, parse_json
from rayft.serving.http_app import app
from rayft.serving.routing import Route
from rayft.serving.validation import read_body


class AdapterAdminRoutes:
    """Mixin of the ingress deployment; expects `engine`, `serve`, `authorize`, `refuse_if_draining`,
    `route`, `adapter_spec`, `call_engine` and `engine_refusal`."""

    @app.get("/admin/adapters", openapi_extra=api_schema.route(None, None))
    async def loaded_adapters(self, request: Request) -> dict:
        """Loaded adapters with their requests in flight, and the engine's running requests."""
        self.authorize(request, admin=True)
        self.refuse_if_draining()
        state = await self.call_engine(self.engine.state.remote())
        return {"data": state["adapters"], "running": state["running"], "aborted": state["aborted"]}

    @app.post("/admin/adapters", openapi_extra=api_schema.route("LoadAdapter", None))
    async def load_adapter(self, request: Request) -> dict:
        """Load the adapter a registry ref (name, name:version or alias) names, before any request."""
        self.authorize(request, admin=True)
        self.refuse_if_draining()
        body = parse_json(await read_body(request, self.serve.max_request_bytes), self.serve.max_json_depth)
        model = body.get("model")
        if not isinstance(model, str):
            raise ApiError(400, 'body must be {"model": "<registry ref>"}', param="model")
        route, spec = await self.load(model)
        return {"loaded": route.served, "digest": spec["digest"]}

    async def load_adapter_by_ref(self, ref: str) -> str | None:
        """Load an adapter through a deployment handle (`serve.adapters` at start-up); returns an
        error message or None."""
        try:
            await self.load(ref)
        except ApiError as error:
            return error.message
        return None

    async def load(self, model: str) -> tuple[Route, dict]:
        route = self.route(model, None)
        spec = self.adapter_spec(route, fresh=True)  # an admin load always sees the files as they are now
        if spec is None:
            raise ApiError(400, f"{model!r} is the base model, not an adapter", param="model")
        refused = await self.call_engine(self.engine.load_adapter.remote(**spec))
        if refused:
            raise self.engine_refusal(refused, param="model")
        return route, spec

    @app.delete("/admin/adapters/{ref}", openapi_extra=api_schema.route(None, None))
    async def unload_adapter(self, ref: str, request: Request) -> dict:
        self.authorize(request, admin=True)
        self.refuse_if_draining()
        version = self.route(ref, None).served
        if not await self.call_engine(self.engine.unload_adapter.remote(version)):
            raise ApiError(404, f"{version!r} is not loaded", param="model", code="model_not_loaded")
        return {"unloaded": version}
