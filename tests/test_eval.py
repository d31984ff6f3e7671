"""The eval engine against transformers + peft: same greedy answers, same teacher-forced likelihoods,
few-shot prompts that shrink to fit the context. The real vLLM engine, in-process (no Ray needed
for one actor's work); then `evaluate()` for a full-model candidate on a generation task, with its
engines in-process instead of in Ray actors (an adapter on classification runs through the actor
pool in tests/test_quickstart.py), and for task preference on prepared preference pairs, with the
version the candidate continues answered beside it."""

import dataclasses
import json
import math
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from reference import Reference, answer_in_process, random_adapter
from templates import CONVERSATION, NO_SYSTEM, save_with_template

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(300)]

CONTEXT = 256
SYSTEM = {"role": "system", "content": "You are a support triage assistant."}


def conversation(question: str, answer: str) -> list[dict]:
    return [SYSTEM, {"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def teacher_forced_nll(
    reference: Reference, adapter: str | None, prompt_ids: list[int], answer_ids: list[int]
) -> float:
    ids = torch.tensor([prompt_ids + answer_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(reference.model(adapter)(ids).logits[0].double(), dim=-1)
    return -sum(float(logprobs[len(prompt_ids) + i - 1, t]) for i, t in enumerate(answer_ids))


def scored_answer(reference: Reference, adapter: str | None, messages: list[dict]) -> tuple[float, int]:
    """The summed NLL of the last (assistant) turn after its prompt, end-of-turn token included, and
    how many tokens that is: what the engine's `nll:` and `tokens:` columns must hold."""
    answer_ids = reference.tokenizer(messages[-1]["content"] + "<|im_end|>", add_special_tokens=False)["input_ids"]
    return teacher_forced_nll(reference, adapter, reference.prompt_ids(messages[:-1]), answer_ids), len(answer_ids)


def test_engine_answers_and_scores_like_transformers(tiny_model, tmp_path):
    from rayft.eval.generate import Decoding, EvalEngine, Variant

    adapter = random_adapter(tiny_model, tmp_path / "adapter", seed=11)
    reference = Reference(tiny_model)
    long_question = "reset my password"
    while len(reference.prompt_ids([SYSTEM, {"role": "user", "content": long_question}])) < CONTEXT - 20:
        long_question += " please"  # so long that no example fits beside it
    examples = [
        conversation("my invoice is wrong", "Category: billing"),
        conversation("the app crashes", "Category: technical"),
    ]
    records = [
        ("test", conversation("where is my package?", "Category: shipping")),
        ("test", conversation(long_question, "Category: account")),
        ("forgetting", conversation("What is the capital of Peru?", "The capital of Peru is Lima.")),
    ]
    batch = pa.table(
        {
            "set": [s for s, _ in records],
            "prompt": [json.dumps(c[:-1]) for _, c in records],
            "answer": [c[-1]["content"] for _, c in records],
            "expected": ["", "", "Lima"],
        }
    )
    engine = EvalEngine(
        tiny_model,
        [
            Variant("base", sets=("test", "forgetting")),
            Variant("few_shot", few_shot=examples),
            Variant("candidate", adapter=registered(adapter), sets=("test", "forgetting")),
        ],
        Decoding(max_new_tokens={"test": 6, "forgetting": 10}, max_model_len=CONTEXT),
    )
    rows = engine(batch).to_pylist()

    for row, (row_set, messages) in zip(rows, records):
        max_new = 6 if row_set == "test" else 10
        for variant, path in (("base", None), ("candidate", adapter)):
            assert row[f"output:{variant}"] == reference.chat(messages[:-1], path, max_new)
            expected, tokens = scored_answer(reference, path, messages)
            assert row[f"tokens:{variant}"] == tokens
            assert math.isclose(row[f"nll:{variant}"], expected, rel_tol=1e-3), (variant, row_set)
        assert row["output:base"] != row["output:candidate"]  # the adapter is applied, to its rows only

    short, long, forgetting = rows
    assert short["shots:few_shot"] == 2  # both examples fit
    assert long["shots:few_shot"] == 0  # examples dropped until the prompt and its answer fit the context
    assert long["output:few_shot"] == long["output:base"]
    few_shot_messages = [SYSTEM] + [m for e in examples for m in e[1:]] + records[0][1][1:-1]
    assert short["output:few_shot"] == reference.chat(few_shot_messages, None, 6)
    assert forgetting["output:few_shot"] is None and forgetting["nll:few_shot"] is None  # test rows only

    engine.decoding = dataclasses.replace(engine.decoding, generate=False)  # task perplexity: score test rows only
    for row, scored in zip(rows, engine(batch).to_pylist()):
        assert scored["output:base"] == (row["output:base"] if row["set"] == "forgetting" else None)
        assert scored["nll:candidate"] == pytest.approx(row["nll:candidate"], rel=1e-6)


def registered(folder: str, ref: str = "candidate:1"):
    """A registry record (ModelVersion) of an adapter folder, with its content hash (not written to
    any registry)."""
    from rayft.registry import ModelVersion
    from rayft.storage import content_hash

    name, version = ref.split(":")
    return ModelVersion(name, int(version), "adapter", "/base", str(folder), weights_hash=content_hash(folder))


def test_an_adapter_is_evaluated_with_the_template_it_was_trained_with_and_only_if_verified(tiny_model, tmp_path):
    """An adapter whose artifact carries a template without a system role is scored on the prompt ids
    training renders with it (`test_chat_template.py`); once its files change, the engine refuses it."""
    from transformers import AutoTokenizer

    from rayft import chat
    from rayft.eval.generate import Decoding, EvalEngine, Variant
    from rayft.storage import ArtifactMismatch

    adapter = random_adapter(tiny_model, tmp_path / "adapter", seed=12)
    save_with_template(tiny_model, adapter, NO_SYSTEM)
    version = registered(adapter)
    batch = pa.table(
        {
            "set": ["test"],
            "prompt": [json.dumps(CONVERSATION[:-1])],
            "answer": [CONVERSATION[-1]["content"]],
            "expected": [""],
        }
    )
    decoding = Decoding(max_new_tokens={"test": 6}, max_model_len=CONTEXT)
    [row] = EvalEngine(tiny_model, [Variant("base"), Variant("candidate", adapter=version)], decoding)(
        batch
    ).to_pylist()
    ids = chat.prompt_ids(AutoTokenizer.from_pretrained(tiny_model), CONVERSATION[:-1], NO_SYSTEM)
    reference = Reference(tiny_model)
    assert row["output:candidate"] == reference.continue_ids(ids, adapter, 6)
    assert row["output:base"] == reference.chat(CONVERSATION[:-1], None, 6)  # the base keeps its own template
    (Path(adapter) / "adapter_config.json").write_text((Path(adapter) / "adapter_config.json").read_text() + " ")
    with pytest.raises(ArtifactMismatch, match=f"candidate:1: the artifact at {adapter} has weights hash"):
        EvalEngine(tiny_model, [Variant("candidate", adapter=version)], decoding)


def full_model(base: str, out: Path) -> str:
    """A stand-in for a fully fine-tuned model: the base with a random LoRA adapter merged in."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = random_adapter(base, out.parent / "adapter-to-merge", seed=5)
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).merge_and_unload()
    merged.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return str(out)


@pytest.mark.ray
def test_evaluate_a_registered_full_model_on_a_generation_task(ray_cluster, tiny_model, tmp_path, monkeypatch):
    """A kind=full version gets an engine of its own beside the base's; report.json carries the
    generation metrics and perplexity of both, equal to transformers' answers and likelihoods."""
    import pyarrow.parquet as pq

    from rayft.config import parse_config
    from rayft.eval import evaluate as pipeline
    from rayft.eval.evaluate import evaluate
    from rayft.eval.metrics import generation_metrics
    from rayft.registry import Registry

    records = [
        conversation(q, a)
        for q, a in [
            ("Say hello to Ana.", "Hello, Ana!"),
            ("What is 2 + 2?", "It is 4."),
            ("Name a colour.", "Blue."),
            ("Repeat: tea time", "tea time"),
        ]
    ]
    (tmp_path / "data").mkdir()
    pq.write_table(pa.table({"messages": records}), tmp_path / "data" / "test.parquet")
    version = Registry().register("eval-full", "full", tiny_model, full_model(tiny_model, tmp_path / "full"))
    config = parse_config(
        {
            "name": "eval-full",
            "model": {"base": tiny_model},
            "data": {"out": str(tmp_path / "data")},
            "eval": {
                "task": "generation",
                "few_shot": 0,
                "forgetting": False,
                "max_new_tokens": 6,
                "max_model_len": CONTEXT,
                "report_path": str(tmp_path / "reports"),
            },
        }
    )
    monkeypatch.setattr(pipeline, "answer_with_engines", answer_in_process)
    evaluate(config, candidate=version.ref, show_progress=False)

    report = json.loads(Path(Registry().get(version.ref).eval_report["path"]).read_text())
    assert (report["kind"], report["n"], list(report["metrics"])) == ("full", 4, ["base", "candidate"])
    answers = [r[-1]["content"] for r in records]
    for variant, model in (("base", tiny_model), ("candidate", version.artifact_uri)):
        reference = Reference(model)
        outputs = [reference.chat(r[:-1], None, 6) for r in records]
        nll, tokens = map(sum, zip(*(scored_answer(reference, None, r) for r in records)))
        metrics = report["metrics"][variant]
        expected = generation_metrics(outputs, answers)
        assert {k: metrics[k] for k in expected} == pytest.approx(expected), variant
        assert metrics["perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-3), variant
    assert report["metrics"]["candidate"]["perplexity"] != pytest.approx(report["metrics"]["base"]["perplexity"])
    assert report["files"]["plots"] == {"metrics": "metrics.png"}  # no confusion matrix, no training log


@pytest.mark.ray
def test_evaluate_preference_pairs_with_the_parent_beside_the_candidate(
    ray_cluster, tiny_model, preference_dataset, tmp_path, monkeypatch
):
    """Task preference on the prepared preference sample: nothing generated, both replies of every
    test pair scored for the base, the candidate and the version it continues (random adapters, the
    parent also in prod, so it answers once in both roles), each reply's likelihood equal to
    transformers + peft's; the pair metrics, the margin plot and the gate's parent check."""
    import pyarrow.parquet as pq

    from rayft.config import parse_config
    from rayft.eval import evaluate as pipeline
    from rayft.eval.evaluate import evaluate
    from rayft.eval.metrics import preference_metrics
    from rayft.registry import Registry

    registry = Registry()
    adapters = {v: random_adapter(tiny_model, tmp_path / v, seed=s) for v, s in (("parent", 21), ("candidate", 22))}
    parent = registry.register("pref", "adapter", tiny_model, adapters["parent"])
    version = registry.register("pref", "adapter", tiny_model, adapters["candidate"], parent=parent.ref)
    registry.set_alias("pref", "prod", parent.version, reason="test", gated=True)
    config = parse_config(
        {
            "name": "pref",
            "model": {"base": tiny_model},
            "data": {"out": str(preference_dataset)},
            "eval": {
                "task": "preference",
                "few_shot": 0,
                "forgetting": False,
                "max_model_len": 1024,
                "report_path": str(tmp_path / "reports"),
            },
        }
    )
    monkeypatch.setattr(pipeline, "answer_with_engines", answer_in_process)
    evaluate(config, candidate=version.ref, show_progress=False)

    report = json.loads(Path(Registry().get(version.ref).eval_report["path"]).read_text())
    folder = Path(report["folder"])
    assert list(report["metrics"]) == ["base", "candidate", "parent", "pref:1"]
    assert report["parent"] == {"ref": parent.ref, "weights_hash": parent.weights_hash}
    answers = [json.loads(line) for line in (folder / "answers.jsonl").read_text().splitlines()]
    pairs = pq.read_table(preference_dataset / "test.parquet", columns=["messages", "rejected"]).to_pylist()
    assert report["n"] == len(answers) == len(pairs) > 0
    assert all(row[f"output:{v}"] is None for row in answers for v in report["metrics"])  # nothing generated

    strip = lambda ms: [{k: v for k, v in m.items() if v is not None} for m in ms]  # noqa: E731
    reference = Reference(tiny_model)
    margins = {}
    for variant, adapter in (("base", None), ("parent", adapters["parent"]), ("candidate", adapters["candidate"])):
        margins[variant] = []
        for row, pair in zip(answers, pairs):
            chosen, _ = scored_answer(reference, adapter, strip(pair["messages"]))
            rejected, _ = scored_answer(reference, adapter, strip(pair["messages"][:-1] + pair["rejected"]))
            assert row[f"nll:{variant}"] == pytest.approx(chosen, rel=1e-3), variant
            assert row[f"nll_rejected:{variant}"] == pytest.approx(rejected, rel=1e-3), variant
            margins[variant].append(rejected - chosen)
    for variant in ("base", "parent", "candidate"):
        expected = preference_metrics(margins[variant], margins["base"])
        metrics = report["metrics"][variant]
        assert metrics["preference_accuracy"] == pytest.approx(expected["preference_accuracy"]), variant
        assert metrics["reward_margin"] == pytest.approx(expected["reward_margin"], abs=1e-2), variant
    assert report["metrics"]["base"]["reward_margin"] == 0.0 and report["metrics"]["candidate"]["reward_margin"] != 0
    assert report["metrics"]["pref:1"] == report["metrics"]["parent"]  # the parent in prod, answered once

    assert report["files"]["plots"]["margins"] == "margins.png" and (folder / "margins.png").stat().st_size > 1000
    checks = {c["name"]: c for c in report["verdict"]}
    assert f"vs its parent {parent.ref}" in checks["beats_parent"]["detail"]
    assert "vs pref:1 (pref:prod now)" in checks["not_worse_than_current"]["detail"]
    assert "measured beside the candidate" in checks["not_worse_than_current"]["detail"]
    assert "parent (pref:1)" in (folder / "report.md").read_text()
