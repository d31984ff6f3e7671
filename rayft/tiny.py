"""Tiny Llama-architecture models built offline, for tests and the quickstart.

There is no model hub here, so a model is built from a config (random init) with a byte-level BPE
tokenizer trained on a small corpus, and saved with `save_pretrained`. Everything downstream loads
it with the ordinary `from_pretrained(path)`, exactly as it would load a hub model.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

# ChatML-style template. `{% generation %}` marks assistant text for transformers'
# `return_assistant_tokens_mask`; rayft's own masking does not depend on it.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}"
    "{{ message['content'] + '<|im_end|>' }}"
    "{% endgeneration %}{% else %}"
    "{{ message['content'] + '<|im_end|>' }}"
    "{% endif %}{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|im_start|>", "<|im_end|>", "<|unk|>"]

SIZES = {
    # name: hidden, intermediate, layers, heads, kv heads. vLLM's CPU attention needs head_dim >= 32.
    "test": (64, 176, 2, 2, 1),
    "small": (256, 688, 4, 4, 4),
    "bench": (512, 1376, 8, 8, 8),
}


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 2048):
    """A byte-level BPE tokenizer trained on `corpus`, wrapped for transformers with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<|unk|>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|bos|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token="<|unk|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "left"
    return tokenizer


def build_tiny_model(
    out_dir: str | Path,
    corpus: Iterable[str],
    size: str = "test",
    vocab_size: int = 2048,
    max_positions: int = 1024,
    seed: int = 0,
) -> Path:
    """Build and save a randomly initialised Llama model of `size` with its tokenizer in `out_dir`."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    if size not in SIZES:
        raise ValueError(f"unknown tiny model size {size!r}; choose one of {sorted(SIZES)}")
    hidden, intermediate, layers, heads, kv_heads = SIZES[size]
    tokenizer = train_tokenizer(corpus, vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def random_adapter(
    base: str | Path,
    out_dir: str | Path,
    seed: int,
    rank: int = 8,
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj"),
) -> str:
    """A LoRA adapter with random (non-zero) weights on `targets`, saved with peft: distinct
    adapters that really change the output, for tests and benchmarks."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(
            r=rank, lora_alpha=2 * rank, target_modules=list(targets), init_lora_weights=False, task_type="CAUSAL_LM"
        ),
    )
    model.save_pretrained(out_dir)
    return str(out_dir)
