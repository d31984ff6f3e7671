"""Near-duplicate detection at cluster scale: MinHash (rensa) + LSH band keys grouped in Ray Data.

1. Each record gets a MinHash signature of its word 3-grams (system prompts left out: they are
   usually the same for every record and would make all records look alike).
2. Each signature is cut into `bands` bands; every (band, band values) pair becomes a hash key.
   Records that share a key are candidates. Band rows are grouped in Ray Data by a coarse
   partition of the key (so each group holds whole buckets and the per-bucket work is vectorised
   pandas), so it runs on the cluster.
3. Candidates are verified by their exact Jaccard similarity (3-gram sets of the two texts), also
   on the cluster: a join of the pairs with the records' text, written as two groupbys (see
   `verified_pairs`). Only the verified edges reach the driver, where union-find joins them: in
   each group of near duplicates the first record (input order) is kept.

Exact duplicates (same normalised text) are found the same way, grouped by a partition of the
text hash. The band layout keeps a pair at exactly the threshold a candidate with probability
>= 0.95 and, within that, minimises the false-candidate area below the threshold (the integral
criterion datasketch uses to choose its LSH parameters).
"""

from __future__ import annotations

import json
import re
from functools import lru_cache

import numpy as np
import pandas as pd

SHINGLE_WORDS = 3
MAX_PARTNERS = 32  # per bucket: each record is compared with at most this many others in it


def dedup_text(messages: list[dict]) -> str:
    """The text compared for near duplicates: the conversation, every non-system turn with the
    calls it makes; not the system prompt or the tool list, which hundreds of distinct requests
    may share."""
    parts = []
    for m in messages:
        if m["role"] != "system":
            parts.append(m["content"] or "")
            parts += [f"{c['function']['name']} {c['function']['arguments']}" for c in m.get("tool_calls") or []]
    return "\n".join(p for p in parts if p)


def compared_text(messages: list[dict], prompt_only: bool = False) -> str:
    """`dedup_text` of what near-duplicate and leakage detection compare: the conversation, or with
    `prompt_only` (preference pairs, whose last message is the preferred reply) the prompt alone, so
    the same prompt is one record and never straddles the splits."""
    return dedup_text(messages[:-1] if prompt_only else messages)


def shingles(text: str) -> list[str]:
    words = re.findall(r"\w+", text.lower())
    if len(words) <= SHINGLE_WORDS:
        return [" ".join(words)]
    return [" ".join(words[i : i + SHINGLE_WORDS]) for i in range(len(words) - SHINGLE_WORDS + 1)]


def signatures(texts: list[str], num_perm: int, seed: int) -> np.ndarray:
    """MinHash signatures, one uint32 row of `num_perm` values per text."""
    from rensa import RMinHash

    rows = RMinHash.digests_from_token_sets([shingles(t) for t in texts], num_perm=num_perm, seed=seed)
    return np.asarray(rows, dtype=np.uint32).reshape(len(texts), num_perm)


@lru_cache(maxsize=16)
def lsh_layout(threshold: float, num_perm: int, min_recall: float = 0.95) -> tuple[int, int]:
    """(bands, rows per band): among layouts that make a pair at exactly `threshold` a candidate
    with probability >= `min_recall`, the one with the fewest false candidates below it."""
    grid = np.linspace(0.0, threshold, 201)
    best, layout = None, (num_perm, 1)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands < min_recall:
            continue
        false_area = np.trapezoid(1 - (1 - grid**rows) ** bands, grid)
        if best is None or false_area < best:
            best, layout = false_area, (bands, rows)
    return layout


def band_keys(minhash: np.ndarray, bands: int, rows: int, salt: int = 0) -> np.ndarray:
    """(n, bands) uint64 keys: a polynomial hash of each band's values, mixed with the band index."""
    n = minhash.shape[0]
    columns = np.random.default_rng(salt).permutation(minhash.shape[1]) if salt else np.arange(minhash.shape[1])
    values = minhash[:, columns[: bands * rows]].astype(np.uint64).reshape(n, bands, rows)
    powers = np.uint64(1_000_003) ** np.arange(rows, dtype=np.uint64)
    with np.errstate(over="ignore"):
        keys = (values * powers).sum(axis=2, dtype=np.uint64)
        keys = keys * np.uint64(0x9E3779B97F4A7C15) + np.arange(bands, dtype=np.uint64)
    return keys


def shuffle_partitions() -> int:
    """Coarse groups for vectorised shuffles: two per cluster CPU."""
    import ray

    return max(4, 2 * int(ray.cluster_resources().get("CPU", 2)))


def _hash_partition(batch: dict, partitions: int) -> dict:
    batch["partition"] = np.array([int(h[:12], 16) % partitions for h in batch["text_hash"]], dtype=np.int64)
    return batch


def _later_copies(rows: pd.DataFrame) -> pd.DataFrame:
    rows = rows.sort_values(["text_hash", "order"])
    first = rows.groupby("text_hash")["order"].transform("first")
    later = rows["order"] != first
    return pd.DataFrame({"order": rows["order"][later], "dup_of": first[later]}, dtype="int64")


def exact_duplicates(rows) -> dict[int, tuple[int, float]]:
    """Records whose normalised text (`text_hash`) an earlier record already has, mapped to that
    first record; grouped on the cluster by a coarse partition of the hash."""
    keyed = rows.select_columns(["text_hash", "order"]).map_batches(
        _hash_partition, fn_kwargs={"partitions": shuffle_partitions()}, batch_format="numpy"
    )
    found = keyed.groupby("partition").map_groups(_later_copies, batch_format="pandas")
    frames = [f for f in found.iter_batches(batch_format="pandas", batch_size=None) if len(f)]
    if not frames:
        return {}
    table = pd.concat(frames)
    return {int(o): (int(d), 1.0) for o, d in zip(table["order"], table["dup_of"])}


def to_band_rows(batch: dict, bands: int, rows: int, salt: int, partitions: int) -> dict:
    """Ray Data UDF: one row per (record, band): the band key, a coarse `partition` of it (the
    groupby key, so each group holds whole buckets), the order and the split group."""
    keys = band_keys(np.stack(batch["minhash"]), bands, rows, salt).reshape(-1)
    groups = batch["split"] if "split" in batch else np.full(len(batch["order"]), "all", dtype=object)
    return {
        "band_key": keys,
        "partition": (keys % np.uint64(partitions)).astype(np.int64),
        "order": np.repeat(batch["order"], bands),
        "group": np.repeat(groups, bands),
    }


def partition_pairs(rows: pd.DataFrame, across_groups: bool) -> pd.DataFrame:
    """Candidate pairs (a, b) among the buckets in one partition, vectorised per bucket: each record
    with up to MAX_PARTNERS earlier records of its bucket, or (across_groups) each non-'train'
    record with up to MAX_PARTNERS 'train' records of its bucket."""
    rows = rows.drop_duplicates(["band_key", "order"]).sort_values(["band_key", "order"])
    rows = rows[rows.groupby("band_key")["order"].transform("size") > 1]
    if across_groups:
        train = rows[rows["group"] == "train"]
        train = train[train.groupby("band_key").cumcount() < MAX_PARTNERS]
        others = rows[rows["group"] != "train"]
        joined = others.merge(train, on="band_key", suffixes=("", "_train"))
        pairs = pd.DataFrame({"a": joined["order_train"], "b": joined["order"]})
    else:
        by_bucket = rows.groupby("band_key")["order"]
        parts = []
        for k in range(1, MAX_PARTNERS + 1):
            earlier = by_bucket.shift(k)
            found = earlier.notna()
            if not found.any():
                break
            parts.append(pd.DataFrame({"a": earlier[found], "b": rows["order"][found]}))
        pairs = pd.concat(parts) if parts else pd.DataFrame({"a": [], "b": []})
    return pairs.astype("int64").drop_duplicates()


def candidate_pairs(signed, threshold: float, num_perm: int, across_groups: bool, salt: int):
    """Candidate pairs (a, b) from records with `order` and `minhash` columns (and `split` when
    pairs must cross from 'train' to the other splits), as a materialized Ray Dataset: a pair
    sharing several buckets may appear more than once."""
    bands, rows = lsh_layout(threshold, num_perm)
    partitions = shuffle_partitions()
    columns = ["order", "minhash"] + (["split"] if across_groups else [])
    buckets = signed.select_columns(columns).map_batches(
        to_band_rows,
        fn_kwargs={"bands": bands, "rows": rows, "salt": salt, "partitions": partitions},
        batch_format="numpy",
    )
    return (
        buckets.groupby("partition")
        .map_groups(partition_pairs, batch_format="pandas", fn_kwargs={"across_groups": across_groups})
        .materialize()
    )


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def _endpoint_requests(pairs: pd.DataFrame, partitions: int) -> pd.DataFrame:
    """Each pair (a, b) as two requests for a record's text, keyed by that record's partition."""
    a, b = pairs["a"].to_numpy(np.int64), pairs["b"].to_numpy(np.int64)
    order = np.concatenate([a, b])
    return pd.DataFrame(
        {"key": order % partitions, "order": order, "a": np.tile(a, 2), "b": np.tile(b, 2), "messages": ""}
    )


def _record_rows(records: pd.DataFrame, partitions: int) -> pd.DataFrame:
    order = records["order"].to_numpy(np.int64)
    return pd.DataFrame(
        {"key": order % partitions, "order": order, "a": -1, "b": -1, "messages": records["messages"].to_numpy(object)}
    )


def _attach_texts(group: pd.DataFrame, partitions: int, prompt_only: bool) -> pd.DataFrame:
    """One order partition: each distinct request gets its record's compared text, keyed for the
    next step by its pair's partition (so both ends of a pair meet there)."""
    records = group[group["a"] < 0].set_index("order")["messages"]
    requests = group[group["a"] >= 0].drop_duplicates(["order", "a", "b"])
    texts = [compared_text(json.loads(records[o]), prompt_only) for o in requests["order"]]
    a = requests["a"].to_numpy(np.int64)
    return pd.DataFrame(
        {
            "key": a % partitions,
            "order": requests["order"].to_numpy(np.int64),
            "a": a,
            "b": requests["b"].to_numpy(np.int64),
            "text": texts,
        }
    )


def _similar_pairs(group: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """One pair partition: both ends of each pair side by side, their exact Jaccard similarity, and
    the pairs that reach `threshold`."""
    ends = [group[group["order"] == group[side]] for side in ("a", "b")]
    both = ends[0].merge(ends[1], on=["a", "b"], suffixes=("_a", "_b"))
    similarity = np.array(
        [jaccard(set(shingles(x)), set(shingles(y))) for x, y in zip(both["text_a"], both["text_b"])], dtype=np.float64
    )
    keep = similarity >= threshold
    return pd.DataFrame({"a": both["a"][keep], "b": both["b"][keep], "similarity": similarity[keep]})


def verified_pairs(rows, pairs, threshold: float, prompt_only: bool = False) -> list[tuple[int, int, float]]:
    """Candidate pairs whose Jaccard similarity reaches `threshold`, with the similarity. It is
    computed exactly from the two records' 3-gram sets (of their prompts alone with `prompt_only`:
    preference pairs, see `compared_text`), not estimated from the signatures: at 128
    permutations the estimate's standard error is ~0.035, which near the threshold both misses true
    duplicates and removes records that are not (bench/RESULTS.md).

    The verification runs on the cluster as a join written as two groupbys: the candidate pairs'
    ends meet their records' `messages` in a groupby on a partition of the record's order, then both
    ends of each pair meet in a groupby on a partition of the pair. Only the verified edges reach
    the driver."""
    if pairs.count() == 0:
        return []
    partitions = shuffle_partitions()
    requests = pairs.map_batches(_endpoint_requests, fn_kwargs={"partitions": partitions}, batch_format="pandas")
    records = rows.select_columns(["order", "messages"]).map_batches(
        _record_rows, fn_kwargs={"partitions": partitions}, batch_format="pandas"
    )
    ends = (
        records.union(requests)
        .groupby("key")
        .map_groups(
            _attach_texts, fn_kwargs={"partitions": partitions, "prompt_only": prompt_only}, batch_format="pandas"
        )
    )
    similar = ends.groupby("key").map_groups(_similar_pairs, fn_kwargs={"threshold": threshold}, batch_format="pandas")
    frames = [f for f in similar.iter_batches(batch_format="pandas", batch_size=None) if len(f)]
    if not frames:
        return []
    edges = pd.concat(frames).sort_values(["a", "b"])
    return list(zip(edges["a"].tolist(), edges["b"].tolist(), edges["similarity"].tolist()))


def keep_first(edges: list[tuple[int, int, float]]) -> dict[int, tuple[int, float]]:
    """Union-find over similar pairs: every record except the first (in input order) of its group,
    mapped to its most similar partner and that similarity."""
    parent: dict[int, int] = {}

    def root(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    partner: dict[int, tuple[int, float]] = {}
    for a, b, similarity in edges:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
        for x, y in ((a, b), (b, a)):
            if similarity > partner.get(x, (0, -1.0))[1]:
                partner[x] = (y, similarity)
    return {x: partner[x] for x in list(parent) if root(x) != x}
