"""The engine deployment: one vLLM async engine per base model, LoRA on, adapters added at runtime.

The base is loaded only once its bytes match the registry's hash (when it is a registry version).
Prompts are rendered here with `rayft.chat`, as training and eval render them: an adapter's with the
chat template stored in its artifact (the one it was trained with), the base's with
`model.chat_template` or its tokenizer's own. An adapter is loaded the first time a request needs it
(from a local folder or object storage, verified against its registered hash), kept in an LRU of
`max_cpu_loras` that never evicts an adapter requests are still using (`adapters.py`); a bad or
altered adapter is refused with a message before it reaches vLLM's scheduler, where it would fail
the whole engine. A replacement replica (after a crash) starts empty and loads adapters again on
first use. Tools and `tool_choice` (`tool_use.py`) and `response_format` are enforced by vLLM's
structured-output backend (xgrammar), for the base and adapters in the same batch; a schema it cannot
compile is a 400 naming `response_format`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

import ray.serve

from rayft import chat, storage
from rayft.config import ServeConfig
from rayft.serving.adapter_loader import AdapterLoader
from rayft.serving.adapters import AdapterError, AdapterSlots, AllSlotsBusy
from rayft.serving.fleet import ENGINE_PREFIX, FleetMetrics, cached_count
from rayft.serving.metrics import PUBLISH_S, MetricsBoard
from rayft.serving.startup import PhaseClock, vllm_phases
from rayft.serving.tool_use import prompt_template, read_answer, tool_use
from rayft.vllm_setup import VLLM_ENV, engine_dtype, fork_engine_core, on_cpu

logger = logging.getLogger("ray.serve")


class EngineServer:
    """Ray Serve deployment body (see `app.build_app`): vLLM AsyncLLM plus its adapters."""

    def __init__(
        self,
        base: str,
        base_hash: str | None,
        base_ref: str | None,
        chat_template: str | None,
        serve: dict,
        tool_parser: str = "hermes",
    ):
        for key, value in VLLM_ENV.items():
            os.environ.setdefault(key, value)
        self.serve = ServeConfig.model_validate(serve)
        self.base_template, self.tool_parser = chat_template, tool_parser
        clock = PhaseClock()
        with clock.phase("verify base"):
            base = str(storage.verified_dir(base, base_hash if base_ref else None, base_ref))
        if not self.serve.use_gpu:
            use_cpu_threads(self.serve.cpus_per_engine or len(os.sched_getaffinity(0)))
        with clock.phase("import vLLM"):
            from vllm.config import StructuredOutputsConfig
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM
        if on_cpu() and os.environ.get("RAYFT_ENGINE_CORE_SPAWN") != "1":  # 1: vLLM's own spawn, as before
            fork_engine_core()  # its process starts with torch and vLLM already imported

        args = AsyncEngineArgs(
            model=base,
            dtype=engine_dtype(base),
            max_model_len=self.serve.max_model_len,
            enforce_eager=on_cpu(),
            enable_prefix_caching=True,
            block_size=self.serve.block_size,
            enable_lora=True,
            max_loras=self.serve.max_loras,
            max_lora_rank=self.serve.max_lora_rank,
            # headroom over the slots rayft keeps (adapters.py): if a step ever needs an adapter rayft
            # removed, vLLM reloads it beside the others instead of evicting one the same step uses
            max_cpu_loras=max(self.serve.max_loras, self.serve.max_cpu_loras) + self.serve.max_loras,
            max_num_seqs=self.serve.max_num_seqs,
            disable_log_stats=True,
            seed=0,
            structured_outputs_config=StructuredOutputsConfig(backend="xgrammar", disable_any_whitespace=True),
        )
        with clock.phase("engine init"), vllm_phases(clock):  # weights, KV cache and warm-up split out
            self.engine = AsyncLLM.from_engine_args(args, stat_loggers=[quiet_stats()])
        with clock.phase("tokenizer"):
            self.tokenizer = self.engine.get_tokenizer()
            self.vocab_size = self.engine.model_config.get_vocab_size()
            tokens = self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))
            self.max_token_chars = max(len(t) for t in tokens if t)
        self.startup = clock.phases
        self.slots = AdapterSlots(max(self.serve.max_loras, self.serve.max_cpu_loras))
        self.aborted = 0  # requests whose caller went away, aborted in vLLM
        context = ray.serve.get_replica_context()
        self.replica = ENGINE_PREFIX + context.replica_id.unique_id
        self.fleet, self.board = FleetMetrics(self.replica), MetricsBoard(context.app_name, self.replica)
        self.loader = AdapterLoader(self.engine, self.serve, self.slots, self.fleet)
        self.publishing = asyncio.get_running_loop().create_task(self.publish())

    async def publish(self) -> None:
        """Every PUBLISH_S: this replica's adapters and tier series on the metrics board (`fleet.py`)."""
        while True:
            try:
                adapters = self.slots.describe()
                cached = await asyncio.to_thread(cached_count)
                self.fleet.holding(adapters, cached)
                snapshot = self.fleet.snapshot() | {"replica": self.replica, "adapters": adapters}
                snapshot |= {"running": self.engine.get_num_unfinished_requests(), "aborted": self.aborted}
                await asyncio.to_thread(self.board.publish, snapshot)
            except Exception as error:  # the GCS is briefly unreachable: try again next period
                logger.warning("rayft serve: cannot publish the engine's adapters: %s", error)
            await asyncio.sleep(PUBLISH_S)

    async def load_adapter(self, ref: str, uri: str, digest: str) -> dict | None:
        """Admin: load `ref` now; returns an {'error', 'status'} dict or None."""
        try:
            await self.loader.ensure(ref, uri, digest)
        except REFUSED as error:
            return refusal(error)
        return None

    async def unload_adapter(self, ref: str) -> bool:
        """Admin: drop `ref` from the engine (once requests using it finish); False when it was not loaded."""
        return await self.loader.unload(ref)

    def describe(self) -> dict:
        """What the ingress checks requests against: the vocabulary size, and the longest token in
        characters (a prompt of more than max_prompt_tokens × that many characters has too many tokens);
        and where this replica's start-up went (`startup`: [phase, seconds], in order)."""
        return {"vocab_size": self.vocab_size, "max_token_chars": self.max_token_chars, "startup": self.startup}

    def record_routing_stats(self) -> dict:
        """What Ray Serve's router for this deployment (`adapter_router.py`) sees of this replica,
        polled every few seconds: the adapters it holds, and its requests in flight."""
        return {"adapters": list(self.slots.loaded), "running": self.engine.get_num_unfinished_requests()}

    def state(self) -> dict:
        """This replica's adapters in host memory (least recently used first) with their requests in
        flight, the disk cache's adapters, how many requests vLLM is running, and how many it aborted
        because their callers went away."""
        disk = [{"digest": path.name, "bytes": size} for path, size, _ in storage.cached_artifacts()]
        return {
            "replica": self.replica,
            "adapters": self.slots.describe(),
            "disk": disk,
            "running": self.engine.get_num_unfinished_requests(),
            "aborted": self.aborted,
        }

    def prompt_ids(self, request, template: str | None, tools: list[dict] | None = None) -> list[int]:
        """A chat request's generation prompt (with its tools) rendered with `template`
        (`rayft.chat`, as in training and eval), or a completion's prompt as it is."""
        if hasattr(request, "messages"):
            kept = ("role", "content", "tool_calls", "tool_call_id")
            messages = [{k: m[k] for k in kept if m.get(k) is not None} for m in request.messages]
            return chat.prompt_ids(self.tokenizer, messages, template, tools)
        return chat.token_ids(self.tokenizer, request.prompt)

    def check_lengths(self, ids: list[int], request) -> tuple[int, str | None]:
        """(max_tokens to generate, or an error message when the request does not fit)."""
        from rayft.serving.openai_api import requested_max_tokens

        room = self.serve.max_model_len - len(ids)
        limit = min(self.serve.max_prompt_tokens, self.serve.max_model_len - 1)
        if len(ids) > limit:
            setting = "serve.max_prompt_tokens" if limit == self.serve.max_prompt_tokens else "serve.max_model_len - 1"
            return 0, f"prompt has {len(ids)} tokens; the limit is {limit} ({setting})"
        max_tokens = requested_max_tokens(request) or room
        if max_tokens > room:
            return (
                0,
                f"max_tokens {max_tokens} + prompt {len(ids)} tokens exceeds the context of {self.serve.max_model_len}",
            )
        return max_tokens, None

    async def outputs(self, request, adapter: dict | None, request_id: str, stream: bool):
        """Yield vLLM's outputs for one request (deltas when streaming, else only the final one),
        counting it in flight on its adapter until the last; or yield one {'error', 'status'} dict
        when the engine cannot take it."""
        from vllm.exceptions import VLLMValidationError
        from vllm.lora.request import LoRARequest

        from rayft.serving.openai_api import sampling_params

        loaded, lora, arrived = None, None, time.perf_counter()
        start = "warm"
        if adapter is not None:
            if self.slots.current(adapter["ref"], adapter["digest"]) is None:
                start = "cold"  # it waits for its adapter to load
            try:
                loaded = await self.loader.ensure(adapter["ref"], adapter["uri"], adapter["digest"])
            except REFUSED as error:
                yield refusal(error)
                return
            lora = LoRARequest(loaded.ref, loaded.lora_id, loaded.local)
        template = loaded.chat_template if loaded and loaded.chat_template else self.base_template
        with self.slots.in_use(loaded):  # taken with no await since loader.ensure: it cannot be evicted
            try:  # tokenized on a worker thread: a long prompt does not hold up other requests' steps
                use = tool_use(request, self.tokenizer, self.tool_parser, self.engine.model_config)
                template = prompt_template(self.tokenizer, template, use)
                ids = await asyncio.to_thread(self.prompt_ids, request, template, use.tools if use else None)
            except Exception as error:  # the chat template refused the conversation (a role, say)
                yield {
                    "error": f"messages: the model's chat template cannot render them: {error}",
                    "status": 400,
                    "param": "messages",
                }
                return
            max_tokens, error = self.check_lengths(ids, request)
            if error:
                yield {"error": error, "status": 400}
                return
            params = sampling_params(request, max_tokens, stream)
            first_token = self.fleet.first_token.labels(start) if loaded else None
            try:
                async for output in self.engine.generate(
                    {"prompt_token_ids": ids}, params, request_id, lora_request=lora
                ):
                    if first_token is not None:
                        first_token.observe(time.perf_counter() - arrived)
                        first_token = None
                    yield output, use
            except VLLMValidationError as error:  # e.g. a JSON schema the grammar backend cannot compile
                yield {"error": str(error), "status": 400, "param": error.parameter or "response_format"}
            except (asyncio.CancelledError, GeneratorExit):  # the client hung up: vLLM aborts the request
                self.aborted += 1
                raise

    async def complete(self, request, adapter: dict | None, request_id: str) -> dict:
        """The whole answer as one item (see `answer_item`), or an {'error', 'status'} dict."""
        async for output in self.outputs(request, adapter, request_id, stream=False):
            if isinstance(output, dict):
                return output
            final, use = output
        return answer_item(final, final.outputs[0].text, len(final.outputs[0].token_ids), use, request)

    async def stream(self, request, adapter: dict | None, request_id: str):
        """Yield the answer as delta items (see `answer_item`), or one {'error', 'status'} item. An
        answer that may call tools is read whole, then sent as one item with its calls."""
        if getattr(request, "tools", None) and request.tool_choice != "none":
            yield await self.complete(request, adapter, request_id)
            return
        tokens = 0
        async for output in self.outputs(request, adapter, request_id, stream=True):
            if isinstance(output, dict):
                yield output
                return
            output, _ = output
            tokens += len(output.outputs[0].token_ids)
            yield answer_item(output, output.outputs[0].text, tokens)

    async def check_health(self) -> None:
        """Raises when the engine is dead, so Ray Serve replaces the replica."""
        await self.engine.check_health()


REFUSED = (AdapterError, AllSlotsBusy, storage.ArtifactMismatch)


def refusal(error: Exception) -> dict:
    """The {'error', 'status', 'code', 'retry'} item for an adapter the engine cannot take: a 400 for
    a bad one, a 503 for one whose bytes are not the registered ones, a 503 to retry shortly when
    every adapter slot is answering requests."""
    if isinstance(error, AllSlotsBusy):
        return {"error": str(error), "status": 503, "code": "adapter_slots_busy", "retry": True}
    if isinstance(error, storage.ArtifactMismatch):
        return {"error": str(error), "status": 503, "code": "artifact_mismatch", "retry": False}
    return {"error": str(error), "status": 400, "code": "invalid_adapter", "retry": False}


def answer_item(output, text: str, completion_tokens: int, use=None, request=None) -> dict:
    """{'text', 'finish', 'prompt_tokens', 'completion_tokens'} (and 'tool_calls' when the answer
    calls tools), plus the engine's 'ttft' and 'tpot' (seconds) once the request is finished."""
    finish = output.outputs[0].finish_reason
    text, calls, finish = read_answer(text, finish, use, request) if use else (text, [], finish)
    item = {
        "text": text,
        "finish": finish,
        "prompt_tokens": len(output.prompt_token_ids),
        "completion_tokens": completion_tokens,
    } | ({"tool_calls": calls} if calls else {})
    stats = output.metrics
    if output.finished and stats is not None:
        item["ttft"] = stats.first_token_latency
        generated = stats.num_generation_tokens
        item["tpot"] = (stats.last_token_ts - stats.first_token_ts) / (generated - 1) if generated > 1 else None
    return item


def quiet_stats():
    """A vLLM stat logger class that logs nothing: its presence makes vLLM keep per-request timings
    (TTFT, token timestamps) on its outputs, without the periodic lines of its default loggers."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class QuietStats(StatLoggerBase):
        def __init__(self, vllm_config, engine_index: int = 0):
            pass

        def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0):
            pass

        def log_engine_initialized(self):
            pass

    return QuietStats


def use_cpu_threads(n: int) -> None:
    """Run the engine's CPU compute on `n` threads. Ray sets OMP_NUM_THREADS to an actor's
    `num_cpus` (1 for the engine), which left vLLM's CPU forward pass on one core. Called before
    torch is imported, so OpenMP reads the new value too (vLLM's C++ ops use it directly)."""
    os.environ["OMP_NUM_THREADS"] = str(n)
    import torch

    torch.set_num_threads(n)
