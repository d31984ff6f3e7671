"""`rayft quantize`: a registered full-precision model stored smaller, registered as a version of its own.

setup   resolve the source (a registered full model); the calibration records: up to `samples` of
        a prepared dataset's train split (its manifest's content hash goes into the lineage)
run     one Ray task quantizes it with llm-compressor into compressed-tensors' format, which vLLM
        loads on CPU and GPU: `w8a8` (int8 weights per output channel, int8 activations per token,
        computed at run time) or `w4a16` (int4 weights in groups of 32, 16-bit activations); GPTQ
        calibrated on the records, or round-to-nearest (`rtn`, no calibration). The task verifies
        the source's bytes first and writes the result where it belongs (local or object storage).
report  register the folder as the next version of `NAME` (default `SOURCE-SCHEME`), its lineage
        naming the source version and its weights hash, the scheme, the method and the calibration
        set's hash; adapters trained on the source are served on it (docs/serving.md), and `rayft
        eval` judges it against the source (docs/eval.md).

llm-compressor cannot share rayft's environment: 0.14 needs compressed-tensors 0.19, and vLLM
0.32 pins 0.17. So the task runs in a Ray runtime env that installs exactly those two packages
over rayft's own (`QUANTIZER_ENV`, no other dependency changed): on any node, the first time
takes about 30 s. The saved checkpoint loads with the 0.17 vLLM holds.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rayft import storage
from rayft.config import ConfigError
from rayft.data.manifest import MANIFEST, Manifest
from rayft.home import rayft_home
from rayft.registry import ModelVersion, Registry, RegistryError, verified_artifact

Scheme = Literal["w8a8", "w4a16"]
Method = Literal["gptq", "rtn"]
SCHEMES: tuple[Scheme, ...] = ("w8a8", "w4a16")
METHODS: tuple[Method, ...] = ("gptq", "rtn")
QUANTIZER_PACKAGES = ["llmcompressor==0.14.0", "compressed-tensors==0.19.0"]
QUANTIZER_ENV = {"pip": {"packages": QUANTIZER_PACKAGES, "pip_install_options": ["--no-deps"], "pip_check": False}}
W4_GROUP_SIZE = 32  # vLLM's CPU int4 kernel takes groups of 32 (and GPUs any)
MAX_SEQ_LEN = 512  # calibration records are cut to this many tokens


@dataclass(frozen=True)
class QuantizeRequest:
    """What to quantize and how; `calibration` is a prepared dataset folder (None with `rtn`)."""

    source: str
    scheme: Scheme
    method: Method = "gptq"
    calibration: str | None = None
    samples: int = 256
    name: str | None = None
    out: str | None = None


@dataclass(frozen=True)
class Quantized:
    """What the task wrote: where, how long it took, the bytes before and after, and the linear
    layers kept at full precision (lm_head, and layers whose width the scheme's groups do not divide)."""

    path: str
    seconds: float
    bytes_before: int
    bytes_after: int
    kept: list[str]


@dataclass(frozen=True)
class QuantizeResult:
    version: ModelVersion
    quantized: Quantized
    calibration_records: int


def calibration_records(dataset: str, samples: int, seed: int = 0) -> tuple[list[dict], str]:
    """Up to `samples` conversations of the dataset's train split, drawn at random with `seed`, and
    the dataset's content hash from its manifest."""
    import random

    manifest = Manifest.model_validate_json(storage.read_text(storage.join(dataset, MANIFEST)))
    table = storage.parquet_file(storage.join(dataset, "train.parquet")).read()
    if "messages" not in table.schema.names or not table.num_rows:
        raise ConfigError(f"--calibration: {dataset} has no conversations in its train split")
    tools = table.column("tools").to_pylist() if "tools" in table.schema.names else [None] * table.num_rows
    rows = [
        {"messages": [{k: v for k, v in m.items() if v is not None and k != "weight"} for m in messages]}
        | ({"tools": json.loads(t)} if t else {})
        for messages, t in zip(table.column("messages").to_pylist(), tools)
    ]
    picked = random.Random(seed).sample(range(len(rows)), min(samples, len(rows)))
    return [rows[i] for i in sorted(picked)], manifest.dataset_hash


def folder_bytes(folder: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))


def quantize_in_task(source: ModelVersion, out: str, scheme: Scheme, method: Method, records: list[dict]) -> Quantized:
    """The Ray task (in `QUANTIZER_ENV`): verify the source's bytes, quantize, save to `out`."""
    import os

    import torch
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rayft import chat

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    folder = verified_artifact(source)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    kept = ["lm_head"]
    if scheme == "w4a16":
        kept += [
            name
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and name != "lm_head" and module.in_features % W4_GROUP_SIZE
        ]
        weights = QuantizationArgs(num_bits=4, type="int", strategy="group", group_size=W4_GROUP_SIZE, symmetric=True)
        targets = {"config_groups": {"group_0": QuantizationScheme(targets=["Linear"], weights=weights)}}
    else:
        targets = {"targets": "Linear", "scheme": "W8A8"}
    modifier = (GPTQModifier if method == "gptq" else QuantizationModifier)(ignore=kept, **targets)
    calibration = None
    if method == "gptq":
        template = chat.artifact_template(folder)
        texts = [chat.render(tokenizer, r["messages"], template, False, r.get("tools")) for r in records]
        calibration = Dataset.from_dict({"text": texts}).map(
            lambda batch: tokenizer(batch["text"], add_special_tokens=False, truncation=True, max_length=MAX_SEQ_LEN),
            batched=True,
            remove_columns=["text"],
        )
    started = time.time()
    oneshot(
        model=model,
        dataset=calibration,
        recipe=[modifier],
        max_seq_length=MAX_SEQ_LEN,
        num_calibration_samples=max(len(records), 1),
    )
    seconds = time.time() - started
    with storage.writable_dir(out) as target:
        model.save_pretrained(target, save_compressed=True)
        tokenizer.save_pretrained(target)
        after = folder_bytes(target)
    return Quantized(out, round(seconds, 2), folder_bytes(folder), after, kept)


def default_name(source: ModelVersion, scheme: Scheme) -> str:
    return f"{source.name}-{scheme}"


def quantize(request: QuantizeRequest, registry: Registry | None = None) -> QuantizeResult:
    """Quantize the registered full model `request.source` and register the result."""
    # setup
    registry = registry or Registry()
    source = registry.get(request.source)
    if source.kind != "full":
        raise RegistryError(f"{source.ref} is an adapter; quantize a full model (a base or a full fine-tune)")
    if source.config.get("quantization"):
        raise RegistryError(f"{source.ref} is quantized already; quantize its source {source.parent}")
    if request.method == "gptq" and not request.calibration:
        raise ConfigError("gptq calibrates on a prepared dataset: give --calibration DATASET (or --method rtn)")
    records, calibration_hash = (
        calibration_records(request.calibration, request.samples) if request.method == "gptq" else ([], None)
    )
    name = request.name or default_name(source, request.scheme)
    out = request.out or str(rayft_home() / "quantized" / name / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")

    # run
    import ray

    from rayft.runtime import ensure_ray

    ensure_ray()
    task = ray.remote(quantize_in_task).options(runtime_env=QUANTIZER_ENV, num_cpus=1, max_retries=0)
    quantized = ray.get(task.remote(source, out, request.scheme, request.method, records))

    # report
    lineage = {
        "source": source.ref,
        "source_weights_hash": source.weights_hash,
        "scheme": request.scheme,
        "method": request.method,
        "group_size": W4_GROUP_SIZE if request.scheme == "w4a16" else None,
        "kept_full_precision": quantized.kept,
        "calibration": {"dataset": request.calibration, "dataset_hash": calibration_hash, "records": len(records)}
        if records
        else None,
        "packages": QUANTIZER_PACKAGES,
        "bytes_before": quantized.bytes_before,
        "bytes_after": quantized.bytes_after,
        "seconds": quantized.seconds,
    }
    version = registry.register(
        name,
        "full",
        source.artifact_uri,
        quantized.path,
        dataset_hash=calibration_hash,
        config={"quantization": lineage},
        parent=source.ref,
        project=source.project,
    )
    return QuantizeResult(version, quantized, len(records))


def print_result(result: QuantizeResult) -> None:
    q, lineage = result.quantized, result.version.config["quantization"]
    how = f"{lineage['method']} on {result.calibration_records} records" if result.calibration_records else "rtn"
    print(
        f"registered {result.version.ref} ({lineage['scheme']}, {how}) at {q.path}: {q.bytes_before / 2**20:.1f} MiB "
        f"→ {q.bytes_after / 2**20:.1f} MiB in {q.seconds:.1f} s; quantized from {lineage['source']}"
    )
