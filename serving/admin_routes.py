"""The admin routes of the serving endpoint: `/admin/adapters` lists the engines' adapters by tier,
loads one by registry ref before any request asks for it, and unloads one once its requests
finish; all behind the admin keys (`auth.py`, `Depends(admin_caller)`). What loading means (the
registry ref resolved, its bytes checked against the registered hash, the engine asked) is the
ingress's (`OpenAIServer.load`); `rayft adapters list|load|unload` calls these routes.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Path, Request

from rayft.serving import api_schema
from rayft.serving.errors import ApiError, parse_json
from rayft.serving.fleet import engine_snapshots
from rayft.serving.http_app import Admin, Server
from rayft.serving.validation import read_body

router = APIRouter()


@router.get("/admin/adapters", openapi_extra=api_schema.route(None, None))
async def loaded_adapters(_admin: Admin, server: Server) -> dict:
    """Every engine replica's adapters by tier (`fleet.py`): one row per adapter and replica, tier
    `engine` while it answers requests, else `host`; the disk cache of the replica that answered;
    requests running and aborted, summed. The replica that answers reports its state now, the
    others their latest (at most a few seconds old) from the metrics board."""
    state = await server.call_engine(server.engine.state.remote())
    published = engine_snapshots(await asyncio.to_thread(server.board.others))
    replicas = [state] + [s for s in published if s["replica"] != state["replica"]]
    rows = [
        adapter | {"replica": replica["replica"], "tier": "engine" if adapter["in_flight"] else "host"}
        for replica in replicas
        for adapter in replica["adapters"]
    ]
    return {
        "data": rows,
        "disk": state["disk"],
        "replicas": [replica["replica"] for replica in replicas],
        "running": sum(replica["running"] for replica in replicas),
        "aborted": sum(replica["aborted"] for replica in replicas),
    }


@router.post("/admin/adapters", openapi_extra=api_schema.route("LoadAdapter", None))
async def load_adapter(request: Request, admin: Admin, server: Server) -> dict:
    """Load the adapter a registry ref (name, name:version or alias) names, before any request."""
    body = parse_json(await read_body(request, server.serve.max_request_bytes), server.serve.max_json_depth)
    model = body.get("model")
    if not isinstance(model, str):
        raise ApiError(400, 'body must be {"model": "<registry ref>"}', param="model")
    route, spec = await server.load(model, admin)
    return {"loaded": route.served, "digest": spec["digest"]}


@router.delete("/admin/adapters/{ref}", openapi_extra=api_schema.route(None, None))
async def unload_adapter(ref: Annotated[str, Path(min_length=1, max_length=256)], admin: Admin, server: Server) -> dict:
    version = server.route(ref, None, admin).served
    if not await server.call_engine(server.engine.unload_adapter.remote(version)):
        raise ApiError(404, f"{version!r} is not loaded", param="model", code="model_not_loaded")
    return {"unloaded": version}
