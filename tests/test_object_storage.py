"""Prepared datasets on object storage: every stage reads them through a URI, as on a cluster.

`file://` URIs go through the same pyarrow filesystem layer (and Ray Data's URI reading) as
`s3://` and `gs://`, so these tests exercise the code path a cluster uses without a bucket.
"""

import pytest

from rayft import storage

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def dataset_uri(ray_cluster, tickets_file, tiny_model, tmp_path_factory) -> str:
    """The ticket sample prepared straight to a `file://` URI, with the session dataset's options."""
    from rayft.config import DataConfig
    from rayft.data.prepare import PrepareOptions, prepare_dataset

    target = f"file://{tmp_path_factory.mktemp('bucket')}/datasets/tickets"
    options = PrepareOptions(DataConfig(label_regex=r"Category:\s*(\w+)", max_tokens=256), tokenizer=tiny_model)
    prepare_dataset([str(tickets_file)], target, options, show_progress=False)
    return target


def test_data_prepare_writes_the_same_version_to_a_uri(dataset_uri, tickets_dataset):
    import json

    remote = json.loads(storage.read_text(storage.join(dataset_uri, "manifest.json")))
    local = json.loads((tickets_dataset / "manifest.json").read_text())
    assert remote["dataset_hash"] == local["dataset_hash"] and remote["counts"] == local["counts"]
    for name in ("train.parquet", "val.parquet", "test.parquet", "rejects.jsonl", "token_lengths.png"):
        assert storage.exists(storage.join(dataset_uri, name)), name


def test_training_and_eval_read_a_dataset_uri(ray_cluster, tiny_model, tickets_dataset, dataset_uri):
    from conftest import lora_train_config

    from rayft.config import parse_config
    from rayft.eval.prompts import few_shot_examples, read_test_split
    from rayft.training.data import tokenized_splits
    from rayft.training.trainer import check_config, split_rows

    config = parse_config(lora_train_config(tiny_model, tickets_dataset, "remote") | {"data": {"out": dataset_uri}})
    assert config.dataset_dir() == dataset_uri
    check_config(config, tiny_model)  # finds the splits and sizes them from their footers, through the URI
    local_rows = {s: split_rows(str(tickets_dataset / f"{s}.parquet")) for s in ("train", "val", "test")}
    assert split_rows(storage.join(dataset_uri, "train.parquet")) == local_rows["train"] > 0
    tokens = tokenized_splits(dataset_uri, ["train", "val"], tiny_model, None, 256)
    assert tokens.rows == {s: local_rows[s] for s in ("train", "val")}
    assert {s: tokens.datasets[s].count() for s in ("train", "val")} == tokens.rows
    assert read_test_split(dataset_uri, None).count() == local_rows["test"]
    assert len(few_shot_examples(dataset_uri, 3, seed=0)) == 3
