"""Quantised serving end to end, on real components: `rayft quantize` makes a w8a8 version of the
tiny base with llm-compressor (GPTQ, calibrated on the prepared ticket split, in the Ray runtime env
that installs it), registered with its lineage; `rayft eval` judges it against its source and runs
the trained adapter and a random one on both engines (the eval's vLLM engines, in the test process);
the
gate's quantization checks pass and fail on their thresholds; `rayft serve` on the quantized
version answers the base and both adapters through the official `openai` client, close to the
source's answers, refuses an adapter of another base, and shows the scheme on /v1/models.

The tolerance for "close": a greedy answer of 8 tokens on the quantized base (int8 weights and
activations, bfloat16) starts with the same word as the full-precision source's (float32, with
transformers and peft) for at least 3 of the 4 questions, for the base and for each adapter.
"""

import json
from pathlib import Path

import openai
import pytest
from reference import Reference, answer_in_process, random_adapter
from serving_app import QUESTIONS, free_port

KEY = "quantized-key"
SYSTEM = {"role": "system", "content": "You are a support triage assistant."}


def first_tokens(reference: Reference, adapter: str | None) -> list[str]:
    return [reference.chat([SYSTEM, {"role": "user", "content": q}], adapter, 8) for q in QUESTIONS]


def test_quantize_refuses_adapters_quantized_versions_and_gptq_without_calibration(tmp_path, capsys):
    """Refused before Ray starts, each with the reason on one line and exit code 2."""
    from rayft.cli import main
    from rayft.registry import Registry

    registry = Registry()
    source = registry.register("refusal-src", "full", "/b", str(tmp_path / "src"))
    adapter = registry.register("refusal-adapter", "adapter", "/b", str(tmp_path / "a"))
    lineage = {"scheme": "w8a8", "method": "rtn", "source": source.ref}
    done = registry.register(
        "refusal-q", "full", "/b", str(tmp_path / "q"), config={"quantization": lineage}, parent=source.ref
    )
    cases = [
        ([adapter.ref, "--scheme", "w8a8"], "is an adapter; quantize a full model"),
        ([done.ref, "--scheme", "w4a16"], f"quantized already; quantize its source {source.ref}"),
        ([source.ref, "--scheme", "w8a8"], "gptq calibrates on a prepared dataset: give --calibration DATASET"),
        ([source.ref, "--scheme", "w8a8", "--samples", "0", "--method", "rtn"], "--samples: give at least 1"),
    ]
    for args, says in cases:
        assert main(["quantize", *args]) == 2
        assert says in capsys.readouterr().err


@pytest.mark.vllm
@pytest.mark.timeout(600)
def test_a_quantized_base_is_registered_evaluated_gated_and_serves_the_sources_adapters(
    ray_cluster, tiny_model, tickets_dataset, trained_adapter, tmp_path, monkeypatch
):
    from rayft.config import parse_config
    from rayft.data.manifest import Manifest
    from rayft.eval import evaluate as pipeline
    from rayft.eval.evaluate import evaluate
    from rayft.eval.gate import gate_checks
    from rayft.registry import Registry
    from rayft.serving import app
    from rayft.storage import content_hash
    from rayft.training.quantize import QuantizeRequest, quantize

    registry = Registry()
    # the tiny base as a registered full model (another test may have registered its folder already)
    source = registry.find_by_artifact(tiny_model) or registry.register("tiny-fp", "full", tiny_model, tiny_model)
    rnd = registry.register("rnd", "adapter", tiny_model, random_adapter(tiny_model, tmp_path / "rnd", seed=5))
    elsewhere = registry.register(
        "elsewhere", "adapter", str(tmp_path / "other-base"), random_adapter(tiny_model, tmp_path / "e", seed=6)
    )

    # quantize: registered with its lineage, smaller, in compressed-tensors' format
    result = quantize(QuantizeRequest(source.ref, "w8a8", "gptq", str(tickets_dataset), samples=16, name="tiny-q"))
    version = registry.get(result.version.ref)
    lineage = version.config["quantization"]
    manifest = Manifest.model_validate_json((tickets_dataset / "manifest.json").read_text())
    assert (version.ref, version.kind, version.base_model, version.parent) == (
        "tiny-q:1",
        "full",
        tiny_model,
        source.ref,
    )
    assert (lineage["scheme"], lineage["method"], lineage["source_weights_hash"]) == (
        "w8a8",
        "gptq",
        source.weights_hash,
    )
    assert lineage["calibration"] == {
        "dataset": str(tickets_dataset),
        "dataset_hash": manifest.dataset_hash,
        "records": 16,
    }
    assert version.dataset_hash == manifest.dataset_hash and version.weights_hash == content_hash(version.artifact_uri)
    assert lineage["bytes_after"] < lineage["bytes_before"]
    quantization = json.loads((Path(version.artifact_uri) / "config.json").read_text())["quantization_config"]
    assert quantization["quant_method"] == "compressed-tensors"

    # eval: against its source, with the source's adapters on both engines
    config = {
        "name": "tiny-q",
        "model": {"base": tiny_model},
        "data": {"out": str(tickets_dataset)},
        "eval": {
            "limit": 24,
            "max_new_tokens": 8,
            "quantized_adapters": [trained_adapter.ref, rnd.ref],
            "report_path": str(tmp_path / "reports"),
        },
    }
    monkeypatch.setattr(pipeline, "answer_with_engines", answer_in_process)  # the engines, in this process
    report = evaluate(parse_config(config), candidate=version.ref, show_progress=False)
    support = trained_adapter.ref
    assert list(report.metrics) == [
        "base",
        "candidate",
        rnd.ref,
        f"{rnd.ref}@quantized",
        support,
        f"{support}@quantized",
    ]
    q = report.quantization
    assert (q.scheme, q.source, set(q.adapters)) == ("w8a8", source.ref, {support, rnd.ref})
    assert q.weights_mib["candidate"] < q.weights_mib["base"]
    assert all(q.tokens_per_s[v] > 0 for v in report.metrics)
    names = [c.name for c in report.verdict]
    assert {"quantization_drop", "quantization_perplexity", "quantization_adapters"} <= set(names)
    assert "beats_base" not in names  # a quantized base must match its source, not beat it
    ppl = {v: report.metrics[v]["perplexity"] for v in ("base", "candidate")}
    assert ppl["candidate"] != ppl["base"]  # the weights did change
    assert all(c.passed for c in report.verdict), report.verdict  # within the default limits
    tight = report.gate.model_copy(update={"max_quantization_perplexity_increase": 0.0, "max_quantization_drop": 0.0})
    rise = ppl["candidate"] / ppl["base"] - 1
    failing = [c.name for c in gate_checks(version, report.model_copy(update={"gate": tight})) if not c.passed]
    assert failing == (["quantization_perplexity"] if rise > 0 else [])  # thresholds: tests/test_gate.py

    # serve: the quantized version as the base, the source's adapters on it
    port = free_port()
    serve_config = parse_config(
        {
            "name": "quantized",
            "model": {"base": f"registry:{version.ref}"},
            "serve": {"port": port, "max_model_len": 512, "api_keys": [KEY], "max_loras": 2, "max_cpu_loras": 2},
        }
    )
    app.start(serve_config)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0, timeout=120)
        cards = {m.id: m for m in client.models.list().data}
        assert cards["tiny-q"].model_extra["quantization"] == {
            "scheme": "w8a8",
            "method": "gptq",
            "source": source.ref,
        }
        assert {support, rnd.ref} <= set(cards) and elsewhere.ref not in cards
        reference = Reference(tiny_model)
        for model, adapter in (
            ("tiny-q", None),
            (support, trained_adapter.artifact_uri),
            (rnd.ref, rnd.artifact_uri),
        ):
            served = [
                client.chat.completions.create(
                    model=model,
                    messages=[SYSTEM, {"role": "user", "content": q}],
                    max_tokens=8,
                    temperature=0,
                )
                .choices[0]
                .message.content
                for q in QUESTIONS
            ]
            expected = first_tokens(reference, adapter)
            same_start = sum(s.split()[:1] == e.split()[:1] for s, e in zip(served, expected))
            assert same_start >= 3, (model, served, expected)
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(
                model=elsewhere.ref, messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
    finally:
        app.shutdown()
