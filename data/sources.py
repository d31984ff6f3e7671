"""Reading inputs into Ray Data as raw records that remember where they came from.

Every input, whatever its format, becomes rows of `source` (file path), `line` (1-based line, or
row number for Parquet and Arrow), `order` (a global sort key: input index, then line) and `raw`
(the record as JSON bytes). Validation then treats all formats alike, and every reject can name its
file and line. Supported: JSONL (chat `messages` or prompt/completion, told apart per record),
Parquet files, and folders written by HF `datasets.save_to_disk`.
"""

from __future__ import annotations

import json
from pathlib import Path

# Records per block after reading. A file is read as one block, and one block is one task for every
# step after it: blocks of this size spread a big file over the cluster's cores while keeping the
# per-task overhead small.
RECORDS_PER_BLOCK = 10_000
LINE_BITS = 40  # order = input_index << LINE_BITS | line: inputs keep their order, then lines


def file_format(path: Path, forced: str) -> str:
    """'jsonl', 'parquet' or 'arrow' for one data file."""
    if forced == "parquet" or (forced == "auto" and path.suffix == ".parquet"):
        return "parquet"
    if forced == "hf" or path.suffix == ".arrow":
        return "arrow"
    return "jsonl"


def expand_inputs(inputs: list[str]) -> list[str]:
    """Input paths as absolute file paths: HF dataset folders become their Arrow files, other
    folders their .jsonl/.parquet files. Raises FileNotFoundError naming the first missing input."""
    if not inputs:
        raise FileNotFoundError("no input files given")
    files: list[str] = []
    for item in inputs:
        path = Path(item).expanduser().resolve()
        if not path.exists():
            raise FileNotFoundError(f"input not found: {item}")
        if path.is_dir():
            hf = (path / "dataset_info.json").exists() or (path / "state.json").exists()
            found = sorted(path.glob("*.arrow")) if hf else sorted(
                p for p in path.iterdir() if p.suffix in (".jsonl", ".json", ".parquet"))
            if not found:
                raise FileNotFoundError(f"no data files in folder {item}")
            files += [str(p) for p in found]
        else:
            files.append(str(path))
    return files


def _jsonl_rows(data: bytes) -> list[tuple[int, bytes]]:
    lines = data.split(b"\n")
    return [(n, raw.rstrip(b"\r")) for n, raw in enumerate(lines, start=1) if raw.strip()]


def _table_rows(data: bytes, kind: str) -> list[tuple[int, bytes]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = pa.BufferReader(data)
    table = pq.read_table(buffer) if kind == "parquet" else pa.ipc.open_stream(buffer).read_all()
    return [(n, json.dumps(row, ensure_ascii=False, default=str).encode())
            for n, row in enumerate(table.to_pylist(), start=1)]


def _split_file(row: dict, index_of: dict[str, int], kinds: dict[str, str]) -> list[dict]:
    source = row["path"]
    base = index_of[source] << LINE_BITS
    kind = kinds[source]
    rows = _jsonl_rows(row["bytes"]) if kind == "jsonl" else _table_rows(row["bytes"], kind)
    return [{"source": source, "line": n, "order": base | n, "raw": raw} for n, raw in rows]


def read_records(inputs: list[str], forced_format: str = "auto"):
    """All inputs as one Ray Dataset of raw records (source, line, order, raw)."""
    import ray

    files = expand_inputs(inputs)
    kinds = {f: file_format(Path(f), forced_format) for f in files}
    index_of = {f: i for i, f in enumerate(files)}
    raw_files = ray.data.read_binary_files(files, include_paths=True)
    rows = raw_files.flat_map(_split_file, fn_kwargs={"index_of": index_of, "kinds": kinds})
    return rows.repartition(target_num_rows_per_block=RECORDS_PER_BLOCK)  # one file would be one block


def locate(order: int, files: list[str]) -> dict:
    """The source file and line an order key stands for."""
    return {"source": files[order >> LINE_BITS], "line": order & ((1 << LINE_BITS) - 1)}
