"""What people and production say about versions: review items, reviewers' ratings of them, and drift
scores, in the registry's SQLite database (`$RAYFT_HOME/registry.db`). A leaf module: it imports no stage.

A review item is a prompt with one answer (rated 1–5) or two answers (judged side by side) from
named versions, each with the weights hash it was produced with. A rating records its reviewer,
time, and both versions' refs and weights hashes, so it stays tied to the exact bytes judged. One
reviewer rates an item once. `rayft drift` records a drift score per version; `/metrics` exports it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from rayft.database import Database
from rayft.home import home_path

SCHEMA = """
CREATE TABLE IF NOT EXISTS review_items (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, candidate TEXT NOT NULL, source TEXT NOT NULL,
    prompt TEXT NOT NULL, answers TEXT NOT NULL, reference TEXT, created_at REAL NOT NULL, project TEXT,
    UNIQUE (candidate, source, prompt, answers)
);
CREATE TABLE IF NOT EXISTS ratings (
    id INTEGER PRIMARY KEY AUTOINCREMENT, item INTEGER NOT NULL REFERENCES review_items (id),
    reviewer TEXT NOT NULL, verdict TEXT, score INTEGER, comment TEXT,
    candidate TEXT NOT NULL, candidate_hash TEXT, other TEXT, other_hash TEXT, created_at REAL NOT NULL,
    UNIQUE (item, reviewer)
);
CREATE TABLE IF NOT EXISTS drift_scores (
    ref TEXT NOT NULL, feature TEXT NOT NULL, score REAL NOT NULL, drifted INTEGER NOT NULL,
    report TEXT, created_at REAL NOT NULL, PRIMARY KEY (ref, feature)
);
"""
ADDED_COLUMNS = {"review_items": {"project": "TEXT"}}  # stores made before projects existed

# A pairwise verdict, said of the candidate: it won, the other won, a tie, or both answers are bad.
VERDICTS = ("candidate", "other", "tie", "both_bad")
SCORES = range(1, 6)


class FeedbackError(ValueError):
    """A rating that cannot be recorded (unknown item, wrong kind, rated twice)."""


@dataclass
class Answer:
    """One version's answer: its registry ref (or the base's name), weights hash and text."""

    ref: str
    weights_hash: str | None
    text: str


@dataclass
class ReviewItem:
    """A prompt (chat messages) with one answer to rate or two to compare; answers[0] is the candidate's."""

    id: int
    name: str
    candidate: str
    source: str
    prompt: list[dict]
    answers: list[Answer]
    reference: str | None = None
    created_at: float = 0.0
    project: str | None = None  # whose data the prompt is (`rayft.projects`); None: the endpoint's own

    @property
    def pairwise(self) -> bool:
        return len(self.answers) == 2


@dataclass
class Rating:
    item: int
    reviewer: str
    candidate: str
    candidate_hash: str | None
    other: str | None = None
    other_hash: str | None = None
    verdict: str | None = None
    score: int | None = None
    comment: str | None = None
    created_at: float = field(default_factory=time.time)


def _item(row) -> ReviewItem:
    return ReviewItem(
        id=row["id"],
        name=row["name"],
        candidate=row["candidate"],
        source=row["source"],
        prompt=json.loads(row["prompt"]),
        answers=[Answer(**a) for a in json.loads(row["answers"])],
        reference=row["reference"],
        created_at=row["created_at"],
        project=row["project"],
    )


def _rating(row) -> Rating:
    return Rating(**{k: row[k] for k in row.keys() if k != "id"})


class FeedbackStore:
    """Review items, ratings and drift scores; safe for several processes at once (`rayft.database`)."""

    def __init__(self, path: str | Path | None = None):
        self.db = Database(Path(path) if path else home_path("registry.db"), SCHEMA, ADDED_COLUMNS)

    def add_items(
        self,
        name: str,
        candidate: str,
        source: str,
        items: list[tuple[list[dict], list[Answer], str | None]],
        project: str | None = None,
    ) -> int:
        """Add (prompt, answers, reference) items for `candidate`, of `project`; an item already there
        is kept once. Returns how many are new."""
        now, added = time.time(), 0
        with self.db.write() as db:
            for prompt, answers, reference in items:
                cursor = db.execute(
                    "INSERT OR IGNORE INTO review_items (name, candidate, source, prompt, answers, reference,"
                    " created_at, project) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        name,
                        candidate,
                        source,
                        json.dumps(prompt, ensure_ascii=False, sort_keys=True),
                        json.dumps([a.__dict__ for a in answers], ensure_ascii=False, sort_keys=True),
                        reference,
                        now,
                        project,
                    ),
                )
                added += cursor.rowcount
        return added

    def item(self, item_id: int) -> ReviewItem | None:
        row = self.db.reader().execute("SELECT * FROM review_items WHERE id = ?", (item_id,)).fetchone()
        return _item(row) if row else None

    def next_item(
        self,
        reviewer: str,
        judgments_per_item: int,
        name: str | None = None,
        source: str | None = None,
        project: str | None = None,
    ) -> ReviewItem | None:
        """The next item (of `name`, from `source`, of `project`) for `reviewer`: one they have not
        rated that fewer than `judgments_per_item` reviewers have, those others started first (so
        items get the overlap agreement needs), then oldest."""
        row = (
            self.db.reader()
            .execute(
                "SELECT i.*, (SELECT COUNT(*) FROM ratings r WHERE r.item = i.id) AS seen FROM review_items i"
                " WHERE (? IS NULL OR i.name = ?) AND (? IS NULL OR i.source = ?) AND (? IS NULL OR i.project = ?)"
                " AND NOT EXISTS (SELECT 1 FROM ratings r WHERE r.item = i.id AND r.reviewer = ?)"
                " AND (SELECT COUNT(*) FROM ratings r WHERE r.item = i.id) < ? ORDER BY seen DESC, i.id LIMIT 1",
                (name, name, source, source, project, project, reviewer, judgments_per_item),
            )
            .fetchone()
        )
        return _item(row) if row else None

    def rate(self, rating: Rating) -> Rating:
        """Record a rating; refused (FeedbackError) when this reviewer already rated the item."""
        columns = {k: v for k, v in rating.__dict__.items()}
        with self.db.write() as db:
            if db.execute(
                "SELECT 1 FROM ratings WHERE item = ? AND reviewer = ?", (rating.item, rating.reviewer)
            ).fetchone():
                raise FeedbackError(f"{rating.reviewer} already rated item {rating.item}")
            db.execute(
                f"INSERT INTO ratings ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                tuple(columns.values()),
            )
        return rating

    def ratings(self, candidate: str | None = None, source: str | None = None) -> list[Rating]:
        """Ratings (of `candidate`'s items, from `source` items), oldest first."""
        rows = (
            self.db.reader()
            .execute(
                "SELECT r.* FROM ratings r JOIN review_items i ON i.id = r.item"
                " WHERE (? IS NULL OR r.candidate = ?) AND (? IS NULL OR i.source = ?) ORDER BY r.id",
                (candidate, candidate, source, source),
            )
            .fetchall()
        )
        return [_rating(r) for r in rows]

    def progress(self, reviewer: str) -> dict[str, int]:
        """How many items `reviewer` rated, and how many there are."""
        db = self.db.reader()
        (rated,) = db.execute("SELECT COUNT(*) FROM ratings WHERE reviewer = ?", (reviewer,)).fetchone()
        (items,) = db.execute("SELECT COUNT(*) FROM review_items").fetchone()
        return {"rated": rated, "items": items}

    def set_drift(self, ref: str, scores: dict[str, tuple[float, bool]], report: str | None) -> None:
        """Replace `ref`'s drift scores: {feature: (score, drifted)}."""
        now = time.time()
        with self.db.write() as db:
            db.execute("DELETE FROM drift_scores WHERE ref = ?", (ref,))
            db.executemany(
                "INSERT INTO drift_scores VALUES (?, ?, ?, ?, ?, ?)",
                [(ref, feature, score, int(drifted), report, now) for feature, (score, drifted) in scores.items()],
            )

    def drift_scores(self) -> list[dict]:
        """Every version's latest drift scores: ref, feature, score, drifted."""
        rows = self.db.reader().execute("SELECT * FROM drift_scores ORDER BY ref, feature").fetchall()
        return [{k: row[k] for k in row.keys()} for row in rows]
