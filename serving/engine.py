"""The engine deployment: one vLLM async engine per base model, LoRA on, adapters added at runtime.

Prompts are rendered here with the base tokenizer's chat template (the template training exported),
so what the model sees when served is what it saw in training. Adapters are registered with the
engine (`add_lora`) before any request uses them: a bad adapter is refused with a message instead
of reaching the scheduler, where vLLM would fail the whole engine.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from rayft.config import ServeConfig
from rayft.serving.openai_api import requested_max_tokens, sampling_params

ENGINE_ENV = {
    # Engine core without the extra CPU worker process: faster start, ~0.6 GiB less memory.
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
}


class AdapterError(ValueError):
    """An adapter that cannot be served; the message says why."""


@dataclass
class Adapter:
    ref: str
    path: str
    lora_id: int


def check_adapter(path: str, max_rank: int) -> None:
    """Refuse adapters vLLM cannot serve, with a message naming the problem."""
    config_path = Path(path) / "adapter_config.json"
    if not config_path.exists():
        raise AdapterError(f"no adapter_config.json in {path}")
    config = json.loads(config_path.read_text())
    if config.get("r", 0) > max_rank:
        raise AdapterError(f"adapter rank {config['r']} is above the server's max_lora_rank {max_rank}")
    if config.get("modules_to_save"):
        raise AdapterError(f"adapters with modules_to_save ({config['modules_to_save']}) cannot be served; "
                           "export the full model instead")


class EngineServer:
    """Ray Serve deployment body (see `app.build_app`): vLLM AsyncLLM plus its adapters."""

    def __init__(self, base: str, serve: dict):
        for key, value in ENGINE_ENV.items():
            os.environ.setdefault(key, value)
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self.serve = ServeConfig.model_validate(serve)
        args = AsyncEngineArgs(
            model=base, dtype="float32" if _on_cpu() else "auto", max_model_len=self.serve.max_model_len,
            enforce_eager=_on_cpu(), enable_prefix_caching=True, block_size=self.serve.block_size,
            enable_lora=True, max_loras=self.serve.max_loras, max_lora_rank=self.serve.max_lora_rank,
            max_cpu_loras=max(self.serve.max_loras, self.serve.max_cpu_loras), max_num_seqs=self.serve.max_num_seqs,
            disable_log_stats=True, seed=0,
        )
        self.engine = AsyncLLM.from_engine_args(args)
        self.tokenizer = self.engine.get_tokenizer()
        self.adapters: dict[str, Adapter] = {}
        self.next_lora_id = 1

    async def add_adapter(self, ref: str, path: str) -> str | None:
        """Register an adapter with the engine; returns an error message or None."""
        from vllm.lora.request import LoRARequest

        known = self.adapters.get(ref)
        if known and known.path == path:
            return None
        try:
            check_adapter(path, self.serve.max_lora_rank)
            adapter = Adapter(ref, path, self.next_lora_id)
            self.next_lora_id += 1  # ids are never reused: vLLM caches weights by id
            await self.engine.add_lora(LoRARequest(ref, adapter.lora_id, path))
        except Exception as error:  # vLLM raises plain Exception for load failures
            return f"adapter {ref!r} cannot be loaded: {error}"
        if known:
            await self.engine.remove_lora(known.lora_id)
        self.adapters[ref] = adapter
        return None

    async def remove_adapter(self, ref: str) -> bool:
        adapter = self.adapters.pop(ref, None)
        if adapter:
            await self.engine.remove_lora(adapter.lora_id)
        return adapter is not None

    def loaded_adapters(self) -> list[str]:
        return sorted(self.adapters)

    def prompt_ids(self, request) -> list[int]:
        if hasattr(request, "messages"):
            messages = [{"role": m["role"], "content": m["content"]} for m in request.messages]
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            return list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        return self.tokenizer.encode(request.prompt, add_special_tokens=False)

    async def generate(self, request, adapter_ref: str | None, request_id: str, stream: bool):
        """Yield {'text', 'completion_tokens', 'finish', 'prompt_tokens'} deltas (or one final item).

        A request the engine cannot take yields one {'error': message, 'status': code} item.
        """
        from vllm.lora.request import LoRARequest

        ids = self.prompt_ids(request)
        room = self.serve.max_model_len - len(ids)
        limit = min(self.serve.max_prompt_tokens, self.serve.max_model_len - 1)
        if len(ids) > limit:
            yield {"error": f"prompt has {len(ids)} tokens; the limit is {limit}", "status": 400}
            return
        max_tokens = requested_max_tokens(request) or room
        if max_tokens > room:
            yield {"error": f"max_tokens {max_tokens} + prompt {len(ids)} tokens exceeds the context of "
                            f"{self.serve.max_model_len}", "status": 400}
            return
        lora = None
        if adapter_ref is not None:
            adapter = self.adapters.get(adapter_ref)
            if adapter is None:
                yield {"error": f"adapter {adapter_ref!r} is not loaded", "status": 404}
                return
            lora = LoRARequest(adapter.ref, adapter.lora_id, adapter.path)
        params = sampling_params(request, max_tokens, stream)
        completion_tokens = 0
        async for output in self.engine.generate({"prompt_token_ids": ids}, params, request_id, lora_request=lora):
            choice = output.outputs[0]
            completion_tokens += len(choice.token_ids) if stream else 0
            yield {
                "text": choice.text,
                "completion_tokens": completion_tokens if stream else len(choice.token_ids),
                "finish": choice.finish_reason,
                "prompt_tokens": len(ids),
            }

    async def check_health(self) -> None:
        """Raises when the engine is dead, so Ray Serve replaces the replica."""
        await self.engine.check_health()


def _on_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()
