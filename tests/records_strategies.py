"""Hypothesis strategies for hostile input lines: any JSON value, chat and prompt/completion records
with wrong types in every field, and raw bytes that are not UTF-8 or not JSON."""

import json

from hypothesis import strategies as st

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
MESSAGE = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["system", "user", "assistant", "tool", "wizard", 3, None]),
        "content": st.text(max_size=40) | JSON,
    },
    optional={"weight": st.sampled_from([0, 1, 2, None, "1", True])},
)
CHAT = st.fixed_dictionaries({"messages": st.lists(MESSAGE, max_size=4) | JSON}, optional={"topic": JSON})
PROMPT_COMPLETION = st.fixed_dictionaries(
    {}, optional={"prompt": st.text(max_size=40) | JSON, "completion": st.text(max_size=40) | JSON}
)
# One input line: never a newline inside (json.dumps escapes them; raw bytes are filtered).
LINE = st.one_of(
    JSON.map(json.dumps),
    CHAT.map(json.dumps),
    PROMPT_COMPLETION.map(json.dumps),
    st.binary(max_size=40).filter(lambda b: b"\n" not in b and b"\r" not in b),
).map(lambda line: line if isinstance(line, bytes) else line.encode())
