"""Uploaded files: checked against the per-file limits (413 naming the limit), a format data
prepare reads (400 naming the file) and the project's quotas (`max_files`: 429,
`max_file_bytes_total`: 413), stored under `serve.fine_tuning.files_path` (default
`$RAYFT_HOME/files`), one folder per file id, with the name the client gave (its suffix tells the
format). A file expires at its `expires_after` (OpenAI's), or after
`serve.fine_tuning.file_retention_days`; the job runner's sweep deletes it then, unless an
unfinished job still reads it.

The folder must be one the cluster's jobs can read: the head's disk for a local cluster, a shared
volume on a real one. What a file holds (chat records, or preference pairs for DPO) is told from
its first record (`holds_preference_pairs`), when a job names it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import BinaryIO

from rayft.config import ConfigError, FineTuningConfig
from rayft.data.inspect import count_records
from rayft.data.sources import file_format, file_records
from rayft.data.validate import detect_format
from rayft.home import rayft_home
from rayft.projects import ProjectDirectory
from rayft.service.objects import FINE_TUNE, RESULTS, ServiceError, StoredFile, new_id, now
from rayft.service.requests import FileUploadForm
from rayft.service.store import OverQuota, ServiceStore

CHUNK = 1 << 20
DAY_S = 86400


def files_root(config: FineTuningConfig) -> str:
    """Where uploads go: `serve.fine_tuning.files_path`, default `$RAYFT_HOME/files`."""
    return str(Path(config.files_path or rayft_home() / "files").resolve())


class FileStore:
    def __init__(self, config: FineTuningConfig, store: ServiceStore, root: str, projects: ProjectDirectory):
        self.config, self.store, self.root, self.projects = config, store, Path(root), projects

    def save_upload(self, source: BinaryIO, filename: str, form: FileUploadForm, project: str) -> StoredFile:
        """Keep an uploaded training file; refuses what no job could use, before any job is made."""
        name = Path(filename or "").name
        try:
            file_format(Path(name))
        except ConfigError as error:
            raise ServiceError(400, f"file: {error}", "file", "invalid_file_format") from None
        stored = self.write(source, name, FINE_TUNE, project)
        if form.expires_seconds is not None:
            stored.expires_at = stored.created_at + form.expires_seconds
        try:
            records = count_records(stored.path)
        except (ValueError, OSError) as error:  # a table file pyarrow cannot read
            self.remove(stored)
            raise ServiceError(
                400, f"file: {name} cannot be read as {file_format(Path(name))}: {error}", "file"
            ) from None
        if records > self.config.max_file_records:
            self.remove(stored)
            raise ServiceError(
                413,
                f"file: {name} holds {records} records; the limit is {self.config.max_file_records} "
                "(serve.fine_tuning.max_file_records)",
                "file",
                "file_too_large",
            )
        limits = self.projects.limits(project)
        try:
            self.store.add_file(stored, limits.max_files, limits.max_file_bytes_total)
        except OverQuota as over:
            self.remove(stored)
            raise self.over_quota(project, over) from None
        return stored

    def over_quota(self, project: str, over: OverQuota) -> ServiceError:
        setting = self.projects.limit_setting(project, over.limit)
        if over.limit == "max_files":
            return ServiceError(
                429,
                f"file: this project keeps {over.held} files, its limit ({setting} = {over.value}); delete some first",
                "file",
                "files_limit_exceeded",
            )
        return ServiceError(
            413,
            f"file: this project keeps {over.held} bytes of files and this one would take it over its limit "
            f"({setting} = {over.value}); delete some first",
            "file",
            "storage_limit_exceeded",
        )

    def write(self, source: BinaryIO, name: str, purpose: str, project: str) -> StoredFile:
        """Copy the bytes into a new folder, stopping at the size limit (413)."""
        file_id = new_id("file")
        folder = self.root / file_id
        folder.mkdir(parents=True)
        path, size = folder / name, 0
        with path.open("wb") as out:
            while chunk := source.read(CHUNK):
                size += len(chunk)
                if size > self.config.max_file_bytes:
                    out.close()
                    shutil.rmtree(folder, ignore_errors=True)
                    raise self.too_large()
                out.write(chunk)
        return StoredFile(
            id=file_id, project=project, filename=name, purpose=purpose, bytes=size, path=str(path), created_at=now()
        )

    def too_large(self) -> ServiceError:
        return ServiceError(
            413,
            f"file: larger than {self.config.max_file_bytes} bytes (serve.fine_tuning.max_file_bytes)",
            "file",
            "file_too_large",
        )

    def keep_result(self, project: str, path: Path, name: str) -> StoredFile:
        """A job's result (rejects, metrics) as a file its project can download (not held to the
        project's quotas: the job made it, not an upload)."""
        with path.open("rb") as source:
            stored = self.write(source, name, RESULTS, project)
        self.store.add_file(stored)
        return stored

    def delete(self, stored: StoredFile) -> None:
        """Delete a file, refused (409) while an unfinished job reads it."""
        using = self.store.jobs_using(stored.id)
        if using:
            raise ServiceError(
                409,
                f"file_id: {stored.id} is used by {using[0].id} ({using[0].status.value}); cancel it or wait for it "
                "to end",
                "file_id",
                "file_in_use",
            )
        self.store.delete_file(stored.id)
        self.remove(stored)

    def sweep(self) -> list[str]:
        """Delete the files that expired (`expires_after`, or older than file_retention_days), except
        those an unfinished job still reads (deleted once it ends); their ids."""
        retention = self.config.file_retention_days
        cutoff = now() - round(retention * DAY_S) if retention else None
        deleted = []
        for stored in self.store.expired_files(now(), cutoff):
            if not self.store.jobs_using(stored.id):
                self.store.delete_file(stored.id)
                self.remove(stored)
                deleted.append(stored.id)
        return deleted

    def remove(self, stored: StoredFile) -> None:
        shutil.rmtree(Path(stored.path).parent, ignore_errors=True)


def first_record(path: str) -> object | None:
    """A stored file's first record, parsed (None when it has none, or it is not JSON): a JSONL file
    is read up to that record, other containers whole (as their upload was)."""
    if file_format(Path(path)) == "jsonl":
        with open(path, "rb") as lines:
            raw = next((line for line in lines if line.strip()), None)
    else:
        rows = file_records(path, Path(path).read_bytes())
        raw = rows[0][1] if rows else None
    try:
        return None if raw is None else json.loads(raw)
    except ValueError:  # not JSON (or not UTF-8): validation names the line
        return None


def holds_preference_pairs(path: str) -> bool:
    """Whether a file holds preference pairs (what a DPO job trains on), as its first record says:
    OpenAI's `input`/`preferred_output`/`non_preferred_output`, or prompt/chosen/rejected. Data
    prepare judges every record; a file whose records mix kinds keeps the more numerous kind."""
    return detect_format(first_record(path)) == "preference"
