"""Traffic sampling, without Ray: PII never reaches the disk, the configured share is respected,
old days are deleted, and each version's records land in a folder of their own as chat records."""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from rayft.config import TrafficConfig
from rayft.data.validate import normalise
from rayft.serving.traffic import DAY, TrafficSampler

PII = [
    "jane.doe+tickets@mail.example.co.uk",
    "+1 415 555 0134",
    "(212) 555-0147",
    "4111 1111 1111 1111",
    "DE89 3704 0044 0532 0130 00",
    "123-45-6789",
    "198.51.100.23",
    "sk-proj-abcdefghijklmnopqrstuvwx1234",
    "https://admin:s3cret@db.example.com/x",
]
WORDS = st.text(alphabet="abcdefghij klmnop.,!?", max_size=40)


def sampler(root: Path, **settings) -> TrafficSampler:
    return TrafficSampler(TrafficConfig(path=str(root), sample_share=settings.pop("sample_share", 1.0), **settings))


@settings(max_examples=60, deadline=None)
@given(before=WORDS, after=WORDS, secret=st.sampled_from(PII), where=st.sampled_from(["system", "user", "answer"]))
def test_pii_is_scrubbed_before_anything_is_written(before, after, secret, where):
    text = f"{before} {secret} {after}"
    messages = [
        {"role": "system", "content": text if where == "system" else "be brief"},
        {"role": "user", "content": [{"type": "text", "text": text if where == "user" else "hello"}]},
    ]
    with tempfile.TemporaryDirectory() as root:
        path = sampler(Path(root)).record("support:3", "h", messages, text if where == "answer" else "ok")
        written = "".join(p.read_text() for p in Path(root).rglob("*") if p.is_file())
        assert secret not in written and path.exists()
        assert "<" in json.loads(path.read_text())["messages"][["system", "user", "answer"].index(where)]["content"]


def test_the_configured_share_is_sampled():
    draws = 4000
    for share in (0.0, 0.25, 1.0):
        chosen = TrafficSampler(TrafficConfig(sample_share=share), rng=random.Random(7))
        count = sum(chosen.chosen() for _ in range(draws))
        # Binomial(4000, share): 4 standard deviations either side (0 for shares 0 and 1).
        assert abs(count - draws * share) <= 4 * (draws * share * (1 - share)) ** 0.5


def test_days_past_the_retention_limit_are_deleted_as_new_records_arrive(tmp_path):
    traffic = sampler(tmp_path, retention_days=30)
    start = 1_780_000_000.0
    old = traffic.record("support:3", "h", [{"role": "user", "content": "hi"}], "hello", now=start)
    recent = traffic.record("support:3", "h", [{"role": "user", "content": "hi"}], "hello", now=start + 25 * DAY)
    assert old.exists() and recent.exists()
    today = traffic.record("support:4", "h", [{"role": "user", "content": "hi"}], "hello", now=start + 40 * DAY)
    assert not old.exists() and recent.exists() and today.exists()


def test_each_version_has_its_own_folder_of_chat_records_that_data_prepare_reads(tmp_path):
    traffic = sampler(tmp_path)
    first = traffic.record("support:3", "abc", [{"role": "user", "content": "where is it?"}], "on its way")
    base = traffic.record("tiny", "def", [{"role": "user", "content": "hi"}], "hello")
    assert first.parent == tmp_path / "support" / "3" and base.parent == tmp_path / "tiny" / "base"
    record = json.loads(first.read_text())
    assert (record["model"], record["weights_hash"]) == ("support:3", "abc") and record["sampled_at"]
    assert [m["role"] for m in normalise(record)] == ["user", "assistant"]
    assert normalise(record)[-1]["content"] == "on its way"


def test_nothing_is_sampled_unless_a_share_is_configured():
    assert not TrafficSampler(TrafficConfig()).enabled
    assert not any(TrafficSampler(TrafficConfig()).chosen() for _ in range(100))
