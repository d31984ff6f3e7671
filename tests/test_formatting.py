"""Chat records to tokens: assistant-only labels, and packing that keeps examples apart."""

import pytest
import torch

from rayft.data.samples import support_tickets
from rayft.training.formatting import (
    IGNORE_INDEX,
    TemplateError,
    pack_examples,
    packed_batch,
    pad_batch,
    tokenize_conversation,
)


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def learned_text(tokenizer, row):
    return tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label != IGNORE_INDEX])


def test_labels_cover_exactly_the_assistant_turns(tokenizer):
    messages = support_tickets(1, seed=5)[0]["messages"] + [
        {"role": "user", "content": "Thanks!"},
        {"role": "assistant", "content": "You are welcome."},
    ]
    row = tokenize_conversation(tokenizer, messages, 512)
    eos = tokenizer.eos_token
    assert learned_text(tokenizer, row) == messages[2]["content"] + eos + messages[4]["content"] + eos
    # the same mask transformers derives from the template's {% generation %} markers
    hf = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert row["input_ids"] == hf["input_ids"]
    assert [label != IGNORE_INDEX for label in row["labels"]] == [bool(m) for m in hf["assistant_masks"]]


def test_weight_zero_turns_are_not_learned(tokenizer):
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Bad answer.", "weight": 0},
        {"role": "user", "content": "Again"},
        {"role": "assistant", "content": "Good answer."},
    ]
    row = tokenize_conversation(tokenizer, messages, 512)
    assert learned_text(tokenizer, row) == "Good answer." + tokenizer.eos_token


def test_template_that_is_not_prefix_stable_is_refused(tokenizer):
    tokenizer = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    # renders the turn count first: a prefix of the conversation renders differently
    tokenizer.chat_template = "{{ messages|length }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(TemplateError, match="prefix-stable"):
        tokenize_conversation(tokenizer, [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], 64)


def loss(model, batch, **extra):
    inputs = {
        "input_ids": torch.tensor(batch.input_ids),
        "labels": torch.tensor(batch.labels),
        "position_ids": torch.tensor(batch.position_ids),
    }
    if batch.attention_mask is not None:
        inputs["attention_mask"] = torch.tensor(batch.attention_mask)
    with torch.no_grad():
        return model(**inputs, **extra).loss.item()


def test_packed_loss_equals_unpacked_loss(tiny_model, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    examples = [tokenize_conversation(tokenizer, r["messages"], 512) for r in support_tickets(4, seed=9)]
    rows = pack_examples(examples, max_seq_len=1024)
    assert len(rows) == 1 and len(rows[0]["input_ids"]) == sum(len(e["input_ids"]) for e in examples)
    padded = loss(model, pad_batch(examples, tokenizer.pad_token_id), use_cache=False)
    packed = loss(model, packed_batch(rows, tokenizer.pad_token_id), use_cache=False)
    assert packed == pytest.approx(padded, abs=1e-5)
    # without use_cache=False transformers does not detect the packed rows and attention leaks
    leaky = loss(model, packed_batch(rows, tokenizer.pad_token_id))
    assert abs(leaky - padded) > 1e-4


def test_packing_respects_the_row_limit(tokenizer):
    examples = [tokenize_conversation(tokenizer, r["messages"], 512) for r in support_tickets(10, seed=2)]
    rows = pack_examples(examples, max_seq_len=200)
    assert all(len(r["input_ids"]) <= 200 for r in rows)
    assert sum(len(r["input_ids"]) for r in rows) == sum(len(e["input_ids"]) for e in examples)
    for row in rows:  # positions restart at 0 at each example start
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0]
        assert all(row["labels"][i] == IGNORE_INDEX for i in starts)


def test_packing_fills_rows_best_fit_decreasing():
    """Lengths 60, 50, 40, 30, 20 in rows of 100: two full rows (60+40, 50+30+20), where packing in
    arrival order would need three and pad a third of them."""
    examples = [{"input_ids": [n] * n, "labels": [n] * n} for n in (30, 60, 20, 50, 40)]
    rows = pack_examples(examples, max_seq_len=100)
    assert sorted(len(r["input_ids"]) for r in rows) == [100, 100]
    assert sorted(sorted(set(r["input_ids"])) for r in rows) == [[20, 30, 50], [40, 60]]
