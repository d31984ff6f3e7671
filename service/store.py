"""Files, jobs and job events of the fine-tuning API, in the registry's database (`rayft.database`):
they survive a server restart, and every replica and the job runner see the same rows.

A row holds the object as JSON plus the columns queries need (project, status, size, expiry,
order). Lists are newest first, paged with an `after` cursor (an id) as OpenAI's are; a project
sees its own rows only (None: an admin, every row).
"""

from __future__ import annotations

from pathlib import Path

from rayft.database import Database
from rayft.home import home_path
from rayft.service.objects import FINISHED, Event, Job, JobStatus, StoredFile, new_id, now

SCHEMA = """
CREATE TABLE IF NOT EXISTS ft_files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, owner TEXT NOT NULL,
    purpose TEXT NOT NULL, body TEXT NOT NULL, bytes INTEGER NOT NULL DEFAULT 0, created_at INTEGER,
    expires_at INTEGER
);
CREATE TABLE IF NOT EXISTS ft_jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, owner TEXT NOT NULL,
    status TEXT NOT NULL, body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ft_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, job_id TEXT NOT NULL, body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ft_events_job ON ft_events (job_id, seq);
"""
# `owner` holds the project. Columns added after the first release:
ADDED_COLUMNS = {"ft_files": {"bytes": "INTEGER NOT NULL DEFAULT 0", "created_at": "INTEGER", "expires_at": "INTEGER"}}
UNFINISHED = tuple(s.value for s in JobStatus if not s.finished)


class OverQuota(Exception):
    """A project's file would go over one of its limits: which, the limit, and what it holds now."""

    def __init__(self, limit: str, value: int, held: int):
        super().__init__(limit)
        self.limit, self.value, self.held = limit, value, held


class StaleJob(Exception):
    """The job changed since it was read (cancelled meanwhile): the update was not made."""


class ServiceStore:
    """Rows of the fine-tuning API; safe for several processes."""

    def __init__(self, path: str | Path | None = None):
        self.db = Database(Path(path) if path else home_path("registry.db"), SCHEMA, ADDED_COLUMNS)

    # files
    def add_file(self, file: StoredFile, max_files: int | None = None, max_bytes: int | None = None) -> None:
        """Keep the file's row; with limits, only if the project stays within them (else
        OverQuota naming the limit), checked and written in one transaction."""
        with self.db.write() as db:
            count, total = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM ft_files WHERE owner = ?", (file.project,)
            ).fetchone()
            if max_files is not None and count + 1 > max_files:
                raise OverQuota("max_files", max_files, count)
            if max_bytes is not None and total + file.bytes > max_bytes:
                raise OverQuota("max_file_bytes_total", max_bytes, total)
            db.execute(
                "INSERT INTO ft_files (id, owner, purpose, body, bytes, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    file.id,
                    file.project,
                    file.purpose,
                    file.model_dump_json(),
                    file.bytes,
                    file.created_at,
                    file.expires_at,
                ),
            )

    def file(self, file_id: str) -> StoredFile | None:
        row = self.db.reader().execute("SELECT body FROM ft_files WHERE id = ?", (file_id,)).fetchone()
        return StoredFile.model_validate_json(row["body"]) if row else None

    def files(self, project: str | None, purpose: str | None, after: str | None, limit: int) -> tuple[list, bool]:
        rows = self._page("ft_files", {"owner": project, "purpose": purpose}, after, limit)
        return [StoredFile.model_validate_json(r["body"]) for r in rows[:limit]], len(rows) > limit

    def expired_files(self, at: int, created_before: int | None) -> list[StoredFile]:
        """Files whose `expires_at` has come, or (with `created_before`) created before that time."""
        query = "SELECT body FROM ft_files WHERE (expires_at IS NOT NULL AND expires_at <= ?) OR created_at < ?"
        rows = self.db.reader().execute(query, (at, -1 if created_before is None else created_before))
        return [StoredFile.model_validate_json(r["body"]) for r in rows]

    def delete_file(self, file_id: str) -> None:
        with self.db.write() as db:
            db.execute("DELETE FROM ft_files WHERE id = ?", (file_id,))

    # jobs
    def add_job(self, job: Job) -> None:
        with self.db.write() as db:
            db.execute(
                "INSERT INTO ft_jobs (id, owner, status, body) VALUES (?, ?, ?, ?)",
                (job.id, job.project, job.status.value, job.model_dump_json()),
            )

    def job(self, job_id: str) -> Job | None:
        row = self.db.reader().execute("SELECT body FROM ft_jobs WHERE id = ?", (job_id,)).fetchone()
        return Job.model_validate_json(row["body"]) if row else None

    def jobs(self, project: str | None, after: str | None, limit: int) -> tuple[list[Job], bool]:
        rows = self._page("ft_jobs", {"owner": project}, after, limit)
        return [Job.model_validate_json(r["body"]) for r in rows[:limit]], len(rows) > limit

    def jobs_in(self, *statuses: JobStatus, project: str | None = None) -> list[Job]:
        """Jobs in these states (of one project), oldest first (the queue's order)."""
        marks = ", ".join("?" * len(statuses))
        query = f"SELECT body FROM ft_jobs WHERE status IN ({marks})" + (" AND owner = ?" if project else "")
        values = [s.value for s in statuses] + ([project] if project else [])
        rows = self.db.reader().execute(query + " ORDER BY seq", values)
        return [Job.model_validate_json(r["body"]) for r in rows]

    def unfinished_jobs(self, project: str) -> int:
        marks = ", ".join("?" * len(FINISHED))
        query = f"SELECT COUNT(*) FROM ft_jobs WHERE owner = ? AND status NOT IN ({marks})"
        return self.db.reader().execute(query, (project, *[s.value for s in FINISHED])).fetchone()[0]

    def jobs_using(self, file_id: str) -> list[Job]:
        """Unfinished jobs that read this file."""
        return [j for j in self.jobs_in(*map(JobStatus, UNFINISHED)) if file_id in (j.training_file, j.validation_file)]

    def save_job(self, job: Job, expected_status: JobStatus | None = None) -> None:
        """Write the job; with `expected_status`, only if it is still in that state (else StaleJob),
        so the runner never overwrites a cancel that came in meanwhile."""
        with self.db.write() as db:
            if expected_status is not None:
                row = db.execute("SELECT status FROM ft_jobs WHERE id = ?", (job.id,)).fetchone()
                if row is None or row["status"] != JobStatus(expected_status).value:
                    raise StaleJob(job.id)
            db.execute(
                "UPDATE ft_jobs SET status = ?, body = ? WHERE id = ?",
                (job.status.value, job.model_dump_json(), job.id),
            )

    def move_job(self, job_id: str, allowed: frozenset[JobStatus], to: JobStatus) -> tuple[Job, JobStatus | None]:
        """A route's move (cancel, pause, resume) in one transaction: the job's status becomes `to`
        if it is one of `allowed`, nothing else of it changes (the runner may have moved it on since
        the route read it). Returns the job as it is now and its status before, None when it was
        not allowed (then nothing was written)."""
        with self.db.write() as db:
            row = db.execute("SELECT body FROM ft_jobs WHERE id = ?", (job_id,)).fetchone()
            job = Job.model_validate_json(row["body"])
            before = job.status
            if before not in allowed:
                return job, None
            job.status, job.finished_at = to, now() if to.finished else None
            db.execute(
                "UPDATE ft_jobs SET status = ?, body = ? WHERE id = ?", (to.value, job.model_dump_json(), job_id)
            )
        return job, before

    # events
    def add_event(self, job_id: str, message: str, *, level="info", kind="message", data=None) -> Event:
        event = Event(
            id=new_id("ftevent"), job_id=job_id, created_at=now(), level=level, message=message, type=kind, data=data
        )
        with self.db.write() as db:
            db.execute(
                "INSERT INTO ft_events (id, job_id, body) VALUES (?, ?, ?)",
                (event.id, job_id, event.model_dump_json()),
            )
        return event

    def events(self, job_id: str, after: str | None, limit: int) -> tuple[list[Event], bool]:
        rows = self._page("ft_events", {"job_id": job_id}, after, limit)
        return [Event.model_validate_json(r["body"]) for r in rows[:limit]], len(rows) > limit

    def metric_events(self, job_id: str) -> list[Event]:
        """The job's step metrics, oldest first."""
        rows = self.db.reader().execute("SELECT body FROM ft_events WHERE job_id = ? ORDER BY seq", (job_id,))
        return [e for e in (Event.model_validate_json(r["body"]) for r in rows) if e.type == "metrics"]

    def _page(self, table: str, where: dict, after: str | None, limit: int) -> list:
        """Up to limit + 1 rows, newest first, after the row with id `after` (none: from the newest)."""
        clauses = [f"{column} = ?" for column, value in where.items() if value is not None]
        values = [value for value in where.values() if value is not None]
        if after is not None:
            clauses.append(f"seq < COALESCE((SELECT seq FROM {table} WHERE id = ?), -1)")
            values.append(after)
        condition = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        query = f"SELECT body FROM {table} {condition} ORDER BY seq DESC LIMIT ?"
        return self.db.reader().execute(query, (*values, limit + 1)).fetchall()
