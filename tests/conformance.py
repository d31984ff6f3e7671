"""Responses checked against OpenAI's published schemas: the pinned subset of OpenAI's OpenAPI
document in openai_schema/ (its source and version in openai_schema/README.md), validated with
jsonschema's Draft 2020-12 validator. Two OpenAPI 3.0 leftovers in the document read differently in
2020-12 (`nullable: true`, a boolean `exclusiveMinimum`); a copy is rewritten on load, the pinned
file never is. The same copy accepts the job statuses OpenAI's own route examples answer beyond
FineTuningJob's enum (`paused`, from the pause route's example; recorded by extract.py)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

SUBSET = Path(__file__).parent / "openai_schema" / "openapi-subset.json"
URI = "urn:openai"


def to_2020_12(node):
    """The OpenAPI 3.0 spellings in `node` as JSON Schema 2020-12 says them."""
    if isinstance(node, list):
        return [to_2020_12(v) for v in node]
    if not isinstance(node, dict):
        return node
    node = {k: to_2020_12(v) for k, v in node.items()}
    if isinstance(node.get("exclusiveMinimum"), bool):
        if node.pop("exclusiveMinimum") and "minimum" in node:
            node["exclusiveMinimum"] = node.pop("minimum")
    if node.pop("nullable", False) is True:
        node = {"anyOf": [node, {"type": "null"}]}
    return node


@functools.cache
def document() -> dict:
    return json.loads(SUBSET.read_text())


def with_example_statuses(doc: dict) -> dict:
    """A copy of `doc` whose FineTuningJob status enum also holds the statuses OpenAI's route
    examples answer (its pause route answers a `paused` job)."""
    copy = json.loads(json.dumps(doc))
    enum = copy["components"]["schemas"]["FineTuningJob"]["properties"]["status"]["enum"]
    enum += [s for s in dict.fromkeys(doc["example_statuses"].values()) if s not in enum]
    return copy


@functools.cache
def validator(name: str):
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    contents = to_2020_12(with_example_statuses(document()))
    resource = Resource.from_contents(contents, default_specification=DRAFT202012)
    registry = Registry().with_resource(URI, resource)
    return Draft202012Validator({"$ref": f"{URI}#/components/schemas/{name}"}, registry=registry)


def violations(name: str, value) -> list[str]:
    """Where `value` breaks OpenAI's schema `name` (empty when it conforms)."""
    errors = validator(name).iter_errors(value)
    return [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors]


def assert_conforms(name: str, value) -> None:
    found = violations(name, value)
    assert not found, f"not an OpenAI {name}: {found[:5]}"


def route_schema(method: str, path: str) -> str:
    """The schema OpenAI's document gives a route's 200 JSON response (`GET /v1/files`)."""
    return document()["routes"][f"{method} {path}"]
