"""Reading inputs into Ray Data as raw records that remember where they came from.

Every input, whatever its container, becomes rows of `source` (file path), `line` (1-based line, or
row number for Parquet and Arrow), `order` (a global sort key: input index, then line) and `raw`
(the record as JSON bytes). Validation then treats all formats alike, and every reject can name its
file and line. Containers, always told by the file name or folder: JSONL, JSON (a file holding one
array of records or one record, else read as JSONL), Parquet, and folders written by HF `datasets`
`save_to_disk` (a Dataset, or a DatasetDict with one folder per split). A plain folder's files must
all be of these types (hidden files aside): anything else is an error listing them.
What a record holds (chat `messages` or prompt/completion) is validation's business (`data.format`).
"""

from __future__ import annotations

import json
from pathlib import Path

from rayft import storage
from rayft.config import ConfigError

# Records per block after reading. A file is read as one block, and one block is one task for every
# step after it: blocks of this size spread a big file over the cluster's cores while keeping the
# per-task overhead small.
RECORDS_PER_BLOCK = 10_000
LINE_BITS = 40  # order = input_index << LINE_BITS | line: inputs keep their order, then lines


CONTAINERS = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet", ".arrow": "arrow"}


def file_format(path: Path) -> str:
    """The container of one data file, from its name: 'jsonl', 'json', 'parquet' or 'arrow'. The
    record format inside it (chat messages or prompt/completion) is a separate matter (`data.format`)."""
    try:
        return CONTAINERS[path.suffix.lower()]
    except KeyError:
        raise ConfigError(
            f"input {path}: unknown file type {path.suffix or '(none)'!r}; expected "
            f"{', '.join(CONTAINERS)} or a folder of them (HF datasets folders too)"
        ) from None


def folder_files(path: str) -> list[str]:
    """The data files of a folder (local or a URI): an HF `DatasetDict.save_to_disk` folder's splits
    in the order of its dataset_dict.json (each split's Arrow files), an HF `Dataset.save_to_disk`
    folder's Arrow files, or a plain folder's .jsonl/.json/.parquet files."""
    if storage.exists(storage.join(path, "dataset_dict.json")):
        splits = json.loads(storage.read_text(storage.join(path, "dataset_dict.json")))["splits"]
        return [f for name in splits for f in folder_files(storage.join(path, name))]
    entries = [(name, folder) for name, folder in storage.list_entries(path) if not name.startswith(".")]
    if any(name in ("dataset_info.json", "state.json") for name, _ in entries):
        return [storage.join(path, name) for name, folder in entries if not folder and name.endswith(".arrow")]
    unsupported = [
        name + ("/" if folder else "")
        for name, folder in entries
        if folder or Path(name).suffix.lower() not in (".jsonl", ".json", ".parquet")
    ]
    if unsupported:
        raise ConfigError(
            f"input folder {path} holds what rayft cannot read: {', '.join(unsupported)}; "
            "expected only .jsonl, .json and .parquet files (move the others out, or name the files)"
        )
    return [storage.join(path, name) for name, _ in entries]


def expand_inputs(inputs: list[str]) -> list[str]:
    """Input paths as absolute file paths or URIs (`s3://`, `gs://`; folders become their data files,
    see `folder_files`). Raises FileNotFoundError naming the first missing input or empty folder,
    ConfigError naming a file of unknown type."""
    if not inputs:
        raise FileNotFoundError("no input files given")
    files: list[str] = []
    for item in inputs:
        path = item if storage.is_remote(item) else str(Path(item).expanduser().resolve())
        if not storage.exists(path):
            raise FileNotFoundError(f"input not found: {item}")
        found = folder_files(path) if storage.is_dir(path) else [path]
        if not found:
            raise FileNotFoundError(f"no data files in folder {item}")
        for file in found:
            file_format(Path(file))
        files += found
    return files


def _jsonl_rows(data: bytes) -> list[tuple[int, bytes]]:
    lines = data.split(b"\n")
    return [(n, raw.rstrip(b"\r")) for n, raw in enumerate(lines, start=1) if raw.strip()]


def _json_rows(data: bytes) -> list[tuple[int, bytes]]:
    """A `.json` file: the elements of a top-level array (each with the line it starts on), or the
    one record the file holds; a file that is neither (JSONL named .json) is read as JSONL. An array
    that breaks off ends in one row holding the rest from where parsing stopped, which validation
    rejects with that line."""
    try:
        text = data.decode("utf-8")
        start = len(text) - len(text.lstrip())
    except UnicodeDecodeError:
        return _jsonl_rows(data)
    if not text[start:].startswith("["):
        try:
            json.loads(text)
        except (ValueError, RecursionError):
            return _jsonl_rows(data)
        return [(text.count("\n", 0, start) + 1, text[start:].rstrip().encode())] if text.strip() else []
    decoder, rows, at = json.JSONDecoder(), [], start + 1
    while True:
        at = _skip(text, at, ",")
        if at >= len(text) or text[at] == "]":
            return rows
        line = text.count("\n", 0, at) + 1
        try:
            _, end = decoder.raw_decode(text, at)
        except (ValueError, RecursionError):
            return rows + [(line, text[at:].rstrip().encode())]
        rows.append((line, text[at:end].encode()))
        at = end


def _skip(text: str, at: int, separators: str) -> int:
    """The index of the next character after `at` that is neither whitespace nor a separator."""
    while at < len(text) and (text[at].isspace() or text[at] in separators):
        at += 1
    return at


def _table_rows(data: bytes, kind: str) -> list[tuple[int, bytes]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = pa.BufferReader(data)
    table = pq.read_table(buffer) if kind == "parquet" else pa.ipc.open_stream(buffer).read_all()
    return [
        (n, json.dumps(row, ensure_ascii=False, default=str).encode())
        for n, row in enumerate(table.to_pylist(), start=1)
    ]


def file_records(path: str, data: bytes) -> list[tuple[int, bytes]]:
    """(line, raw JSON bytes) for each record in the bytes of one data file, read as the container
    its name says."""
    kind = file_format(Path(path))
    if kind == "jsonl":
        return _jsonl_rows(data)
    return _json_rows(data) if kind == "json" else _table_rows(data, kind)


def _split_file(row: dict, files: list[str], index_of: dict[str, int]) -> list[dict]:
    index = index_of[row["path"]]
    source = files[index]
    return [
        {"source": source, "line": n, "order": index << LINE_BITS | n, "raw": raw}
        for n, raw in file_records(source, row["bytes"])
    ]


def read_records(inputs: list[str]):
    """All inputs as one Ray Dataset of raw records (source, line, order, raw). Files on object
    storage are read by whichever node runs the read task; a reject names the file by its URI."""
    import ray

    files = expand_inputs(inputs)
    # Ray Data reports an object's path without its scheme (s3://bucket/key -> bucket/key).
    index_of = {f.split("://", 1)[-1]: i for i, f in enumerate(files)}
    raw_files = ray.data.read_binary_files(files, include_paths=True)
    rows = raw_files.flat_map(_split_file, fn_kwargs={"files": files, "index_of": index_of})
    return rows.repartition(target_num_rows_per_block=RECORDS_PER_BLOCK)  # one file would be one block


def locate(order: int, files: list[str]) -> dict:
    """The source file and line an order key stands for."""
    return {"source": files[order >> LINE_BITS], "line": order & ((1 << LINE_BITS) - 1)}
