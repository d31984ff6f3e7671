"""The OpenAI files and fine-tuning jobs routes on the serving endpoint: same port, same keys, same
error bodies as the inference routes. What they do is the fine-tuning service's
(`rayft.service.jobs`), run in a thread, for the caller's project; its refusals become OpenAI
errors. Query and path parameters are declared with their bounds (a 400 names the one out of
range), request bodies are the service's strict models (`rayft.service.requests`). With
`serve.fine_tuning.enabled` off every route is a 404 saying so.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import FileResponse
from starlette.datastructures import UploadFile

from rayft.service.jobs import FineTuningJobs
from rayft.service.objects import ServiceError
from rayft.service.requests import CreateFineTuningJobRequest, FileUploadForm, parse
from rayft.serving import api_schema
from rayft.serving.errors import ApiError, parse_json
from rayft.serving.http_app import Admitted, Server, Who
from rayft.serving.validation import read_body

FORM_OVERHEAD = 64 * 1024  # multipart boundaries and the form fields, beyond the file itself
ID = {"min_length": 1, "max_length": 128}

router = APIRouter()


@dataclass
class FineTuningService:
    """What the routes need of the replica: the service's operations, the job runner's handle
    (woken when a job is created or cancelled) and the body limits."""

    jobs: FineTuningJobs
    runner: object | None
    max_request_bytes: int
    max_json_depth: int

    async def run(self, operation, *args):
        """Run a service operation in a thread; its refusal becomes the OpenAI error."""
        try:
            return await asyncio.to_thread(operation, *args)
        except ServiceError as error:
            raise ApiError(error.status, error.message, param=error.param, code=error.code) from None

    async def wake_runner(self) -> None:
        if self.runner is not None:
            await self.runner.wake.remote()


def service(server: Server) -> FineTuningService:
    if server.fine_tuning is None:
        raise ApiError(404, "the fine-tuning API is off on this server (serve.fine_tuning.enabled)", code="not_found")
    return server.fine_tuning


Service = Annotated[FineTuningService, Depends(service)]
Limit = Annotated[int, Query(ge=1, le=100, description="items per page")]
After = Annotated[str | None, Query(description="the last id of the previous page", **ID)]
FileId = Annotated[str, Path(**ID)]
JobId = Annotated[str, Path(**ID)]


# --- files ---------------------------------------------------------------------------------------
@router.post("/v1/files", openapi_extra=api_schema.upload_route())
async def upload_file(
    request: Request,
    who: Who,
    ft: Service,
    _slot: Admitted,
) -> dict:
    length = request.headers.get("content-length")
    if length is None or not length.isdigit():
        raise ApiError(411, "send the upload with a Content-Length header", code="length_required")
    if int(length) > ft.jobs.config.max_file_bytes + FORM_OVERHEAD:
        raise ApiError(413, ft.jobs.files.too_large().message, param="file", code="file_too_large")
    form = await request.form(max_files=1, max_fields=4)
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise ApiError(400, "file: a multipart file field named 'file' is required", param="file")
    fields = {name: value for name, value in form.items() if name != "file"}
    settings = await ft.run(parse, FileUploadForm, fields)
    stored = await ft.run(ft.jobs.files.save_upload, upload.file, upload.filename, settings, who.project)
    return stored.api()


@router.get("/v1/files", openapi_extra=api_schema.route(None, None))
async def list_files(
    who: Who,
    ft: Service,
    purpose: Annotated[Literal["fine-tune", "fine-tune-results"] | None, Query()] = None,
    after: After = None,
    limit: Limit = 20,
) -> dict:
    return await ft.run(ft.jobs.list_files, who, purpose, after, limit)


@router.get("/v1/files/{file_id}", openapi_extra=api_schema.route(None, None))
async def retrieve_file(file_id: FileId, who: Who, ft: Service) -> dict:
    return (await ft.run(ft.jobs.visible_file, who, file_id)).api()


@router.get("/v1/files/{file_id}/content", openapi_extra=api_schema.route(None, None))
async def file_content(file_id: FileId, who: Who, ft: Service) -> FileResponse:
    stored = await ft.run(ft.jobs.visible_file, who, file_id)
    return FileResponse(stored.path, filename=stored.filename, media_type="application/octet-stream")


@router.delete("/v1/files/{file_id}", openapi_extra=api_schema.route(None, None))
async def delete_file(file_id: FileId, who: Who, ft: Service) -> dict:
    return await ft.run(ft.jobs.delete_file, who, file_id)


# --- jobs ----------------------------------------------------------------------------------------
@router.post("/v1/fine_tuning/jobs", openapi_extra=api_schema.route("CreateFineTuningJobRequest", None))
async def create_job(request: Request, who: Who, ft: Service) -> dict:
    body = parse_json(await read_body(request, ft.max_request_bytes), ft.max_json_depth)
    asked = await ft.run(parse, CreateFineTuningJobRequest, body)
    job = await ft.run(ft.jobs.create, who, asked)
    await ft.wake_runner()
    return job.api()


@router.get("/v1/fine_tuning/jobs", openapi_extra=api_schema.route(None, None))
async def list_jobs(who: Who, ft: Service, after: After = None, limit: Limit = 20) -> dict:
    return await ft.run(ft.jobs.list_jobs, who, after, limit)


@router.get("/v1/fine_tuning/jobs/{fine_tuning_job_id}", openapi_extra=api_schema.route(None, None))
async def retrieve_job(fine_tuning_job_id: JobId, who: Who, ft: Service) -> dict:
    return (await ft.run(ft.jobs.visible_job, who, fine_tuning_job_id)).api()


@router.get("/v1/fine_tuning/jobs/{fine_tuning_job_id}/events", openapi_extra=api_schema.route(None, None))
async def job_events(fine_tuning_job_id: JobId, who: Who, ft: Service, after: After = None, limit: Limit = 20) -> dict:
    return await ft.run(ft.jobs.events, who, fine_tuning_job_id, after, limit)


@router.get("/v1/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints", openapi_extra=api_schema.route(None, None))
async def job_checkpoints(
    fine_tuning_job_id: JobId, who: Who, ft: Service, after: After = None, limit: Limit = 10
) -> dict:
    return await ft.run(ft.jobs.checkpoints, who, fine_tuning_job_id, after, limit)


@router.post("/v1/fine_tuning/jobs/{fine_tuning_job_id}/cancel", openapi_extra=api_schema.route(None, None))
async def cancel_job(fine_tuning_job_id: JobId, who: Who, ft: Service) -> dict:
    return await ask(ft, ft.jobs.cancel, who, fine_tuning_job_id)


@router.post("/v1/fine_tuning/jobs/{fine_tuning_job_id}/pause", openapi_extra=api_schema.route(None, None))
async def pause_job(fine_tuning_job_id: JobId, who: Who, ft: Service) -> dict:
    return await ask(ft, ft.jobs.pause, who, fine_tuning_job_id)


@router.post("/v1/fine_tuning/jobs/{fine_tuning_job_id}/resume", openapi_extra=api_schema.route(None, None))
async def resume_job(fine_tuning_job_id: JobId, who: Who, ft: Service) -> dict:
    return await ask(ft, ft.jobs.resume, who, fine_tuning_job_id)


async def ask(ft: FineTuningService, move, who, job_id: str) -> dict:
    """Cancel, pause or resume: the job as moved, the runner woken to act on it."""
    job = await ft.run(move, who, job_id)
    await ft.wake_runner()
    return job.api()
