"""Human review end to end, without Ray: review items from an eval's answers, two reviewers judging
them in a real headless Chromium with the keyboard alone, the ratings in the registry database, the
report's win rate, interval and agreement against values computed by hand, and the gate's check."""

from __future__ import annotations

import json
import math
import socket

import httpx
import pytest
from browser import chromium, screenshot, served
from reference import tiny_artifact

pytestmark = pytest.mark.timeout(300)

KEYS = {"ana": "ana-key", "ben": "ben-key", "cy": "cy-key"}
N_ITEMS = 10
# What each reviewer thinks of item i (its ticket number): the candidate's answer, the other one,
# a tie or both bad. Ana judges all ten; Ben gets the six Ana started first (2 judgments per item).
ANA = {1: "candidate", 2: "candidate", 3: "candidate", 4: "candidate", 5: "other", 6: "tie", 7: "candidate",
       8: "candidate", 9: "both_bad", 10: "candidate"}  # fmt: skip
BEN = {1: "candidate", 2: "candidate", 3: "candidate", 4: "candidate", 5: "other", 6: "candidate"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def home(tmp_path_factory):
    """A RAYFT_HOME of each test's own (no test depends on what another rated): support:1 in prod,
    support:2 evaluated beside it (answers.jsonl)."""
    from rayft.eval.results import Compared, EvalReport
    from rayft.registry import Registry

    root = tmp_path_factory.mktemp("review")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAYFT_HOME", str(root / "home"))
        registry = Registry()
        versions = []
        for i in (1, 2):
            versions.append(
                registry.register("support", "adapter", str(root / "base"), tiny_artifact(root / f"adapter{i}", i))
            )
        old, new = versions
        registry.set_alias("support", "prod", old.version, gated=True)
        report_dir = root / "eval" / "support" / "2"
        report_dir.mkdir(parents=True)
        rows = [
            {
                "set": "test",
                "prompt": json.dumps([{"role": "user", "content": f"Ticket {i}: my order never arrived", "weight": 0}]),
                "answer": "Category: shipping",
                "output:candidate": f"Category: shipping. Sorry about ticket {i}, a replacement ships today.",
                "output:base": "shipping shipping shipping",
                f"output:{old.ref}": f"Category: billing (ticket {i})",
            }
            for i in range(1, N_ITEMS + 1)
        ]
        (report_dir / "answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        report = EvalReport(
            candidate=new.ref,
            kind="adapter",
            base_model=new.base_model,
            weights_hash=new.weights_hash,
            dataset_hash=None,
            n=N_ITEMS,
            task="classification",
            primary_metric="accuracy",
            lower_is_better=False,
            metrics={"base": {}, "candidate": {}, old.ref: {}},
            gate={"min_human_win_rate": 0.8, "min_human_judgments": 15},
            compared={"prod": Compared(ref=old.ref, weights_hash=old.weights_hash)},
            folder=str(report_dir),
        )
        registry.set_eval_report(new.ref, report.to_record())
        yield {"root": root, "old": old, "new": new, "registry": registry}


@pytest.fixture
def page_url(home):
    from rayft.config import ReviewConfig
    from rayft.eval.review_page import build_review_app

    config = ReviewConfig(reviewers={name: key for name, key in KEYS.items()}, judgments_per_item=2)
    with served(build_review_app(config), free_port()) as url:
        yield url


def ticket(page) -> int:
    return int(page.locator("#prompt").inner_text().split("Ticket ")[1].split(":")[0])


def log_in(page, url: str, reviewer: str) -> None:
    page.goto(url)
    page.locator("#key").wait_for()
    page.keyboard.type(KEYS[reviewer])
    page.keyboard.press("Enter")


def judge_with_keyboard(page, url: str, reviewer: str, plan: dict[int, str], shots=None) -> list[int]:
    """Log in with the key and judge every item by the plan, keys only; returns the tickets seen."""
    log_in(page, url, reviewer)
    seen = []
    for n in range(len(plan)):
        page.wait_for_function(f"document.getElementById('progress').textContent === '{n} rated'")
        page.locator("#answer-a").wait_for()
        number = ticket(page)
        seen.append(number)
        verdict = plan[number]
        candidate_left = "replacement ships" in page.locator("#answer-a").inner_text()
        if shots and n == 1:
            screenshot(page, "review-page.png", shots)
        if number == 10:  # a comment: c to write, Esc to leave, then the verdict's key
            page.keyboard.press("c")
            page.keyboard.type("Clear, and it says when the replacement ships.")
            page.keyboard.press("Escape")
        if verdict == "tie":
            page.keyboard.press("t")
        elif verdict == "both_bad":
            page.keyboard.press("x")
        else:
            left = (verdict == "candidate") == candidate_left
            arrows = n % 2 == 0  # both shortcuts of each side are used
            page.keyboard.press(("ArrowLeft" if arrows else "1") if left else ("ArrowRight" if arrows else "2"))
    page.wait_for_function(f"document.getElementById('progress').textContent === '{len(plan)} rated'")
    return seen


def wilson_by_hand(wins: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = wins / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def test_two_reviewers_judge_with_the_keyboard_and_the_report_matches_hand_computed_values(
    home, page_url, tmp_path, capsys
):
    from rayft.cli import main
    from rayft.eval.gate import gate_checks
    from rayft.eval.results import EvalReport
    from rayft.eval.review_report import summarize
    from rayft.feedback import FeedbackStore

    old, new, registry = home["old"], home["new"], home["registry"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAYFT_HOME", str(home["root"] / "home"))
        assert main(["review", "prepare", new.ref]) == 0
        assert f"{N_ITEMS} new pairwise items" in capsys.readouterr().out
        assert main(["review", "prepare", new.ref]) == 0  # an item already there is kept once
        assert "0 new pairwise items" in capsys.readouterr().out

        with chromium() as page:
            assert judge_with_keyboard(page, page_url, "ana", ANA, shots=tmp_path) == list(range(1, N_ITEMS + 1))
            page.evaluate("sessionStorage.clear()")
            assert judge_with_keyboard(page, page_url, "ben", BEN) == list(range(1, 7))
            assert ticket(page) == 7  # the next item waiting for Ben's judgment

        store = FeedbackStore(registry.path)
        ratings = store.ratings(new.ref)
        assert len(ratings) == 16 and {r.reviewer for r in ratings} == {"ana", "ben"}
        assert all(
            (r.candidate_hash, r.other, r.other_hash) == (new.weights_hash, old.ref, old.weights_hash) for r in ratings
        )
        assert all(r.created_at > 0 for r in ratings)
        by_ticket = {
            (r.reviewer, int(store.item(r.item).prompt[0]["content"].split()[1][:-1])): r.verdict for r in ratings
        }
        assert by_ticket == {("ana", i): v for i, v in ANA.items()} | {("ben", i): v for i, v in BEN.items()}

        assert main(["review", "report", new.ref, "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
    # By hand: wins 7 (Ana) + 5 (Ben) = 12, losses 1 + 1 = 2, ties 1, both bad 1 → 12/14.
    (against,) = report["pairwise"]
    assert (against["other"], against["wins"], against["losses"], against["ties"], against["both_bad"]) == (
        old.ref, 12, 2, 1, 1
    )  # fmt: skip
    assert against["win_rate"] == pytest.approx(12 / 14)
    low, high = wilson_by_hand(12, 14)
    assert (against["low"], against["high"]) == (pytest.approx(low), pytest.approx(high))
    # Krippendorff's alpha (nominal) on the 6 items both judged: Ana C C C C O T, Ben C C C C O C.
    # Coincidences: C-C 8, O-O 2, C-T 1, T-C 1; n_C 9, n_O 2, n_T 1, n 12. D_o = 2/12,
    # D_e = 2·(9·2 + 9·1 + 2·1)/(12·11) = 58/132, alpha = 1 − D_o/D_e = 18/29.
    assert report["agreement"]["pairwise"]["items"] == 6
    assert report["agreement"]["pairwise"]["alpha"] == pytest.approx(18 / 29)
    assert report["reviewers"] == {"ana": 10, "ben": 6}
    assert report["comments"] == ["ana: Clear, and it says when the replacement ships."]
    assert main(["registry", "show", new.ref, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["human_review"].startswith(f"win rate 0.857 over {old.ref} (12-2-1)")
    attached = registry.get(new.ref).eval_report["human_review"]
    assert attached["pairwise"][0]["wins"] == 12 and (home["root"] / "eval/support/2/review.md").exists()

    # The gate: 15 judgments (wins, losses and ties) at a win rate of 0.857.
    version = registry.get(new.ref)
    stored = EvalReport.from_record(version.eval_report)
    human = summarize(FeedbackStore(registry.path), version)

    def human_check(**gate):
        changed = stored.model_copy(update={"gate": stored.gate.model_copy(update=gate)})
        return next(
            c for c in gate_checks(version, changed, {"support:prod": old}, human) if c.name == "human_win_rate"
        )

    assert human_check().passed
    assert not human_check(min_human_judgments=16).passed
    assert not human_check(min_human_win_rate=0.9).passed
    assert f"over {old.ref} (support:prod now)" in human_check().detail
    assert all(c.name != "human_win_rate" for c in gate_checks(version, stored.model_copy(
        update={"gate": stored.gate.model_copy(update={"min_human_win_rate": None})}), {}, human))  # fmt: skip


def test_the_api_refuses_bad_requests_with_a_4xx_naming_the_field(home, page_url):
    from rayft.eval.review_items import pairs_from_eval
    from rayft.feedback import FeedbackStore

    pairs_from_eval(home["registry"], FeedbackStore(home["registry"].path), home["new"].ref)  # items 1-10
    ana = {"Authorization": f"Bearer {KEYS['ana']}"}
    assert httpx.get(page_url + "/api/next").status_code == 401
    refused = httpx.get(page_url + "/api/next", headers={"Authorization": "Bearer nope"})
    assert refused.status_code == 401 and refused.json()["detail"]["param"] == "authorization"
    for body, field in [
        ({"item": "x", "choice": "A"}, "item"),
        ({"item": 1, "choice": "left"}, "choice"),
        ({"item": 1, "score": 9}, "score"),
        ({"item": 1, "choice": "A", "comment": "x" * 3000}, "comment"),
        ({"item": 1, "choice": "A", "extra": 1}, "extra"),
    ]:
        answer = httpx.post(page_url + "/api/ratings", json=body, headers=ana)
        assert answer.status_code == 422 and field in json.dumps(answer.json()["detail"]), body
    missing = httpx.post(page_url + "/api/ratings", json={"item": 10_000, "choice": "A"}, headers=ana)
    assert missing.status_code == 404 and missing.json()["detail"]["param"] == "item"
    wrong_kind = httpx.post(page_url + "/api/ratings", json={"item": 1, "score": 3}, headers=ana)
    assert wrong_kind.status_code == 422 and wrong_kind.json()["detail"]["param"] == "choice"


def test_a_page_without_reviewer_keys_is_refused_unless_the_config_says_so():
    from rayft.config import ConfigError, ReviewConfig
    from rayft.eval.review_page import build_review_app

    with pytest.raises(ConfigError, match="review.allow_unauthenticated"):
        build_review_app(ReviewConfig())
    build_review_app(ReviewConfig(allow_unauthenticated=True))


def test_a_reviewer_rates_sampled_traffic_answers_from_1_to_5_and_never_sees_the_pii(home, page_url, tmp_path, capsys):
    from rayft.cli import main
    from rayft.config import TrafficConfig
    from rayft.serving.traffic import TrafficSampler

    served = home["old"]  # the version in prod answers the traffic
    sampler = TrafficSampler(TrafficConfig(sample_share=1.0))  # $RAYFT_HOME/traffic, this module's home
    asked = ["Write to me at jo.smith@example.com about ticket 11", "Call me on +1 415 555 0100 about ticket 12"]
    for question in asked:
        answer = "Category: shipping. We wrote to jo.smith@example.com."
        sampler.record(served.ref, served.weights_hash, [{"role": "user", "content": question}], answer)
    assert main(["review", "prepare", served.ref, "--source", "traffic"]) == 0
    assert "2 new single-answer items" in capsys.readouterr().out
    with chromium() as page:
        log_in(page, page_url + "/?source=traffic", "cy")
        shown = []
        for n, score in enumerate(("4", "2")):
            page.wait_for_function(f"document.getElementById('progress').textContent === '{n} rated'")
            page.locator("#answer-a").wait_for()
            shown.append(page.locator("main").inner_text())
            if n == 0:
                screenshot(page, "review-single.png", tmp_path)
            page.keyboard.press(score)
        page.locator("#finished").wait_for(state="visible")
    assert not any("jo.smith@example.com" in text or "555 0100" in text for text in shown)
    assert all("<EMAIL>" in text for text in shown)
    assert main(["review", "report", served.ref, "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)["scores"]
    assert scores == {"n": 2, "mean": 3.0}


def test_fuzzing_the_review_api_finds_no_5xx(home, tmp_path):
    """schemathesis generates valid and invalid requests from the page's /openapi.json against an
    app of its own (its own items, so the other tests' ratings stay as they are). No 5xx."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    from rayft.config import ReviewConfig
    from rayft.eval.review_items import pairs_from_eval
    from rayft.eval.review_page import build_review_app
    from rayft.feedback import FeedbackStore

    store = FeedbackStore(tmp_path / "fuzz.db")
    pairs_from_eval(home["registry"], store, home["new"].ref)
    app = build_review_app(ReviewConfig(reviewers={"fuzz": "fuzz-key"}), store=store)
    failures = []
    with served(app, free_port()) as url:
        schema = schemathesis.openapi.from_url(url + "/openapi.json")

        def send(case) -> None:
            response = case.call(base_url=url, headers={"Authorization": "Bearer fuzz-key"}, timeout=30)
            if response.status_code >= 500:
                failures.append((case.method, case.path, case.body, response.status_code, response.text[:300]))

        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            settings(
                max_examples=40, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck)
            )(given(case=schema.as_strategy(generation_mode=mode))(send))()
    assert not failures, failures[:5]
