"""Preference pairs through data prepare: both formats (OpenAI's DPO format and prompt/chosen/
rejected) normalised to one shape, each reject reason from a real malformed pair, PII scrubbed on
both sides, the dataset hash of other datasets unchanged, the mixed-kinds rule, the sample writer,
the review export's majority rule, uploads checked as prepare checks them, and a property test that
no JSON value makes the parser raise anything but a reject; then, on Ray, a file of pairs prepared
with every line accounted for, the `rejected` column, the manifest's kind, dedup on the prompt, no
prompt in two splits, and the review export read back by prepare."""

from __future__ import annotations

import copy
import io
import json
import random

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from records_strategies import JSON, MESSAGE

from rayft.config import DataConfig
from rayft.data.records import CleanRecords, text_hash
from rayft.data.tool_samples import TOOLS
from rayft.data.validate import Reject, detect_format, normalise_record

pytestmark = pytest.mark.timeout(600)

WORDS = [f"{a}{b}" for a in ("alpha", "beta", "gamma", "delta", "omega", "sigma") for b in range(60)]
CATEGORIES = ["billing", "shipping", "refund"]


def ask(i: int) -> str:
    rng = random.Random(i)
    return " ".join(rng.choice(WORDS) for _ in range(18))


def reply(category: str, i: int) -> str:
    return f"Category: {category}\nPriority: low\n" + " ".join(random.Random(-i).choice(WORDS) for _ in range(6))


def openai_pair(i: int, prompt: str | None = None) -> dict:
    right = CATEGORIES[i % 3]
    return {
        "input": {
            "messages": [{"role": "system", "content": "You triage."}, {"role": "user", "content": prompt or ask(i)}]
        },
        "preferred_output": [{"role": "assistant", "content": reply(right, i)}],
        "non_preferred_output": [{"role": "assistant", "content": reply(CATEGORIES[(i + 1) % 3], i)}],
    }


def trl_pair(i: int) -> dict:
    pair = openai_pair(i)
    return {
        "prompt": pair["input"]["messages"][1]["content"],
        "chosen": pair["preferred_output"][0]["content"],
        "rejected": pair["non_preferred_output"][0]["content"],
    }


def changed(record: dict, change) -> dict:
    record = copy.deepcopy(record)
    change(record)
    return record


GOOD = openai_pair(1)
REJECTS = {
    "identical_sides": [
        changed(GOOD, lambda r: r.update(non_preferred_output=r["preferred_output"])),
        {"prompt": "Where is it?", "chosen": "It  SHIPPED.", "rejected": "it shipped."},  # folded alike
    ],
    "empty_side": [
        changed(GOOD, lambda r: r["preferred_output"][0].update(content="  \n")),
        changed(GOOD, lambda r: r["non_preferred_output"][0].pop("content")),
        {"prompt": "Where is it?", "chosen": "Shipped.", "rejected": ""},
    ],
    "roles_out_of_order": [
        changed(GOOD, lambda r: r["input"]["messages"].append({"role": "assistant", "content": "Hm."})),
        changed(GOOD, lambda r: r["input"]["messages"].insert(2, {"role": "system", "content": "Late."})),
        changed(GOOD, lambda r: r["input"]["messages"].insert(1, {"role": "assistant", "content": "First."})),
        {"prompt": [{"role": "system", "content": "Only a system turn."}], "chosen": "A", "rejected": "B"},
        {
            "prompt": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
                {"role": "assistant", "content": "Again"},
                {"role": "user", "content": "So?"},
            ],
            "chosen": "A",
            "rejected": "B",
        },
    ],
    "side_not_one_assistant_message": [
        changed(GOOD, lambda r: r["preferred_output"].append({"role": "assistant", "content": "More."})),
        changed(GOOD, lambda r: r["non_preferred_output"][0].update(role="user")),
        changed(GOOD, lambda r: r.pop("non_preferred_output")),
        changed(GOOD, lambda r: r.update(preferred_output=[])),
        {"prompt": "Where is it?", "chosen": 3, "rejected": "No."},
        {"prompt": "Where is it?", "chosen": ["Shipped."], "rejected": "No."},
    ],
    "missing_prompt": [
        changed(GOOD, lambda r: r.pop("input")),
        changed(GOOD, lambda r: r.update(input={"tools": TOOLS})),
        {"chosen": "A", "rejected": "B"},
    ],
    "empty_messages": [changed(GOOD, lambda r: r["input"].update(messages=[]))],
    "unknown_role": [changed(GOOD, lambda r: r["input"]["messages"][1].update(role="customer"))],
    "unknown_tool": [
        changed(
            GOOD,
            lambda r: r["non_preferred_output"][0].update(
                tool_calls=[{"id": "c1", "type": "function", "function": {"name": "refund_all", "arguments": "{}"}}]
            ),
        )
    ],
}


@pytest.mark.parametrize("reason, record", [(reason, r) for reason, found in REJECTS.items() for r in found])
def test_each_reject_reason_from_a_real_pair(reason, record):
    assert detect_format(record) == "preference"
    with pytest.raises(Reject) as refused:
        normalise_record(record)
    assert refused.value.reason == reason and refused.value.message


def test_both_formats_normalise_to_the_prompt_the_preferred_reply_and_one_rejected_reply():
    openai, trl = (
        normalise_record(openai_pair(7)),
        normalise_record(trl_pair(7) | {"prompt": openai_pair(7)["input"]["messages"]}),
    )
    assert openai == trl and openai.kind == "preference"
    assert [m["role"] for m in openai.messages] == ["system", "user", "assistant"]
    assert openai.messages[-1]["content"] == reply("shipping", 7)
    assert openai.rejected == [{"role": "assistant", "content": reply("refund", 7)}]
    plain = normalise_record(trl_pair(7))  # a string prompt is one user message; string sides one assistant's
    assert [m["role"] for m in plain.messages] == ["user", "assistant"] and plain.rejected == openai.rejected
    chat = {"messages": openai_pair(7)["input"]["messages"] + openai_pair(7)["preferred_output"]}
    assert normalise_record(chat).rejected is None and normalise_record(chat).kind == "sft"
    with pytest.raises(Reject) as refused:  # forced: a chat record is no pair
        normalise_record(chat, "preference")
    assert refused.value.reason == "missing_prompt"


def test_tools_in_the_input_and_calls_in_a_side_are_checked_as_chat_records_are():
    call = {"id": "c1", "type": "function", "function": {"name": "get_order_status", "arguments": {"order_id": "7"}}}
    pair = {
        "input": {
            "messages": [
                {"role": "user", "content": "Where is order 7?"},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c1", "content": '{"status": "late"}'},
            ],
            "tools": TOOLS,
            "parallel_tool_calls": False,
        },
        "preferred_output": [{"role": "assistant", "content": "It is late, sorry."}],
        "non_preferred_output": [{"role": "assistant", "content": None, "tool_calls": [call | {"id": "c2"}]}],
    }
    checked = normalise_record(pair)
    assert checked.tools == TOOLS and checked.messages[2] == {
        "role": "tool",
        "content": '{"status": "late"}',
        "tool_call_id": "c1",
    }
    assert json.loads(checked.rejected[0]["tool_calls"][0]["function"]["arguments"]) == {"order_id": "7"}
    same_call = changed(pair, lambda r: r.update(preferred_output=[{"role": "assistant", "tool_calls": [call]}]))
    with pytest.raises(Reject) as refused:  # calls compared by name and parsed arguments, not ids
        normalise_record(same_call)
    assert refused.value.reason == "identical_sides"


def cleaned(records: list, tokenizer: str | None = None, **data) -> dict[str, list]:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    batch = {
        "raw": np.array([line.encode() for line in lines], dtype=object),
        "source": np.array(["f.jsonl"] * len(lines)),
        "line": np.arange(1, len(lines) + 1),
        "order": np.arange(1, len(lines) + 1),
    }
    return CleanRecords(DataConfig(**data), tokenizer)(batch)


def test_pii_is_scrubbed_in_the_prompt_and_both_sides_and_tokens_count_the_longer_conversation(tiny_model):
    leaky = changed(GOOD, lambda r: r["input"]["messages"][1].update(content="mail mia.keller@example.org"))
    leaky["preferred_output"][0]["content"] += " call +44 20 7946 0958"
    leaky["non_preferred_output"][0]["content"] += " card 4111 1111 1111 1111 " + " ".join(["long"] * 40)
    out = cleaned([leaky], tiny_model)
    text = out["messages"][0] + out["rejected"][0]
    assert "mia.keller" not in text and "7946" not in text and "4111" not in text
    assert json.loads(out["pii"][0]) == {"CARD": 1, "EMAIL": 1, "PHONE": 1}
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    messages, rejected = json.loads(out["messages"][0]), json.loads(out["rejected"][0])
    lengths = [
        len(tokenizer(tokenizer.apply_chat_template(c, tokenize=False), add_special_tokens=False)["input_ids"])
        for c in (messages, messages[:-1] + rejected)
    ]
    assert out["n_tokens"][0] == max(lengths) == lengths[1] > lengths[0]
    assert cleaned([leaky], tiny_model, max_tokens=lengths[0])["reason"] == ["too_many_tokens"]
    dropped = cleaned(
        [changed(GOOD, lambda r: r["non_preferred_output"][0].update(content="mia@example.org"))], pii="drop"
    )
    assert dropped["reason"] == ["contains_pii"]  # PII in the rejected side alone drops the pair


def test_exact_duplicates_are_whole_pairs_and_other_records_hash_as_before():
    from rayft.data.dedup import compared_text
    from rayft.data.outputs import row_identity

    a, b = (
        normalise_record(GOOD),
        normalise_record(changed(GOOD, lambda r: r["non_preferred_output"][0].update(content="Other."))),
    )
    assert text_hash(a.messages, a.tools, a.rejected) != text_hash(b.messages, b.tools, b.rejected)
    assert compared_text(a.messages, prompt_only=True) == compared_text(b.messages, prompt_only=True) == ask(1)
    plain = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert text_hash(plain) == text_hash(plain, None, None)
    messages = json.dumps(plain)
    assert row_identity(messages, "x", "") == f'"x"\t{messages}\n'.encode()  # the hash of today's datasets
    assert row_identity(messages, "x", "", '[{"role": "assistant", "content": "B"}]') != row_identity(messages, "x")


def test_the_more_numerous_kind_wins_a_tie_goes_to_pairs():
    from rayft.data.preference import winning_kind

    assert winning_kind({"sft": 5, "preference": 4}) == "sft"
    assert winning_kind({"sft": 4, "preference": 4}) == "preference"
    assert winning_kind({"preference": 1}) == "preference" and winning_kind({}) == "sft"


def test_an_uploaded_preference_file_is_accepted_and_its_lines_checked_with_prepares_reasons(tmp_path):
    """What `POST /v1/files` keeps, and the job's validate stage (`check_files`) says of its lines."""
    from rayft.config import FineTuningConfig
    from rayft.data.inspect import check_files
    from rayft.projects import ProjectDirectory
    from rayft.service.files import FileStore
    from rayft.service.requests import FileUploadForm
    from rayft.service.store import ServiceStore

    config = FineTuningConfig(enabled=True)
    files = FileStore(config, ServiceStore(tmp_path / "r.db"), str(tmp_path / "f"), ProjectDirectory.of({}, config))
    planted = {3: REJECTS["identical_sides"][0], 5: REJECTS["empty_side"][0], 6: REJECTS["roles_out_of_order"][0]}
    planted |= {8: {"messages": GOOD["input"]["messages"] + GOOD["preferred_output"]}}  # an SFT record among pairs
    lines = [json.dumps(planted.get(n, openai_pair(n))) for n in range(1, 11)]
    text = "\n".join(lines) + "\n"
    stored = files.save_upload(io.BytesIO(text.encode()), "pairs.jsonl", FileUploadForm(purpose="fine-tune"), "p")
    check = check_files([stored.path], DataConfig(), None)
    assert check.kind == "preference" and check.records == 10 and check.kept == 6
    assert [(r.line, r.reason) for r in check.rejects] == [
        (3, "identical_sides"),
        (5, "empty_side"),
        (6, "roles_out_of_order"),
        (8, "mixed_kinds"),
    ]
    assert "1 sft, 6 preference" in check.rejects[-1].message


def test_the_sample_prefers_the_right_category_and_plants_rejects(tmp_path):
    from rayft.data.inspect import check_files
    from rayft.data.preference_samples import preference_pairs, write_preference_pairs

    for pair in preference_pairs(50, seed=2):
        right, wrong = pair["preferred_output"][0]["content"], pair["non_preferred_output"][0]["content"]
        assert right.split("\n")[1] == wrong.split("\n")[1]  # same priority
        assert right.split("\n")[0] != wrong.split("\n")[0] and wrong.startswith("Category: ")
    check = check_files([str(write_preference_pairs(tmp_path / "p.jsonl", n=50, seed=2))], DataConfig(), None)
    assert check.kind == "preference" and check.kept == 50
    assert sorted(r.reason for r in check.rejects) == ["empty_side", "identical_sides", "roles_out_of_order"]


PAIRISH = st.fixed_dictionaries(
    {},
    optional={
        "input": st.fixed_dictionaries({}, optional={"messages": st.lists(MESSAGE, max_size=3) | JSON, "tools": JSON}),
        "preferred_output": st.lists(MESSAGE, max_size=2) | JSON,
        "non_preferred_output": st.lists(MESSAGE, max_size=2) | JSON,
        "prompt": st.text(max_size=10) | st.lists(MESSAGE, max_size=3) | JSON,
        "chosen": st.text(max_size=10) | st.lists(MESSAGE, max_size=2) | JSON,
        "rejected": st.text(max_size=10) | st.lists(MESSAGE, max_size=2) | JSON,
    },
)


@given(record=st.one_of(JSON, PAIRISH))
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_json_is_a_pair_or_a_reject_never_an_error(record):
    try:
        checked = normalise_record(record, "preference")
    except Reject as reject:
        assert reject.reason and reject.message
    else:
        assert checked.kind == "preference" and len(checked.rejected) == 1
        assert checked.messages[-1]["role"] == checked.rejected[0]["role"] == "assistant"


def register_version(registry, root, i: int):
    from reference import tiny_artifact

    return registry.register("support", "adapter", str(root / "base"), tiny_artifact(root / f"adapter{i}", i))


def judged_items(tmp_path):
    """support:2 judged against support:1 on six items; returns the store, the version, and what
    each item's majority preferred (None: left out)."""
    from rayft.feedback import Answer, FeedbackStore, Rating
    from rayft.registry import Registry

    registry = Registry(tmp_path / "registry.db")
    old, new = register_version(registry, tmp_path, 1), register_version(registry, tmp_path, 2)
    store = FeedbackStore(registry.path)
    items = [
        (
            [
                {"role": "system", "content": "You triage."},
                {"role": "user", "content": f"review ticket {ask(900 + i)}"},
            ],
            [
                Answer(new.ref, new.weights_hash, reply(CATEGORIES[i % 3], 900 + i)),
                Answer(old.ref, old.weights_hash, reply(CATEGORIES[(i + 1) % 3], 900 + i)),
            ],
            None,
        )
        for i in range(6)
    ]
    store.add_items("support", new.ref, "test", items)
    votes = {
        1: {"ana": "candidate", "ben": "candidate"},
        2: {"ana": "other", "ben": "other", "cy": "candidate"},
        3: {"ana": "candidate", "ben": "other"},  # split evenly: left out
        4: {"ana": "tie", "ben": "both_bad"},  # nothing decided: left out
        5: {"ana": "candidate", "ben": "tie"},
        6: {"ana": "other"},
    }
    for item, given_by in votes.items():
        for reviewer, verdict in given_by.items():
            store.rate(Rating(item, reviewer, new.ref, new.weights_hash, old.ref, old.weights_hash, verdict=verdict))
    store.rate(Rating(4, "dee", new.ref, "other-weights", old.ref, old.weights_hash, verdict="candidate"))  # not these
    preferred = {1: 0, 2: 1, 3: None, 4: None, 5: 0, 6: 1}  # index of the preferred answer
    return store, registry.get(new.ref), {i + 1: (items[i], preferred[i + 1]) for i in range(6)}


def test_review_export_writes_one_pair_per_item_by_majority(tmp_path):
    from rayft.eval.review_export import export_preferences

    store, version, expected = judged_items(tmp_path)
    exported = export_preferences(store, version, tmp_path / "out" / "prefs.jsonl")
    assert (exported.pairs, exported.items, exported.judgments, exported.split_evenly) == (4, 5, 9, 1)
    written = [json.loads(line) for line in exported.path.read_text().splitlines()]
    wanted = [(item, pick) for item, pick in expected.values() if pick is not None]
    assert len(written) == len(wanted)
    for record, ((prompt, answers, _), pick) in zip(written, wanted):
        assert record["input"]["messages"] == prompt
        assert record["preferred_output"] == [{"role": "assistant", "content": answers[pick].text}]
        assert record["non_preferred_output"] == [{"role": "assistant", "content": answers[1 - pick].text}]


# ---- on Ray: one mixed file of pairs through the whole pipeline --------------------------------

NEAR_PROMPT_OF = 4  # line 41 repeats line 4's prompt with other replies
SHARED_PROMPT = "the same question asked of several pairs " + ask(500)


def pair_lines() -> tuple[list[str], dict[int, str]]:
    """Lines 1-40 valid pairs (odd: OpenAI's format, even: prompt/chosen/rejected), then planted
    lines, each with the reason it must be rejected for."""
    lines = [json.dumps(openai_pair(n) if n % 2 else trl_pair(n)) for n in range(1, 41)]
    lines[9] = json.dumps(
        changed(
            openai_pair(10),
            lambda r: (
                r["input"]["messages"][1].update(content=ask(10) + " mail mia.keller@example.org")
                or r["non_preferred_output"][0].update(content=reply("refund", 10) + " card 4111 1111 1111 1111")
            ),
        )
    )
    near = openai_pair(NEAR_PROMPT_OF, prompt=trl_pair(NEAR_PROMPT_OF)["prompt"])
    near["preferred_output"][0]["content"] = reply("billing", 77)
    near["non_preferred_output"][0]["content"] = reply("shipping", 78)
    planted = {
        41: (near, "duplicate_near"),
        42: (json.loads(lines[2]), "duplicate_exact"),  # line 3 again
        43: (REJECTS["identical_sides"][1], "identical_sides"),
        44: (REJECTS["empty_side"][0], "empty_side"),
        45: (REJECTS["roles_out_of_order"][0], "roles_out_of_order"),
        46: (REJECTS["side_not_one_assistant_message"][0], "side_not_one_assistant_message"),
        47: ({"messages": openai_pair(47)["input"]["messages"] + openai_pair(47)["preferred_output"]}, "mixed_kinds"),
        48: ({"prompt": "only a prompt", "completion": reply("billing", 48)}, "mixed_kinds"),
    }
    shared = [openai_pair(60 + k, prompt=SHARED_PROMPT) for k in range(4)]  # lines 49-52: one prompt, four pairs
    lines += [json.dumps(record) for record, _ in planted.values()] + [json.dumps(p) for p in shared]
    return lines, {n: reason for n, (_, reason) in planted.items()} | {n: "duplicate_near" for n in (50, 51, 52)}


def split_frames(out) -> dict[str, pd.DataFrame]:
    return {name: pd.read_parquet(out / f"{name}.parquet") for name in ("train", "val", "test")}


def prompt_text(messages) -> str:
    """What the splits must not share: a pair's prompt, system turns left out."""
    return "\n".join(m["content"] for m in messages[:-1] if m["role"] != "system")


def test_a_file_of_pairs_is_prepared_with_every_line_accounted_for(ray_cluster, tiny_model, tmp_path, capsys):
    from rayft.cli import main
    from rayft.data.outputs import SPLIT_SCHEMA
    from rayft.data.prepare import PrepareOptions, prepare_dataset

    lines, planted = pair_lines()
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(lines) + "\n")
    store, version, expected = judged_items(tmp_path)
    reviews = tmp_path / "reviews.jsonl"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAYFT_HOME", str(tmp_path))  # the registry the CLI reads
        assert main(["review", "export-preferences", version.ref, "--out", str(reviews)]) == 0
    assert "4 preference pairs from 9 judgments of 5 items" in capsys.readouterr().out

    data = DataConfig(label_regex=r"Category:\s*(\w+)", max_tokens=200, warn_min_class=0)
    manifest = prepare_dataset([str(pairs), str(reviews)], tmp_path / "out", PrepareOptions(data, tiny_model))
    out = tmp_path / "out"
    assert manifest.kind == "preference" and json.loads((out / "manifest.json").read_text())["kind"] == "preference"
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert {(r["source"], r["line"], r["reason"]) for r in rejects} == {
        (str(pairs), n, why) for n, why in planted.items()
    }
    near = next(r for r in rejects if r["line"] == 41)
    assert near["duplicate_of"] == {"source": str(pairs), "line": NEAR_PROMPT_OF} and near["similarity"] == 1.0
    mixed = next(r for r in rejects if r["line"] == 47)
    assert "2 sft, 50 preference" in mixed["message"]
    counts = manifest.counts
    assert (counts.input, counts.kept, counts.duplicates_exact) == (52 + 4, 40 + 1 + 4, 1)
    assert manifest.rejects_by_reason == {
        "empty_side": 1,
        "identical_sides": 1,
        "mixed_kinds": 2,
        "roles_out_of_order": 1,
        "side_not_one_assistant_message": 1,
    }

    frames = split_frames(out)
    everything = pd.concat(frames.values())
    assert (
        len(everything) == counts.kept and pd.read_parquet(out / "train.parquet").columns.tolist() == SPLIT_SCHEMA.names
    )
    for messages, rejected, label in zip(everything["messages"], everything["rejected"], everything["label"]):
        assert messages[-1]["role"] == "assistant" and [m["role"] for m in rejected] == ["assistant"]
        assert (
            messages[-1]["content"].startswith(f"Category: {label}")
            and rejected[0]["content"] != messages[-1]["content"]
        )
    scrubbed = everything[everything["line"] == 10].iloc[0]
    assert "<EMAIL>" in scrubbed["messages"][1]["content"] and "<CARD>" in scrubbed["rejected"][0]["content"]
    assert manifest.pii.found == {"CARD": 1, "EMAIL": 1}
    prompts = {name: {prompt_text(m) for m in frame["messages"]} for name, frame in frames.items()}
    assert (
        not (prompts["train"] & prompts["val"])
        and not (prompts["train"] & prompts["test"])
        and not (prompts["val"] & prompts["test"])
    )

    exported = everything[everything["source"] == str(reviews)].sort_values("line")  # the review export read back
    wanted = [(item, pick) for item, pick in expected.values() if pick is not None]
    for (_, row), ((prompt, answers, _), pick) in zip(exported.iterrows(), wanted):
        assert [(m["role"], m["content"]) for m in row["messages"][:-1]] == [(m["role"], m["content"]) for m in prompt]
        assert (row["messages"][-1]["content"], row["rejected"][0]["content"]) == (
            answers[pick].text,
            answers[1 - pick].text,
        )
    assert len(exported) == len(wanted)

    # Without near-duplicate removal, pairs sharing a prompt are kept, and still never straddle the splits.
    keep_all = PrepareOptions(data.model_copy(update={"near_dup_threshold": None}), tiny_model)
    again = prepare_dataset([str(pairs)], tmp_path / "again", keep_all)
    frames = split_frames(tmp_path / "again")
    where = {name: {prompt_text(m) for m in frame["messages"]} for name, frame in frames.items()}
    assert (
        not (where["train"] & where["val"])
        and not (where["train"] & where["test"])
        and not (where["val"] & where["test"])
    )
    assert again.counts.duplicates_near == 0 and again.kind == "preference"
    leaked = [json.loads(line) for line in (tmp_path / "again" / "rejects.jsonl").read_text().splitlines()]
    leaked = [r["line"] for r in leaked if r["reason"] == "leaked_into_eval"]
    shared = [
        line
        for f in frames.values()
        for line in f["line"][f["messages"].map(lambda m: SHARED_PROMPT in m[-2]["content"])]
    ]
    assert sorted(shared + [n for n in leaked if n >= 49]) == [49, 50, 51, 52] and shared
    assert len(leaked) == again.counts.leaked and again.counts.input == again.counts.kept + again.counts.removed()
