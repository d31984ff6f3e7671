"""The `rayft` command line: the one place that knows every stage.

Each command parses its arguments, loads the config (failing before any work on a bad field) and
calls one stage's entry point. Stages are imported lazily so `rayft --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback

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
    overrides = {
        k: v
        for k, v in {
            "seed": args.seed,
            "label_field": args.label_field,
            "label_regex": args.label_regex,
            "format": args.format,
            "label_json": args.label_json,
        }.items()
        if v is not None
    }
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

    version = train(load_config(args.config), resume=args.resume)
    print(f"registered {version.ref} ({version.kind}) at {version.artifact_uri}")
    return 0


def cmd_eval(args) -> int:
    from rayft.eval.evaluate import evaluate
    from rayft.eval.report import print_report

    report = evaluate(load_config(args.config), candidate=args.model, show_progress=not args.no_progress)
    print_report(report)
    return 0


def cmd_promote(args) -> int:
    from rayft.eval.promotion import PromotionRefused, promote
    from rayft.eval.report import print_checks

    try:
        alias, checks = promote(Registry(), args.ref, args.alias, force=args.force, reason=args.reason, actor=_actor())
    except PromotionRefused as refused:
        if args.json:
            print(json.dumps({"promoted": False, "checks": [c.model_dump() for c in refused.checks]}, indent=2))
        else:
            print_checks(args.ref, args.alias, refused.checks)
            print(
                f'refused: {refused}\n(override with --force --reason "..."; the reason is recorded)', file=sys.stderr
            )
        return 1
    if args.json:
        print(
            json.dumps(
                {"promoted": True, "alias": alias.to_dict(), "checks": [c.model_dump() for c in checks]}, indent=2
            )
        )
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
        from rayft.eval.promotion import stored_report

        versions = [registry.get(f"{ref.name}:{v}") for v in ([targets] if isinstance(targets, int) else targets)]
        checks = {v.ref: [c.model_dump() for c in gate_checks(v, stored_report(v))] for v in versions}
        details = {"forced": True, "gate": checks}
    alias = registry.set_alias(
        ref.name, ref.alias, targets, reason=args.reason, actor=_actor(), details=details, gated=args.force
    )
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


def cmd_serve(args) -> int:
    from rayft.serving.lifecycle import serve_forever

    config = load_config(args.config)
    if args.port:
        config.serve.port = args.port
    serve_forever(config)
    return 0


def cmd_adapters(args) -> int:
    """`rayft adapters list|load|unload`: a running server's adapters, without a restart."""
    from rayft.serving import client

    try:
        if args.adapters_command == "load":
            print(json.dumps(client.load_adapter(args.ref, args.url, args.api_key)))
        elif args.adapters_command == "unload":
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

    job = submit_stage(
        args.stage,
        args.config,
        address=args.address,
        working_dir=args.working_dir,
        env=parse_env(args.env),
        python=args.python,
        extra=args.extra,
    )
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
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show what libraries and Ray print (by default it goes to a log file)",
    )
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
    prepare.add_argument(
        "--format",
        choices=["auto", "messages", "prompt_completion"],
        help="record format (default auto: told per record); the container comes from each file",
    )
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

    registry = commands.add_parser("registry", help="the model registry").add_subparsers(
        dest="registry_command", required=True
    )
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing = registry.add_parser("list", parents=[as_json], help="list registered versions")
    listing.add_argument("name", nargs="?")
    listing.set_defaults(func=cmd_registry_list)
    show = registry.add_parser(
        "show", parents=[as_json], help="a version with its lineage, or an alias with its history"
    )
    show.add_argument("ref", help="NAME, NAME:VERSION or NAME:ALIAS")
    show.set_defaults(func=cmd_registry_show)
    alias = registry.add_parser(
        "alias",
        parents=[as_json],
        help="point an alias at a version, or split traffic "
        "(no eval gate: refused for gated aliases such as "
        "prod; see `rayft promote`)",
    )
    alias.add_argument("alias", help="NAME:ALIAS, e.g. support:canary")
    alias.add_argument("targets", nargs="+", help="VERSION, or VERSION=WEIGHT ... for a split (3=90 4=10)")
    alias.add_argument("--reason")
    alias.add_argument(
        "--force",
        action="store_true",
        help="move a gated alias (RAYFT_GATED_ALIASES, default prod) "
        "without the gate; needs --reason, records the checks",
    )
    alias.set_defaults(func=cmd_registry_alias)
    rollback = registry.add_parser("rollback", parents=[as_json], help="re-point an alias to its previous targets")
    rollback.add_argument("alias", help="NAME:ALIAS")
    rollback.add_argument("--reason")
    rollback.set_defaults(func=cmd_registry_rollback)
    delete = registry.add_parser(
        "delete", parents=[as_json], help="remove a version (refused while an alias points to it)"
    )
    delete.add_argument("ref", help="NAME:VERSION")
    delete.set_defaults(func=cmd_registry_delete)

    serve = commands.add_parser(
        "serve",
        help="serve the base and its adapters over an OpenAI-compatible API (SIGTERM or Ctrl-C drains, then stops)",
    )
    serve.add_argument("config")
    serve.add_argument("--port", type=int)
    serve.set_defaults(func=cmd_serve)

    server = argparse.ArgumentParser(add_help=False)
    server.add_argument("--url", help="the running server (default $RAYFT_SERVE_URL or http://127.0.0.1:8000)")
    server.add_argument(
        "--key", "--api-key", dest="api_key", help="admin key (default $RAYFT_ADMIN_KEY, else $RAYFT_API_KEY)"
    )
    adapters = commands.add_parser(
        "adapters", help="a running server's adapters: list, load, unload (no restart)"
    ).add_subparsers(dest="adapters_command", required=True)
    adapters.add_parser("list", parents=[server], help="loaded adapters, least recently used first").set_defaults(
        func=cmd_adapters
    )
    for action, words in (
        ("load", "load an adapter now (verified against the registry)"),
        ("unload", "drop an adapter from the engine once its requests finish"),
    ):
        command = adapters.add_parser(action, parents=[server], help=words)
        command.add_argument("ref", help="registry ref: NAME, NAME:VERSION or NAME:ALIAS")
        command.set_defaults(func=cmd_adapters)

    cluster = argparse.ArgumentParser(add_help=False)
    cluster.add_argument(
        "--address",
        help="the cluster's Jobs API, e.g. http://HEAD:8265 (default $RAY_ADDRESS, else http://127.0.0.1:8265)",
    )
    submit = commands.add_parser("submit", parents=[cluster], help="run a stage as a Ray job on a cluster")
    submit.add_argument("stage", choices=list(STAGE_COMMANDS))
    submit.add_argument("config")
    submit.add_argument(
        "extra",
        nargs="*",
        help="arguments for the stage after `--`, e.g. "
        "`rayft submit --address URL train C.yaml -- --resume` (submit's options go before STAGE)",
    )
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


# Commands that start Ray or load torch and vLLM: their console is kept quiet (rayft.console).
NOISY_COMMANDS = ("data", "model", "train", "eval", "serve", "quickstart")


def execute(args, errors=None) -> int:
    """Run a parsed command; a refusal is one line on `errors` (default stderr) and exit code 2."""
    try:
        return args.func(args)
    except (ConfigError, RegistryError, FileNotFoundError, ClusterError, ArtifactMismatch) as error:
        print(f"error: {error}", file=errors or sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` and run the command, printing everything (what tests call)."""
    return execute(build_parser().parse_args(argv))


def run() -> int:
    """The `rayft` console script: a command that starts Ray or loads vLLM keeps its console to its
    own lines, progress bars and summary, and sends what libraries and Ray print to a log file whose
    path it prints first (`rayft.console`); `-v` shows everything."""
    args = build_parser().parse_args()
    if args.verbose or args.command not in NOISY_COMMANDS:
        return execute(args)
    from rayft.console import quiet

    log, terminal = quiet(args.command)
    print(f"log: {log}", flush=True)
    try:
        return execute(args, errors=terminal)
    except Exception as error:  # a failure we did not foresee: its traceback is in the log, named here
        traceback.print_exc()
        print(f"error: {type(error).__name__}: {error}\n  (traceback in {log})", file=terminal)
        return 1


if __name__ == "__main__":
    sys.exit(run())
