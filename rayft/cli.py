"""The `rayft` command line: the one place that knows every stage (with `commands.py`, what each
command does). Commands that start Ray or load models keep a quiet console (`console.py`).
"""

from __future__ import annotations

import argparse
import sys
import traceback

from rayft import commands
from rayft.cluster.client import ClusterError
from rayft.cluster.submit import STAGE_COMMANDS
from rayft.config import ConfigError
from rayft.registry import RegistryError
from rayft.storage import ArtifactMismatch


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rayft", description="Fine-tune and serve LLM adapters on Ray.")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show what libraries and Ray print (by default it goes to a log file)",
    )
    subcommands = parser.add_subparsers(dest="command", required=True)

    model = subcommands.add_parser("model", help="model utilities").add_subparsers(dest="model_command", required=True)
    tiny = model.add_parser("tiny", help="build a tiny random Llama model with a trained tokenizer")
    tiny.add_argument("--out", required=True)
    tiny.add_argument("--size", default="test", choices=["test", "small", "bench"])
    tiny.add_argument("--vocab-size", type=int, default=2048)
    tiny.set_defaults(func=commands.cmd_model_tiny)

    data = subcommands.add_parser("data", help="dataset preparation").add_subparsers(dest="data_command", required=True)
    sample = data.add_parser("sample", help="write a synthetic sample dataset")
    sample.add_argument("--out", required=True)
    sample.add_argument("--kind", default="tickets", choices=["tickets", "general", "tools", "preference"])
    sample.add_argument("--n", type=int, default=2000)
    sample.add_argument("--seed", type=int, default=0)
    sample.set_defaults(func=commands.cmd_data_sample)
    prepare = data.add_parser("prepare", help="validate, clean and split records into a versioned dataset")
    prepare.add_argument("inputs", nargs="*", help="input files (default: data.inputs from --config)")
    prepare.add_argument("--out", help="output folder (default: the config's dataset folder)")
    prepare.add_argument("--config", help="a rayft config; its data section and model tokenizer are used")
    prepare.add_argument("--tokenizer", help="tokenizer (model folder or hub id) for token limits and stats")
    prepare.add_argument(
        "--format",
        choices=["auto", "messages", "prompt_completion", "preference"],
        help="record format (default auto: told per record); the container comes from each file",
    )
    prepare.add_argument("--label-field")
    prepare.add_argument("--label-regex")
    prepare.add_argument("--label-json", help="dotted path into the last assistant turn parsed as JSON")
    prepare.add_argument("--seed", type=int)
    prepare.set_defaults(func=commands.cmd_data_prepare)

    train = subcommands.add_parser("train", help="fine-tune on Ray Train + DeepSpeed and register the result")
    train.add_argument("config")
    train.add_argument("--resume", action="store_true", help="continue the latest run of this config")
    train.set_defaults(func=commands.cmd_train)

    evaluate = subcommands.add_parser("eval", help="evaluate a registered model against its base")
    evaluate.add_argument("config")
    evaluate.add_argument("--model", help="registry ref to evaluate (default: latest version of the config's name)")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bar (logs of batch jobs)")
    evaluate.set_defaults(func=commands.cmd_eval)

    promotion = subcommands.add_parser("promote", help="move an alias to a version if its eval passes the gate")
    promotion.add_argument("ref", help="NAME:VERSION")
    promotion.add_argument("--alias", required=True, help="e.g. prod")
    promotion.add_argument("--force", action="store_true", help="promote even if the gate refuses (needs --reason)")
    promotion.add_argument("--reason", help="why; recorded in the alias history")
    promotion.add_argument("--json", action="store_true")
    promotion.set_defaults(func=commands.cmd_promote)

    quantize = subcommands.add_parser(
        "quantize", help="store a registered full model in int8 or int4 (llm-compressor) as a new version"
    )
    quantize.add_argument("ref", help="the source: NAME:VERSION (or NAME:ALIAS) of a full model")
    quantize.add_argument("--scheme", required=True, choices=["w8a8", "w4a16"])
    quantize.add_argument(
        "--method", default="gptq", choices=["gptq", "rtn"], help="gptq: calibrated (default); rtn: round to nearest"
    )
    quantize.add_argument(
        "--calibration", help="prepared dataset folder whose train split calibrates gptq (default: --config's dataset)"
    )
    quantize.add_argument("--samples", type=int, default=256, help="calibration records (default 256)")
    quantize.add_argument("--name", help="registry name of the result (default SOURCE-SCHEME)")
    quantize.add_argument("--out", help="folder or URI for the result (default under $RAYFT_HOME/quantized)")
    quantize.add_argument("--config", help="a rayft config: its dataset calibrates (what `rayft submit` passes)")
    quantize.set_defaults(func=commands.cmd_quantize)

    registry = subcommands.add_parser("registry", help="the model registry").add_subparsers(
        dest="registry_command", required=True
    )
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing = registry.add_parser("list", parents=[as_json], help="list registered versions")
    listing.add_argument("name", nargs="?")
    listing.set_defaults(func=commands.cmd_registry_list)
    show = registry.add_parser(
        "show", parents=[as_json], help="a version with its lineage, or an alias with its history"
    )
    show.add_argument("ref", help="NAME, NAME:VERSION or NAME:ALIAS")
    show.set_defaults(func=commands.cmd_registry_show)
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
    alias.set_defaults(func=commands.cmd_registry_alias)
    rollback = registry.add_parser("rollback", parents=[as_json], help="re-point an alias to its previous targets")
    rollback.add_argument("alias", help="NAME:ALIAS")
    rollback.add_argument("--reason")
    rollback.set_defaults(func=commands.cmd_registry_rollback)
    delete = registry.add_parser(
        "delete", parents=[as_json], help="remove a version (refused while an alias points to it)"
    )
    delete.add_argument("ref", help="NAME:VERSION")
    delete.set_defaults(func=commands.cmd_registry_delete)

    serve = subcommands.add_parser(
        "serve",
        help="serve the base and its adapters over an OpenAI-compatible API (SIGTERM or Ctrl-C drains, then stops)",
    )
    serve.add_argument("config")
    serve.add_argument("--port", type=int)
    serve.set_defaults(func=commands.cmd_serve)

    server = argparse.ArgumentParser(add_help=False)
    server.add_argument("--url", help="the running server (default $RAYFT_SERVE_URL or http://127.0.0.1:8000)")
    server.add_argument(
        "--key", "--api-key", dest="api_key", help="admin key (default $RAYFT_ADMIN_KEY, else $RAYFT_API_KEY)"
    )
    adapters = subcommands.add_parser(
        "adapters", help="a running server's adapters: list, load, unload (no restart)"
    ).add_subparsers(dest="adapters_command", required=True)
    listing = adapters.add_parser(
        "list", parents=[server], help="adapters by tier (engine, host, disk) and replica, least recently used first"
    )
    listing.add_argument("--json", action="store_true", help="the server's whole answer as JSON")
    listing.set_defaults(func=commands.cmd_adapters)
    for action, words in (
        ("load", "load an adapter now (verified against the registry)"),
        ("unload", "drop an adapter from the engine once its requests finish"),
    ):
        command = adapters.add_parser(action, parents=[server], help=words)
        command.add_argument("ref", help="registry ref: NAME, NAME:VERSION or NAME:ALIAS")
        command.set_defaults(func=commands.cmd_adapters)

    cluster = argparse.ArgumentParser(add_help=False)
    cluster.add_argument(
        "--address",
        help="the cluster's Jobs API, e.g. http://HEAD:8265 (default $RAY_ADDRESS, else http://127.0.0.1:8265)",
    )
    submit = subcommands.add_parser("submit", parents=[cluster], help="run a stage as a Ray job on a cluster")
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
    submit.set_defaults(func=commands.cmd_submit)
    jobs_parser = subcommands.add_parser("jobs", help="follow and control Ray jobs")
    jobs_parser.set_defaults(func=commands.cmd_jobs)
    jobs = jobs_parser.add_subparsers(dest="jobs_command", required=True)
    jobs.add_parser("list", parents=[cluster], help="list jobs").add_argument("--json", action="store_true")
    jobs.add_parser("status", parents=[cluster], help="a job's status (exit 1 FAILED, 3 STOPPED)").add_argument("job")
    logs = jobs.add_parser("logs", parents=[cluster], help="a job's output")
    logs.add_argument("job")
    logs.add_argument("--follow", action="store_true", help="stream until the job ends, exit with its status")
    jobs.add_parser("stop", parents=[cluster], help="stop a job and wait until it has ended").add_argument("job")

    review = subcommands.add_parser("review", help="human review: items, the review page, the report").add_subparsers(
        dest="review_command", required=True
    )
    prepare_review = review.add_parser("prepare", help="add review items for a version")
    prepare_review.add_argument("ref", help="NAME:VERSION")
    prepare_review.add_argument(
        "--source",
        choices=["test", "traffic"],
        default="test",
        help="test: its eval's answers beside another version's, judged in pairs (default); "
        "traffic: its sampled answers, rated 1-5",
    )
    prepare_review.add_argument(
        "--against", help="the other side: an alias the eval compared (default), base or few_shot"
    )
    prepare_review.add_argument("--limit", type=int, help="at most this many items")
    prepare_review.add_argument("--config", help="a rayft config (for serve.traffic.path)")
    prepare_review.set_defaults(func=commands.cmd_review_prepare)
    serve_review = review.add_parser("serve", help="serve the review page (reviewer keys from the config)")
    serve_review.add_argument("config")
    serve_review.add_argument("--port", type=int)
    serve_review.add_argument("--name", help="only items of this model name")
    serve_review.add_argument("--project", help="only items of this project (serve.projects)")
    serve_review.set_defaults(func=commands.cmd_review_serve)
    review_report = review.add_parser(
        "report", parents=[as_json], help="win rate with its interval, reviewers, agreement; attached to the eval"
    )
    review_report.add_argument("ref", help="NAME:VERSION")
    review_report.set_defaults(func=commands.cmd_review_report)
    export = review.add_parser(
        "export-preferences",
        help="reviewers' pairwise judgments as a preference file in OpenAI's DPO format (one pair per item)",
    )
    export.add_argument("ref", help="NAME:VERSION")
    export.add_argument("--out", required=True, help="the JSONL file to write")
    export.set_defaults(func=commands.cmd_review_export_preferences)

    drift = subcommands.add_parser(
        "drift", parents=[as_json], help="compare recent traffic with the training data; scores on /metrics"
    )
    drift.add_argument("ref", help="NAME:ALIAS (each version it serves) or NAME:VERSION")
    drift.add_argument("--config", help="a rayft config (drift settings, serve.traffic.path)")
    drift.set_defaults(func=commands.cmd_drift)

    estimate = subcommands.add_parser(
        "estimate", help="steps, tokens, time and cost of training CONFIG on its data.inputs, before any GPU is taken"
    )
    estimate.add_argument("config")
    estimate.add_argument("--json", action="store_true")
    estimate.set_defaults(func=commands.cmd_estimate)
    quickstart = subcommands.add_parser("quickstart", help="run the whole path on the embedded sample")
    quickstart.add_argument("--port", type=int, default=8000)
    quickstart.add_argument(
        "--with",
        dest="extras",
        action="append",
        choices=["tools", "dpo"],
        default=[],
        help="also a tool-calling adapter (tools), or DPO continuing the ticket adapter on preference pairs (dpo)",
    )
    quickstart.set_defaults(func=commands.cmd_quickstart)
    return parser


# Commands that start Ray or load torch and vLLM: their console is kept quiet (rayft.console).
NOISY_COMMANDS = ("data", "model", "train", "quantize", "eval", "serve", "quickstart", "drift")


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

    if args.command == "serve":  # from its first line on, SIGTERM stops `rayft serve` cleanly
        from rayft.serving.stop_signals import StopSignals

        args.stop = StopSignals()
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
