#!/usr/bin/env python3
"""Extract the pinned subset of OpenAI's OpenAPI document used by the conformance tests.

Usage:
    python extract.py PATH/TO/openapi.json [--commit SHA] [--path openapi.json]
                      [--fetched YYYY-MM-DD] [-o openapi-subset.json]

Takes the full ``openapi.json`` published in github.com/openai/openai-openapi and
writes ``openapi-subset.json``: the ``components.schemas`` entries named in ROOTS
plus every schema they reference transitively (``$ref`` closure).  Schemas are
copied verbatim (names and ``#/components/schemas/X`` refs unchanged), so the
subset can be registered as one resource in a ``referencing.Registry``.
Only the standard library is used.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

REF_PREFIX = "#/components/schemas/"

# Schemas the tests validate against (responses, request bodies, error body).
ROOTS = [
    "OpenAIFile",
    "ListFilesResponse",
    "DeleteFileResponse",
    "CreateFileRequest",
    "FineTuningJob",
    "ListPaginatedFineTuningJobsResponse",
    "FineTuningJobEvent",
    "ListFineTuningJobEventsResponse",
    "FineTuningJobCheckpoint",
    "ListFineTuningJobCheckpointsResponse",
    "CreateFineTuningJobRequest",
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateCompletionResponse",
    "ListModelsResponse",
    "Model",
    "ErrorResponse",
    "Error",
]

# Routes (relative to the document's server URL, https://api.openai.com/v1) whose
# schema is recorded in the subset's "routes" map: (method, path, what).
# what: "200" = 200 application/json response, "200-sse" = 200 text/event-stream,
# "request" = request body, "429" = the 429 response (via #/components/responses).
ROUTES = [
    ("get", "/files", "200"),
    ("post", "/files", "request"),
    ("post", "/files", "200"),
    ("get", "/files/{file_id}", "200"),
    ("delete", "/files/{file_id}", "200"),
    ("get", "/files/{file_id}/content", "200"),
    ("post", "/fine_tuning/jobs", "request"),
    ("post", "/fine_tuning/jobs", "200"),
    ("get", "/fine_tuning/jobs", "200"),
    ("get", "/fine_tuning/jobs/{fine_tuning_job_id}", "200"),
    ("post", "/fine_tuning/jobs/{fine_tuning_job_id}/cancel", "200"),
    ("post", "/fine_tuning/jobs/{fine_tuning_job_id}/pause", "200"),
    ("post", "/fine_tuning/jobs/{fine_tuning_job_id}/resume", "200"),
    ("get", "/fine_tuning/jobs/{fine_tuning_job_id}/events", "200"),
    ("get", "/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints", "200"),
    ("get", "/models", "200"),
    ("get", "/models/{model}", "200"),
    ("post", "/chat/completions", "200"),
    ("post", "/chat/completions", "200-sse"),
    ("post", "/completions", "200"),
    ("post", "/chat/completions", "429"),
]

# Routes whose documented example answer is a job: the status it shows is recorded in the subset's
# "example_statuses". The pause route's example answers "paused", a status FineTuningJob's enum
# does not list; the conformance check accepts the statuses OpenAI's own examples answer.
EXAMPLE_STATUSES = [
    ("post", "/fine_tuning/jobs/{fine_tuning_job_id}/pause"),
    ("post", "/fine_tuning/jobs/{fine_tuning_job_id}/resume"),
]


def _refs(node, out: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            out.add(ref)
        for value in node.values():
            _refs(value, out)
    elif isinstance(node, list):
        for value in node:
            _refs(value, out)


def closure(schemas: dict, roots: list[str]) -> list[str]:
    seen: list[str] = []
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        if name not in schemas:
            raise SystemExit(f"schema {name!r} not in components.schemas")
        seen.append(name)
        found: set[str] = set()
        _refs(schemas[name], found)
        for ref in sorted(found):
            if not ref.startswith(REF_PREFIX):
                raise SystemExit(f"{name}: unsupported $ref {ref!r}")
            # a ref may point inside a schema (#/components/schemas/X/properties/y)
            todo.append(ref[len(REF_PREFIX) :].split("/", 1)[0])
    return sorted(seen)


def _schema_name(schema) -> str:
    if isinstance(schema, dict) and isinstance(schema.get("$ref"), str):
        return schema["$ref"].removeprefix(REF_PREFIX)
    return json.dumps(schema, sort_keys=True)  # inline schema


def route_map(doc: dict) -> dict[str, str]:
    base = "/v1"
    out: dict[str, str] = {}
    for method, path, what in ROUTES:
        op = doc["paths"][path][method]
        key = f"{method.upper()} {base}{path}"
        if what == "request":
            content = op["requestBody"]["content"]
            ctype = next(iter(content))
            out[f"{key} (request {ctype})"] = _schema_name(content[ctype]["schema"])
            continue
        status = "429" if what == "429" else "200"
        resp = op["responses"][status]
        if "$ref" in resp:  # #/components/responses/X
            resp = doc["components"]["responses"][resp["$ref"].rsplit("/", 1)[1]]
        ctype = "text/event-stream" if what == "200-sse" else "application/json"
        label = key if what == "200" else f"{key} ({status} {ctype})"
        out[label] = _schema_name(resp["content"][ctype]["schema"])
    return out


def example_statuses(doc: dict) -> dict[str, str]:
    out: dict[str, str] = {}
    for method, path in EXAMPLE_STATUSES:
        example = json.loads(doc["paths"][path][method]["x-oaiMeta"]["examples"]["response"])
        out[f"{method.upper()} /v1{path}"] = example["status"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("openapi_json", type=Path)
    ap.add_argument("--commit", default="unknown", help="openai/openai-openapi commit SHA")
    ap.add_argument("--path", default="openapi.json", help="path of the file in that repo")
    ap.add_argument("--fetched", default=datetime.date.today().isoformat())
    ap.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path(__file__).with_name("openapi-subset.json"),
    )
    args = ap.parse_args(argv)

    doc = json.loads(args.openapi_json.read_text(encoding="utf-8"))
    schemas = doc["components"]["schemas"]
    names = closure(schemas, ROOTS)
    subset = {
        "source": {
            "repository": "openai/openai-openapi",
            "commit": args.commit,
            "path": args.path,
            "info_version": doc["info"]["version"],
            "openapi": doc["openapi"],
            "fetched": args.fetched,
        },
        "routes": route_map(doc),
        "example_statuses": example_statuses(doc),
        "components": {"schemas": {n: schemas[n] for n in names}},
    }
    args.output.write_text(json.dumps(subset, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {args.output}: {len(names)} schemas", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
