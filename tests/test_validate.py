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
