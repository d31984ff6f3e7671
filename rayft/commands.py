"""What each `rayft` command does once its arguments are parsed (`cli.py` parses them): load the
config, failing before any work on a bad field, and call one stage's entry point, imported lazily so
`rayft --help` stays fast.
"""

from __future__ import annotations

import json
import sys

from rayft.config import ConfigError, DataConfig, load_config, parse_data_config
from rayft.registry import Registry, RegistryError, resolve_model_path


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
    elif args.kind == "tools":  # OpenAI's function-calling format
        from rayft.data.tool_samples import write_tool_calls

        path = write_tool_calls(args.out, n=args.n, seed=args.seed)
    elif args.kind == "preference":  # OpenAI's DPO format
        from rayft.data.preference_samples import write_preference_pairs

        path = write_preference_pairs(args.out, n=args.n, seed=args.seed)
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


def cmd_quantize(args) -> int:
    from rayft.training.quantize import QuantizeRequest, print_result, quantize

    if args.samples < 1:
        raise ConfigError("--samples: give at least 1 calibration record")
    calibration = args.calibration or (load_config(args.config).dataset_dir() if args.config else None)
    request = QuantizeRequest(
        args.ref, args.scheme, args.method, calibration, args.samples, name=args.name, out=args.out
    )
    print_result(quantize(request))
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
    from rayft.eval.review_report import headline, summarize
    from rayft.feedback import FeedbackStore

    registry, extra = Registry(), {}
    if not args.ref.count(":") or args.ref.split(":")[1].isdigit():  # a version: what people and traffic said
        version, store = registry.get(args.ref), FeedbackStore(registry.path)
        extra = {
            "human review": headline(summarize(store, version)),
            "drift": next(
                (
                    f"PSI {d['score']:.3f}" + (" (drift)" if d["drifted"] else "")
                    for d in store.drift_scores()
                    if d["ref"] == version.ref and d["feature"] == "max"
                ),
                None,
            ),
        }
    registry_tables.show(registry, args.ref, args.json, extra)
    return 0


def cmd_review_prepare(args) -> int:
    from pathlib import Path

    from rayft.eval.review_items import pairs_from_eval, singles_from_traffic
    from rayft.feedback import FeedbackStore
    from rayft.home import rayft_home

    registry = Registry()
    store = FeedbackStore(registry.path)
    if args.source == "traffic":
        traffic = load_config(args.config).serve.traffic.path if args.config else None
        root = Path(traffic) if traffic else rayft_home() / "traffic"
        prepared = singles_from_traffic(registry, store, args.ref, root, args.limit)
        print(
            f"{prepared.added} new single-answer items from {prepared.offered} traffic records of {prepared.candidate}"
        )
    else:
        prepared = pairs_from_eval(registry, store, args.ref, args.against, args.limit)
        print(
            f"{prepared.added} new pairwise items ({prepared.offered} eval answers): "
            f"{prepared.candidate} against {prepared.against}"
        )
    return 0


def cmd_review_serve(args) -> int:
    from rayft.eval.review_page import serve_review

    serve_review(load_config(args.config).review, port=args.port, name=args.name, project=args.project)
    return 0


def cmd_review_report(args) -> int:
    from rayft.eval.review_report import publish, summarize
    from rayft.feedback import FeedbackStore

    registry = Registry()
    version = registry.get(args.ref)
    summary = summarize(FeedbackStore(registry.path), version)
    written = publish(registry, version, summary)
    if args.json:
        print(json.dumps(summary.model_dump(mode="json"), indent=2))
    else:
        from rayft.eval.review_report import print_summary

        print_summary(summary, written)
    return 0


def cmd_review_export_preferences(args) -> int:
    from rayft.eval.review_export import export_preferences
    from rayft.feedback import FeedbackStore

    registry = Registry()
    exported = export_preferences(FeedbackStore(registry.path), registry.get(args.ref), args.out)
    even = f"; {exported.split_evenly} items left out, their judgments split evenly" if exported.split_evenly else ""
    print(
        f"{exported.pairs} preference pairs from {exported.judgments} judgments of {exported.items} items "
        f"written to {exported.path}{even}"
    )
    return 0


def cmd_drift(args) -> int:
    from rayft.eval.drift import check_drift, print_drift

    results = check_drift(args.ref, load_config(args.config) if args.config else None)
    if args.json:
        print(json.dumps([r.model_dump(mode="json") for r in results], indent=2))
    else:
        print_drift(results)
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
    from rayft.serving.stop_signals import StopSignals

    stop = getattr(args, "stop", None) or StopSignals()  # before the slow imports
    from rayft.serving.lifecycle import serve_forever

    config = load_config(args.config)
    if args.port:
        config.serve.port = args.port
    serve_forever(config, stop)
    return 0


def cmd_adapters(args) -> int:
    """`rayft adapters list|load|unload`: a running server's adapters, without a restart."""
    from rayft.serving import client

    try:
        if args.adapters_command == "load":
            print(json.dumps(client.load_adapter(args.ref, args.url, args.api_key)))
        elif args.adapters_command == "unload":
            print(json.dumps(client.unload_adapter(args.ref, args.url, args.api_key)))
        elif args.json:
            print(json.dumps(client.fleet(args.url, args.api_key), indent=2))
        else:
            from rich.console import Console

            Console().print(client.fleet_table(client.fleet(args.url, args.api_key)))
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

    run_quickstart(port=args.port, extras=tuple(args.extras))
    return 0


def cmd_estimate(args) -> int:
    from rayft.data.inspect import check_files
    from rayft.estimate import estimate
    from rayft.plan import PlanError

    config = load_config(args.config)
    tokenizer = resolve_model_path(config.model.base, Registry())[0]
    check = check_files(config.data.inputs, config.data, tokenizer, config.model.chat_template)
    try:
        found = estimate(config.train, config.data.split, check.kept, check.tokens)
    except PlanError as error:
        raise ConfigError(f"train: {error}") from None
    if args.json:
        print(found.model_dump_json(indent=2))
    else:
        print(found.summary())
        if check.rejects:
            print(f"  ({check.rejects_summary(3)})")
    return 0
