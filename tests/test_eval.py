"""The eval engine against transformers + peft: same greedy answers, same teacher-forced likelihoods,
few-shot prompts that shrink to fit the context. The real vLLM engine, in-process (no Ray needed
for one actor's work); the whole Ray Data path runs in tests/test_quickstart.py."""

import json
import math

import pyarrow as pa
import pytest
import torch

from reference import Reference, random_adapter

pytestmark = pytest.mark.timeout(300)

CONTEXT = 256
SYSTEM = {"role": "system", "content": "You are a support triage assistant."}


def conversation(question: str, answer: str) -> list[dict]:
    return [SYSTEM, {"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def teacher_forced_nll(reference: Reference, adapter: str | None, prompt_ids: list[int], answer_ids: list[int]) -> float:
    ids = torch.tensor([prompt_ids + answer_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(reference.model(adapter)(ids).logits[0].double(), dim=-1)
    return -sum(float(logprobs[len(prompt_ids) + i - 1, t]) for i, t in enumerate(answer_ids))


def test_engine_answers_and_scores_like_transformers(tiny_model, tmp_path):
    from rayft.eval.generate import Decoding, EvalEngine, Variant

    adapter = random_adapter(tiny_model, tmp_path / "adapter", seed=11)
    reference = Reference(tiny_model)
    long_question = "reset my password"
    while len(reference.prompt_ids([SYSTEM, {"role": "user", "content": long_question}])) < CONTEXT - 20:
        long_question += " please"  # so long that no example fits beside it
    examples = [conversation("my invoice is wrong", "Category: billing"),
                conversation("the app crashes", "Category: technical")]
    records = [("test", conversation("where is my package?", "Category: shipping")),
               ("test", conversation(long_question, "Category: account")),
               ("forgetting", conversation("What is the capital of Peru?", "The capital of Peru is Lima."))]
    batch = pa.table({"set": [s for s, _ in records], "prompt": [json.dumps(c[:-1]) for _, c in records],
                      "answer": [c[-1]["content"] for _, c in records], "expected": ["", "", "Lima"]})
    engine = EvalEngine(tiny_model, [
        Variant("base", sets=("test", "forgetting")), Variant("few_shot", few_shot=examples),
        Variant("candidate", adapter=adapter, sets=("test", "forgetting")),
    ], Decoding(max_new_tokens={"test": 6, "forgetting": 10}, max_model_len=CONTEXT))
    rows = engine(batch).to_pylist()

    tokenizer = reference.tokenizer
    for row, (row_set, messages) in zip(rows, records):
        answer_ids = tokenizer(messages[-1]["content"] + "<|im_end|>", add_special_tokens=False)["input_ids"]
        max_new = 6 if row_set == "test" else 10
        for variant, path in (("base", None), ("candidate", adapter)):
            prompt_ids = reference.prompt_ids(messages[:-1])
            assert row[f"output:{variant}"] == reference.continue_ids(prompt_ids, path, max_new)
            assert row[f"tokens:{variant}"] == len(answer_ids)
            expected = teacher_forced_nll(reference, path, prompt_ids, answer_ids)
            assert math.isclose(row[f"nll:{variant}"], expected, rel_tol=1e-3), (variant, row_set)
        assert row["output:base"] != row["output:candidate"]  # the adapter is applied, to its rows only

    short, long, forgetting = rows
    assert short["shots:few_shot"] == 2  # both examples fit
    assert long["shots:few_shot"] == 0  # examples dropped until the prompt and its answer fit the context
    assert long["output:few_shot"] == long["output:base"]
    few_shot_messages = [SYSTEM] + [m for e in examples for m in e[1:]] + records[0][1][1:-1]
    assert short["output:few_shot"] == reference.chat(few_shot_messages, None, 6)
    assert forgetting["output:few_shot"] is None and forgetting["nll:few_shot"] is None  # test rows only
