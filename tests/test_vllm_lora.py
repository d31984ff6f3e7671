"""vLLM (CPU build) with LoRA equals transformers + peft, including base and adapters in one batch.

vLLM's own CPU LoRA ops apply the last adapter slot to base rows of a mixed batch; rayft's
`vllm.general_plugins` entry point replaces them (serving/cpu_lora). This test runs the real engine
offline, in-process, so every prompt list below is scheduled as one batch.
"""

import pytest
from reference import Reference, random_adapter

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(600)]

PROMPTS = ["My invoice is wrong", "Where is my package?", "The app shows error E-500", "Reset my password"]


@pytest.fixture(scope="module")
def engine(tiny_model, tmp_path_factory):
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    folder = tmp_path_factory.mktemp("lora")
    adapters = {name: random_adapter(tiny_model, folder / name, seed=i) for i, name in enumerate(["a1", "a2"], 1)}
    llm = LLM(
        model=tiny_model,
        dtype="float32",
        enforce_eager=True,
        max_model_len=256,
        enable_lora=True,
        max_loras=2,
        max_lora_rank=8,
        seed=0,
    )
    requests = {None: None} | {name: LoRARequest(name, i, path) for i, (name, path) in enumerate(adapters.items(), 1)}
    yield llm, requests, adapters, SamplingParams(temperature=0, max_tokens=8)
    del llm


@pytest.fixture(scope="module")
def reference(tiny_model):
    return Reference(tiny_model)


def run(engine, reference, assignment, texts=PROMPTS):
    llm, requests, adapters, sampling = engine
    prompts = [{"prompt_token_ids": reference.prompt_ids([{"role": "user", "content": p}])} for p in texts]
    prompts = [prompts[i % len(prompts)] for i in range(len(assignment))]
    outputs = llm.generate(prompts, sampling, lora_request=[requests[a] for a in assignment], use_tqdm=False)
    got = [list(o.outputs[0].token_ids) for o in outputs]
    expected = [reference.generate_tokens(p["prompt_token_ids"], adapters.get(a)) for p, a in zip(prompts, assignment)]
    return got, expected


@pytest.mark.parametrize(
    "assignment",
    [
        [None] * 4,
        ["a1"] * 4,
        ["a2"] * 4,
        [None, "a1", None, "a2", "a1", None, "a2", None],
        ["a1", None, None, None],
        ["a1", "a2", "a2", "a1"],
        [None, "a2", "a2", None],
    ],
)
def test_greedy_output_equals_reference(engine, reference, assignment):
    got, expected = run(engine, reference, assignment)
    assert got == expected


def test_adapters_really_change_the_output(engine, reference):
    got, _ = run(engine, reference, [None, "a1", "a2"])
    assert len({tuple(g) for g in got}) == 3


def test_long_prompts_of_mixed_adapters_prefill_run_by_run(engine, reference, monkeypatch):
    """Prompts long enough that the prefill takes each sequence's rows as one run (no gather)."""
    from rayft.serving.cpu_lora import plan

    made, make_plan = [], plan.make_plan

    def recording(indices):
        made.append(make_plan(indices))
        return made[-1]

    monkeypatch.setattr(plan, "make_plan", recording)
    texts = [" ".join([p] * 6) for p in PROMPTS]
    got, expected = run(engine, reference, ["a1", None, "a2", "a1"], texts)
    assert got == expected
    assert any(p.runs and {slot for slot, _, _ in p.runs} == {0, 1} for p in made)  # the prefill's plan
