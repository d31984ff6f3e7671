"""Reading inputs into Ray Data as raw records that remember where they came from.

Every input, whatever its format, becomes rows of `source` (file path), `line` (1-based line or
row number), `order` (a global sort key: input index, then line) and `raw` (the record as JSON
bytes). Validation then treats all formats alike, and every reject can name its file and line.
"""

from __future__ import annotations

from pathlib import Path

LINE_BITS = 40  # order = input_index << LINE_BITS | line: inputs keep their order, then lines


def resolve_inputs(inputs: list[str]) -> list[str]:
    """Input paths as absolute strings; raises FileNotFoundError naming the first missing one."""
    if not inputs:
        raise FileNotFoundError("no input files given")
    resolved = []
    for item in inputs:
        path = Path(item).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"input not found: {item}")
        resolved.append(str(path.resolve()))
    return resolved


def _split_lines(row: dict, index_of: dict[str, int]) -> list[dict]:
    source = row["path"]
    base = index_of[source] << LINE_BITS
    lines = row["bytes"].split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [
        {"source": source, "line": number, "order": base | number, "raw": raw.rstrip(b"\r")}
        for number, raw in enumerate(lines, start=1)
        if raw.strip()
    ]


def read_jsonl(paths: list[str]):
    """JSONL files as raw records: one row per non-blank line, bytes left undecoded."""
    import ray

    index_of = {path: i for i, path in enumerate(paths)}
    files = ray.data.read_binary_files(paths, include_paths=True)
    return files.flat_map(_split_lines, fn_kwargs={"index_of": index_of})


def read_records(inputs: list[str]):
    """All inputs as one Ray Dataset of raw records (source, line, order, raw)."""
    return read_jsonl(resolve_inputs(inputs))
