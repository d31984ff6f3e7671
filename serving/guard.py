"""The ingress's guards, shared by every route: who the caller is (401/403, `auth.py`; their project,
`rayft.projects`), whether the replica is draining (503 with Retry-After), and the replica's
concurrency limit (429 with Retry-After). Every refusal is counted in the replica's metrics.

The routers (`fine_tuning_routes.py`, `admin_routes.py`) reach the guard of the replica that
answers through FastAPI dependencies (`http_app.py`): `Depends(caller)`, `Depends(admitted)`.
"""

from __future__ import annotations

from fastapi import Request

from rayft.config import ServeConfig
from rayft.projects import Caller, ProjectDirectory
from rayft.serving.auth import KeyCheck, bearer_key
from rayft.serving.errors import ApiError
from rayft.serving.metrics import ServingMetrics


class Guard:
    def __init__(self, serve_config: ServeConfig, keys: KeyCheck, projects: ProjectDirectory, metrics: ServingMetrics):
        self.serve, self.keys, self.projects, self.metrics = serve_config, keys, projects, metrics
        self.draining = False
        self.in_flight = 0

    def authorize(self, request: Request, admin: bool = False) -> str | None:
        """The request's key, once it may use the route (401/403 otherwise)."""
        key = bearer_key(request.headers.get("authorization", ""))
        try:
            if admin:
                self.keys.admin(key)
            else:
                self.keys.user(key)
        except ApiError as error:
            self.metrics.failed(None, error.status)
            raise
        return key

    def identify(self, request: Request, admin: bool = False) -> tuple[str | None, Caller]:
        """The request's key (once it may use the route) and who it is: its project, and whether it
        is an admin key."""
        key = self.authorize(request, admin)
        return key, self.projects.caller(key, self.keys.is_admin(key))

    def caller(self, request: Request, admin: bool = False) -> Caller:
        return self.identify(request, admin)[1]

    def refuse_if_draining(self) -> None:
        if self.draining:
            self.metrics.failed(None, 503)
            raise ApiError(
                503,
                "this server is shutting down; retry shortly (another replica will answer)",
                code="shutting_down",
                retry_after=self.serve.retry_after_s,
            )

    def admit(self) -> None:
        self.refuse_if_draining()
        if self.in_flight >= self.serve.max_concurrent_requests:
            self.metrics.failed(None, 429)
            raise ApiError(
                429,
                f"this replica is answering {self.in_flight} requests, its limit; retry shortly",
                code="too_many_requests",
                retry_after=self.serve.retry_after_s,
            )
        self.in_flight += 1
        self.metrics.in_flight.set(self.in_flight)

    def release(self) -> None:
        self.in_flight -= 1
        self.metrics.in_flight.set(self.in_flight)
