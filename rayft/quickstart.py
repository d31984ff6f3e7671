"""`rayft quickstart`: the whole path on the embedded sample, on a local Ray, in a few minutes.

setup   sample data and a tiny random Llama model with its tokenizer, under $RAYFT_HOME/quickstart
run     data prepare → full fine-tune of the base on general chat → LoRA on support tickets →
        eval base vs adapter → serve both over HTTP and ask each one question; with `--with tools`
        also a LoRA on a function-calling set (OpenAI's format), evaluated on tool-name accuracy
        and asked to call a tool over HTTP; with `--with dpo` also DPO continuing the ticket
        adapter on preference pairs, with preference accuracy base → SFT → DPO
report  a summary table, the same summary as JSON in $RAYFT_HOME/quickstart/summary.json, shutdown
"""

from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path

from rich.console import Console
from rich.table import Table

from rayft.config import RayftConfig, load_config
from rayft.data.manifest import Manifest
from rayft.home import rayft_home
from rayft.registry import ModelVersion, Registry

QUESTION = "Hello, I was charged twice for my Pro subscription this month. Please help as soon as possible."
TOOL_QUESTION = "Where is my order 48213?"


def packaged_config(name: str) -> RayftConfig:
    """One of the configs shipped in `configs/` (installed as rayft.configs)."""
    with resources.as_file(resources.files("rayft.configs") / name) as path:
        return load_config(path)


def build_inputs(folder: Path) -> None:
    """Sample data and the tiny random base model (skipped when already there)."""
    from rayft.data import samples
    from rayft.tiny import build_tiny_model

    samples.write_support_tickets(folder / "tickets.jsonl", n=2000, seed=0)
    general = samples.general_chat(3000, seed=1) + samples.support_conversations(1500, seed=7)
    samples.write_jsonl(general, folder / "general.jsonl")
    if not (folder / "tiny-random" / "config.json").exists():
        build_tiny_model(folder / "tiny-random", samples.tokenizer_corpus(), size="test", vocab_size=2048)


def prepare(config: RayftConfig, tokenizer: str) -> Manifest:
    from rayft.data.prepare import PrepareOptions, prepare_dataset

    return prepare_dataset(
        config.data.inputs, config.dataset_dir(), PrepareOptions(config.data, tokenizer, config.model.chat_template)
    )


def ask(url: str, model: str, question: str) -> str:
    """One chat completion over HTTP (greedy)."""
    import httpx

    body = {
        "model": model,
        "messages": [{"role": "system", "content": _system_prompt()}, {"role": "user", "content": question}],
        "max_tokens": 32,
        "temperature": 0,
    }
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
    response.raise_for_status()
    return response.json()["choices"][0]["message"]["content"]


def _system_prompt() -> str:
    from rayft.data.samples import SUPPORT_SYSTEM_PROMPT

    return SUPPORT_SYSTEM_PROMPT


def ask_with_tools(url: str, model: str, question: str) -> dict:
    """One chat completion with the tool set's tools and `tool_choice: required` (the call enforced
    while sampling, so its arguments parse): the call it makes."""
    import httpx

    from rayft.data.tool_samples import SYSTEM, TOOLS

    body = {
        "model": model,
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
        "tools": TOOLS,
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "max_tokens": 64,
        "temperature": 0,
    }
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
    response.raise_for_status()
    message = response.json()["choices"][0]["message"]
    return {"tool_calls": [c["function"] for c in message.get("tool_calls") or []], "content": message.get("content")}


def tool_adapter(folder: Path) -> tuple[ModelVersion, dict]:
    """The tool-calling LoRA on the quickstart base: data, training, eval; its version and eval."""
    from rayft.data.tool_samples import write_tool_calls
    from rayft.eval.evaluate import evaluate
    from rayft.training.trainer import train

    config = packaged_config("quickstart-tools.yaml")
    write_tool_calls(folder / "tools.jsonl", n=400, seed=0)
    prepare(config, Registry().get(config.model.base.removeprefix("registry:")).artifact_uri)
    version = train(config)
    report = evaluate(config, candidate=version.ref)
    accuracy = {v: report.metrics[v]["tool_name_accuracy"] for v in ("base", "candidate")}
    return version, {"base": accuracy["base"], "adapter": accuracy["candidate"], "n": report.n}


def dpo_adapter(folder: Path) -> tuple[ModelVersion, dict]:
    """DPO continuing the ticket adapter on the preference sample: data, training, eval; its version
    and preference accuracy of the base, the SFT adapter it continues (the parent) and itself."""
    from rayft.data.preference_samples import write_preference_pairs
    from rayft.eval.evaluate import evaluate
    from rayft.training.trainer import train

    config = packaged_config("quickstart-dpo.yaml")
    write_preference_pairs(folder / "preference.jsonl", n=600, seed=0)
    prepare(config, Registry().get(config.model.base.removeprefix("registry:")).artifact_uri)
    version = train(config)
    report = evaluate(config, candidate=version.ref)
    accuracy = {v: report.metrics[v]["preference_accuracy"] for v in ("base", "parent", "candidate")}
    return version, {"base": accuracy["base"], "sft": accuracy["parent"], "dpo": accuracy["candidate"], "n": report.n}


def print_summary(summary: dict) -> None:
    table = Table(title="rayft quickstart", show_header=False)
    data = summary["data"]
    table.add_row(
        "records",
        f"{data['input']} in: {data['kept']} kept, {data['rejected']} rejected "
        f"→ train {data['train']} / val {data['val']} / test {data['test']}",
    )
    for stage in ("base_training", "adapter_training"):
        run = summary[stage]
        table.add_row(
            f"{stage.replace('_', ' ')} ({run['ref']})",
            f"loss {run['first_loss']:.3f} → {run['final_loss']:.3f} in {run['steps']} steps",
        )
    accuracy = summary["eval"]
    table.add_row(
        "category accuracy", f"base {accuracy['base']:.3f} → adapter {accuracy['adapter']:.3f} (n={accuracy['n']})"
    )
    if "tools_eval" in summary:
        tools = summary["tools_eval"]
        table.add_row(
            "tool-name accuracy", f"base {tools['base']:.3f} → tool adapter {tools['adapter']:.3f} (n={tools['n']})"
        )
    if "dpo_eval" in summary:
        dpo = summary["dpo_eval"]
        table.add_row(
            "preference accuracy",
            f"base {dpo['base']:.3f} → SFT {dpo['sft']:.3f} → DPO {dpo['dpo']:.3f} (n={dpo['n']})",
        )
    for who, answer in summary["served"].items():
        table.add_row(f"served answer: {who}", repr(answer))
    table.add_row("time", f"{summary['seconds']:.0f} s")
    Console().print(table)


def run_quickstart(port: int = 8000, extras: tuple[str, ...] = ()) -> dict:
    """Run every stage on the sample (and the `extras` asked for: "tools", "dpo") and return the summary."""
    from rayft.eval.evaluate import evaluate
    from rayft.serving import app
    from rayft.training.trainer import train

    # setup
    started = time.time()
    folder = rayft_home() / "quickstart"
    build_inputs(folder)
    base_config, adapter_config = packaged_config("quickstart-base.yaml"), packaged_config("quickstart.yaml")
    adapter_config.serve.port = port

    # run
    prepare(base_config, str(folder / "tiny-random"))
    base = train(base_config)
    manifest = prepare(adapter_config, base.artifact_uri)
    adapter = train(adapter_config)
    report = evaluate(adapter_config, candidate=adapter.ref)
    tools = tool_adapter(folder) if "tools" in extras else None
    dpo = dpo_adapter(folder) if "dpo" in extras else None
    url = app.start(adapter_config)
    try:
        served = {"base": ask(url, base.name, QUESTION), "adapter": ask(url, adapter.ref, QUESTION)}
        if tools:
            served["tool adapter (tool_choice required)"] = ask_with_tools(url, tools[0].ref, TOOL_QUESTION)
        if dpo:
            served["DPO adapter"] = ask(url, dpo[0].ref, QUESTION)
    finally:
        app.shutdown()

    # report
    summary = {
        "data": manifest.counts.model_dump() | {"dataset_hash": manifest.dataset_hash},
        "base_training": _run_summary(base),
        "adapter_training": _run_summary(adapter),
        "eval": {
            "base": report.metrics["base"]["accuracy"],
            "adapter": report.metrics["candidate"]["accuracy"],
            "n": report.n,
            "report": report.path,
        },
        "served": served,
        "question": QUESTION,
        **({"tools_eval": tools[1], "tool_adapter_training": _run_summary(tools[0])} if tools else {}),
        **({"dpo_eval": dpo[1], "dpo_training": _run_summary(dpo[0])} if dpo else {}),
        "seconds": time.time() - started,
    }
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print_summary(summary)
    print(f"summary: {folder / 'summary.json'}")
    return summary


def _run_summary(version: ModelVersion) -> dict:
    metrics = version.metrics
    return {
        "ref": version.ref,
        "first_loss": metrics["first_loss"],
        "final_loss": metrics["final_loss"],
        "steps": metrics["steps"],
        "artifact": version.artifact_uri,
    }
