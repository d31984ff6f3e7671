"""One chat template everywhere: a version's prompt is the same token ids in training, eval and
serving, with a custom `model.chat_template` and with one that has no system role. The stages all
render through `rayft.chat`; the real engines are checked against these ids in test_eval.py
(`test_an_adapter_is_evaluated_with_the_template_it_was_trained_with`) and test_serving.py
(`test_an_adapter_is_served_with_the_template_it_was_trained_with`)."""

import pytest
from templates import CONVERSATION, CUSTOM, NO_SYSTEM, save_with_template


@pytest.mark.parametrize("template", [CUSTOM, NO_SYSTEM], ids=["custom", "no-system-role"])
def test_training_eval_and_serving_render_the_same_prompt_ids(tiny_model, tmp_path, template):
    from transformers import AutoTokenizer

    from rayft import chat
    from rayft.training.data import load_tokenizer
    from rayft.training.formatting import tokenize_conversation

    # training: the tokenizer with model.chat_template, as the Ray Data tokenizer loads it
    trained = tokenize_conversation(load_tokenizer(tiny_model, template), CONVERSATION, 512)["input_ids"]
    # the export saves that tokenizer with the artifact; eval and serving read the template back
    load_tokenizer(tiny_model, template).save_pretrained(tmp_path / "artifact")
    stored = chat.artifact_template(tmp_path / "artifact")
    assert stored == template
    # eval and serving render with the base tokenizer (vLLM's) and the artifact's template
    base_tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    served = chat.prompt_ids(base_tokenizer, CONVERSATION[:-1], stored)
    assert trained[: len(served)] == served and len(trained) > len(served)
    assert served != chat.prompt_ids(base_tokenizer, CONVERSATION[:-1], None)  # not the base template's prompt
    if template is NO_SYSTEM:
        assert "system" not in base_tokenizer.decode(served) and CONVERSATION[0]["content"] in base_tokenizer.decode(
            served
        )


def test_the_template_is_read_from_either_place_transformers_stores_it(tiny_model, tmp_path):
    import json

    from rayft import chat

    save_with_template(tiny_model, tmp_path / "new", CUSTOM)
    assert (tmp_path / "new" / chat.TEMPLATE_FILE).exists() and chat.artifact_template(tmp_path / "new") == CUSTOM
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "tokenizer_config.json").write_text(json.dumps({"chat_template": NO_SYSTEM}))
    assert chat.artifact_template(tmp_path / "old") == NO_SYSTEM
    (tmp_path / "none").mkdir()
    assert chat.artifact_template(tmp_path / "none") is None
