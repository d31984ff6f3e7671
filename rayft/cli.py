"""The `rayft` command line: the one place that knows every stage.

Each command parses its arguments, loads the config (failing before any work on a bad field) and
calls one stage's entry point. Stages are imported lazily so `rayft --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys

from rayft.cluster.client import ClusterError
from rayft.cluster.submit import STAGE_COMMANDS
from rayft.config import ConfigError, DataConfig, load_config, parse_data_config
from rayft.registry import Registry, RegistryError, resolve_model_path
from rayft.storage import ArtifactMismatch


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
        "label_json": args.label_json,
    }.items() if v is not None}
    data = parse_data_config(data.model_dump() | overrides, "rayft data prepare")
    inputs = args.inputs or data.inputs
    out = args.out or (str(config.dataset_dir()) if config else None)
    if not out:
        raise ConfigError("data prepare: give --out DIR or a config with data.out")
    # The config's base may be `registry:NAME`; its tokenizer lives in the registered model's folder.
    tokenizer = args.tokenizer or (resolve_model_path(config.model.base, Registry())[0] if config else None)
    template = config.model.chat_template if config else None
    manifest = prepare_dataset(inputs, out, PrepareOptions(data=data, tokenizer=tokenizer, chat_template=template))
    print_manifest(manifest, out)
    return 0


def cmd_train(args) -> int:
    from rayft.training.trainer import train

    result = train(load_config(args.config), resume=args.resume)
    print(f"registered {result['ref']} ({result['kind']}) at {result['artifact_uri']}")
    return 0


def cmd_eval(args) -> int:
    from rayft.eval.evaluate import evaluate
    from rayft.eval.report import print_report

    report = evaluate(load_config(args.config), candidate=args.model, show_progress=not args.no_progress)
    print_report(report)
    return 0


def cmd_promote(args) -> int:
    from rayft.eval.gate import PromotionRefused, print_checks, promote

    try:
        alias, checks = promote(Registry(), args.ref, args.alias, force=args.force, reason=args.reason, actor=_actor())
    except PromotionRefused as refused:
        if args.json:
            print(json.dumps({"promoted": False, "checks": [c.to_dict() for c in refused.checks]}, indent=2))
        else:
            print_checks(args.ref, args.alias, refused.checks)
            print(f"refused: {refused}\n(override with --force --reason \"...\"; the reason is recorded)",
                  file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"promoted": True, "alias": alias.to_dict(), "checks": [c.to_dict() for c in checks]},
                         indent=2))
    else:
        print_checks(args.ref, args.alias, checks)
        forced = " (forced: " + args.reason + ")" if not all(c.passed for c in checks) else ""
        print(f"promoted {args.ref} to {alias.ref}{forced}")
    return 0


def cmd_registry_list(args) -> int:
    from rayft import registry_tables

    registry_tables.list_versions(Registry(), args.name, args.json)
    return 0


def cmd_registry_show(args) -> int:
    from rayft import registry_tables

    registry_tables.show(Registry(), args.ref, args.json)
    return 0


def cmd_registry_alias(args) -> int:
    from rayft import registry_tables

    ref = registry_tables.alias_ref(args.alias)
    targets = registry_tables.parse_targets(args.targets)
    registry = Registry()
    details = None
    if args.force:
        if not (args.reason and args.reason.strip()):
            raise RegistryError("--force needs --reason: say why the gate is bypassed")
        from rayft.eval.gate import gate_checks

        versions = [targets] if isinstance(targets, int) else list(targets)
        checks = {f"{ref.name}:{v}": [c.to_dict() for c in gate_checks(registry.get(f"{ref.name}:{v}"))]
                  for v in versions}
        details = {"forced": True, "gate": checks}
    alias = registry.set_alias(ref.name, ref.alias, targets, reason=args.reason, actor=_actor(), details=details,
                               gated=args.force)
    registry_tables.print_alias(alias, "set", args.json)
    return 0


def cmd_registry_rollback(args) -> int:
    from rayft import registry_tables

    ref = registry_tables.alias_ref(args.alias)
    alias = Registry().rollback(ref.name, ref.alias, reason=args.reason, actor=_actor())
    registry_tables.print_alias(alias, "rolled back", args.json)
    return 0


def cmd_registry_delete(args) -> int:
    version = Registry().delete(args.ref)
    if args.json:
        print(json.dumps(version.to_dict(), indent=2, sort_keys=True))
    else:
        print(f"deleted {version.ref} from the registry; its artifact stays at {version.artifact_uri}")
    return 0


def _actor() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


ADMIN_ACTIONS = ("load", "unload", "adapters")


def cmd_serve(args) -> int:
    if args.target in ADMIN_ACTIONS:
        return cmd_serve_admin(args)
    from rayft.serving.lifecycle import serve_forever

    config = load_config(args.target)
    if args.port:
        config.serve.port = args.port
    serve_forever(config)
    return 0


def cmd_serve_admin(args) -> int:
    from rayft.serving import client

    if args.target != "adapters" and not args.ref:
        raise ConfigError(f"rayft serve {args.target}: give the adapter's registry ref (NAME, NAME:VERSION or NAME:ALIAS)")
    try:
        if args.target == "load":
            print(json.dumps(client.load_adapter(args.ref, args.url, args.api_key)))
        elif args.target == "unload":
            print(json.dumps(client.unload_adapter(args.ref, args.url, args.api_key)))
        else:
            print(json.dumps(client.loaded_adapters(args.url, args.api_key), indent=2))
    except client.AdminError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def cmd_submit(args) -> int:
    from rayft.cluster.jobs import follow_job
    from rayft.cluster.submit import parse_env, print_submission, submit_stage

    job = submit_stage(args.stage, args.config, address=args.address, working_dir=args.working_dir,
                       env=parse_env(args.env), python=args.python, extra=args.extra)
    print_submission(job)
    return follow_job(job.cluster, job.job_id) if args.follow else 0


def cmd_jobs(args) -> int:
    from rayft.cluster import jobs
    from rayft.cluster.client import Cluster

    cluster = Cluster(args.address)
    if args.jobs_command == "list":
        return jobs.list_jobs(cluster, as_json=args.json)
    if args.jobs_command == "status":
        return jobs.show_status(cluster, args.job)
    if args.jobs_command == "logs":
        return jobs.show_logs(cluster, args.job, follow=args.follow)
    return jobs.stop_job(cluster, args.job)


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
    prepare.add_argument("--format", choices=["auto", "messages", "prompt_completion"],
                         help="record format (default auto: told per record); the container comes from each file")
    prepare.add_argument("--label-field")
    prepare.add_argument("--label-regex")
    prepare.add_argument("--label-json", help="dotted path into the last assistant turn parsed as JSON")
    prepare.add_argument("--seed", type=int)
    prepare.set_defaults(func=cmd_data_prepare)

    train = commands.add_parser("train", help="fine-tune on Ray Train + DeepSpeed and register the result")
    train.add_argument("config")
    train.add_argument("--resume", action="store_true", help="continue the latest run of this config")
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser("eval", help="evaluate a registered model against its base")
    evaluate.add_argument("config")
    evaluate.add_argument("--model", help="registry ref to evaluate (default: latest version of the config's name)")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bar (logs of batch jobs)")
    evaluate.set_defaults(func=cmd_eval)

    promotion = commands.add_parser("promote", help="move an alias to a version if its eval passes the gate")
    promotion.add_argument("ref", help="NAME:VERSION")
    promotion.add_argument("--alias", required=True, help="e.g. prod")
    promotion.add_argument("--force", action="store_true", help="promote even if the gate refuses (needs --reason)")
    promotion.add_argument("--reason", help="why; recorded in the alias history")
    promotion.add_argument("--json", action="store_true")
    promotion.set_defaults(func=cmd_promote)

    registry = commands.add_parser("registry", help="the model registry").add_subparsers(dest="registry_command", required=True)
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing = registry.add_parser("list", parents=[as_json], help="list registered versions")
    listing.add_argument("name", nargs="?")
    listing.set_defaults(func=cmd_registry_list)
    show = registry.add_parser("show", parents=[as_json], help="a version with its lineage, or an alias with its history")
    show.add_argument("ref", help="NAME, NAME:VERSION or NAME:ALIAS")
    show.set_defaults(func=cmd_registry_show)
    alias = registry.add_parser("alias", parents=[as_json], help="point an alias at a version, or split traffic "
                                                                 "(no eval gate: refused for gated aliases such as "
                                                                 "prod; see `rayft promote`)")
    alias.add_argument("alias", help="NAME:ALIAS, e.g. support:canary")
    alias.add_argument("targets", nargs="+", help="VERSION, or VERSION=WEIGHT ... for a split (3=90 4=10)")
    alias.add_argument("--reason")
    alias.add_argument("--force", action="store_true", help="move a gated alias (RAYFT_GATED_ALIASES, default prod) "
                                                            "without the gate; needs --reason, records the checks")
    alias.set_defaults(func=cmd_registry_alias)
    rollback = registry.add_parser("rollback", parents=[as_json], help="re-point an alias to its previous targets")
    rollback.add_argument("alias", help="NAME:ALIAS")
    rollback.add_argument("--reason")
    rollback.set_defaults(func=cmd_registry_rollback)
    delete = registry.add_parser("delete", parents=[as_json], help="remove a version (refused while an alias "
                                                                   "points to it)")
    delete.add_argument("ref", help="NAME:VERSION")
    delete.set_defaults(func=cmd_registry_delete)

    serve = commands.add_parser(
        "serve", help="serve the base and its adapters over an OpenAI-compatible API",
        description="rayft serve CONFIG starts the server; rayft serve load|unload REF and rayft serve adapters "
                    "manage adapters of a running server without a restart.")
    serve.add_argument("target", metavar="CONFIG|load|unload|adapters")
    serve.add_argument("ref", nargs="?", help="registry ref of the adapter (load, unload)")
    serve.add_argument("--port", type=int)
    serve.add_argument("--url", help="running server for load/unload/adapters (default $RAYFT_SERVE_URL or "
                                     "http://127.0.0.1:8000)")
    serve.add_argument("--key", "--api-key", dest="api_key",
                       help="admin key for load/unload/adapters (default $RAYFT_ADMIN_KEY, else $RAYFT_API_KEY)")
    serve.set_defaults(func=cmd_serve)

    cluster = argparse.ArgumentParser(add_help=False)
    cluster.add_argument("--address", help="the cluster's Jobs API, e.g. http://HEAD:8265 (default $RAY_ADDRESS, "
                                           "else http://127.0.0.1:8265)")
    submit = commands.add_parser("submit", parents=[cluster], help="run a stage as a Ray job on a cluster")
    submit.add_argument("stage", choices=list(STAGE_COMMANDS))
    submit.add_argument("config")
    submit.add_argument("extra", nargs="*", help="arguments for the stage after `--`, e.g. "
                        "`rayft submit --address URL train C.yaml -- --resume` (submit's options go before STAGE)")
    submit.add_argument("--working-dir", default=".", help="folder uploaded with the job (default: this one)")
    submit.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="job environment variable")
    submit.add_argument("--python", help="the job's interpreter (default: this one for a local head, else python)")
    submit.add_argument("--follow", action="store_true", help="stream the job's output and exit with its status")
    submit.set_defaults(func=cmd_submit)
    jobs_parser = commands.add_parser("jobs", help="follow and control Ray jobs")
    jobs_parser.set_defaults(func=cmd_jobs)
    jobs = jobs_parser.add_subparsers(dest="jobs_command", required=True)
    jobs.add_parser("list", parents=[cluster], help="list jobs").add_argument("--json", action="store_true")
    jobs.add_parser("status", parents=[cluster], help="a job's status (exit 1 FAILED, 3 STOPPED)").add_argument("job")
    logs = jobs.add_parser("logs", parents=[cluster], help="a job's output")
    logs.add_argument("job")
    logs.add_argument("--follow", action="store_true", help="stream until the job ends, exit with its status")
    jobs.add_parser("stop", parents=[cluster], help="stop a job and wait until it has ended").add_argument("job")

    quickstart = commands.add_parser("quickstart", help="run the whole path on the embedded sample")
    quickstart.add_argument("--port", type=int, default=8000)
    quickstart.set_defaults(func=cmd_quickstart)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `rayft` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, RegistryError, FileNotFoundError, ClusterError, ArtifactMismatch) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
