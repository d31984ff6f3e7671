"""Prepared datasets on object storage: every stage reads them through a URI, as on a cluster.

`file://` URIs go through the same pyarrow filesystem layer (and Ray Data's URI reading) as
`s3://` and `gs://`, so these tests exercise the code path a cluster uses without a bucket.
"""

import pytest

from rayft import storage

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def dataset_uri(tickets_dataset, tmp_path_factory) -> str:
    """The session's prepared ticket dataset, copied to a `file://` URI."""
    target = f"file://{tmp_path_factory.mktemp('bucket')}/datasets/tickets"
    storage.upload_dir(tickets_dataset, target)
    return target


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
    assert {s: tokens[s].count() for s in ("train", "val")} == {s: local_rows[s] for s in ("train", "val")}
    assert read_test_split(dataset_uri, None).count() == local_rows["test"]
    assert len(few_shot_examples(dataset_uri, 3, seed=0)) == 3
