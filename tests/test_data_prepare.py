"""`rayft data prepare` on a real local Ray: every format in, nothing lost, PII out, duplicates and
leaks removed, stratified splits, content-addressed versions."""

import json
import random

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from records_strategies import LINE

from rayft.config import DataConfig
from rayft.data.dedup import dedup_text, shingles
from rayft.data.prepare import PrepareOptions, prepare_dataset, shuffles_as_tasks

pytestmark = pytest.mark.timeout(600)  # `ray`: marked per test by conftest (the ray_cluster fixture)

WORDS = [f"{a}{b}" for a in ("alpha", "beta", "gamma", "delta", "omega", "sigma") for b in range(60)]
CATEGORIES = ["billing", "shipping", "refund"]


def chat(i: int, category: str | None = None, extra: str = "") -> dict:
    rng = random.Random(i)
    category = category or CATEGORIES[i % 3]
    question = " ".join(rng.choice(WORDS) for _ in range(18)) + extra
    return {
        "messages": [
            {"role": "system", "content": "You triage tickets."},
            {"role": "user", "content": question},
            {
                "role": "assistant",
                "content": f"Category: {category}\nPriority: low\n" + " ".join(rng.choice(WORDS) for _ in range(8)),
            },
        ]
    }


def accounted(out_dir) -> list[tuple[str, int]]:
    rows = [(r["source"], r["line"]) for r in map(json.loads, (out_dir / "rejects.jsonl").read_text().splitlines())]
    for name in ("train", "val", "test"):
        frame = pd.read_parquet(out_dir / f"{name}.parquet")
        rows += list(zip(frame["source"], frame["line"].astype(int)))
    return sorted(rows)


def output_text(out_dir) -> str:
    text = (out_dir / "rejects.jsonl").read_text()
    for name in ("train", "val", "test"):
        for messages in pd.read_parquet(out_dir / f"{name}.parquet")["messages"]:
            text += "\n".join(m["content"] for m in messages)
    return text


PII = {
    "EMAIL": "mia.keller@example.org",
    "PHONE": "+44 20 7946 0958",
    "CARD": "4111 1111 1111 1111",
    "IBAN": "DE89 3704 0044 0532 0130 00",
    "IP": "198.51.100.23",
    "SSN": "123-45-6789",
    "CREDENTIALS": "admin:hunter2",
    "API_KEY": "sk-proj-abcdefghijklmnopqrstuvwx1234",
}
BAD_LINES = {
    3: ('{"messages": [{"role": "user", "content": "cut off"', "invalid_json"),
    5: ('"just a string"', "not_an_object"),
    7: ('{"messages": []}', "empty_messages"),
    9: ('{"messages": [{"role": "robot", "content": "Hi"}, {"role": "assistant", "content": "Hi"}]}', "unknown_role"),
    11: (
        '{"messages": [{"role": "user", "content": ["x"]}, {"role": "assistant", "content": "A"}]}',
        "non_string_content",
    ),
    13: ('{"messages": [{"role": "user", "content": "Hi"}]}', "no_assistant_turn"),
    15: (
        '{"messages": [{"role": "assistant", "content": "A"}, {"role": "user", "content": "Hi"}]}',
        "last_turn_not_assistant",
    ),
    17: ('{"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "A"}]}', "empty_content"),
    19: (
        '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "no label here"}]}',
        "missing_label",
    ),
    21: (json.dumps(chat(999, extra=" " + " ".join(["long"] * 400))), "too_many_tokens"),
}


NAMED_LINES = {14, 28, 35, 42, 49, 56, 63, 70, 77, 84}
WEIGHTED_LINE = 40
RARE_SPLITS = {"train": range(500, 506), "test": range(506, 510)}


@pytest.fixture(scope="module")
def prepared(ray_cluster, tiny_model, tmp_path_factory):
    """One run over four inputs in four formats with every kind of problem planted."""
    folder = tmp_path_factory.mktemp("mixed")
    lines = []
    for n in range(1, 91):
        if n in BAD_LINES:
            lines.append(BAD_LINES[n][0])
        elif n == 30:
            lines.append(json.dumps(chat(4)))  # exact duplicate of line 4
        elif n == 31:
            record = chat(6)
            record["messages"][1]["content"] = record["messages"][1]["content"].replace(" ", "  ", 1) + " ok"
            lines.append(json.dumps(record))  # near duplicate of line 6
        else:
            kind = list(PII)[n % len(PII)] if n % 5 == 0 else None
            extra = (
                f" contact {'https://' + PII[kind] + '@db.example.com' if kind == 'CREDENTIALS' else PII[kind]}"
                if kind
                else ""
            )
            extra += " from Alice Moreau" if n in NAMED_LINES else ""  # found by the NER hook only
            record = chat(n, extra=extra)
            if n == WEIGHTED_LINE:
                record["messages"][2]["weight"] = 1
            lines.append(json.dumps(record))
    chat_file = folder / "chat.jsonl"
    chat_file.write_bytes("\n".join(lines).encode() + b"\n" + b'{"messages": "\xff bad bytes"}\n')
    pc_file = folder / "pc.jsonl"
    pc_file.write_text(
        "".join(
            json.dumps({"prompt": chat(i)["messages"][1]["content"], "completion": chat(i)["messages"][2]["content"]})
            + "\n"
            for i in range(200, 230)
        )
        + '{"prompt": "only a prompt"}\n'
    )
    parquet_file = folder / "more.parquet"
    pd.DataFrame([without_learning_the_question(chat(i)) for i in range(300, 330)]).to_parquet(parquet_file)
    from datasets import Dataset, DatasetDict

    Dataset.from_list([chat(i) for i in range(400, 430)]).save_to_disk(str(folder / "hf"))
    rare = {name: Dataset.from_list([chat(i, "warranty") for i in ids]) for name, ids in RARE_SPLITS.items()}
    DatasetDict(rare).save_to_disk(str(folder / "splits_dict"))  # a rare class, under warn_min_class
    out = folder / "out"
    config = DataConfig(label_regex=r"Category:\s*(\w+)", max_tokens=200, pii_detector="tests.pii_names:names")
    files = (chat_file, pc_file, parquet_file, folder / "hf", folder / "splits_dict")
    manifest = prepare_dataset([str(f) for f in files], out, PrepareOptions(config, tokenizer=tiny_model))
    return {"manifest": manifest, "out": out, "files": files}


def without_learning_the_question(record: dict) -> dict:
    record["messages"][1]["weight"] = 0
    return record


def all_splits(out_dir) -> pd.DataFrame:
    return pd.concat(pd.read_parquet(out_dir / f"{s}.parquet") for s in ("train", "val", "test"))


def test_every_record_is_accounted_for(prepared):
    counts = prepared["manifest"].counts.model_dump()
    assert counts["input"] == 91 + 31 + 30 + 30 + 10
    parts = ("kept", "rejected", "duplicates_exact", "duplicates_near", "leaked")
    assert counts["input"] == sum(counts[k] for k in parts)
    assert counts["kept"] == counts["train"] + counts["val"] + counts["test"]
    rows = accounted(prepared["out"])
    assert len(rows) == len(set(rows)) == counts["input"]


def test_each_reject_has_its_line_and_reason(prepared):
    chat_file, pc_file = map(str, prepared["files"][:2])
    rejects = [json.loads(line) for line in (prepared["out"] / "rejects.jsonl").read_text().splitlines()]
    by_place = {(r["source"], r["line"]): r for r in rejects}
    for line, (_, reason) in BAD_LINES.items():
        assert by_place[(chat_file, line)]["reason"] == reason and by_place[(chat_file, line)]["message"]
    assert by_place[(chat_file, 91)]["reason"] == "invalid_utf8"
    assert by_place[(pc_file, 31)]["reason"] == "missing_prompt_or_completion"
    assert by_place[(chat_file, 30)]["reason"] == "duplicate_exact"
    assert by_place[(chat_file, 30)]["duplicate_of"] == {"source": chat_file, "line": 4}
    assert by_place[(chat_file, 31)]["reason"] == "duplicate_near"
    assert by_place[(chat_file, 31)]["duplicate_of"] == {"source": chat_file, "line": 6}
    assert prepared["manifest"].counts.rejected == len(BAD_LINES) + 2


def test_planted_pii_never_reaches_an_output(prepared):
    text = output_text(prepared["out"])
    for kind, value in PII.items():
        assert value not in text, kind
        assert f"<{kind}>" in text
    found = prepared["manifest"].pii.found
    assert set(found) == set(PII) | {"NAME"}


def test_ner_detector_findings_are_scrubbed_and_counted(prepared):
    text = output_text(prepared["out"])
    assert "Alice Moreau" not in text and text.count("<NAME>") == len(NAMED_LINES)
    assert prepared["manifest"].pii.found["NAME"] == len(NAMED_LINES)


def test_all_formats_are_normalised_to_messages(prepared):
    _, pc_file, parquet_file, hf, splits_dict = map(str, prepared["files"])
    frames = all_splits(prepared["out"])
    for source, expected in ((pc_file, 30), (parquet_file, 30)):
        rows = frames[frames["source"] == source]
        assert len(rows) == expected
        assert all([m["role"] for m in ms][-1] == "assistant" for ms in rows["messages"])
    hf_rows = frames[frames["source"].str.startswith(hf + "/")]
    assert sorted(hf_rows["line"]) == list(range(1, 31))  # HF rows keep their row numbers
    for name, ids in RARE_SPLITS.items():  # every split of a DatasetDict, its rows named by split
        rows = frames[frames["source"].str.startswith(f"{splits_dict}/{name}/")]
        assert sorted(rows["line"]) == list(range(1, len(ids) + 1)), name
    assert (prepared["out"] / "token_lengths.png").stat().st_size > 1000


def test_per_message_weights_reach_the_splits(prepared):
    chat_file, _, parquet_file = map(str, prepared["files"][:3])
    frames = all_splits(prepared["out"])
    for messages in frames[frames["source"] == parquet_file]["messages"]:
        assert [m["weight"] for m in messages] == [None, 0, None]
    weighted = frames[(frames["source"] == chat_file) & (frames["line"] == WEIGHTED_LINE)]["messages"].iloc[0]
    assert [m["weight"] for m in weighted] == [None, None, 1]


def test_small_sets_and_rare_classes_are_warned_about(prepared):
    warnings = prepared["manifest"].warnings
    assert any("records kept" in w for w in warnings)  # under 200 records
    rare = sum(len(ids) for ids in RARE_SPLITS.values())
    assert [w for w in warnings if w.startswith("class")] == [
        f"class 'warranty' has only {rare} examples (fewer than 50)"
    ]


def test_split_is_stratified_within_one_record_per_class(prepared):
    splits = {s: pd.read_parquet(prepared["out"] / f"{s}.parquet") for s in ("train", "val", "test")}
    totals = pd.concat(splits.values())["label"].value_counts()
    for name, fraction in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
        for label, total in totals.items():
            assert abs((splits[name]["label"] == label).sum() - fraction * total) <= 1


def test_leakage_check_drops_eval_records_that_copy_training_ones(ray_cluster, tmp_path):
    records = [chat(i) for i in range(120)]
    for i in range(40):  # near copies, with near-dup removal off so only the leakage check sees them
        copy = json.loads(json.dumps(records[i]))
        copy["messages"][1]["content"] += " again"
        records.append(copy)
    source = tmp_path / "leaky.parquet"  # read as Parquet although the record format is forced
    pd.DataFrame(records).to_parquet(source)
    config = DataConfig(near_dup_threshold=None, leak_threshold=0.8, format="messages")
    manifest = prepare_dataset([str(source)], tmp_path / "out", PrepareOptions(config))
    assert manifest.counts.rejected == 0
    assert manifest.counts.leaked > 0 and manifest.counts.duplicates_near == 0
    splits = {s: pd.read_parquet(tmp_path / "out" / f"{s}.parquet") for s in ("train", "val", "test")}
    train = [set(shingles(dedup_text(list(m)))) for m in splits["train"]["messages"]]
    for name in ("val", "test"):
        for messages in splits[name]["messages"]:
            mine = set(shingles(dedup_text(list(messages))))
            assert max(len(mine & t) / len(mine | t) for t in train) < 0.8


def test_dataset_hash_is_a_content_version(ray_cluster, tmp_path):
    records = [chat(i) | {"topic": CATEGORIES[i % 3]} for i in range(30)]
    relabelled = json.loads(json.dumps(records))
    relabelled[5]["topic"] = "refund" if records[5]["topic"] != "refund" else "billing"
    reweighted = json.loads(json.dumps(records))
    reweighted[7]["messages"][1]["weight"] = 0
    variants = {"a": records, "b": records, "label": relabelled, "weight": reweighted}
    for name, content in variants.items():
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in content))
    options = PrepareOptions(DataConfig(label_field="topic"))
    hashes = {
        name: prepare_dataset([str(tmp_path / f"{name}.jsonl")], tmp_path / name, options).dataset_hash
        for name in variants
    }
    assert hashes["a"] == hashes["b"]  # same records and config: same version
    assert hashes["label"] != hashes["a"]  # only one record's label changed: a new version
    assert hashes["weight"] != hashes["a"]  # only one message's weight changed: a new version


def test_cli_with_a_config_on_a_registered_base(ray_cluster, tickets_file, tiny_model, tmp_path, capsys):
    """`rayft data prepare --config` as docs/data.md shows it: the config's base is `registry:NAME`,
    whose tokenizer (in the registered folder) counts the tokens behind the stats."""
    from conftest import write_config
    from transformers import AutoTokenizer

    from rayft.cli import main
    from rayft.registry import Registry

    Registry().register("prep-base", "full", "random-init", tiny_model)
    config = write_config(
        tmp_path / "prep.yaml",
        {
            "name": "prep",
            "model": {"base": "registry:prep-base"},
            "data": {"out": str(tmp_path / "out"), "label_regex": r"Category:\s*(\w+)", "max_tokens": 256},
        },
    )
    assert main(["data", "prepare", str(tickets_file), "--config", str(config)]) == 0
    printed = capsys.readouterr().out
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"]["rejected"] == 5 and manifest["counts"]["input"] == 605
    assert "duplicates_near" in printed and "605" in printed and manifest["dataset_hash"][:12] in printed
    assert manifest["tokenizer"] == tiny_model and not any("no tokenizer" in w for w in manifest["warnings"])
    # the stats describe the written splits: class balance and the model's token counts
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    for name in ("train", "val", "test"):
        frame = pd.read_parquet(tmp_path / "out" / f"{name}.parquet")
        assert manifest["stats"]["labels"][name] == frame["label"].value_counts().sort_index().to_dict()
        text = tokenizer.apply_chat_template(list(frame["messages"].iloc[0]), tokenize=False)
        assert frame["n_tokens"].iloc[0] == len(tokenizer(text, add_special_tokens=False)["input_ids"])
        tokens = manifest["stats"]["tokens"][name]
        assert (tokens["count"], tokens["max"]) == (len(frame), frame["n_tokens"].max()) and tokens["max"] <= 256


def test_near_duplicate_candidates_are_verified_by_exact_jaccard(ray_cluster):
    import ray

    from rayft.data.dedup import jaccard, verified_pairs

    words = [f"w{i}" for i in range(60)]
    variants = {
        1: words,
        2: words[:30] + ["x"] + words[31:],
        3: words[:10] + ["y", "z"] + words[12:40] + ["q"] + words[41:],
    }
    rows = pd.DataFrame(
        {
            "order": list(variants),
            "messages": [
                json.dumps([{"role": "user", "content": " ".join(v)}, {"role": "assistant", "content": "ok"}])
                for v in variants.values()
            ],
        }
    )
    grams = {o: set(shingles(" ".join(v) + "\nok")) for o, v in variants.items()}
    exact = {pair: jaccard(grams[pair[0]], grams[pair[1]]) for pair in ((1, 2), (1, 3))}
    assert exact[(1, 2)] > 0.8 > exact[(1, 3)]  # one word changed; three words changed
    pairs = ray.data.from_pandas(pd.DataFrame({"a": [1, 1, 1], "b": [2, 3, 2]}))  # (1, 2) from two buckets
    with shuffles_as_tasks():  # as in the pipeline
        assert verified_pairs(ray.data.from_pandas(rows), pairs, 0.8) == [(1, 2, exact[(1, 2)])]


def test_unsupported_files_in_an_input_folder_are_an_error_listing_them(tmp_path):
    from rayft.config import ConfigError
    from rayft.data.sources import expand_inputs

    (tmp_path / "a.jsonl").write_text(json.dumps(chat(1)) + "\n")
    (tmp_path / "b.json").write_text(json.dumps([chat(2)]))
    (tmp_path / ".DS_Store").write_bytes(b"\0")  # hidden files are not data
    assert [p.rsplit("/", 1)[-1] for p in expand_inputs([str(tmp_path)])] == ["a.jsonl", "b.json"]
    (tmp_path / "notes.txt").write_text("not data")
    (tmp_path / "more").mkdir()
    with pytest.raises(ConfigError, match=r"holds what rayft cannot read: more/, notes.txt"):
        expand_inputs([str(tmp_path)])


KABOOM_TEMPLATE = (
    "{% for m in messages %}{% if 'TEMPLATE-BOOM' in m['content'] %}{{ raise_exception('refused by the template') }}"
    "{% endif %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
)


def test_json_arrays_and_records_that_break_a_step_end_as_rejects_with_source_and_line(
    ray_cluster, tiny_model, tmp_path
):
    """A pretty-printed JSON array is records (each at the line it starts on, a broken tail one
    reject); a record that makes the template, the NER detector or the JSON reader raise is a reject
    naming its source and line, and never fails the run."""
    records = [chat(i) for i in range(6)]
    array = tmp_path / "array.json"
    array.write_text(json.dumps(records[:3], indent=2)[:-1].rstrip() + ',\n  {"messages": [oops\n]')
    lines = [
        json.dumps(records[3]),
        json.dumps(chat(4, extra=" TEMPLATE-BOOM")),
        json.dumps(chat(5, extra=" KABOOM")),
        "[" * 100_000 + "]" * 100_000,
        json.dumps(records[5]),
    ]
    jsonl = tmp_path / "lines.jsonl"
    jsonl.write_text("\n".join(lines) + "\n")
    config = DataConfig(pii_detector="tests.pii_names:names_or_fail", near_dup_threshold=None, leak_threshold=None)
    manifest = prepare_dataset(
        [str(array), str(jsonl)],
        tmp_path / "out",
        PrepareOptions(config, tokenizer=tiny_model, chat_template=KABOOM_TEMPLATE),
        show_progress=False,
    )
    rejects = {
        (r["source"].rsplit("/", 1)[-1], r["line"]): r
        for r in map(json.loads, (tmp_path / "out" / "rejects.jsonl").read_text().splitlines())
    }
    starts = [n for n, text in enumerate(array.read_text().splitlines(), start=1) if text.startswith("  {")]
    assert set(rejects) == {("array.json", starts[3]), ("lines.jsonl", 2), ("lines.jsonl", 3), ("lines.jsonl", 4)}
    assert rejects[("array.json", starts[3])]["reason"] == "invalid_json"
    assert (
        rejects[("lines.jsonl", 2)]["reason"] == "template_error"
        and "refused by the template" in rejects[("lines.jsonl", 2)]["message"]
    )
    kaboom = rejects[("lines.jsonl", 3)]
    assert kaboom["reason"] == "record_error" and "the NER model failed" in kaboom["message"]
    assert "KABOOM" not in kaboom["record"]  # unscrubbable: withheld, not written as it was
    assert (
        rejects[("lines.jsonl", 4)]["reason"] == "invalid_json"
        and "nested too deeply" in rejects[("lines.jsonl", 4)]["message"]
    )
    kept = sorted(
        (s.rsplit("/", 1)[-1], n) for s, n in accounted(tmp_path / "out") if (s.rsplit("/", 1)[-1], n) not in rejects
    )
    assert kept == [
        ("array.json", starts[0]),
        ("array.json", starts[1]),
        ("array.json", starts[2]),
        ("lines.jsonl", 1),
        ("lines.jsonl", 5),
    ]
    assert (manifest.counts.input, manifest.counts.kept, manifest.counts.rejected) == (9, 5, 4)


def test_a_failed_run_leaves_the_previous_version_whole(ray_cluster, tmp_path, monkeypatch):
    """The output is written aside and swapped in only when the whole run succeeded: a run that fails
    after writing its splits (here: drawing the histogram) leaves the previous splits, reject file
    and manifest as they were, and no scratch folder behind."""
    import hashlib

    from rayft.data import outputs

    out = tmp_path / "out"
    first = tmp_path / "first.jsonl"
    first.write_text("".join(json.dumps(chat(i)) + "\n" for i in range(60)))
    options = PrepareOptions(DataConfig(near_dup_threshold=None, leak_threshold=None))
    before = prepare_dataset([str(first)], out, options, show_progress=False)

    def files():
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())}

    written = files()
    second = tmp_path / "second.jsonl"
    second.write_text("".join(json.dumps(chat(i)) + "\n" for i in range(100, 190)))
    monkeypatch.setattr(outputs, "plot_token_lengths", fail("disk full"))
    with pytest.raises(RuntimeError, match="disk full"):
        prepare_dataset([str(second)], out, options, show_progress=False)
    assert files() == written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.jsonl", "out", "second.jsonl"]
    monkeypatch.undo()
    after = prepare_dataset([str(second)], out, options, show_progress=False)
    assert after.dataset_hash != before.dataset_hash and after.counts.input == 90
    assert json.loads((out / "manifest.json").read_text())["dataset_hash"] == after.dataset_hash


def fail(message: str):
    def failing(*args, **kwargs):
        raise RuntimeError(message)

    return failing


def test_an_upload_cut_short_leaves_no_manifest_beside_new_splits(ray_cluster, tiny_model, tmp_path, monkeypatch):
    """Object storage has no rename: the old manifest goes first and the new one is uploaded last, so
    a run cut short mid-upload leaves a folder without a manifest, which training refuses."""
    from conftest import lora_train_config

    from rayft import storage
    from rayft.config import ConfigError, parse_config
    from rayft.training.trainer import check_config

    uri = f"file://{tmp_path / 'bucket' / 'tickets'}"
    options = PrepareOptions(DataConfig(near_dup_threshold=None, leak_threshold=None))
    source = tmp_path / "a.jsonl"
    source.write_text("".join(json.dumps(chat(i)) + "\n" for i in range(60)))
    prepare_dataset([str(source)], uri, options, show_progress=False)
    source.write_text("".join(json.dumps(chat(i)) + "\n" for i in range(100, 160)))
    monkeypatch.setattr(storage, "upload_file", fail("connection reset"))
    with pytest.raises(RuntimeError, match="connection reset"):
        prepare_dataset([str(source)], uri, options, show_progress=False)
    assert storage.exists(storage.join(uri, "train.parquet")) and not storage.exists(storage.join(uri, "manifest.json"))
    with pytest.raises(ConfigError, match="has no manifest.json"):
        check_config(parse_config(lora_train_config(tiny_model, tmp_path, "cut") | {"data": {"out": uri}}), tiny_model)


@given(lines=st.lists(LINE, min_size=1, max_size=40))
@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
def test_random_lines_are_all_accounted_for_and_never_crash_the_run(ray_cluster, tiny_model, tmp_path_factory, lines):
    """input = kept + rejected (+ duplicates): every non-blank line ends in a split or the reject
    file with its source and line, whatever it holds."""
    folder = tmp_path_factory.mktemp("random")
    source = folder / "random.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    options = PrepareOptions(DataConfig(), tokenizer=tiny_model)
    manifest = prepare_dataset([str(source)], folder / "out", options, show_progress=False)
    counts = manifest.counts
    expected = [n for n, line in enumerate(lines, start=1) if line.strip()]
    assert counts.input == len(expected) == counts.kept + counts.removed()
    assert (
        counts.kept + counts.rejected + counts.duplicates_exact + counts.duplicates_near + counts.leaked == counts.input
    )
    assert accounted(folder / "out") == [(str(source), n) for n in expected]
