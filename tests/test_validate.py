"""Record validation: each reject reason from a real malformed line."""

import json

import pytest

from rayft.data.validate import Reject, decode_line, normalise

GOOD = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}


def check(raw: bytes, fmt: str = "auto"):
    return normalise(decode_line(raw), fmt)


@pytest.mark.parametrize("raw, reason", [
    (b'{"messages": [{"role": "user", "content": "Hi"}', "invalid_json"),
    (b'{"messages": "\xff\xfe"}', "invalid_utf8"),
    (b'["a", "b"]', "not_an_object"),
    (b'{"prompt_text": "x"}', "missing_messages"),
    (b'{"messages": []}', "empty_messages"),
    (b'{"messages": "hello"}', "messages_not_a_list"),
    (b'{"messages": ["hello"]}', "message_not_an_object"),
    (b'{"messages": [{"role": "customer", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}', "unknown_role"),
    (b'{"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "Yo"}]}', "non_string_content"),
    (b'{"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "Yo"}]}', "empty_content"),
    (b'{"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}]}', "no_assistant_turn"),
    (b'{"messages": [{"role": "assistant", "content": "A"}, {"role": "user", "content": "Hi"}]}', "last_turn_not_assistant"),
    (b'{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "A", "weight": 2}]}', "invalid_weight"),
    (b'{"prompt": "Hi"}', "missing_prompt_or_completion"),
    (b'{"prompt": "Hi", "completion": ""}', "empty_content"),
])
def test_reject_reasons(raw, reason):
    with pytest.raises(Reject) as error:
        check(raw)
    assert error.value.reason == reason
    assert error.value.message


def test_good_records_normalise_to_messages():
    assert check(json.dumps(GOOD).encode()) == GOOD["messages"]
    assert check(b'{"prompt": "Q?", "completion": "A."}') == [
        {"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]


def clean(lines: list[str], **data) -> dict[str, list]:
    """The per-record Ray Data step (CleanRecords) run on one batch in-process, without Ray."""
    import numpy as np

    from rayft.config import DataConfig
    from rayft.data.records import CleanRecords

    n = len(lines)
    batch = {"raw": np.array([l.encode() for l in lines], dtype=object), "source": np.array(["f.jsonl"] * n),
             "line": np.arange(1, n + 1), "order": np.arange(1, n + 1)}
    return CleanRecords(DataConfig(**data), None)(batch)


def chat_line(answer: str, **fields) -> str:
    return json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": answer}], **fields})


def test_labels_from_a_field_a_json_path_or_a_regex():
    by_field = clean([chat_line("A", topic="billing"), chat_line("A")], label_field="topic")
    assert by_field["label"][0] == "billing" and by_field["reason"][1] == "missing_label"
    by_json = clean([chat_line('{"triage": {"category": "refund"}}'), chat_line("not json")], label_json="triage.category")
    assert by_json["label"][0] == "refund" and by_json["reason"][1] == "missing_label"
    by_regex = clean([chat_line("Category: shipping")], label_regex=r"Category:\s*(\w+)")
    assert by_regex["label"] == ["shipping"]


def test_pii_modes_scrub_drop_or_keep():
    line = chat_line("Mail me at mia.keller@example.org")
    scrubbed = clean([line])
    assert scrubbed["status"] == ["ok"] and "<EMAIL>" in scrubbed["messages"][0] and scrubbed["pii_EMAIL"] == [1]
    dropped = clean([line], pii="drop")
    assert dropped["reason"] == ["contains_pii"] and "1 EMAIL" in dropped["message"][0]
    assert "mia.keller" not in dropped["record"][0]  # the reject file gets the scrubbed copy
    kept = clean([line], pii="off")
    assert "mia.keller@example.org" in kept["messages"][0] and kept["pii_EMAIL"] == [0]
