"""OpenAI's function-calling format through data prepare: each reject reason from a real malformed
record, the older `functions` format read as tools, arguments encoded twice counted and warned
about, PII scrubbed inside call arguments, exact dedup over whole records and near-dup over the
conversation only, tokens counted with the tools rendered, a property test that no record makes the
validator raise anything but a reject; and, on Ray, a file of them prepared with every line
accounted for and the split stratified on the called tool."""

import copy
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rayft.config import DataConfig
from rayft.data.records import CleanRecords, text_hash
from rayft.data.tool_samples import TOOLS, tool_conversations
from rayft.data.validate import Reject, normalise_record

GOOD = tool_conversations(1, seed=4, answered_share=1.0)[0]


def broken(change) -> dict:
    record = copy.deepcopy(GOOD)
    change(record)
    return record


def call_of(record: dict) -> dict:
    return record["messages"][2]["tool_calls"][0]


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda r: call_of(r)["function"].update(name="refund_everything"), "unknown_tool"),
        (lambda r: r.pop("tools"), "unknown_tool"),
        (lambda r: call_of(r)["function"].update(arguments="{order_id: 1"), "invalid_tool_arguments"),
        (lambda r: call_of(r)["function"].update(arguments="[1, 2]"), "invalid_tool_arguments"),
        (lambda r: r["messages"][3].update(tool_call_id="call_other"), "orphan_tool_message"),
        (
            lambda r: r["messages"].insert(2, {"role": "tool", "tool_call_id": "x", "content": "{}"}),
            "orphan_tool_message",
        ),
        (lambda r: r["tools"][0]["function"].update(parameters={"type": "objekt"}), "invalid_tool_schema"),
        (lambda r: r["tools"][0]["function"].update(parameters=[1]), "invalid_tool_schema"),
        (lambda r: r["tools"].append(r["tools"][0]), "invalid_tools"),
        (lambda r: r["tools"][0]["function"].update(name="has spaces"), "invalid_tools"),
        (lambda r: r.update(tools="all of them"), "invalid_tools"),
        (lambda r: r["messages"][2].update(tool_calls=[{"function": {}}]), "invalid_tool_call"),
        (lambda r: r["messages"][2].update(tool_calls=[call_of(r), call_of(r) | {"id": "b"}]), "too_many_tool_calls"),
        (lambda r: r["messages"][2].update(tool_calls=[]), "non_string_content"),
    ],
)
def test_each_reject_reason_from_a_real_record(change, reason):
    with pytest.raises(Reject) as refused:
        normalise_record(broken(change))
    assert refused.value.reason == reason and refused.value.message


def test_openai_records_and_the_older_functions_format_normalise():
    checked = normalise_record(GOOD)
    assert checked.tools == TOOLS and checked.double_encoded == 0
    calling, answering = checked.messages[2], checked.messages[3]
    assert (
        calling["content"] is None
        and calling["tool_calls"][0]["function"]["name"] == GOOD["messages"][2]["tool_calls"][0]["function"]["name"]
    )
    assert answering == {"role": "tool", "content": GOOD["messages"][3]["content"], "tool_call_id": call_of(GOOD)["id"]}
    legacy = {
        "functions": [TOOLS[0]["function"]],
        "messages": [
            {"role": "user", "content": "Where is order 12345?"},
            {
                "role": "assistant",
                "content": None,
                "function_call": {"name": "get_order_status", "arguments": '{"order_id": "12345"}'},
            },
            {"role": "function", "name": "get_order_status", "content": '{"status": "shipped"}'},
            {"role": "assistant", "content": "It shipped.", "weight": 1},
        ],
    }
    read = normalise_record(legacy)
    assert read.tools == [TOOLS[0]] and read.messages[2]["role"] == "tool"
    assert read.messages[2]["tool_call_id"] == read.messages[1]["tool_calls"][0]["id"]
    objects = broken(lambda r: call_of(r)["function"].update(arguments={"order_id": "1"}))  # an object, not a string
    assert json.loads(normalise_record(objects).messages[2]["tool_calls"][0]["function"]["arguments"]) == {
        "order_id": "1"
    }


def rows(records: list, tokenizer: str | None = None, **data) -> dict[str, list]:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    n = len(lines)
    batch = {
        "raw": np.array([line.encode() for line in lines], dtype=object),
        "source": np.array(["f.jsonl"] * n),
        "line": np.arange(1, n + 1),
        "order": np.arange(1, n + 1),
    }
    return CleanRecords(DataConfig(**data), tokenizer)(batch)


def test_twice_encoded_arguments_are_counted_and_warned_about():
    from rayft.data.manifest import Counts
    from rayft.data.outputs import warnings_for

    twice = broken(lambda r: call_of(r)["function"].update(arguments=json.dumps(call_of(r)["function"]["arguments"])))
    assert rows([twice, GOOD])["double_encoded"] == [1, 0]
    counts = Counts(
        input=2, kept=2, rejected=0, duplicates_exact=0, duplicates_near=0, leaked=0, train=2, val=0, test=0
    )
    stats = {"tool_calls": {"records_with_tools": 2, "double_encoded_arguments": 1}}
    assert any(w.startswith("double_encoded_arguments: 1 tool calls") for w in warnings_for(counts, stats, 0, 0, "t"))


def test_pii_in_call_arguments_is_scrubbed_and_they_stay_json():
    leaky = broken(
        lambda r: call_of(r)["function"].update(
            arguments=json.dumps({"order_id": "1", "note": "mail mia.keller@example.org"})
        )
    )
    out = rows([leaky])
    kept = json.loads(out["messages"][0])[2]["tool_calls"][0]["function"]["arguments"]
    assert "mia.keller" not in kept and json.loads(kept)["note"] == "mail <EMAIL>"
    assert json.loads(out["pii"][0]) == {"EMAIL": 1}


def test_exact_duplicates_are_whole_records_and_near_duplicates_the_conversation_only():
    from rayft.data.dedup import dedup_text

    other_tools = broken(lambda r: r["tools"][1]["function"].update(description="Open a ticket."))
    same, differs = normalise_record(GOOD), normalise_record(other_tools)
    assert text_hash(same.messages, same.tools) != text_hash(differs.messages, differs.tools)
    assert dedup_text(same.messages) == dedup_text(differs.messages)  # the tool list is not compared
    assert "support assistant" not in dedup_text(same.messages)  # nor the system prompt
    a, b = tool_conversations(2, seed=9)
    assert dedup_text(normalise_record(a).messages) != dedup_text(normalise_record(b).messages)
    plain = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert text_hash(plain) == text_hash(plain, None)  # records without tools hash as before


def test_tokens_are_counted_with_the_tools_rendered(tiny_model):
    out = rows(
        [
            GOOD,
            broken(
                lambda r: (
                    r.update(tools=TOOLS[:1])
                    or call_of(r)["function"].update(name="get_order_status", arguments='{"order_id": "1"}')
                )
            ),
        ],
        tiny_model,
    )
    assert out["status"] == ["ok", "ok"]
    assert out["n_tokens"][0] > out["n_tokens"][1]  # three tools' schemas are longer than one


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                ["name", "arguments", "id", "type", "function", "parameters", "tool_call_id", "role", "content"]
            ),
            inner,
            max_size=4,
        )
    ),
    max_leaves=10,
)


@given(
    tools=st.one_of(st.none(), JSONISH, st.just(TOOLS)),
    calls=st.one_of(st.none(), JSONISH, st.lists(JSONISH, max_size=3)),
    answer=st.one_of(st.none(), JSONISH),
    parallel=st.one_of(st.none(), st.booleans(), JSONISH),
)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_tool_record_is_kept_or_rejected_never_an_error(tools, calls, answer, parallel):
    record = {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": None, "tool_calls": calls},
            {"role": "tool", "tool_call_id": answer, "content": "ok"},
            {"role": "assistant", "content": "done"},
        ],
        "tools": tools,
        "parallel_tool_calls": parallel,
    }
    try:
        checked = normalise_record(record)
    except Reject as reject:
        assert reject.reason and reject.message
        return
    called = {c["function"]["name"] for m in checked.messages for c in m.get("tool_calls") or []}
    assert called <= {t["function"]["name"] for t in checked.tools or []}


def test_the_loss_covers_the_call_and_the_answer_never_the_tool_result(tiny_model):
    from transformers import AutoTokenizer

    from rayft.chat import DEFAULT_TOOL_TEMPLATE, renders_tools, tool_template
    from rayft.training.formatting import tokenize_conversation

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    assert not renders_tools(tokenizer) and tool_template(tokenizer) == DEFAULT_TOOL_TEMPLATE  # the tiny base has none
    tokenizer.chat_template = DEFAULT_TOOL_TEMPLATE
    checked = normalise_record(GOOD)
    row = tokenize_conversation(tokenizer, checked.messages, 2048, checked.tools)
    learned = tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label != -100])
    call = call_of(GOOD)["function"]
    assert learned.startswith("<tool_call>") and f'"name": "{call["name"]}"' in learned
    assert learned.endswith(GOOD["messages"][-1]["content"] + "<|im_end|>")
    assert GOOD["messages"][3]["content"] not in learned  # the tool's result is read, not learned
    assert "get_order_status" in tokenizer.decode(row["input_ids"])  # the tools are in the prompt


@pytest.mark.timeout(300)
def test_a_function_calling_file_is_prepared_with_every_line_accounted_for(tool_dataset):
    import pyarrow.parquet as pq

    from rayft.data.manifest import MANIFEST, Manifest

    manifest = Manifest.model_validate_json((tool_dataset / MANIFEST).read_text())
    lines = len(Path(manifest.inputs[0]).read_text().splitlines())
    assert manifest.counts.input == lines == manifest.counts.kept + manifest.counts.removed()
    assert manifest.rejects_by_reason == {"invalid_tool_arguments": 1, "orphan_tool_message": 1, "unknown_tool": 1}
    assert manifest.stats["tool_calls"]["double_encoded_arguments"] == 1
    assert any(w.startswith("double_encoded_arguments: 1") for w in manifest.warnings)
    rejects = [json.loads(line) for line in (tool_dataset / "rejects.jsonl").read_text().splitlines()]
    assert {r["reason"] for r in rejects if r["source"].endswith("tools.jsonl")} >= {
        "unknown_tool",
        "orphan_tool_message",
    }
    called: dict[str, Counter] = {}
    for split in ("train", "val", "test"):
        table = pq.read_table(tool_dataset / f"{split}.parquet").to_pylist()
        assert all(json.loads(r["tools"]) == TOOLS for r in table)
        called[split] = Counter(
            c["function"]["name"] for r in table for m in r["messages"] for c in m["tool_calls"] or []
        )
    for name in ("get_order_status", "open_ticket", "escalate"):  # every tool in every split, in proportion
        assert called["val"][name] > 0 and called["test"][name] > 0
        share = {split: called[split][name] / sum(called[split].values()) for split in called}
        assert abs(share["test"] - share["train"]) < 0.15


@pytest.mark.timeout(600)
def test_a_lora_on_tool_calls_beats_the_base_on_tool_name_accuracy(tool_adapter, tiny_model, tool_dataset):
    from conftest import tool_train_config

    from rayft.chat import DEFAULT_TOOL_TEMPLATE, artifact_template
    from rayft.config import parse_config
    from rayft.eval.evaluate import evaluate

    assert artifact_template(tool_adapter.artifact_uri) == DEFAULT_TOOL_TEMPLATE  # recorded with the version
    assert tool_adapter.config["model"]["tool_parser"] == "hermes"
    report = evaluate(
        parse_config(tool_train_config(tiny_model, tool_dataset, "tools")), tool_adapter.ref, show_progress=False
    )
    base, candidate = report.metrics["base"], report.metrics["candidate"]
    assert report.primary_metric == "tool_name_accuracy"
    assert candidate["tool_name_accuracy"] > base["tool_name_accuracy"]
    assert candidate["text_instead_of_call"] < base["text_instead_of_call"] == 1.0
    beats = next(c for c in report.verdict if c.name == "beats_base")
    assert beats.passed, beats.detail


def test_tool_call_metrics_against_hand_counted_answers():
    from rayft.eval.metrics import tool_call_metrics
    from rayft.tool_calls import ReadCalls

    want = json.dumps([{"name": "escalate", "arguments": '{"reason": "legal"}'}])
    outputs = [
        ReadCalls(None, [{"name": "escalate", "arguments": '{"reason": "legal"}'}], True),  # right, exact
        ReadCalls(None, [{"name": "escalate", "arguments": '{"reason": "angry"}'}], True),  # right tool, other args
        ReadCalls("<tool_call>{...", [], True, "escalate"),  # right tool, arguments that do not parse
        ReadCalls(None, [{"name": "open_ticket", "arguments": "{}"}], True),  # wrong tool
        ReadCalls("I will ask a colleague.", [], False),  # text where a call was due
    ]
    found = tool_call_metrics([o.to_json() for o in outputs] + ["plain text answer"], [want] * 5 + ["It shipped."])
    assert found == {  # over the five rows that ask for a call; the sixth asks for text
        "tool_name_accuracy": 3 / 5,
        "arguments_exact_match": 1 / 5,
        "arguments_json_valid": 3 / 4,  # of the four that tried to call
        "text_instead_of_call": 1 / 5,
    }
