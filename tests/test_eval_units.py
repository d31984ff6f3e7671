"""Eval pieces without a model: the eval config, the forgetting set, few-shot prompts, the report
and its plots (written locally and through an object-storage URI)."""

import json
import math

import pandas as pd
import pytest

from rayft.config import ConfigError, EvalConfig, GateConfig, parse_config
from rayft.eval.evaluate import write_report
from rayft.eval.generate import COLUMN_TYPES
from rayft.eval.prompts import few_shot_examples, forgetting_records, with_examples
from rayft.eval.report import build_report, print_report
from rayft.eval.results import Check, EvalReport
from rayft.registry import ModelVersion


def eval_config(**fields) -> EvalConfig:
    return parse_config({"name": "support", "model": {"base": "/base"}, "eval": fields}, "eval.yaml").eval


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"task": "structured"}, "eval: Value error, task structured needs json_schema"),
        ({"task": "generation", "primary_metric": "accuracy"}, "choose one of rouge_l, bleu, chrf, perplexity"),
        ({"label_regex": "(a)", "label_json": "a.b"}, "give label_regex or label_json, not both"),
        ({"label_regex": "no group"}, "eval.label_regex: Value error, label_regex must have exactly one capture group"),
        (
            {"task": "structured", "json_schema": {"type": "nope"}},
            "eval.json_schema: Value error, not a valid JSON schema",
        ),
        (
            {"task": "structured", "json_schema": "/missing/schema.json"},
            "schema file /missing/schema.json: No such file",
        ),
        ({"gate": {"margin": -0.1}}, "eval.gate.margin: Input should be greater than or equal to 0"),
        ({"few_shot": -1}, "eval.few_shot: Input should be greater than or equal to 0"),
    ],
)
def test_eval_config_errors_name_the_field(fields, message):
    with pytest.raises(ConfigError, match="eval.yaml: invalid config") as error:
        eval_config(**fields)
    assert message in str(error.value)


def test_eval_config_defaults_per_task(tmp_path):
    assert eval_config().primary_metric == "accuracy"
    assert eval_config(task="generation").primary_metric == "rouge_l"
    assert eval_config(task="perplexity", perplexity=False).perplexity is True
    assert eval_config(label_json="triage.category").label_regex is None
    schema = tmp_path / "schema.json"
    schema.write_text('{"type": "object", "required": ["priority"]}')
    assert eval_config(task="structured", json_schema=str(schema)).json_schema["required"] == ["priority"]


def test_the_shipped_forgetting_set_and_bad_lines(tmp_path):
    rows = forgetting_records(None)
    assert len(rows) == 60 and all(r["set"] == "forgetting" and r["expected"] for r in rows)
    assert all(json.loads(r["prompt"])[-1]["role"] == "user" for r in rows)
    bad = tmp_path / "set.jsonl"
    bad.write_text(
        json.dumps(
            rows[0]
            | {
                "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello"}],
                "expected": "Hello",
            }
        )
        + "\n\n{not json\n"
    )
    with pytest.raises(ValueError, match=f"{bad}:3: not valid JSON"):
        forgetting_records(str(bad))
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}], "expected": "x"}\n')
    with pytest.raises(ValueError, match=f"{bad}:1: 'messages' must be a conversation ending"):
        forgetting_records(str(bad))


def test_few_shot_examples_cover_labels_first_and_sit_before_the_prompt(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    def chat(label, i):
        return [
            {"role": "system", "content": "S"},
            {"role": "user", "content": f"q{i}"},
            {"role": "assistant", "content": f"Category: {label}"},
        ]

    conversations = [chat("billing", i) for i in range(20)] + [chat("refund", 20), chat("shipping", 21)]
    pq.write_table(pa.table({"messages": conversations}), tmp_path / "train.parquet")
    label = lambda answer: answer.split(": ")[1]  # noqa: E731
    chosen = few_shot_examples(tmp_path, 3, seed=0, label=label)
    assert sorted(label(c[-1]["content"]) for c in chosen) == ["billing", "refund", "shipping"]
    assert few_shot_examples(tmp_path, 3, seed=0, label=label) == chosen  # seeded
    assert len(few_shot_examples(tmp_path, 5, seed=1)) == 5 and few_shot_examples(tmp_path, 0, seed=0) == []
    prompt = [{"role": "system", "content": "S"}, {"role": "user", "content": "new"}]
    assert [m["content"] for m in with_examples(prompt, chosen[:1])] == [
        "S",
        chosen[0][1]["content"],
        chosen[0][2]["content"],
        "new",
    ]


def answered_rows() -> pd.DataFrame:
    rows = []
    for i, (label, base, candidate) in enumerate(
        [
            ("billing", "I can help", "Category: billing"),
            ("refund", "Category: refund", "Category: refund"),
            ("shipping", None, "Category: billing"),
        ]
    ):
        rows.append(
            {
                "set": "test",
                "prompt": json.dumps([{"role": "user", "content": f"q{i}"}]),
                "answer": f"Category: {label}",
                "expected": "",
                "chosen": "",
                "rejected": "",
                "output:base": base,
                "nll:base": 6.0,
                "tokens:base": 3,
                "output:candidate": candidate,
                "nll:candidate": 3.0,
                "tokens:candidate": 3,
            }
        )
    rows.append(
        {
            "set": "forgetting",
            "prompt": json.dumps([{"role": "user", "content": "2+2?"}]),
            "answer": "4",
            "expected": "4",
            "chosen": "",
            "rejected": "",
            "output:base": "It is 4.",
            "nll:base": 1.0,
            "tokens:base": 2,
            "output:candidate": "Category: billing",
            "nll:candidate": float("nan"),
            "tokens:candidate": None,
        }
    )
    return pd.DataFrame(rows)


@pytest.mark.parametrize("remote", [False, True])
def test_report_files_and_numbers(tmp_path, remote, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 2.0 / s}) + "\n" for s in (1, 2)))
    version = ModelVersion(
        "support",
        3,
        "adapter",
        "/base",
        "/a3",
        weights_hash="w3",
        metrics={"run_dir": f"file://{run_dir}" if remote else str(run_dir)},
    )
    report = build_report(answered_rows(), version, eval_config(), ["base", "candidate"], [], {"temperature": 0.0})
    assert report.metrics["base"]["accuracy"] == pytest.approx(1 / 3)
    assert report.metrics["candidate"]["accuracy"] == pytest.approx(2 / 3)
    assert report.metrics["candidate"]["perplexity"] == pytest.approx(math.exp(1.0))
    assert report.forgetting.drop == 1.0 and report.forgetting.candidate["unscored"] == 1
    report.verdict = [Check(name="beats_base", passed=True, detail="accuracy 0.667 vs 0.333")]
    root = f"file://{tmp_path}/reports" if remote else str(tmp_path / "reports")
    written = write_report(report, answered_rows(), version, root)
    folder = tmp_path / "reports" / "support" / "3"
    assert written.path == f"{root}/support/3/report.json"
    stored = json.loads((folder / "report.json").read_text())
    assert stored["metrics"] == json.loads(json.dumps(report.metrics))
    assert EvalReport.from_record(stored).files == written.files  # the registry's JSON reads back typed
    assert written.files.plots == {
        "metrics": "metrics.png",
        "confusion": "confusion.png",
        "training": "training_loss.png",
    }
    assert all((folder / name).stat().st_size > 1000 for name in written.files.plots.values())
    markdown = (folder / "report.md").read_text()
    assert "| accuracy | 0.3333 | 0.6667 |" in markdown and "- pass: beats_base" in markdown
    assert len((folder / "answers.jsonl").read_text().splitlines()) == 4
    print_report(written)
    printed = capsys.readouterr().out
    assert "forgetting answer rate" in printed and "would pass" in printed and written.path in printed


def test_an_adapter_shares_its_base_engine_and_a_full_model_gets_its_own():
    from rayft.eval.evaluate import plan_engines

    examples = [[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]]
    adapter = ModelVersion("support", 1, "adapter", "/base", "/a1")
    [(model, variants)] = plan_engines(adapter, [], examples, True, "TEMPLATE", lambda uri: uri)
    assert model == "/base" and [(v.name, v.adapter, v.sets, v.template) for v in variants] == [
        ("base", None, ("test", "forgetting"), "TEMPLATE"),
        ("few_shot", None, ("test",), "TEMPLATE"),
        ("candidate", adapter, ("test", "forgetting"), "TEMPLATE"),
    ]
    assert variants[1].few_shot == examples
    full = ModelVersion("chat", 2, "full", "/base", "/chat-v2")
    (base_model, base_variants), (candidate_model, [candidate]) = plan_engines(full, [], [], False, None, str)
    assert (base_model, [v.name for v in base_variants]) == ("/base", ["base"])
    assert (candidate_model, candidate.name, candidate.adapter, candidate.sets) == (full, "candidate", None, ("test",))


def test_the_versions_in_production_answer_the_test_rows_on_their_own_base():
    from rayft.eval.evaluate import plan_engines

    base = ModelVersion("chat", 1, "full", "/random", "/chat-v1", weights_hash="c1")
    candidate = ModelVersion("support", 3, "adapter", "/chat-v1", "/a3")
    same_base = ModelVersion("support", 2, "adapter", "/chat-v1/", "/a2")  # the same base, spelled otherwise
    older_base = ModelVersion("support", 1, "adapter", "/chat-v0", "/a1")
    full = ModelVersion("support", 4, "full", "/chat-v1", "/s4")
    bases = {"/chat-v1": base, "/chat-v1/": base}
    engines = plan_engines(candidate, [same_base, older_base, full], [], True, None, lambda uri: bases.get(uri, uri))
    assert [(model, [(v.name, v.adapter, v.sets) for v in variants]) for model, variants in engines] == [
        (
            base,
            [
                ("base", None, ("test", "forgetting")),
                ("candidate", candidate, ("test", "forgetting")),
                ("support:2", same_base, ("test",)),
            ],
        ),
        ("/chat-v0", [("support:1", older_base, ("test",))]),
        (full, [("support:4", None, ("test",))]),
    ]


class RecordingRows:
    """Stands in for a Ray Data dataset: records each map_batches call."""

    def __init__(self):
        self.calls = []

    def map_batches(self, fn, **options):
        self.calls.append(options)
        return self


@pytest.mark.parametrize("use_gpu, gpus", [(False, 0), (True, 1)])
def test_every_engine_actor_reserves_a_gpu_only_with_use_gpu(use_gpu, gpus):
    from rayft.eval.generate import Decoding, Variant, answer_with_engines

    settings = eval_config(use_gpu=use_gpu, engines=2, batch_size=8)
    assert eval_config().use_gpu is False
    stages = [("/base", [Variant("base")]), ("/full", [Variant("candidate")])]  # a full candidate: two pools
    rows = answer_with_engines(RecordingRows(), stages, Decoding({"test": 4}, 128), settings)
    assert [c["fn_constructor_args"][0] for c in rows.calls] == ["/base", "/full"]
    for options in rows.calls:
        assert (options["num_gpus"], options["num_cpus"]) == (gpus, 1)
        assert (options["concurrency"], options["batch_size"]) == (2, 8)
        assert options["runtime_env"]["env_vars"]["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"


def test_metric_bars_draw_each_metric_once():
    from rayft.eval.plots import metric_panels

    def report(**fields):
        return EvalReport(
            candidate="m:1",
            kind="adapter",
            base_model="/b",
            weights_hash="w",
            dataset_hash="d",
            n=3,
            primary_metric=fields.pop("primary", "accuracy"),
            lower_is_better=False,
            gate=GateConfig(),
            **fields,
        )

    perplexity_only = report(
        task="perplexity", primary="perplexity", metrics={"base": {"perplexity": 9.0}, "candidate": {"perplexity": 4.0}}
    )
    assert metric_panels(perplexity_only) == [("perplexity", {"base": 9.0, "candidate": 4.0})]
    classification = report(
        task="classification",
        metrics={
            "base": {"accuracy": 0.2, "macro_f1": 0.1, "perplexity": 9.0},
            "candidate": {"accuracy": 0.9, "macro_f1": 0.8, "perplexity": None},
        },
        forgetting={"n": 2, "base": {"answer_rate": 0.5}, "candidate": {"answer_rate": 0.4}, "drop": 0.1},
    )
    assert metric_panels(classification) == [
        ("accuracy", {"base": 0.2, "candidate": 0.9}),
        ("macro_f1", {"base": 0.1, "candidate": 0.8}),
        ("perplexity", {"base": 9.0}),
        ("forgetting answer rate", {"base": 0.5, "candidate": 0.4}),
    ]


def test_a_local_version_whose_bytes_changed_is_refused_before_any_engine_starts(tmp_path):
    from rayft.eval.evaluate import check_local_artifacts, plan_engines
    from rayft.storage import ArtifactMismatch, content_hash

    folder = tmp_path / "a1"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    candidate = ModelVersion("support", 1, "adapter", "/base", str(folder), weights_hash=content_hash(folder))
    remote = ModelVersion(
        "support", 2, "adapter", "/base", "s3://bucket/a2", weights_hash="h2"
    )  # checked in the engine
    engines = plan_engines(candidate, [remote], [], False, None, str)
    check_local_artifacts(engines)
    (folder / "adapter_model.safetensors").write_bytes(b"other weights")
    with pytest.raises(ArtifactMismatch, match=f"support:1: the artifact at {folder} has weights hash"):
        check_local_artifacts(engines)


def test_pair_metrics_from_fixed_scores():
    from rayft.eval.metrics import pair_margins, preference_metrics

    base = pair_margins([5.0, 4.0, 7.0], [6.0, 3.0, 7.0])
    assert base == [1.0, -1.0, 0.0]  # log p(chosen) − log p(rejected) = rejected NLL − chosen NLL
    assert preference_metrics(base, base) == {
        "preference_accuracy": pytest.approx(1 / 3),  # a tie is not a preference
        "reward_margin": 0.0,  # the base is the reference
        "mean_margin": 0.0,
        "scored_pairs": 3,
        "unscored_pairs": 0,
    }
    candidate = pair_margins([3.0, 2.0, 6.0], [7.0, 3.0, None])  # the last rejected reply did not fit
    assert preference_metrics(candidate, base) == {
        "preference_accuracy": pytest.approx(2 / 3),  # the unscored pair counts as wrong
        "reward_margin": pytest.approx(((4 - 1) + (1 + 1)) / 2),  # over pairs scored for both
        "mean_margin": pytest.approx(2.5),
        "scored_pairs": 2,
        "unscored_pairs": 1,
    }
    assert preference_metrics([None], [1.0])["reward_margin"] is None
    with pytest.raises(ValueError, match="2 outputs for 1 references"):
        preference_metrics([1.0, 2.0], [1.0])


PAIR_SCORES = {  # (chosen NLL, rejected NLL) per pair and variant
    "base": [(5.0, 6.0), (4.0, 3.0), (7.0, 7.0)],
    "candidate": [(3.0, 7.0), (2.0, 3.0), (6.0, None)],
    "parent": [(4.0, 6.0), (3.0, 3.0), (6.0, 6.5)],
}


def pair_rows() -> pd.DataFrame:
    """Answered rows of three preference pairs, scored only (task preference generates nothing)."""
    rows = []
    for i in range(3):
        chosen = {"role": "assistant", "content": f"Category: billing {i}"}
        rejected = {"role": "assistant", "content": f"Category: shipping {i}"}
        row = {
            "set": "test",
            "prompt": json.dumps([{"role": "user", "content": f"q{i}"}]),
            "answer": chosen["content"],
            "expected": "",
            "tools": "",
            "chosen": json.dumps(chosen),
            "rejected": json.dumps(rejected),
        }
        for variant, scores in PAIR_SCORES.items():
            nll, nll_rejected = scores[i]
            row |= {
                f"output:{variant}": None,
                f"nll:{variant}": nll,
                f"tokens:{variant}": 2,
                f"nll_rejected:{variant}": nll_rejected,
                f"tokens_rejected:{variant}": None if nll_rejected is None else 2,
                f"shots:{variant}": None,
            }
        rows.append(row)
    return pd.DataFrame(rows)


def test_a_preference_report_shows_the_pair_metrics_its_parent_and_the_margin_plot(tmp_path):
    from rayft.eval.plots import margin_histograms
    from rayft.eval.report import plotted_margins

    version = ModelVersion("support-dpo", 2, "adapter", "/base", "/d2", weights_hash="d2", parent="support:1")
    parent = ModelVersion("support", 1, "adapter", "/base", "/a1", weights_hash="w1")
    variants = ["base", "candidate", "parent"]
    config = eval_config(task="preference", few_shot=0, forgetting=False)
    report = build_report(pair_rows(), version, config, variants, [], {}, {}, parent)
    assert (report.primary_metric, report.parent.ref, report.parent.weights_hash) == (
        "preference_accuracy",
        "support:1",
        "w1",
    )
    accuracy = {v: report.metrics[v]["preference_accuracy"] for v in variants}
    reward = {v: report.metrics[v]["reward_margin"] for v in variants}
    assert accuracy == pytest.approx({"base": 1 / 3, "candidate": 2 / 3, "parent": 2 / 3})
    assert reward == pytest.approx({"base": 0.0, "candidate": 2.5, "parent": (1 + 1 + 0.5) / 3})
    assert report.metrics["candidate"]["perplexity"] == pytest.approx(math.exp((3 + 2 + 6) / 6))  # chosen replies
    assert report.samples[0]["rejected"] == "Category: shipping 0"
    assert report.samples[0]["margins"] == {"base": 1.0, "candidate": 4.0, "parent": 2.0}
    assert plotted_margins(pair_rows(), report) == {
        "base": [1.0, -1.0, 0.0],
        "parent (support:1)": [2.0, 0.0, 0.5],
        "candidate": [4.0, 1.0],
    }

    written = write_report(report, pair_rows(), version, str(tmp_path))
    folder = tmp_path / "support-dpo" / "2"
    assert written.files.plots == {"metrics": "metrics.png", "margins": "margins.png"}
    assert (folder / "margins.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (folder / "margins.png").stat().st_size > 1000
    markdown = (folder / "report.md").read_text()
    assert "| metric | base | candidate | parent (support:1) |" in markdown
    assert "| preference_accuracy | 0.3333 | 0.6667 | 0.6667 |" in markdown
    assert "| reward_margin | 0 | 2.5 | 0.8333 |" in markdown
    assert "Parent: `support:1`" in markdown and "  - candidate: margin 4" in markdown
    assert margin_histograms({}, "no pairs", tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()

    # Another task on the same pairs keeps its own metrics and gains the pair metrics.
    generation = build_report(pair_rows(), version, eval_config(task="generation"), variants, [], {}, {}, parent)
    assert {"rouge_l", "preference_accuracy", "reward_margin"} <= set(generation.metrics["candidate"])
    assert generation.metrics["candidate"]["reward_margin"] == pytest.approx(2.5)


def test_a_pair_is_asked_its_last_turn_with_both_replies_beside_it(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rayft.data.outputs import MESSAGE_TYPE
    from rayft.eval.prompts import holds_pairs, split_prompt

    call = {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": '{"order": 1}'}}
    prompt = [
        {"role": "user", "content": "Where is order 1?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "shipped"},
    ]
    chosen = {"role": "assistant", "content": "It shipped."}
    rejected = {"role": "assistant", "content": None, "tool_calls": [call]}
    plain = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello"}]
    batch = pa.table(
        {
            "messages": pa.array([prompt + [chosen], plain], MESSAGE_TYPE),
            "rejected": pa.array([[rejected], None], MESSAGE_TYPE),
        }
    )
    pair, other = pd.DataFrame(split_prompt(batch)).to_dict("records")
    strip = lambda m: {k: v for k, v in m.items() if v is not None}  # noqa: E731
    assert json.loads(pair["prompt"]) == [strip(m) for m in prompt]  # not cut at its earlier call
    assert (pair["answer"], json.loads(pair["chosen"])) == ("It shipped.", chosen)
    assert json.loads(pair["rejected"]) == strip(rejected)
    assert (json.loads(other["prompt"]), other["answer"], other["chosen"], other["rejected"]) == (
        plain[:1],
        "Hello",
        "",
        "",
    )

    pq.write_table(batch, tmp_path / "test.parquet")
    assert holds_pairs(str(tmp_path))
    pq.write_table(batch.set_column(1, "rejected", pa.nulls(2, MESSAGE_TYPE)), tmp_path / "test.parquet")
    assert not holds_pairs(str(tmp_path))
    pq.write_table(batch.drop_columns(["rejected"]), tmp_path / "test.parquet")
    assert not holds_pairs(str(tmp_path))


def test_the_parent_is_the_version_it_continues_unless_that_is_its_base(tmp_path):
    from rayft.eval.evaluate import continued_version, plan_engines, with_answers_of
    from rayft.registry import Registry

    registry = Registry(tmp_path / "r.db")
    base = registry.register("chat", "full", "/random", "/chat-v1", weights_hash="c1")
    sft = registry.register("support", "adapter", "/chat-v1", "/a1", weights_hash="w1", parent=base.ref)
    dpo = registry.register("support-dpo", "adapter", "/chat-v1/", "/d1", weights_hash="d1", parent=sft.ref)
    full = registry.register("support", "full", "/chat-v1", "/s2", weights_hash="s2", parent=sft.ref)
    full_dpo = registry.register("support", "full", "/chat-v1", "/s3", weights_hash="s3", parent=full.ref)
    assert continued_version(registry, sft) is None  # its parent is its (registry) base
    assert continued_version(registry, dpo).ref == sft.ref  # another name continues it
    assert continued_version(registry, base) is None  # no parent
    assert continued_version(registry, full_dpo).ref == full.ref
    orphan = registry.register("support", "adapter", "/chat-v1", "/a4", weights_hash="w4", parent="support:9")
    assert continued_version(registry, orphan) is None  # deleted, or never there

    bases = {"/chat-v1": base, "/chat-v1/": base}.get
    [(model, variants)] = plan_engines(dpo, [], [], True, None, bases, parent=sft)
    assert model == base and [(v.name, v.adapter, v.sets) for v in variants] == [
        ("base", None, ("test", "forgetting")),
        ("candidate", dpo, ("test", "forgetting")),
        ("parent", sft, ("test",)),
    ]
    engines = plan_engines(full_dpo, [], [], False, None, bases, parent=full)
    assert [(m, [v.name for v in vs]) for m, vs in engines] == [
        (base, ["base"]),
        (full_dpo, ["candidate"]),
        (full, ["parent"]),
    ]

    answered = pd.DataFrame({f"{key}:parent": [1] for key in COLUMN_TYPES})
    copied = with_answers_of(answered, "parent", "support:1")  # the parent in production, answered once
    assert copied["nll:support:1"].tolist() == [1] and copied["shots:support:1"].tolist() == [1]
