"""`rayft data prepare` on a real local Ray: nothing lost, rejects with line and reason, versions."""

import json

import pandas as pd
import pytest

from rayft.config import DataConfig
from rayft.data.prepare import PrepareOptions, prepare_dataset

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]


def good(i: int, category: str) -> str:
    return json.dumps({"messages": [
        {"role": "user", "content": f"Ticket number {i} about {category}"},
        {"role": "assistant", "content": f"Category: {category}\nPriority: low\nThanks for ticket {i}."},
    ]})


BAD = {
    3: ('{"messages": [{"role": "user", "content": "cut off"', "invalid_json"),
    7: ('{"messages": [{"role": "robot", "content": "Hi"}, {"role": "assistant", "content": "Hi"}]}', "unknown_role"),
    12: ('{"messages": [{"role": "user", "content": "Hi"}]}', "no_assistant_turn"),
    20: ('"just a string"', "not_an_object"),
}


def mixed_lines(n: int = 60) -> list[str]:
    categories = ["billing", "shipping", "refund"]
    return [BAD[line][0] if line in BAD else good(line, categories[line % 3]) for line in range(1, n + 1)]


def test_mixed_file_accounts_for_every_record(ray_cluster, tiny_model, tmp_path):
    source = tmp_path / "mixed.jsonl"
    source.write_text("\n".join(mixed_lines()) + "\n")
    options = PrepareOptions(DataConfig(label_regex=r"Category:\s*(\w+)"), tokenizer=tiny_model)
    manifest = prepare_dataset([str(source)], tmp_path / "out", options)

    counts = manifest["counts"]
    assert counts["input"] == 60 == counts["kept"] + counts["rejected"]
    assert counts["kept"] == counts["train"] + counts["val"] + counts["test"] == 56
    rejects = [json.loads(l) for l in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in rejects] == [(line, reason) for line, (_, reason) in sorted(BAD.items())]
    assert all(r["source"] == str(source) and r["message"] and r["record"] for r in rejects)
    splits = {name: pd.read_parquet(tmp_path / "out" / f"{name}.parquet") for name in ("train", "val", "test")}
    lines = sorted(int(x) for frame in splits.values() for x in frame["line"])
    assert lines == [line for line in range(1, 61) if line not in BAD]
    # stratified: each split holds each class in proportion, to within one record
    for name, fraction in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
        for label, total in pd.concat(splits.values())["label"].value_counts().items():
            assert abs((splits[name]["label"] == label).sum() - fraction * total) <= 1


def test_dataset_hash_is_a_content_version(ray_cluster, tmp_path):
    lines = mixed_lines(30)
    for name, content in (("a", lines), ("b", lines), ("c", lines[:-1] + [good(99, "billing")])):
        (tmp_path / f"{name}.jsonl").write_text("\n".join(content) + "\n")
    hashes = {name: prepare_dataset([str(tmp_path / f"{name}.jsonl")], tmp_path / name)["dataset_hash"]
              for name in ("a", "b", "c")}
    assert hashes["a"] == hashes["b"]  # same records and config: same version
    assert hashes["c"] != hashes["a"]  # one record changed: a new version


def test_cli_prints_counts_and_writes_outputs(ray_cluster, tickets_file, tmp_path, capsys):
    from rayft.cli import main

    assert main(["data", "prepare", str(tickets_file), "--out", str(tmp_path / "out"),
                 "--label-regex", r"Category:\s*(\w+)"]) == 0
    printed = capsys.readouterr().out
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"]["rejected"] == 5 and manifest["counts"]["input"] == 605
    assert "rejected" in printed and "605" in printed and manifest["dataset_hash"][:12] in printed
