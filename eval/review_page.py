"""`rayft review serve CONFIG`: the review page, where experts judge versions' answers.

A static page (`review_page.html`: no CDN, no build step, keyboard shortcuts for everything) over a
small JSON API:

    GET  /             the page
    GET  /api/next     the next item for this reviewer: a prompt and its answers as slots A and B
                       (random order per reviewer and item; the versions are never sent), or none;
                       `?source=test|traffic` and `?model=NAME` (the page passes its own query on)
    POST /api/ratings  {item, choice: A | B | tie | both_bad} or {item, score: 1-5}, optional comment

Each reviewer has a key (`review.reviewers`, or `RAYFT_REVIEWER_KEYS=name=key,...`) and sends it as
a bearer key; the key says who they are. Without keys the page is refused unless the config says
`review.allow_unauthenticated`, and then reviewers type their name. A bad request is a 4xx that
names the field. A rating is stored with the reviewer, the time and both versions' refs and
weights hashes (`rayft.feedback`).
"""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field

from rayft.config import ConfigError, ReviewConfig
from rayft.feedback import FeedbackError, FeedbackStore, Rating
from rayft.keys import bearer_key, known

REVIEWER_KEYS_ENV = "RAYFT_REVIEWER_KEYS"
PAGE = Path(__file__).with_name("review_page.html")
CHOICES = {"A": 0, "B": 1}


class RatingBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item: int = Field(ge=1)
    choice: Literal["A", "B", "tie", "both_bad"] | None = None
    score: int | None = Field(None, ge=1, le=5)
    comment: str | None = Field(None, max_length=2000)


def reviewer_keys(config: ReviewConfig) -> dict[str, str]:
    """key → reviewer name, from the config and `RAYFT_REVIEWER_KEYS` (name=key,name=key)."""
    keys = {key: name for name, key in config.reviewers.items()}
    entries = [e.strip() for e in os.environ.get(REVIEWER_KEYS_ENV, "").split(",")]
    for position, entry in enumerate(entries, 1):
        if not entry:
            continue
        name, _, key = entry.partition("=")
        if not (name.strip() and key.strip()):  # the entry may be a bare key: never echo it
            raise ConfigError(f"{REVIEWER_KEYS_ENV}: entry {position} is not name=key")
        keys[key.strip()] = name.strip()
    if not keys and not config.allow_unauthenticated:
        raise ConfigError(
            "review: no reviewer keys (review.reviewers or RAYFT_REVIEWER_KEYS); set some, or set "
            "review.allow_unauthenticated to let anyone who reaches the page review under any name"
        )
    return keys


def refuse(status: int, message: str, param: str | None = None):
    raise HTTPException(status, {"message": message, "param": param})


def build_review_app(
    config: ReviewConfig, store: FeedbackStore | None = None, name: str | None = None, project: str | None = None
) -> FastAPI:
    """The review page and its API for the items of `name` and `project` (all when None): a team's
    experts see their project's items only."""
    keys, store = reviewer_keys(config), store or FeedbackStore()
    shown: dict[tuple[str, int], bool] = {}  # (reviewer, item) → answers swapped on screen
    lock = threading.Lock()
    app = FastAPI(title="rayft review", docs_url=None, redoc_url=None)

    def reviewer(request: Request) -> str:
        key = bearer_key(request.headers.get("authorization", ""))
        if keys:
            if not known(key, frozenset(keys)):
                refuse(401, "missing or unknown reviewer key (send 'Authorization: Bearer <key>')", "authorization")
            return keys[key]
        given = request.headers.get("x-reviewer", "").strip()
        if not given or len(given) > 64:
            refuse(401, "type your name (X-Reviewer: 1 to 64 characters)", "x-reviewer")
        return given

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text(encoding="utf-8")

    @app.get("/api/next")
    def next_item(request: Request, source: Literal["test", "traffic"] | None = None, model: str | None = None) -> dict:
        try:
            who = reviewer(request)
        except HTTPException as error:
            error.detail["open"] = not keys
            raise
        item = store.next_item(who, config.judgments_per_item, model or name, source, project)
        answer = None
        if item:
            order = [0, 1] if len(item.answers) == 2 else [0]
            swapped = len(order) == 2 and random.random() < 0.5
            with lock:
                shown[(who, item.id)] = swapped
            slots = zip("AB", reversed(order) if swapped else order)
            answer = {
                "id": item.id,
                "kind": "pair" if item.pairwise else "single",
                "prompt": item.prompt,
                "answers": [{"slot": slot, "text": item.answers[i].text} for slot, i in slots],
            }
        return {"reviewer": who, "item": answer, "progress": store.progress(who)}

    @app.post("/api/ratings", status_code=201)
    def rate(body: RatingBody, request: Request) -> dict:
        who = reviewer(request)
        item = store.item(body.item)
        if item is None or (project is not None and item.project != project):  # another project's: none
            refuse(404, f"no review item {body.item}", "item")
        if item.pairwise and body.choice is None:
            refuse(422, "this item compares two answers: give choice (A, B, tie or both_bad)", "choice")
        if not item.pairwise and body.score is None:
            refuse(422, "this item has one answer: give score (1 to 5)", "score")
        verdict = None
        if item.pairwise:
            with lock:
                swapped = shown.get((who, item.id))
            if swapped is None:
                refuse(409, f"item {item.id} was not shown to you: load the next item", "item")
            verdict = body.choice
            if verdict in CHOICES:  # the slot on screen → whose answer it was
                verdict = "candidate" if (CHOICES[verdict] == 0) != swapped else "other"
        mine, other = item.answers[0], item.answers[1] if item.pairwise else None
        rating = Rating(
            item=item.id,
            reviewer=who,
            candidate=mine.ref,
            candidate_hash=mine.weights_hash,
            other=other.ref if other else None,
            other_hash=other.weights_hash if other else None,
            verdict=verdict,
            score=None if item.pairwise else body.score,
            comment=(body.comment or "").strip() or None,
        )
        try:
            store.rate(rating)
        except FeedbackError as error:
            refuse(409, str(error), "item")
        with lock:
            shown.pop((who, item.id), None)
        return {"item": item.id, "saved": True}

    return app


def serve_review(
    config: ReviewConfig, port: int | None = None, name: str | None = None, project: str | None = None
) -> None:
    """Serve the review page until Ctrl-C."""
    import uvicorn

    app = build_review_app(config, name=name, project=project)
    print(f"review page: http://{config.host}:{port or config.port}/", flush=True)
    uvicorn.run(app, host=config.host, port=port or config.port, log_level="warning")
