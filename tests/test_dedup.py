"""MinHash LSH pieces: band layout, candidate pairs per bucket, keep-first grouping."""

import numpy as np
import pandas as pd

from rayft.data.dedup import band_keys, keep_first, lsh_layout, partition_pairs, signatures


def test_lsh_layout_uses_the_signature_and_favours_recall():
    bands, rows = lsh_layout(0.8, 128)
    assert bands * rows <= 128
    s = np.array([0.8, 0.5])
    hit = 1 - (1 - s**rows) ** bands
    assert hit[0] > 0.95 and hit[1] < 0.5  # at the threshold nearly always a candidate


def test_near_duplicate_texts_share_a_band_key_and_different_ones_do_not():
    base = " ".join(f"word{i}" for i in range(40))
    near = base.replace("word7", "other")
    far = " ".join(f"term{i}" for i in range(40))
    sig = signatures([base, near, far], 128, seed=0)
    assert np.mean(sig[0] == sig[1]) > 0.75 and np.mean(sig[0] == sig[2]) < 0.1
    keys = band_keys(sig, *lsh_layout(0.8, 128))
    assert set(keys[0]) & set(keys[1]) and not set(keys[0]) & set(keys[2])


def test_partition_pairs_within_buckets_and_across_splits():
    rows = pd.DataFrame(
        {
            "band_key": [1, 1, 1, 2, 3, 3],
            "order": [5, 2, 9, 4, 7, 8],
            "group": ["train", "val", "train", "train", "test", "train"],
        }
    )
    within = set(map(tuple, partition_pairs(rows, across_groups=False)[["a", "b"]].to_numpy()))
    assert within == {(2, 5), (2, 9), (5, 9), (7, 8)}
    across = set(map(tuple, partition_pairs(rows, across_groups=True)[["a", "b"]].to_numpy()))
    assert across == {(5, 2), (9, 2), (8, 7)}  # (train, other split)


def test_keep_first_keeps_the_earliest_of_each_group():
    dropped = keep_first([(1, 4, 0.9), (4, 7, 0.85), (2, 3, 0.95)])
    assert set(dropped) == {3, 4, 7}
    assert dropped[7] == (4, 0.85) and dropped[3] == (2, 0.95)
