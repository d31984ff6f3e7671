"""Shared fixtures: a tiny offline model, one local Ray cluster per session, prepared sample data,
the shared Serve app (`serving_app.py`).

Only one Ray cluster runs at a time: `ray_cluster` starts it once for the session; modules that run
their own (a `ray start` head, several nodes: OWN_RAY_HEAD = True, or marked multinode) run last,
and stop it first (`session_ray.stop_session_ray`). Tests are marked `ray` / `vllm` by what they use
(the `ray_cluster` fixture, directly or through another; the shared Serve app), so `make test-fast`
keeps every pure test of any module. Every test that starts Ray, Serve or vLLM runs under
pytest-timeout (pyproject sets a default; heavy tests set their own).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = ["serving_app"]


def run_order(item) -> tuple[int, bool]:
    """0: tests that start nothing; 1: tests on the session's Ray, those of the shared Serve app last
    (nothing after them replaces or stops it); 2: modules with their own head; 3: several nodes. The
    session's Ray then starts once, and stops once."""
    if item.get_closest_marker("multinode"):
        return 3, False
    if getattr(item.module, "OWN_RAY_HEAD", False):
        return 2, False
    on_ray = bool(item.get_closest_marker("ray") or item.get_closest_marker("vllm"))
    return int(on_ray), on_ray and "server" in item.fixturenames


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        if "ray_cluster" in item.fixturenames:
            item.add_marker(pytest.mark.ray)
        if "server" in item.fixturenames and not getattr(item.module, "OWN_RAY_HEAD", False):
            item.add_marker(pytest.mark.vllm)
    items.sort(key=run_order)  # stable: each group keeps the files' order


@pytest.fixture(scope="session", autouse=True)
def rayft_home(tmp_path_factory) -> Path:
    """A fresh RAYFT_HOME for the whole session (registry, datasets, runs)."""
    home = tmp_path_factory.mktemp("rayft_home")
    os.environ["RAYFT_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A tiny random Llama model with its trained tokenizer, saved like a hub model."""
    from rayft.data.samples import tokenizer_corpus
    from rayft.tiny import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("models") / "tiny", tokenizer_corpus(), size="test"))


@pytest.fixture(scope="session")
def ray_cluster():
    """The session's local Ray cluster (started on first use, stopped at the end)."""
    import ray

    from rayft.runtime import ensure_ray

    ensure_ray()
    yield ray
    from session_ray import stop_session_ray

    stop_session_ray()


@pytest.fixture(autouse=True)
def _ray_cluster_is_up(request):
    """Restart the session's Ray for tests that use it after the Jobs tests shut it down (those run
    their own `ray start` head instead, and say so with OWN_RAY_HEAD = True in their module)."""
    if "ray_cluster" in request.fixturenames and not getattr(request.module, "OWN_RAY_HEAD", False):
        from rayft.runtime import ensure_ray

        ensure_ray()


@pytest.fixture(scope="session")
def tickets_file(tmp_path_factory) -> Path:
    """The support-ticket sample (with its planted malformed lines), 600 records."""
    from rayft.data.samples import write_support_tickets

    return write_support_tickets(tmp_path_factory.mktemp("data") / "tickets.jsonl", n=600, seed=3)


@pytest.fixture(scope="session")
def tickets_dataset(ray_cluster, tickets_file, tiny_model, tmp_path_factory) -> Path:
    """The ticket sample prepared by `rayft data prepare` (stratified by category)."""
    from rayft.config import DataConfig
    from rayft.data.prepare import PrepareOptions, prepare_dataset

    out = tmp_path_factory.mktemp("datasets") / "tickets"
    options = PrepareOptions(DataConfig(label_regex=r"Category:\s*(\w+)", max_tokens=256), tokenizer=tiny_model)
    prepare_dataset([str(tickets_file)], out, options)
    return out


def write_config(path: Path, data: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def lora_train_config(base: str, dataset: Path, name: str, **train) -> dict:
    """A small LoRA run on the ticket sample: 2 workers, ZeRO-2, a few steps."""
    settings = {
        "method": "lora",
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "num_workers": 2,
        "epochs": 1,
        "max_steps": 16,
        "batch_size": 8,
        "learning_rate": 1e-2,
        "max_seq_len": 256,
        "eval_every": 8,
        "checkpoint_every": 8,
        "warmup_ratio": 0.0,
    }
    return {
        "name": name,
        "model": {"base": base},
        "data": {"out": str(dataset)},
        "train": settings | train,
        "eval": {"limit": 24, "max_new_tokens": 8},
    }


@pytest.fixture(scope="session")
def trained_adapter(ray_cluster, tiny_model, tickets_dataset, tmp_path_factory) -> dict:
    """A LoRA adapter trained by `rayft train` on the ticket sample, as registered."""
    from rayft.config import parse_config
    from rayft.training.trainer import train

    return train(parse_config(lora_train_config(tiny_model, tickets_dataset, "support")))


@pytest.fixture(scope="session")
def preference_dataset(ray_cluster, tiny_model, tmp_path_factory) -> Path:
    """The preference sample (OpenAI's DPO format, with its planted bad lines) prepared by `rayft
    data prepare`: ticket prompts, the right triage preferred over a wrong one."""
    from rayft.config import DataConfig
    from rayft.data.preference_samples import write_preference_pairs
    from rayft.data.prepare import PrepareOptions, prepare_dataset

    folder = tmp_path_factory.mktemp("preference")
    path = write_preference_pairs(folder / "pairs.jsonl", 240, seed=2)
    data = DataConfig(split={"train": 0.8, "val": 0.1, "test": 0.1})
    prepare_dataset([str(path)], folder / "ds", PrepareOptions(data, tokenizer=tiny_model), show_progress=False)
    return folder / "ds"


@pytest.fixture(scope="session")
def tool_dataset(ray_cluster, tiny_model, tmp_path_factory) -> Path:
    """The function-calling sample (OpenAI's format, with its planted bad lines) prepared by `rayft
    data prepare`, stratified on the called tool."""
    from rayft.config import DataConfig
    from rayft.data.prepare import PrepareOptions, prepare_dataset
    from rayft.data.tool_samples import write_tool_calls

    folder = tmp_path_factory.mktemp("tools")
    path = write_tool_calls(folder / "tools.jsonl", 400, seed=1)
    data = DataConfig(max_tokens=1024, stratify_by="called_tool", near_dup_threshold=None)
    prepare_dataset([str(path)], folder / "ds", PrepareOptions(data, tokenizer=tiny_model), show_progress=False)
    return folder / "ds"


def tool_train_config(base: str, dataset: Path, name: str) -> dict:
    """A LoRA on the function-calling sample: enough steps for the tiny model to write calls."""
    config = lora_train_config(
        base,
        dataset,
        name,
        max_steps=200,
        epochs=30,
        batch_size=16,
        max_seq_len=512,
        eval_every=200,
        checkpoint_every=200,
    )
    eval_settings = {"task": "tool_call", "limit": 30, "few_shot": 0, "forgetting": False, "perplexity": False}
    return config | {"eval": eval_settings | {"max_new_tokens": 64}, "serve": {"max_model_len": 1024}}


@pytest.fixture(scope="session")
def tool_adapter(ray_cluster, tiny_model, tool_dataset):
    """A LoRA adapter trained by `rayft train` on the function-calling sample, as registered."""
    from rayft.config import parse_config
    from rayft.training.trainer import train

    return train(parse_config(tool_train_config(tiny_model, tool_dataset, "tools")), show_progress=False)
