"""transformers + peft greedy generation: the reference that served outputs must equal; and the eval's
engines in the test process (`answer_in_process`)."""

from __future__ import annotations

import pyarrow as pa
import torch

from rayft.tiny import random_adapter  # noqa: F401  (tests build adapters with it)


class Reference:
    """Greedy continuations from transformers (base) and peft (adapters), cached per model."""

    def __init__(self, base: str):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.base = base
        self.tokenizer = AutoTokenizer.from_pretrained(base)
        self.models = {None: AutoModelForCausalLM.from_pretrained(base).eval()}

    def model(self, adapter: str | None):
        if adapter not in self.models:
            from peft import PeftModel
            from transformers import AutoModelForCausalLM

            base = AutoModelForCausalLM.from_pretrained(self.base)
            self.models[adapter] = PeftModel.from_pretrained(base, adapter).eval()
        return self.models[adapter]

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        out = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        return list(out["input_ids"])

    def chat(self, messages: list[dict], adapter: str | None = None, max_new_tokens: int = 8) -> str:
        return self.continue_ids(self.prompt_ids(messages), adapter, max_new_tokens)

    def continue_ids(self, ids: list[int], adapter: str | None = None, max_new_tokens: int = 8) -> str:
        """The greedy continuation as text. A trailing partial UTF-8 character is dropped, as vLLM's
        detokenizer holds it back until the next token completes it."""
        tokens = self.generate_tokens(ids, adapter, max_new_tokens)
        return self.tokenizer.decode(tokens, skip_special_tokens=True).rstrip("\ufffd")

    def generate_tokens(self, ids: list[int], adapter: str | None = None, max_new_tokens: int = 8) -> list[int]:
        """The greedy continuation's token ids (eos included when generated)."""
        with torch.no_grad():
            out = self.model(adapter).generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        return out[0][len(ids) :].tolist()


def tiny_artifact(folder, value: float):
    """A folder holding one small safetensors file: an artifact the registry can hash and verify,
    for tests about what is said of versions, not what they compute."""
    import numpy as np
    from safetensors.numpy import save_file

    folder.mkdir()
    save_file({"w": np.full((2, 2), value, dtype=np.float32)}, str(folder / "adapter_model.safetensors"))
    return str(folder)


def answer_in_process(rows, stages, decoding, settings):
    """`answer_with_engines` with each stage's engine in this process instead of in a Ray actor: a
    fresh actor process spent ~17 s importing vLLM on the 2-core test machine."""
    import ray

    from rayft.eval.generate import EvalEngine

    batches = list(rows.iter_batches(batch_size=None, batch_format="pyarrow"))
    columns = batches[0].schema.names  # test and forgetting rows name their columns in other orders
    table = pa.concat_tables([batch.select(columns) for batch in batches])
    for model, variants in stages:
        table = EvalEngine(model, variants, decoding)(table)
    return ray.data.from_arrow(table)
