"""The `rayft` command line: the one place that knows every stage.

Each command parses its arguments, loads the config (failing before any work on a bad field) and
calls one stage's entry point. Stages are imported lazily so `rayft --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys

from rayft.config import ConfigError, DataConfig, load_config
from rayft.registry import Registry, RegistryError


def cmd_model_tiny(args) -> int:
    from rayft.data.samples import tokenizer_corpus
    from rayft.tiny import build_tiny_model

    path = build_tiny_model(args.out, tokenizer_corpus(), size=args.size, vocab_size=args.vocab_size)
    print(f"tiny {args.size} model written to {path}")
    return 0


def cmd_data_sample(args) -> int:
    from rayft.data import samples

    if args.kind == "tickets":
        path = samples.write_support_tickets(args.out, n=args.n, seed=args.seed)
    else:
        path = samples.write_jsonl(samples.general_chat(args.n, args.seed), args.out)
    print(f"{args.kind} sample written to {path}")
    return 0


def cmd_data_prepare(args) -> int:
    from rayft.data.prepare import PrepareOptions, prepare_dataset
    from rayft.data.report import print_manifest

    config = load_config(args.config) if args.config else None
    data = config.data if config else DataConfig()
    overrides = {k: v for k, v in {
        "seed": args.seed, "label_field": args.label_field, "label_regex": args.label_regex, "format": args.format,
    }.items() if v is not None}
    data = DataConfig.model_validate(data.model_dump() | overrides)
    inputs = args.inputs or data.inputs
    out = args.out or (str(config.dataset_dir()) if config else None)
    if not out:
        raise ConfigError("data prepare: give --out DIR or a config with data.out")
    tokenizer = args.tokenizer or (config.model.base if config else None)
    manifest = prepare_dataset(inputs, out, PrepareOptions(data=data, tokenizer=tokenizer))
    print_manifest(manifest, out)
    return 0


def cmd_train(args) -> int:
    from rayft.training.trainer import train

    result = train(load_config(args.config), resume=args.resume)
    print(f"registered {result['ref']} ({result['kind']}) at {result['artifact_uri']}")
    return 0


def cmd_eval(args) -> int:
    from rayft.eval.evaluate import evaluate, print_report

    report = evaluate(load_config(args.config), candidate=args.model)
    print_report(report)
    return 0


def cmd_registry_list(args) -> int:
    versions = Registry().list(args.name)
    if args.json:
        print(json.dumps([v.to_dict() for v in versions], indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table("ref", "kind", "base model", "dataset", "metrics", "artifact")
    for v in versions:
        metrics = ", ".join(f"{k}={v.metrics[k]:.4g}" for k in sorted(v.metrics) if isinstance(v.metrics[k], float))
        table.add_row(v.ref, v.kind, v.base_model, (v.dataset_hash or "")[:12], metrics, v.artifact_uri)
    Console().print(table)
    return 0


def cmd_serve(args) -> int:
    from rayft.serving.app import serve_forever

    config = load_config(args.config)
    if args.port:
        config.serve.port = args.port
    serve_forever(config)
    return 0


def cmd_quickstart(args) -> int:
    from rayft.quickstart import run_quickstart

    run_quickstart(port=args.port)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rayft", description="Fine-tune and serve LLM adapters on Ray.")
    commands = parser.add_subparsers(dest="command", required=True)

    model = commands.add_parser("model", help="model utilities").add_subparsers(dest="model_command", required=True)
    tiny = model.add_parser("tiny", help="build a tiny random Llama model with a trained tokenizer")
    tiny.add_argument("--out", required=True)
    tiny.add_argument("--size", default="test", choices=["test", "small", "bench"])
    tiny.add_argument("--vocab-size", type=int, default=2048)
    tiny.set_defaults(func=cmd_model_tiny)

    data = commands.add_parser("data", help="dataset preparation").add_subparsers(dest="data_command", required=True)
    sample = data.add_parser("sample", help="write a synthetic sample dataset")
    sample.add_argument("--out", required=True)
    sample.add_argument("--kind", default="tickets", choices=["tickets", "general"])
    sample.add_argument("--n", type=int, default=2000)
    sample.add_argument("--seed", type=int, default=0)
    sample.set_defaults(func=cmd_data_sample)
    prepare = data.add_parser("prepare", help="validate, clean and split records into a versioned dataset")
    prepare.add_argument("inputs", nargs="*", help="input files (default: data.inputs from --config)")
    prepare.add_argument("--out", help="output folder (default: the config's dataset folder)")
    prepare.add_argument("--config", help="a rayft config; its data section and model tokenizer are used")
    prepare.add_argument("--tokenizer", help="tokenizer (model folder or hub id) for token limits and stats")
    prepare.add_argument("--format", choices=["auto", "messages", "prompt_completion", "parquet", "hf"])
    prepare.add_argument("--label-field")
    prepare.add_argument("--label-regex")
    prepare.add_argument("--seed", type=int)
    prepare.set_defaults(func=cmd_data_prepare)

    train = commands.add_parser("train", help="fine-tune on Ray Train + DeepSpeed and register the result")
    train.add_argument("config")
    train.add_argument("--resume", action="store_true", help="continue the latest run of this config")
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser("eval", help="evaluate a registered model against its base")
    evaluate.add_argument("config")
    evaluate.add_argument("--model", help="registry ref to evaluate (default: latest version of the config's name)")
    evaluate.set_defaults(func=cmd_eval)

    registry = commands.add_parser("registry", help="the model registry").add_subparsers(dest="registry_command", required=True)
    listing = registry.add_parser("list", help="list registered versions")
    listing.add_argument("name", nargs="?")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_registry_list)

    serve = commands.add_parser("serve", help="serve the base and its adapters over an OpenAI-compatible API")
    serve.add_argument("config")
    serve.add_argument("--port", type=int)
    serve.set_defaults(func=cmd_serve)

    quickstart = commands.add_parser("quickstart", help="run the whole path on the embedded sample")
    quickstart.add_argument("--port", type=int, default=8000)
    quickstart.set_defaults(func=cmd_quickstart)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `rayft` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, RegistryError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
