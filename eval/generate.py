"""Batch generation and teacher-forced scoring with vLLM, inside a Ray Data actor pool.

One actor holds one vLLM engine (LoRA enabled when a variant is an adapter). Every registry version it
loads (the engine's model, each adapter) is checked against its registered weights hash first
(`verified_artifact`), and an adapter's prompts are rendered with the chat template stored in its
artifact, the one it was trained with (`rayft.chat`). For each variant it is given (the model
itself, an adapter on it, or the model shown few-shot examples) it answers the rows of that
variant's sets greedily, and scores each reference answer from the prompt log-probabilities
of prompt + answer (one prefill, no sampling): the same prompts and the same decoding for every
variant. Each engine call carries one variant only, so base and adapter rows never share a batch.

A row with tools is rendered with them, through the template that writes tools (the version's own;
for the base, rayft's default when its template has none: `rayft.chat.tool_template`), and its
output is the calls read back with the configured tool parser (`rayft.tool_calls`, as JSON); it is
not scored.

Columns added per variant: `output:<v>` (text, or a tool row's read calls), `nll:<v>` (summed
negative log-likelihood of the answer tokens), `tokens:<v>` (how many), `shots:<v>` (examples that
fit); None where not applicable.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from rayft import chat, storage
from rayft.config import EvalConfig
from rayft.eval.prompts import with_examples
from rayft.registry import ModelVersion, verified_artifact
from rayft.tool_calls import DEFAULT_PARSER, CallReader
from rayft.vllm_setup import VLLM_ENV, engine_dtype, supported_lora_rank

COLUMN_TYPES = {"output": pa.string(), "nll": pa.float64(), "tokens": pa.int64(), "shots": pa.int64()}


@dataclass
class Variant:
    """One way of answering: an `adapter` version on the engine's model, or the model itself
    rendering prompts with `template` (None: its tokenizer's own); `few_shot` conversations shown
    before each prompt; the row `sets` it answers. An adapter renders with its artifact's template."""

    name: str
    adapter: ModelVersion | None = None
    few_shot: list[list[dict]] = field(default_factory=list)
    sets: tuple[str, ...] = ("test",)
    template: str | None = None


def local_model(model: str | ModelVersion) -> Path:
    """A local folder for an engine's model: a registry version verified against its weights hash,
    or a plain path (a URI is downloaded)."""
    if isinstance(model, ModelVersion):
        return verified_artifact(model)
    return storage.verified_dir(model, None)


@dataclass
class Decoding:
    """Greedy decoding, identical for every variant; `max_new_tokens` per row set."""

    max_new_tokens: dict[str, int]
    max_model_len: int
    generate: bool = True  # False: score only (task perplexity); forgetting rows are always generated
    score: bool = True
    tool_parser: str = DEFAULT_PARSER


def adapter_rank(path: str) -> int:
    return int(json.loads((Path(path) / "adapter_config.json").read_text())["r"])


class EvalEngine:
    """Ray Data UDF holding one vLLM engine; adds the output and score columns of each variant."""

    def __init__(self, model: str | ModelVersion, variants: list[Variant], decoding: Decoding):
        from vllm import LLM, SamplingParams
        from vllm.lora.request import LoRARequest

        adapters = {v.name: str(verified_artifact(v.adapter)) for v in variants if v.adapter}
        self.llm = LLM(
            model=str(local_model(model)),
            dtype=engine_dtype(),
            max_model_len=decoding.max_model_len,
            enforce_eager=True,
            enable_lora=bool(adapters),
            max_loras=1,
            max_lora_rank=supported_lora_rank(max(map(adapter_rank, adapters.values()), default=8)),
            seed=0,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.variants = [
            dataclasses.replace(v, template=chat.artifact_template(adapters[v.name]) or v.template) if v.adapter else v
            for v in variants
        ]
        self.decoding = decoding
        self.lora = {name: LoRARequest(name, i, path) for i, (name, path) in enumerate(sorted(adapters.items()), 1)}
        self.greedy = {s: SamplingParams(temperature=0.0, max_tokens=n) for s, n in decoding.max_new_tokens.items()}
        self.scoring = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0, detokenize=False)
        self.readers: dict[str, CallReader] = {}

    def render(self, messages: list[dict], template: str | None, generation_prompt: bool, tools=None) -> str:
        return chat.render(self.tokenizer, messages, template, generation_prompt, tools)

    def read_calls(self, text: str, tools_json: str) -> str:
        """A tool row's output: the calls the text makes, read with the configured parser."""
        if tools_json not in self.readers:
            self.readers[tools_json] = CallReader(self.decoding.tool_parser, self.tokenizer, json.loads(tools_json))
        return self.readers[tools_json].read(text).to_json()

    def ids(self, text: str) -> list[int]:
        return chat.token_ids(self.tokenizer, text)

    def prompt(
        self, messages: list[dict], variant: Variant, room: int, tools: list[dict] | None = None
    ) -> tuple[int, list[dict], str, list[int]]:
        """How many of the variant's examples leave `room` tokens of context (the last ones dropped
        first), the conversation with them, rendered as the generation prompt, and its ids."""
        examples = variant.few_shot
        template = chat.tool_template(self.tokenizer, variant.template) if tools else variant.template
        for shots in range(len(examples), -1, -1):
            shown = with_examples(messages, examples[:shots])
            text = self.render(shown, template, True, tools)
            ids = self.ids(text)
            if len(ids) + room <= self.decoding.max_model_len:
                break
        return shots, shown, text, ids

    def answer_ids(self, messages: list[dict], template: str | None, prompt_text: str, answer: str) -> list[int] | None:
        """The answer's tokens as the template renders them after the prompt, end-of-turn token
        included (what training learns); None when the template does not extend the prompt."""
        full = self.render(messages + [{"role": "assistant", "content": answer}], template, False)
        if not full.startswith(prompt_text):
            return None
        return self.ids(full[len(prompt_text) : len(full.rstrip())])

    def requests(
        self, variant: Variant, sets: list[str], prompts: list[str], answers: list[str], shots: list, tools: list[str]
    ):
        """The engine requests of one variant: (row, kind, answer start, prompt, sampling) for a
        greedy answer ("output") and a scored reference answer ("nll") per row it answers."""
        out = []
        for row, (row_set, prompt, answer) in enumerate(zip(sets, prompts, answers)):
            if row_set not in variant.sets:
                continue
            max_new = self.decoding.max_new_tokens[row_set]
            listed = json.loads(tools[row]) if tools[row] else None
            shots[row], shown, text, ids = self.prompt(json.loads(prompt), variant, max_new, listed)
            if (self.decoding.generate or row_set != "test") and len(ids) + max_new <= self.decoding.max_model_len:
                out.append((row, "output", None, ids, self.greedy[row_set]))
            scored = self.decoding.score and not listed  # a call is compared, not scored
            answer_ids = self.answer_ids(shown, variant.template, text, answer) if scored else None
            if answer_ids and len(ids) + len(answer_ids) < self.decoding.max_model_len:
                out.append((row, "nll", len(ids), ids + answer_ids, self.scoring))
        return out

    def __call__(self, batch: pa.Table) -> pa.Table:
        sets, prompts, answers = (batch.column(c).to_pylist() for c in ("set", "prompt", "answer"))
        tools = batch.column("tools").to_pylist() if "tools" in batch.schema.names else [""] * len(sets)
        for variant in self.variants:
            columns = {key: [None] * len(sets) for key in COLUMN_TYPES}
            requests = self.requests(variant, sets, prompts, answers, columns["shots"], tools)
            outputs = (
                self.llm.generate(
                    [{"prompt_token_ids": r[3]} for r in requests],
                    [r[4] for r in requests],
                    lora_request=self.lora.get(variant.name),
                    use_tqdm=False,
                )
                if requests
                else []
            )
            for (row, kind, start, _, _), output in zip(requests, outputs):
                if kind == "output":
                    text = output.outputs[0].text
                    columns["output"][row] = self.read_calls(text, tools[row]) if tools[row] else text
                else:
                    tokens, logprobs = output.prompt_token_ids[start:], output.prompt_logprobs[start:]
                    columns["nll"][row] = -sum(lp[t].logprob for t, lp in zip(tokens, logprobs))
                    columns["tokens"][row] = len(tokens)
            for key, values in columns.items():
                batch = batch.append_column(f"{key}:{variant.name}", pa.array(values, type=COLUMN_TYPES[key]))
        return batch


def actor_pool_options(eval_config: EvalConfig) -> dict:
    """Ray Data options of one model's engine pool: `eval.engines` actors of `eval.batch_size` rows
    per call, each reserving one CPU, and one GPU with `eval.use_gpu` (Ray shows an actor only the
    GPUs it reserved, so without it vLLM's CUDA build finds no device)."""
    return {
        "batch_size": eval_config.batch_size,
        "batch_format": "pyarrow",
        "concurrency": eval_config.engines,
        "num_cpus": 1,
        "num_gpus": 1 if eval_config.use_gpu else 0,
        "runtime_env": {"env_vars": VLLM_ENV},
    }


def answer_with_engines(
    rows, engines: list[tuple[str | ModelVersion, list[Variant]]], decoding: Decoding, eval_config: EvalConfig
):
    """`rows` plus every variant's columns: one actor pool (`actor_pool_options`) per model in
    `engines` ([(model, variants)]: the base with its variants, then each full version's own)."""
    for model, variants in engines:
        rows = rows.map_batches(
            EvalEngine, fn_constructor_args=(model, variants, decoding), **actor_pool_options(eval_config)
        )
    return rows
