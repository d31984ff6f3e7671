"""The OpenAI files and fine-tuning jobs routes on the serving endpoint: same port, same keys, same
error bodies as the inference routes. `OpenAIServer` inherits them; what they do is the fine-tuning
service's (`rayft.service.jobs`), run in a thread, its refusals turned into OpenAI errors. With
`serve.fine_tuning.enabled` off every route is a 404 saying so.

A key sees only its own files and jobs (its owner is a digest of the key, as for the response
cache); an admin key (`serve.admin_keys`) sees all.
"""

from __future__ import annotations

import asyncio

from fastapi import Request
from fastapi.responses import FileResponse
from starlette.datastructures import UploadFile

from rayft.service.jobs import Caller, FineTuningJobs
from rayft.service.objects import ServiceError
from rayft.serving import api_schema
from rayft.serving.cache import tenant_of
from rayft.serving.errors import ApiError, parse_json
from rayft.serving.http_app import app
from rayft.serving.validation import read_body

FORM_OVERHEAD = 64 * 1024  # multipart boundaries and the purpose field, beyond the file itself
DEFAULT_LIMIT = 20


class FineTuningRoutes:
    """Mixin of the ingress deployment; expects `jobs` (None when the API is off), `runner` (the job
    runner's handle), `serve`, `authorize`, `admit`, `release` and `refuse_if_draining`."""

    jobs: FineTuningJobs | None
    runner = None

    def caller(self, request: Request) -> tuple[FineTuningJobs, Caller]:
        if self.jobs is None:
            raise ApiError(
                404, "the fine-tuning API is off on this server (serve.fine_tuning.enabled)", code="not_found"
            )
        key = self.authorize(request)
        self.refuse_if_draining()
        return self.jobs, Caller(tenant_of(key), self.keys.is_admin(key))

    async def service(self, operation, *args):
        """Run a service operation in a thread; its refusal becomes the OpenAI error."""
        try:
            return await asyncio.to_thread(operation, *args)
        except ServiceError as error:
            raise ApiError(error.status, error.message, param=error.param, code=error.code) from None

    async def wake_runner(self) -> None:
        if self.runner is not None:
            await self.runner.wake.remote()

    # --- files ---------------------------------------------------------------------------------
    @app.post("/v1/files", openapi_extra=api_schema.upload_route())
    async def upload_file(self, request: Request) -> dict:
        jobs, caller = self.caller(request)
        length = request.headers.get("content-length")
        if length is None or not length.isdigit():
            raise ApiError(411, "send the upload with a Content-Length header", code="length_required")
        if int(length) > jobs.config.max_file_bytes + FORM_OVERHEAD:
            raise ApiError(413, jobs.files.too_large().message, param="file", code="file_too_large")
        self.admit()
        try:
            form = await request.form(max_files=1, max_fields=4)
            upload, purpose = form.get("file"), form.get("purpose")
            if not isinstance(upload, UploadFile):
                raise ApiError(400, "file: a multipart file field named 'file' is required", param="file")
            if not isinstance(purpose, str):
                raise ApiError(400, "purpose: a form field, 'fine-tune'", param="purpose")
            stored = await self.service(jobs.files.save_upload, upload.file, upload.filename, purpose, caller.owner)
            return stored.api()
        finally:
            self.release()

    @app.get("/v1/files", openapi_extra=api_schema.route(None, None))
    async def list_files(self, request: Request) -> dict:
        jobs, caller = self.caller(request)
        query = request.query_params
        return await self.service(jobs.list_files, caller, query.get("purpose"), query.get("after"), limit_of(request))

    @app.get("/v1/files/{file_id}", openapi_extra=api_schema.route(None, None))
    async def retrieve_file(self, file_id: str, request: Request) -> dict:
        jobs, caller = self.caller(request)
        return (await self.service(jobs.visible_file, caller, file_id)).api()

    @app.get("/v1/files/{file_id}/content", openapi_extra=api_schema.route(None, None))
    async def file_content(self, file_id: str, request: Request) -> FileResponse:
        jobs, caller = self.caller(request)
        stored = await self.service(jobs.visible_file, caller, file_id)
        return FileResponse(stored.path, filename=stored.filename, media_type="application/octet-stream")

    @app.delete("/v1/files/{file_id}", openapi_extra=api_schema.route(None, None))
    async def delete_file(self, file_id: str, request: Request) -> dict:
        jobs, caller = self.caller(request)
        return await self.service(jobs.delete_file, caller, file_id)

    # --- jobs ----------------------------------------------------------------------------------
    @app.post("/v1/fine_tuning/jobs", openapi_extra=api_schema.route("CreateFineTuningJob", None))
    async def create_job(self, request: Request) -> dict:
        jobs, caller = self.caller(request)
        body = parse_json(await read_body(request, self.serve.max_request_bytes), self.serve.max_json_depth)
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object", param=None)
        job = await self.service(jobs.create, caller, body)
        await self.wake_runner()
        return job.api()

    @app.get("/v1/fine_tuning/jobs", openapi_extra=api_schema.route(None, None))
    async def list_jobs(self, request: Request) -> dict:
        jobs, caller = self.caller(request)
        return await self.service(jobs.list_jobs, caller, request.query_params.get("after"), limit_of(request))

    @app.get("/v1/fine_tuning/jobs/{job_id}", openapi_extra=api_schema.route(None, None))
    async def retrieve_job(self, job_id: str, request: Request) -> dict:
        jobs, caller = self.caller(request)
        return (await self.service(jobs.visible_job, caller, job_id)).api()

    @app.get("/v1/fine_tuning/jobs/{job_id}/events", openapi_extra=api_schema.route(None, None))
    async def job_events(self, job_id: str, request: Request) -> dict:
        jobs, caller = self.caller(request)
        after = request.query_params.get("after")
        return await self.service(jobs.events, caller, job_id, after, limit_of(request))

    @app.get("/v1/fine_tuning/jobs/{job_id}/checkpoints", openapi_extra=api_schema.route(None, None))
    async def job_checkpoints(self, job_id: str, request: Request) -> dict:
        jobs, caller = self.caller(request)
        return await self.service(jobs.checkpoints, caller, job_id)

    @app.post("/v1/fine_tuning/jobs/{job_id}/cancel", openapi_extra=api_schema.route(None, None))
    async def cancel_job(self, job_id: str, request: Request) -> dict:
        jobs, caller = self.caller(request)
        job = await self.service(jobs.cancel, caller, job_id)
        await self.wake_runner()
        return job.api()


def limit_of(request: Request) -> int:
    value = request.query_params.get("limit", str(DEFAULT_LIMIT))
    if not value.isdigit():
        raise ApiError(400, f"limit: a whole number, got {value[:40]!r}", param="limit")
    return int(value)
