"""Local paths and object-storage URIs (`s3://`, `gs://`, `file://`) behind one small interface.

Runs, exports and registry artifacts may live on a shared bucket so every node of a cluster can read
them. pyarrow's filesystems do the I/O (S3 and GCS support ship in the pyarrow wheel; credentials
come from the usual environment variables or instance roles).
"""

from __future__ import annotations

import hashlib
import tempfile
from contextlib import contextmanager
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


def exists(uri: str | Path) -> bool:
    """Whether a file or folder is at a local path or a URI."""
    if not is_remote(uri):
        return Path(uri).exists()
    import pyarrow.fs

    fs, path = _fs(uri)
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def read_text(uri: str | Path) -> str:
    """A text file from a local path or a URI."""
    if not is_remote(uri):
        return Path(uri).read_text(encoding="utf-8")
    fs, path = _fs(uri)
    with fs.open_input_stream(path) as data:
        return data.read().decode("utf-8")


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
        import shutil

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
        import shutil

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


def content_hash(folder: str | Path, patterns: tuple[str, ...] = ("*.safetensors", "*.bin")) -> str:
    """sha256 over the folder's files matching `patterns` (names and bytes), in name order: the
    content version of a model's weights."""
    digest = hashlib.sha256()
    paths = sorted({p for pattern in patterns for p in Path(folder).glob(pattern)})
    for path in paths:
        digest.update(path.name.encode())
        with path.open("rb") as data:
            for chunk in iter(lambda: data.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def local_dir(uri: str) -> Path:
    """A local folder with the contents of `uri`: the path itself, or a cached download."""
    if not is_remote(uri):
        return Path(uri)
    import pyarrow.fs

    cache = rayft_home() / "cache" / "artifacts" / hashlib.sha256(uri.encode()).hexdigest()[:16]
    if not (cache / ".complete").exists():
        fs, path = _fs(uri)
        cache.mkdir(parents=True, exist_ok=True)
        pyarrow.fs.copy_files(path, str(cache), source_filesystem=fs, destination_filesystem=pyarrow.fs.LocalFileSystem())
        (cache / ".complete").write_text(uri)
    return cache
