"""Batch generation over a test split with vLLM, inside a Ray Data actor pool.

One actor loads one model with LoRA enabled and answers every prompt for each variant it is given
(the base itself, or an adapter on it), with the same prompts and the same greedy decoding.
"""

from __future__ import annotations

import json
import os

VLLM_ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # engine in the actor's process: faster start, less memory
    "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
}


def adapter_rank(path: str) -> int:
    import json
    from pathlib import Path

    return int(json.loads((Path(path) / "adapter_config.json").read_text())["r"])


def supported_lora_rank(rank: int) -> int:
    """The smallest max_lora_rank vLLM accepts that fits `rank`."""
    for allowed in (8, 16, 32, 64, 128, 256, 320, 512):
        if rank <= allowed:
            return allowed
    raise ValueError(f"LoRA rank {rank} is above vLLM's largest supported rank (512)")


class GenerateAnswers:
    """Ray Data UDF: adds an `output:<variant>` column per variant (None = the model itself)."""

    def __init__(self, model: str, variants: dict[str, str | None], max_model_len: int, max_new_tokens: int):
        from vllm import LLM, SamplingParams
        from vllm.lora.request import LoRARequest

        adapters = {name: path for name, path in variants.items() if path}
        ranks = [adapter_rank(p) for p in adapters.values()]
        self.llm = LLM(
            model=model, dtype="float32" if _on_cpu() else "auto", max_model_len=max_model_len,
            enforce_eager=True, enable_lora=bool(adapters), max_loras=max(1, len(adapters)),
            max_lora_rank=supported_lora_rank(max(ranks, default=8)), seed=0,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.sampling = SamplingParams(temperature=0.0, max_tokens=max_new_tokens)
        self.requests = {
            name: LoRARequest(name, i, path) if path else None
            for i, (name, path) in enumerate(sorted(variants.items(), key=lambda kv: kv[0]), start=1)
        }

    def prompt(self, messages_json: str) -> dict:
        ids = self.tokenizer.apply_chat_template(json.loads(messages_json), add_generation_prompt=True, tokenize=True)
        return {"prompt_token_ids": list(ids["input_ids"] if hasattr(ids, "keys") else ids)}

    def __call__(self, batch: dict) -> dict:
        prompts = [self.prompt(m) for m in batch["prompt"]]
        for name, request in self.requests.items():
            outputs = self.llm.generate(prompts, self.sampling, lora_request=request, use_tqdm=False)
            batch[f"output:{name}"] = [o.outputs[0].text for o in outputs]
        return batch


def _on_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


def generate_answers(rows, model: str, variants: dict[str, str | None], max_model_len: int, max_new_tokens: int):
    """`rows` (with `prompt`, a JSON list of messages) plus one output column per variant, from one vLLM actor."""
    return rows.map_batches(
        GenerateAnswers,
        fn_constructor_args=(model, variants, max_model_len, max_new_tokens),
        batch_size=256,
        concurrency=1,
        num_cpus=1,
        runtime_env={"env_vars": VLLM_ENV},
    )
