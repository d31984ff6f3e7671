"""Record validation: each reject reason from a real malformed line."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from records_strategies import LINE

from rayft.data.validate import Reject, decode_line, normalise

GOOD = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}


def check(raw: bytes, fmt: str = "auto"):
    return normalise(decode_line(raw), fmt)


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b'{"messages": [{"role": "user", "content": "Hi"}', "invalid_json"),
        (b'{"messages": "\xff\xfe"}', "invalid_utf8"),
        (b'["a", "b"]', "not_an_object"),
        (b'{"prompt_text": "x"}', "missing_messages"),
        (b'{"messages": []}', "empty_messages"),
        (b'{"messages": "hello"}', "messages_not_a_list"),
        (b'{"messages": ["hello"]}', "message_not_an_object"),
        (
            b'{"messages": [{"role": "customer", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}',
            "unknown_role",
        ),
        (
            b'{"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "Yo"}]}',
            "non_string_content",
        ),
        (b'{"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "Yo"}]}', "empty_content"),
        (b'{"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}]}', "no_assistant_turn"),
        (
            b'{"messages": [{"role": "assistant", "content": "A"}, {"role": "user", "content": "Hi"}]}',
            "last_turn_not_assistant",
        ),
        (
            b'{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "A", "weight": 2}]}',
            "invalid_weight",
        ),
        (b'{"prompt": "Hi"}', "missing_prompt_or_completion"),
        (b'{"prompt": "Hi", "completion": ""}', "empty_content"),
    ],
)
def test_reject_reasons(raw, reason):
    with pytest.raises(Reject) as error:
        check(raw)
    assert error.value.reason == reason
    assert error.value.message


def test_good_records_normalise_to_messages():
    assert check(json.dumps(GOOD).encode()) == GOOD["messages"]
    assert check(b'{"prompt": "Q?", "completion": "A."}') == [
        {"role": "user", "content": "Q?"},
        {"role": "assistant", "content": "A."},
    ]


def clean(lines: list[str], **data) -> dict[str, list]:
    """The per-record Ray Data step (CleanRecords) run on one batch in-process, without Ray."""
    import numpy as np

    from rayft.config import DataConfig
    from rayft.data.records import CleanRecords

    n = len(lines)
    batch = {
        "raw": np.array([line.encode() for line in lines], dtype=object),
        "source": np.array(["f.jsonl"] * n),
        "line": np.arange(1, n + 1),
        "order": np.arange(1, n + 1),
    }
    return CleanRecords(DataConfig(**data), None)(batch)


def chat_line(answer: str, **fields) -> str:
    return json.dumps(
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": answer}], **fields}
    )


def test_labels_from_a_field_a_json_path_or_a_regex():
    by_field = clean([chat_line("A", topic="billing"), chat_line("A")], label_field="topic")
    assert by_field["label"][0] == "billing" and by_field["reason"][1] == "missing_label"
    by_json = clean(
        [chat_line('{"triage": {"category": "refund"}}'), chat_line("not json")], label_json="triage.category"
    )
    assert by_json["label"][0] == "refund" and by_json["reason"][1] == "missing_label"
    by_regex = clean([chat_line("Category: shipping")], label_regex=r"Category:\s*(\w+)")
    assert by_regex["label"] == ["shipping"]


def test_pii_modes_scrub_drop_or_keep():
    line = chat_line("Mail me at mia.keller@example.org")
    scrubbed = clean([line])
    assert scrubbed["status"] == ["ok"] and "<EMAIL>" in scrubbed["messages"][0]
    assert scrubbed["pii"] == ['{"EMAIL": 1}']
    dropped = clean([line], pii="drop")
    assert dropped["reason"] == ["contains_pii"] and "1 EMAIL" in dropped["message"][0]
    assert dropped["pii"] == ['{"EMAIL": 1}']  # what a dropped record held is counted too
    assert "mia.keller" not in dropped["record"][0]  # the reject file gets the scrubbed copy
    kept = clean([line], pii="off")
    assert "mia.keller@example.org" in kept["messages"][0] and kept["pii"] == [""]


def test_report_names_what_was_done_with_pii(capsys):
    from rayft.data.manifest import Counts, Manifest, PiiFindings
    from rayft.data.report import print_manifest

    counts = Counts(
        input=1, kept=0, rejected=1, duplicates_exact=0, duplicates_near=0, leaked=0, train=0, val=0, test=0
    )
    manifest = Manifest(
        dataset_hash="ab" * 32,
        counts=counts,
        rejects_by_reason={"contains_pii": 1},
        pii=PiiFindings(mode="drop", found={"EMAIL": 1, "NAME": 2}),
        inputs=[],
        config={},
        tokenizer=None,
        stats={},
        warnings=[],
    )
    print_manifest(manifest, "out")
    printed = capsys.readouterr().out
    assert "PII dropped" in printed and "EMAIL 1, NAME 2" in printed and "contains_pii" in printed


def test_record_format_is_forced_and_the_container_comes_from_the_file(tmp_path):
    import pandas as pd
    from pydantic import ValidationError

    from rayft.config import DataConfig
    from rayft.data.sources import expand_inputs, file_records

    pairs = [{"prompt": f"Q{i}?", "completion": f"A{i}."} for i in range(3)]
    (tmp_path / "pc.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    pd.DataFrame(pairs).to_parquet(tmp_path / "pc.parquet")
    for name in ("pc.jsonl", "pc.parquet"):
        path = tmp_path / name
        lines = [raw.decode() for _, raw in file_records(str(path), path.read_bytes())]
        assert clean(lines, format="prompt_completion")["status"] == ["ok"] * 3, name
        assert set(clean(lines, format="messages")["reason"]) == {"missing_messages"}, name
    with pytest.raises(ValidationError, match="container"):
        DataConfig(format="parquet")
    (tmp_path / "notes.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="notes.csv: unknown file type '.csv'"):
        expand_inputs([str(tmp_path / "pc.jsonl"), str(tmp_path / "notes.csv")])


@pytest.fixture(scope="module")
def cleaners(tiny_model):
    """The per-record step without and with a tokenizer (the chat template renders every record)."""
    from rayft.config import DataConfig
    from rayft.data.records import CleanRecords

    return [CleanRecords(DataConfig(label_field="topic"), None), CleanRecords(DataConfig(), tiny_model)]


@given(lines=st.lists(LINE, min_size=1, max_size=12))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_every_line_becomes_one_kept_or_rejected_row_and_nothing_raises(cleaners, lines):
    import json

    import numpy as np

    batch = {
        "raw": np.array(lines, dtype=object),
        "source": np.array(["f.jsonl"] * len(lines)),
        "line": np.arange(1, len(lines) + 1),
        "order": np.arange(1, len(lines) + 1),
    }
    for cleaner in cleaners:
        rows = cleaner(batch)
        assert len(rows["status"]) == len(lines)
        for status, reason, messages in zip(rows["status"], rows["reason"], rows["messages"]):
            if status == "ok":
                kept = json.loads(messages)
                assert reason == "" and kept[-1]["role"] == "assistant"
                assert all(
                    (isinstance(m["content"], str) and m["content"].strip()) or m.get("tool_calls") for m in kept
                )
            else:
                assert status == "rejected" and reason
