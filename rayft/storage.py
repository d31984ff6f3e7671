"""Local paths and object-storage URIs (`s3://`, `gs://`, `file://`) behind one small interface.

Runs, exports and registry artifacts may live on a shared bucket so every node of a cluster can read
them. pyarrow's filesystems do the I/O (S3 and GCS support ship in the pyarrow wheel; credentials
come from the usual environment variables or instance roles).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rayft.home import rayft_home

REMOTE_SCHEMES = ("s3://", "gs://", "gcs://", "file://")


def is_remote(uri: str | Path) -> bool:
    return str(uri).startswith(REMOTE_SCHEMES)


def _fs(uri: str | Path):
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(str(uri))


def join(uri: str | Path, *parts: str) -> str:
    """A child of a local path or a URI."""
    if is_remote(uri):
        return "/".join([str(uri).rstrip("/"), *parts])
    return str(Path(uri).joinpath(*parts))


def list_dirs(uri: str) -> list[str]:
    """Names of the folders directly inside `uri` (empty if it does not exist)."""
    if not is_remote(uri):
        path = Path(uri)
        return sorted(p.name for p in path.iterdir() if p.is_dir()) if path.is_dir() else []
    import pyarrow.fs

    fs, path = _fs(uri)
    infos = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    return sorted(Path(i.path).name for i in infos if i.type == pyarrow.fs.FileType.Directory)


def list_entries(uri: str | Path) -> list[tuple[str, bool]]:
    """(name, is_folder) of everything directly inside the folder `uri`, in name order."""
    if not is_remote(uri):
        return sorted((p.name, p.is_dir()) for p in Path(uri).iterdir())
    import pyarrow.fs

    fs, path = _fs(uri)
    infos = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    return sorted((Path(i.path).name, i.type == pyarrow.fs.FileType.Directory) for i in infos)


def is_dir(uri: str | Path) -> bool:
    """Whether a folder is at a local path or a URI."""
    if not is_remote(uri):
        return Path(uri).is_dir()
    import pyarrow.fs

    fs, path = _fs(uri)
    return fs.get_file_info(path).type == pyarrow.fs.FileType.Directory


def exists(uri: str | Path) -> bool:
    """Whether a file or folder is at a local path or a URI."""
    if not is_remote(uri):
        return Path(uri).exists()
    import pyarrow.fs

    fs, path = _fs(uri)
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def read_bytes(uri: str | Path) -> bytes:
    """A file's bytes from a local path or a URI."""
    if not is_remote(uri):
        return Path(uri).read_bytes()
    fs, path = _fs(uri)
    with fs.open_input_stream(path) as data:
        return data.read()


def read_text(uri: str | Path) -> str:
    """A text file from a local path or a URI."""
    return read_bytes(uri).decode("utf-8")


def parquet_file(uri: str | Path):
    """A `pyarrow.parquet.ParquetFile` at a local path or a URI (its footer is read, not its rows)."""
    import pyarrow.parquet as pq

    if not is_remote(uri):
        return pq.ParquetFile(uri)
    fs, path = _fs(uri)
    return pq.ParquetFile(path, filesystem=fs)


def write_text(uri: str, text: str) -> None:
    """Write a text file to a local path or a URI."""
    if not is_remote(uri):
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        Path(uri).write_text(text)
        return
    fs, path = _fs(uri)
    with fs.open_output_stream(path) as out:
        out.write(text.encode())


def upload_file(local: str | Path, uri: str) -> str:
    """Copy one local file to a local path or a URI."""
    if not is_remote(uri):
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, uri)
        return uri
    fs, path = _fs(uri)
    with fs.open_output_stream(path) as out:
        out.write(Path(local).read_bytes())
    return uri


def upload_dir(local: str | Path, uri: str) -> str:
    """Copy a local folder to `uri` (a plain copy when `uri` is local); returns `uri`."""
    import pyarrow.fs

    if not is_remote(uri):
        if Path(local).resolve() != Path(uri).resolve():
            shutil.copytree(local, uri, dirs_exist_ok=True)
        return uri
    fs, path = _fs(uri)
    fs.create_dir(path, recursive=True)
    pyarrow.fs.copy_files(str(local), path, source_filesystem=pyarrow.fs.LocalFileSystem(), destination_filesystem=fs)
    return uri


@contextmanager
def writable_dir(uri: str | Path):
    """A local folder to write `uri`'s contents into: the folder itself, or (for a URI) a scratch
    folder that is uploaded to `uri` when the block ends without an error."""
    if not is_remote(uri):
        Path(uri).mkdir(parents=True, exist_ok=True)
        yield Path(uri)
        return
    with tempfile.TemporaryDirectory(prefix="rayft-upload-") as scratch:
        yield Path(scratch)
        upload_dir(scratch, str(uri))


@contextmanager
def replaced_dir(uri: str | Path, last: str):
    """A local scratch folder whose contents replace the folder at `uri` only when the block ends
    without an error; on an error the previous contents stay whole. Locally the scratch folder is
    a sibling, swapped in by two renames (a crash between them leaves the old version whole under
    `.<name>.previous-*`). On object storage, which has no rename, the old `last` file (a manifest)
    is deleted first and the new one uploaded after everything else, so a crash mid-upload leaves a
    folder without `last`, never new files beside the old `last`."""
    if is_remote(uri):
        with tempfile.TemporaryDirectory(prefix="rayft-upload-") as scratch:
            yield Path(scratch)
            fs, path = _fs(uri)
            if exists(join(uri, last)):
                fs.delete_file(f"{path.rstrip('/')}/{last}")
            staged = Path(scratch) / last
            held = staged.rename(Path(scratch).parent / f".{Path(scratch).name}-{last}")
            try:
                upload_dir(scratch, str(uri))
                upload_file(held, join(uri, last))
            finally:
                held.unlink()
        return
    target = Path(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=target.parent))
    try:
        yield scratch
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    previous = target.parent / f".{target.name}.previous-{scratch.name.rsplit('-', 1)[-1]}"
    if target.exists():
        target.rename(previous)
    scratch.rename(target)
    shutil.rmtree(previous, ignore_errors=True)


def _hashed_files(folder: str | Path) -> list[tuple[str, object]]:
    """(path relative to the folder, opener) of every file a loader could read, in path order:
    every regular file below the folder except hidden ones (a name starting with '.', like the
    download cache's markers)."""
    if not is_remote(folder):
        root = Path(folder)
        return sorted(
            (p.relative_to(root).as_posix(), p.open)
            for p in root.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
    import pyarrow.fs

    fs, root = _fs(folder)
    root = root.rstrip("/")
    infos = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True))
    files = []
    for info in infos:
        relative = info.path[len(root) :].lstrip("/")
        if info.type == pyarrow.fs.FileType.File and not any(p.startswith(".") for p in relative.split("/")):
            files.append((relative, lambda _mode, path=info.path: fs.open_input_stream(path)))
    return sorted(files, key=lambda f: f[0])


def file_names(folder: str | Path) -> list[str]:
    """Paths (relative, '/'-separated) of the files `content_hash` covers, in order."""
    return [relative for relative, _ in _hashed_files(folder)]


def content_hash(folder: str | Path) -> str:
    """sha256 over every file of an artifact folder (local or a URI) that a loader could read:
    weights in any format, configs, tokenizer and chat template. Relative paths and bytes, in path
    order, so a folder and its upload hash alike. The one content version of a model or adapter: the
    registry records it, eval reports it, serving verifies it and keys its response cache on it."""
    digest = hashlib.sha256()
    for relative, opener in _hashed_files(folder):
        digest.update(relative.encode() + b"\0")
        with opener("rb") as data:
            for chunk in iter(lambda: data.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


class ArtifactMismatch(RuntimeError):
    """An artifact's bytes are not the ones its registry version records; the message names the
    version and both hashes."""


def _mismatch(ref: str, where: str, actual: str, expected: str) -> str:
    return (
        f"{ref}: the artifact at {where} has weights hash {actual}, but the registry records {expected}: "
        "its files changed after registration; refusing to use it"
    )


def _check(folder: str | Path, expected: str, ref: str, where: str) -> None:
    actual = content_hash(folder)
    if actual != expected:
        raise ArtifactMismatch(_mismatch(ref, where, actual, expected))


def verified_dir(uri: str, expected: str | None, ref: str | None = None) -> Path:
    """A local folder holding exactly the bytes of `uri`, checked against the registry's `expected`
    hash (None: a plain path that is no registry version). A local folder is hashed in place. A URI
    is downloaded into `$RAYFT_HOME/cache/artifacts/<hash>`, hashed after download (and a cached copy
    again before each use), so a cache never serves bytes other than the registered ones."""
    return fetch_verified(uri, expected, ref).path


@dataclass(frozen=True)
class Fetched:
    """A verified local copy of an artifact, and where its bytes came from: `disk` (a local folder,
    or the disk cache) or `storage` (downloaded from object storage now); `evicted`: cached copies
    of other artifacts removed to keep the cache within its bound."""

    path: Path
    source: str
    evicted: int = 0


def fetch_verified(uri: str, expected: str | None, ref: str | None = None, cache_bytes: int | None = None) -> Fetched:
    """`verified_dir`, saying where the bytes came from. With `cache_bytes`, the disk cache is kept
    within that many bytes after a download: least recently used copies go first (each use renews a
    copy), never one used in the last CACHE_GRACE_S seconds (it may be being read right now)."""
    ref = ref or str(uri)
    if not is_remote(uri):
        if expected is not None:
            _check(uri, expected, ref, str(uri))
        return Fetched(Path(uri), "disk")
    cache = artifact_cache()
    if expected is not None and (cache / expected).is_dir():
        try:
            _check(cache / expected, expected, ref, f"{cache / expected} (cached from {uri})")
            os.utime(cache / expected)  # most recently used
            return Fetched(cache / expected, "disk")
        except ArtifactMismatch:
            shutil.rmtree(cache / expected, ignore_errors=True)
    import pyarrow.fs

    cache.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=".download-", dir=cache))
    try:
        fs, path = _fs(uri)
        pyarrow.fs.copy_files(
            path, str(partial), source_filesystem=fs, destination_filesystem=pyarrow.fs.LocalFileSystem()
        )
        actual = content_hash(partial)
        if expected is not None and actual != expected:
            raise ArtifactMismatch(_mismatch(ref, str(uri), actual, expected))
        target = cache / actual
        try:
            partial.rename(target)
        except OSError:  # another process cached the same content first
            os.utime(target)
        evicted = prune_cache(cache, cache_bytes) if cache_bytes is not None else 0
        return Fetched(target, "storage", evicted)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


CACHE_GRACE_S = 60.0


def artifact_cache() -> Path:
    """Where artifacts fetched from object storage are kept, one folder per content hash."""
    return rayft_home() / "cache" / "artifacts"


def cached_artifacts(cache: Path | None = None) -> list[tuple[Path, int, float]]:
    """(folder, bytes, last used) of each cached artifact, least recently used first."""
    cache = cache or artifact_cache()
    entries = []
    for folder in cache.iterdir() if cache.is_dir() else ():
        if folder.is_dir() and not folder.name.startswith("."):
            size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
            entries.append((folder, size, folder.stat().st_mtime))
    return sorted(entries, key=lambda entry: entry[2])


def prune_cache(cache: Path, limit_bytes: int) -> int:
    """Remove least recently used cached artifacts until the cache holds at most `limit_bytes`
    (sparing those used within CACHE_GRACE_S); how many were removed."""
    entries = cached_artifacts(cache)
    total, removed, now = sum(size for _, size, _ in entries), 0, time.time()
    for folder, size, used in entries:
        if total <= limit_bytes:
            break
        if now - used < CACHE_GRACE_S:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        total, removed = total - size, removed + 1
    return removed
