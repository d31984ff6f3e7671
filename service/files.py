"""Uploaded files: checked against the limits (413 naming the limit), a format data prepare reads
(400 naming the file), stored under `serve.fine_tuning.files_path` (default `$RAYFT_HOME/files`),
one folder per file id, with the name the client gave (its suffix tells the format).

The folder must be one the cluster's jobs can read: the head's disk for a local cluster, a shared
volume on a real one.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import BinaryIO

from rayft.config import ConfigError, FineTuningConfig
from rayft.data.inspect import count_records
from rayft.data.sources import file_format
from rayft.home import rayft_home
from rayft.service.objects import FINE_TUNE, RESULTS, ServiceError, StoredFile, new_id, now
from rayft.service.store import ServiceStore

CHUNK = 1 << 20


def files_root(config: FineTuningConfig) -> str:
    """Where uploads go: `serve.fine_tuning.files_path`, default `$RAYFT_HOME/files`."""
    return str(Path(config.files_path or rayft_home() / "files").resolve())


class FileStore:
    def __init__(self, config: FineTuningConfig, store: ServiceStore, root: str):
        self.config, self.store, self.root = config, store, Path(root)

    def save_upload(self, source: BinaryIO, filename: str, purpose: str, owner: str) -> StoredFile:
        """Keep an uploaded training file; refuses what no job could use, before any job is made."""
        if purpose != FINE_TUNE:
            raise ServiceError(400, f"purpose must be '{FINE_TUNE}' (this server keeps training data only)", "purpose")
        name = Path(filename or "").name
        try:
            file_format(Path(name))
        except ConfigError as error:
            raise ServiceError(400, f"file: {error}", "file", "invalid_file_format") from None
        stored = self.write(source, name, purpose, owner)
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
        self.store.add_file(stored)
        return stored

    def write(self, source: BinaryIO, name: str, purpose: str, owner: str) -> StoredFile:
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
            id=file_id, owner=owner, filename=name, purpose=purpose, bytes=size, path=str(path), created_at=now()
        )

    def too_large(self) -> ServiceError:
        return ServiceError(
            413,
            f"file: larger than {self.config.max_file_bytes} bytes (serve.fine_tuning.max_file_bytes)",
            "file",
            "file_too_large",
        )

    def keep_result(self, owner: str, path: Path, name: str) -> StoredFile:
        """A job's result (rejects, metrics) as a file its owner can download."""
        with path.open("rb") as source:
            stored = self.write(source, name, RESULTS, owner)
        self.store.add_file(stored)
        return stored

    def remove(self, stored: StoredFile) -> None:
        shutil.rmtree(Path(stored.path).parent, ignore_errors=True)
