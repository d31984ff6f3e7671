"""rayft's training step on one accelerator: tokens/s, peak memory and MFU for LoRA, full and QLoRA,
with and without packing, as JSON.

    python bench/gpu_train_step.py --size 1b --device cuda --out results.json   # on a GPU machine
    python bench/gpu_train_step.py --size tiny --device cpu                      # smoke test (make test)

setup   a Llama-architecture model built from a config at `--size` (random weights; `1b` has the
        shape of Llama 3.2 1B: hidden 2048, 16 layers, 128,256-token vocabulary), saved once, then
        for each method loaded and wrapped exactly as rayft's training worker does it: the same
        `load_model` (bf16 on GPU; LoRA, or QLoRA's 4-bit NF4 base via bitsandbytes), the same
        DeepSpeed config and `build_engine`, the same padding and packing (`rayft.training.formatting`)
        and model inputs (`to_model_inputs`), all imported from rayft, not copied
run     `--warmup` steps, then `--steps` timed steps of forward + backward + optimizer step on
        synthetic examples (random ids, loss on the second half of each example, as on an answer)
report  one JSON document: the device, and per method and packing tokens/s (non-padding tokens),
        seconds per step, peak memory and MFU. A configuration that fails (QLoRA without
        bitsandbytes, say) is reported with its error; the others still run.

MFU = model FLOPs per token × tokens/s ÷ the device's peak dense bf16 FLOP/s (`--peak-tflops`, or
the datasheet value for a known device name; none for a CPU). Model FLOPs per token follow PaLM
(Chowdhery et al. 2022, appendix B), with N the parameters used in matrix products (the input
embedding lookup is not one; a tied LM head is), L layers, d the hidden size and T the row length:

    full fine-tune:  6·N + 12·L·d·T
    LoRA / QLoRA:    4·N + 6·N_trainable + 12·L·d·T

A frozen weight still costs its forward (2N) and the gradient of its input (2N), but no weight
gradient; the adapter's own weights cost all three (6 N_trainable). Re-materialisation and the
4-bit dequantisation are not counted (they are overhead, which is what MFU exposes).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

# name: hidden, intermediate, layers, heads, kv heads, vocabulary, tied embeddings
SIZES = {
    "tiny": (64, 176, 2, 2, 1, 2048, False),
    "1b": (2048, 8192, 16, 32, 8, 128_256, True),  # the shape of Llama 3.2 1B
}
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}
METHODS = ("lora", "full", "qlora")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="1b")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated: lora, full, qlora")
    parser.add_argument("--seq-len", type=int, help="row length (default 2048 for 1b, 64 for tiny)")
    parser.add_argument("--micro-batch", type=int, help="rows per step (default 8 for 1b, 2 for tiny)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--peak-tflops", type=float, help="the device's peak dense bf16 TFLOP/s (default by name)")
    parser.add_argument("--out", help="also write the JSON here")
    return parser.parse_args(argv)


def build_model(size: str, folder: Path, use_gpu: bool) -> Path:
    """A random Llama model of `size`, saved as any hub model would be (bf16 on GPU)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, intermediate, layers, heads, kv_heads, vocab, tied = SIZES[size]
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=8192,
        tie_word_embeddings=tied,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    with torch.device("cuda" if use_gpu else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16 if use_gpu else torch.float32)
    model.save_pretrained(folder)
    del model
    return folder


def train_config(method: str, packing: bool, seq_len: int, use_gpu: bool):
    """A one-worker train section as a user would write it for this method."""
    from rayft.config import TrainConfig

    return TrainConfig(
        method=method,
        packing=packing,
        max_seq_len=seq_len,
        num_workers=1,
        use_gpu=use_gpu,
        lora={"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
    )


def synthetic_examples(n: int, seq_len: int, vocab: int, seed: int) -> list[dict]:
    """Examples of random ids, 1/8 to 1/2 of a row long, learning their second half (the answer)."""
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        length = rng.randint(max(2, seq_len // 8), max(2, seq_len // 2))
        ids = [rng.randrange(1, vocab) for _ in range(length)]
        examples.append({"input_ids": ids, "labels": [-100] * (length // 2) + ids[length // 2 :]})
    return examples


def batches(train, micro: int, vocab: int, count: int, seed: int) -> list:
    """`count` micro-batches as the worker makes them: padded examples, or packed rows."""
    from rayft.training.formatting import pack_examples, packed_batch, pad_batch

    if not train.packing:
        return [pad_batch(synthetic_examples(micro, train.max_seq_len, vocab, seed + i), 0) for i in range(count)]
    rows = pack_examples(synthetic_examples(micro * count * 6, train.max_seq_len, vocab, seed), train.max_seq_len)
    return [packed_batch(rows[i * micro : (i + 1) * micro], 0) for i in range(count)]


def flops_per_token(model, method: str, width: int) -> float:
    """Model FLOPs per token (see the module docstring)."""
    config = model.config
    total = sum(unquantized_size(p) for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    embedding = model.get_input_embeddings().weight.numel()
    matmul = total - (0 if config.tie_word_embeddings else embedding)
    attention = 12 * config.num_hidden_layers * config.hidden_size * width
    if method == "full":
        return 6 * matmul + attention
    return 4 * (matmul - trainable) + 6 * trainable + attention


def unquantized_size(param) -> int:
    """Elements of a weight as the model uses it: a 4-bit bitsandbytes weight stores two per byte,
    and its quant state keeps the original shape."""
    state = getattr(param, "quant_state", None)
    return state.shape.numel() if state is not None else param.numel()


def peak_flops(device: str, override: float | None) -> float | None:
    if override:
        return override * 1e12
    for name, tflops in PEAK_BF16_TFLOPS.items():
        if name in device:
            return tflops * 1e12
    return None


def synchronize(use_gpu: bool) -> None:
    if use_gpu:
        import torch

        torch.cuda.synchronize()


def measure(model_dir: Path, method: str, packing: bool, args, use_gpu: bool, vocab: int, peak: float | None) -> dict:
    """One configuration: load and wrap as the worker does, warm up, time `args.steps` steps."""
    import torch

    from rayft.training.deepspeed_config import deepspeed_config
    from rayft.training.model import build_engine, load_model
    from rayft.training.objectives import to_model_inputs

    train = train_config(method, packing, args.seq_len, use_gpu)
    if use_gpu:
        torch.cuda.reset_peak_memory_stats()
    model = load_model(str(model_dir), train)
    total = args.warmup + args.steps
    engine, _ = build_engine(model, train, deepspeed_config(train, args.micro_batch, use_gpu), 1e-4, 0, total)
    work = batches(train, args.micro_batch, vocab, total, seed=1)
    tokens = width = 0
    for i, batch in enumerate(work):
        if i == args.warmup:
            synchronize(use_gpu)
            started = time.perf_counter()
        step = to_model_inputs(batch) | {"labels": torch.tensor(batch.labels)}  # the supervised step's inputs
        inputs = {k: v.to(engine.device) if hasattr(v, "to") else v for k, v in step.items()}
        loss = engine(**inputs).loss
        engine.backward(loss)
        engine.step()
        if i >= args.warmup:
            tokens += sum(1 for row in batch.input_ids for token in row if token != 0)  # 0 pads
            width += len(batch.input_ids[0])
    synchronize(use_gpu)
    elapsed = time.perf_counter() - started
    per_token = flops_per_token(engine.module, method, width / args.steps)
    result = {
        "method": method,
        "packing": packing,
        "tokens_per_s": tokens / elapsed,
        "step_s": elapsed / args.steps,
        "tokens_per_step": tokens / args.steps,
        "row_width": width / args.steps,
        "loss": float(loss),
        "trainable_params": sum(p.numel() for p in engine.module.parameters() if p.requires_grad),
        "flops_per_token": per_token,
        "mfu": per_token * tokens / elapsed / peak if peak else None,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if use_gpu else None,
    }
    del engine, model
    gc.collect()
    if use_gpu:
        torch.cuda.empty_cache()
    return result


def main(argv: list[str] | None = None) -> dict:
    # setup
    args = parse_args(argv)
    use_gpu = args.device == "cuda"
    args.seq_len = args.seq_len or (2048 if args.size == "1b" else 64)
    args.micro_batch = args.micro_batch or (8 if args.size == "1b" else 2)
    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": os.environ.get("MASTER_PORT", "29517"),
            "RANK": "0",
            "LOCAL_RANK": "0",
            "WORLD_SIZE": "1",
        }
    )  # one DeepSpeed process
    os.environ.setdefault("DS_ACCELERATOR", args.device)  # named, so DeepSpeed prints no detection line
    import torch

    device = torch.cuda.get_device_name(0) if use_gpu else "cpu"
    peak = peak_flops(device, args.peak_tflops)
    vocab = SIZES[args.size][5]
    report = {
        "device": device,
        "torch": torch.__version__,
        "size": args.size,
        "seq_len": args.seq_len,
        "micro_batch": args.micro_batch,
        "steps": args.steps,
        "peak_tflops": peak and peak / 1e12,
        "results": [],
    }

    # run
    with tempfile.TemporaryDirectory(prefix="rayft-gpu-bench-") as scratch:
        model_dir = build_model(args.size, Path(scratch) / "model", use_gpu)
        for method in args.methods.split(","):
            for packing in (False, True):
                try:
                    report["results"].append(measure(model_dir, method, packing, args, use_gpu, vocab, peak))
                except Exception as error:  # one failed configuration must not cost the others
                    report["results"].append(
                        {"method": method, "packing": packing, "error": f"{type(error).__name__}: {error}"[:2000]}
                    )
                print(json.dumps(report["results"][-1]), file=sys.stderr, flush=True)

    # report
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
