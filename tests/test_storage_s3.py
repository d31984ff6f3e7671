"""rayft's storage and input listing against a real S3-protocol server (moto's), without Ray."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def bucket():
    from multinode_cluster import s3_bucket

    with s3_bucket("rayft-storage") as uri:
        yield uri


def test_folders_files_and_hashes_on_s3_match_their_local_copies(bucket, tmp_path):
    from rayft import storage

    local = tmp_path / "artifact"
    (local / "sub").mkdir(parents=True)
    (local / "config.json").write_text("{}")
    (local / "sub" / "weights.bin").write_bytes(bytes(range(256)))
    uri = storage.upload_dir(local, f"{bucket}/models/a")
    assert storage.is_dir(uri) and not storage.is_dir(f"{uri}/config.json") and not storage.exists(f"{bucket}/none")
    assert storage.list_entries(uri) == [("config.json", False), ("sub", True)]
    assert storage.read_bytes(f"{uri}/sub/weights.bin") == bytes(range(256))
    assert storage.content_hash(uri) == storage.content_hash(local)
    assert storage.verified_dir(uri, storage.content_hash(local)).is_dir()


def test_s3_input_folders_expand_to_their_data_files_and_refuse_others(bucket):
    from rayft import storage
    from rayft.config import ConfigError
    from rayft.data.sources import expand_inputs

    storage.write_text(f"{bucket}/raw/ok/b.jsonl", "{}\n")
    storage.write_text(f"{bucket}/raw/ok/a.json", "[]")
    storage.write_text(f"{bucket}/raw/ok/.hidden", "x")
    assert expand_inputs([f"{bucket}/raw/ok"]) == [f"{bucket}/raw/ok/a.json", f"{bucket}/raw/ok/b.jsonl"]
    storage.write_text(f"{bucket}/raw/mixed/a.jsonl", "{}\n")
    storage.write_text(f"{bucket}/raw/mixed/notes.csv", "a,b\n")
    with pytest.raises(ConfigError, match="notes.csv"):
        expand_inputs([f"{bucket}/raw/mixed"])
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        expand_inputs([f"{bucket}/raw/missing.jsonl"])


def test_an_hf_dataset_dict_on_s3_expands_to_its_splits_in_order(bucket, tmp_path):
    import datasets

    from rayft import storage
    from rayft.data.sources import expand_inputs

    rows = {"messages": [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]]}
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(rows), "test": datasets.Dataset.from_dict(rows)}
    ).save_to_disk(tmp_path / "hf")
    uri = storage.upload_dir(tmp_path / "hf", f"{bucket}/raw/hf")
    files = expand_inputs([uri])
    assert [f.rsplit("/", 2)[1] for f in files] == ["train", "test"] and all(f.endswith(".arrow") for f in files)


def test_checking_s3_files_names_each_bad_line_by_its_uri(bucket):
    import json

    from rayft import storage
    from rayft.config import DataConfig
    from rayft.data.inspect import check_files

    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    storage.write_text(f"{bucket}/raw/check/a.jsonl", json.dumps(good) + "\nnot json\n")
    check = check_files([f"{bucket}/raw/check/a.jsonl"], DataConfig(), tokenizer=None)
    assert (check.records, check.kept) == (2, 1)
    assert [(r.source, r.line) for r in check.rejects] == [(f"{bucket}/raw/check/a.jsonl", 2)]
