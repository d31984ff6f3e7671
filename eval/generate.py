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
not scored, unless it is a preference pair.

A preference pair's two replies are both scored after the prompt, whatever the settings (the pair
metrics need them; `metrics.preference_metrics`): the tokens the template renders for each whole
assistant message, calls included, as training's DPO loss sees them.

Columns added per variant: `output:<v>` (text, or a tool row's read calls), `nll:<v>` (summed
negative log-likelihood of the answer tokens; a pair's preferred reply), `tokens:<v>` (how many),
`nll_rejected:<v>` and `tokens_rejected:<v>` (a pair's other reply), `shots:<v>` (examples that
fit), `generated:<v>` (answer tokens) and `seconds:<v>` (the row's share of its engine call's
time); None where not applicable.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from rayft import chat, storage
from rayft.config import EvalConfig
from rayft.eval.prompts import ROW_COLUMNS, with_examples
from rayft.registry import ModelVersion, verified_artifact
from rayft.tool_calls import DEFAULT_PARSER, CallReader
from rayft.vllm_setup import VLLM_ENV, engine_dtype, supported_lora_rank

COLUMN_TYPES = {
    "output": pa.string(),
    "nll": pa.float64(),
    "tokens": pa.int64(),
    "nll_rejected": pa.float64(),
    "tokens_rejected": pa.int64(),
    "shots": pa.int64(),
    "generated": pa.int64(),  # tokens of the greedy answer
    "seconds": pa.float64(),  # the row's share of its engine call's time (tokens/s per variant)
}
TOKEN_COLUMNS = {"nll": "tokens", "nll_rejected": "tokens_rejected"}  # a scored reply's NLL and its length


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
    generate: bool = True  # False: score only (tasks perplexity, preference); forgetting rows are always generated
    score: bool = True  # score reference answers (a preference pair's replies are always scored)
    tool_parser: str = DEFAULT_PARSER


def adapter_rank(path: str) -> int:
    return int(json.loads((Path(path) / "adapter_config.json").read_text())["r"])


class EvalEngine:
    """Ray Data UDF holding one vLLM engine; adds the output and score columns of each variant."""

    def __init__(self, model: str | ModelVersion, variants: list[Variant], decoding: Decoding):
        from vllm import LLM, SamplingParams
        from vllm.lora.request import LoRARequest

        adapters = {v.name: str(verified_artifact(v.adapter)) for v in variants if v.adapter}
        folder = local_model(model)
        self.llm = LLM(
            model=str(folder),
            dtype=engine_dtype(folder),
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

    def template(self, variant: Variant, tools: list[dict] | None) -> str | None:
        """The template a variant renders a row with: one that writes tools when the row has some."""
        return chat.tool_template(self.tokenizer, variant.template) if tools else variant.template

    def prompt(
        self, messages: list[dict], variant: Variant, room: int, tools: list[dict] | None = None
    ) -> tuple[int, list[dict], str, list[int]]:
        """How many of the variant's examples leave `room` tokens of context (the last ones dropped
        first), the conversation with them, rendered as the generation prompt, and its ids."""
        examples = variant.few_shot
        for shots in range(len(examples), -1, -1):
            shown = with_examples(messages, examples[:shots])
            text = self.render(shown, self.template(variant, tools), True, tools)
            ids = self.ids(text)
            if len(ids) + room <= self.decoding.max_model_len:
                break
        return shots, shown, text, ids

    def reply_ids(
        self, messages: list[dict], template: str | None, prompt_text: str, reply: dict, tools: list[dict] | None
    ) -> list[int] | None:
        """The reply's tokens as the template renders them after the prompt, end-of-turn token
        included (what training learns); None when the template does not extend the prompt."""
        full = self.render(messages + [reply], template, False, tools)
        if not full.startswith(prompt_text):
            return None
        return self.ids(full[len(prompt_text) : len(full.rstrip())])

    def scored_replies(self, row: dict, tools: list[dict] | None) -> list[tuple[str, dict]]:
        """(column, assistant message) of the replies scored after a row's prompt: a pair's preferred
        ("nll") and other ("nll_rejected") replies; else the reference answer, when scoring is on
        and the row has no tools (a call is compared, not scored)."""
        if row["rejected"]:
            return [("nll", json.loads(row["chosen"])), ("nll_rejected", json.loads(row["rejected"]))]
        if self.decoding.score and not tools:
            return [("nll", {"role": "assistant", "content": row["answer"]})]
        return []

    def requests(self, variant: Variant, rows: list[dict], shots: list):
        """The engine requests of one variant: (row, kind, answer start, prompt, sampling) for a
        greedy answer ("output") and each scored reply ("nll", "nll_rejected") per row it answers."""
        out = []
        for index, row in enumerate(rows):
            if row["set"] not in variant.sets:
                continue
            max_new = self.decoding.max_new_tokens[row["set"]]
            tools = json.loads(row["tools"]) if row["tools"] else None
            shots[index], shown, text, ids = self.prompt(json.loads(row["prompt"]), variant, max_new, tools)
            if (self.decoding.generate or row["set"] != "test") and len(ids) + max_new <= self.decoding.max_model_len:
                out.append((index, "output", None, ids, self.greedy[row["set"]]))
            for kind, reply in self.scored_replies(row, tools):
                reply_ids = self.reply_ids(shown, self.template(variant, tools), text, reply, tools)
                if reply_ids and len(ids) + len(reply_ids) < self.decoding.max_model_len:
                    out.append((index, kind, len(ids), ids + reply_ids, self.scoring))
        return out

    def __call__(self, batch: pa.Table) -> pa.Table:
        present = [c for c in ROW_COLUMNS if c in batch.schema.names]
        rows = [{c: "" for c in ROW_COLUMNS} | row for row in batch.select(present).to_pylist()]
        for variant in self.variants:
            columns = {key: [None] * len(rows) for key in COLUMN_TYPES}
            requests = self.requests(variant, rows, columns["shots"])
            started = time.perf_counter()
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
            elapsed, answered = time.perf_counter() - started, {index for index, *_ in requests}
            for index in answered:
                columns["seconds"][index] = elapsed / len(answered)
            for (index, kind, start, _, _), output in zip(requests, outputs):
                if kind == "output":
                    columns["generated"][index] = len(output.outputs[0].token_ids)
                    text = output.outputs[0].text
                    tools = rows[index]["tools"]
                    columns["output"][index] = self.read_calls(text, tools) if tools else text
                else:
                    tokens, logprobs = output.prompt_token_ids[start:], output.prompt_logprobs[start:]
                    columns[kind][index] = -sum(lp[t].logprob for t, lp in zip(tokens, logprobs))
                    columns[TOKEN_COLUMNS[kind]][index] = len(tokens)
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
