"""Benchmark `rayft data prepare` at 100k records: throughput, near-duplicate recall/precision,
PII recall. Run: `.venv/bin/python bench/data_prep.py [--records N] [--out FILE]` (results go to
stdout as JSON, and to FILE; record them in bench/RESULTS.md). `--smoke`: 2,000 records, the same
pipeline and checks (`make test` runs it, tests/test_bench_smoke.py; its numbers mean nothing).

Records are random word sequences (so natural near duplicates are rare); the generator plants exact
duplicates, near duplicates (one to three words replaced, so the true Jaccard similarity of their
word 3-grams spreads from about 0.7 to 0.9, on both sides of the 0.8 threshold) and one PII value of
a random kind in some records. Ground truth is known, so:
- near-dup recall: planted near duplicates with true Jaccard >= threshold that end up removed (also
  reported for the hard band, true Jaccard in [threshold, threshold + 0.05));
- near-dup precision: removed near duplicates whose true Jaccard with the record they are said to
  duplicate is >= threshold;
- PII recall: planted PII values that appear in no output file (splits and rejects).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import pandas as pd

from rayft.config import DataConfig
from rayft.data.dedup import dedup_text, shingles
from rayft.data.prepare import PrepareOptions, prepare_dataset
from rayft.runtime import ensure_ray

FULL_RECORDS, SMOKE_RECORDS = 100_000, 2_000


def luhn_digit(digits: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch)
        if i % 2 == 0:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return str((10 - total % 10) % 10)


def iban(rng: random.Random) -> str:
    country, bban = rng.choice([("DE", 18), ("GB", 18), ("FR", 23), ("NL", 14)])
    body = "".join(str(rng.randint(0, 9)) for _ in range(bban))
    if country in ("GB", "NL"):
        body = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(4)) + body[4:]
    numeric = "".join(str(int(c, 36)) for c in body + country + "00")
    check = 98 - int(numeric) % 97
    return f"{country}{check:02d}{body}"


def planted_pii(rng: random.Random) -> tuple[str, str]:
    kind = rng.choice(["email", "phone", "card", "iban", "ip4", "ip6", "ssn", "url", "key"])
    if kind == "email":
        value = f"user{rng.randint(1, 10**6)}@mail{rng.randint(1, 99)}.example.org"
    elif kind == "phone":
        value = rng.choice(
            [
                f"+1 415 555 {rng.randint(1000, 9999)}",
                f"+44 20 7946 {rng.randint(1000, 9999)}",
                f"+49 30 {rng.randint(1000000, 9999999)}",
                f"+33 1 42 68 {rng.randint(10, 99)} {rng.randint(10, 99)}",
                f"(212) 555-{rng.randint(1000, 9999)}",
                f"+91 98765 {rng.randint(10000, 99999)}",
            ]
        )
    elif kind == "card":
        body = "4" + "".join(str(rng.randint(0, 9)) for _ in range(14))
        digits = body + luhn_digit(body)
        value = " ".join(digits[i : i + 4] for i in range(0, 16, 4))
    elif kind == "iban":
        value = iban(rng)
    elif kind == "ip4":
        value = ".".join(str(rng.randint(1, 254)) for _ in range(4))
    elif kind == "ip6":
        value = "2001:db8:" + ":".join(f"{rng.randint(0, 65535):x}" for _ in range(6))
    elif kind == "ssn":
        value = f"{rng.randint(100, 665)}-{rng.randint(10, 99)}-{rng.randint(1000, 9999)}"
    elif kind == "url":
        value = f"admin:pw{rng.randint(1000, 9999)}x"
        return kind, f"see https://{value}@db.internal.example/x"
    else:
        value = "sk-" + "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(32))
    return kind, value


def generate(n: int, seed: int = 0, dup_rate: float = 0.05, near_rate: float = 0.05, pii_rate: float = 0.1):
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(20000)]
    records, truth = [], {"exact": [], "near": [], "pii": [], "copied_from": []}
    while len(records) < n:
        r = rng.random()
        if records and r < dup_rate:
            source = rng.randrange(len(records))
            truth["exact"].append(len(records))
            truth["copied_from"].append(source)
            records.append(json.loads(json.dumps(records[source])))
            continue
        if records and r < dup_rate + near_rate:
            source = rng.randrange(len(records))
            copy = json.loads(json.dumps(records[source]))
            words = copy["messages"][0]["content"].split()
            for _ in range(rng.choice((1, 2, 3))):  # true Jaccard from ~0.7 to ~0.9: both sides of 0.8
                words[rng.randrange(len(words))] = rng.choice(vocab)
            copy["messages"][0]["content"] = " ".join(words)
            truth["near"].append((len(records), source))
            truth["copied_from"].append(source)
            records.append(copy)
            continue
        user = " ".join(rng.choice(vocab) for _ in range(40))
        if rng.random() < pii_rate:
            kind, value = planted_pii(rng)
            user = f"{user} contact {value} thanks"
            truth["pii"].append((kind, value if kind != "url" else value.split("//")[1].split("@")[0], len(records)))
        answer = " ".join(rng.choice(vocab) for _ in range(15))
        truth["copied_from"].append(None)
        records.append({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]})
    return records, truth


def jaccard(a: dict, b: dict) -> float:
    sa, sb = set(shingles(dedup_text(a["messages"]))), set(shingles(dedup_text(b["messages"])))
    return len(sa & sb) / len(sa | sb)


def leaked_pii(truth: dict, out: Path) -> list[tuple[str, str]]:
    """Planted PII values found in an output: each value is looked for in the output rows (split
    rows' contents, whole reject lines) of the record it was planted in and of that record's copies,
    the only rows it can be in (searching all output text for each of ~9,000 values took minutes)."""
    texts: dict[int, list[str]] = {}
    for name in ("train", "val", "test"):
        frame = pd.read_parquet(out / f"{name}.parquet")
        for line, messages in zip(frame["line"], frame["messages"]):
            texts.setdefault(int(line) - 1, []).append(" ".join(m["content"] for m in messages))
    for raw in (out / "rejects.jsonl").read_text().splitlines():
        texts.setdefault(json.loads(raw)["line"] - 1, []).append(raw)
    copies: dict[int, list[int]] = {}
    for index, source in enumerate(truth["copied_from"]):
        if source is not None:
            copies.setdefault(source, []).append(index)
    leaked = []
    for kind, value, index in truth["pii"]:
        family, todo = [], [index]
        while todo:
            family.append(todo.pop())
            todo += copies.get(family[-1], [])
        if any(value in text for i in family for text in texts.get(i, [])):
            leaked.append((kind, value))
    return leaked


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, help=f"default {FULL_RECORDS:,}, {SMOKE_RECORDS:,} with --smoke")
    parser.add_argument("--smoke", action="store_true", help="a small run of the same pipeline (make test)")
    parser.add_argument("--tokenizer", help="count tokens with this tokenizer (default: whitespace words)")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    args.records = args.records or (SMOKE_RECORDS if args.smoke else FULL_RECORDS)
    records, truth = generate(args.records)
    work = Path(tempfile.mkdtemp(prefix="rayft-bench-data-"))
    source = work / "input.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    ray_started = time.perf_counter()
    ensure_ray()
    started = time.perf_counter()
    config = DataConfig(max_tokens=10_000)
    options = PrepareOptions(config, tokenizer=args.tokenizer)
    manifest = prepare_dataset([str(source)], work / "out", options, show_progress=False)
    elapsed = time.perf_counter() - started

    rejects = [json.loads(line) for line in (work / "out" / "rejects.jsonl").read_text().splitlines()]
    removed = {r["line"] - 1: r for r in rejects if r["reason"].startswith("duplicate")}
    threshold = config.near_dup_threshold
    similarity = {(i, s): jaccard(records[i], records[s]) for i, s in truth["near"]}
    planted_near = [pair for pair, j in similarity.items() if j >= threshold]
    hard_band = [pair for pair, j in similarity.items() if threshold <= j < threshold + 0.05]
    near_removed = [r for r in removed.values() if r["reason"] == "duplicate_near"]
    near_true = sum(
        jaccard(records[r["line"] - 1], records[r["duplicate_of"]["line"] - 1]) >= threshold for r in near_removed
    )
    leaked = leaked_pii(truth, work / "out")
    result = {
        "records": args.records,
        "tokenizer": args.tokenizer,
        "seconds": round(elapsed, 1),
        "records_per_s": round(args.records / elapsed),
        "ray_start_s": round(started - ray_started, 1),
        "counts": manifest.counts.model_dump(),
        "exact_dup_recall": sum(i in removed for i in truth["exact"]) / max(1, len(truth["exact"])),
        "near_dup_planted_above_threshold": len(planted_near),
        "near_dup_planted_below_threshold": len(similarity) - len(planted_near),
        "near_dup_recall": sum(i in removed for i, _ in planted_near) / max(1, len(planted_near)),
        "near_dup_recall_hard_band": sum(i in removed for i, _ in hard_band) / max(1, len(hard_band)),
        "near_dup_hard_band": len(hard_band),
        "near_dup_precision": near_true / max(1, len(near_removed)),
        "pii_recall": 1 - len(leaked) / max(1, len(truth["pii"])),
        "pii_missed_examples": leaked[:5],
        "pii_found": manifest.pii.found,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
