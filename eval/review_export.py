"""`rayft review export-preferences NAME:VERSION --out FILE`: what reviewers preferred, as a
preference file in OpenAI's DPO format, which `rayft data prepare` reads unchanged.

setup   the version's pairwise judgments: only those of its registered weights (as the review report
        counts them) that picked a side; ties and "both bad" say nothing about which is better
run     one pair per item, by majority: the answer more reviewers picked is preferred, the other
        not; an item whose judgments split evenly is left out
report  the file (`input.messages` = the item's prompt, `preferred_output` / `non_preferred_output`
        = one assistant message each), and how many pairs, items and judgments it holds
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from rayft.feedback import FeedbackStore, ReviewItem
from rayft.registry import ModelVersion

DECIDED = ("candidate", "other")  # verdicts that pick a side


@dataclass
class ExportedPreferences:
    path: Path
    pairs: int  # written
    items: int  # items with a judgment that picked a side
    judgments: int  # judgments that picked a side
    split_evenly: int  # items left out because as many picked each side


def preference_pair(item: ReviewItem, votes: Counter) -> dict | None:
    """The item as an OpenAI preference record, its majority's pick preferred; None on a split vote."""
    if votes["candidate"] == votes["other"]:
        return None
    preferred, other = item.answers if votes["candidate"] > votes["other"] else reversed(item.answers)
    return {
        "input": {"messages": item.prompt},
        "preferred_output": [{"role": "assistant", "content": preferred.text}],
        "non_preferred_output": [{"role": "assistant", "content": other.text}],
    }


def export_preferences(store: FeedbackStore, version: ModelVersion, out: str | Path) -> ExportedPreferences:
    """Write `version`'s pairwise judgments to `out` as preference pairs, one per item, by majority."""
    votes: dict[int, Counter] = {}
    for rating in store.ratings(version.ref):
        if rating.candidate_hash == version.weights_hash and rating.verdict in DECIDED:
            votes.setdefault(rating.item, Counter())[rating.verdict] += 1
    pairs = [preference_pair(store.item(item), votes[item]) for item in sorted(votes)]
    kept = [pair for pair in pairs if pair is not None]
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(pair, ensure_ascii=False) + "\n" for pair in kept), encoding="utf-8")
    return ExportedPreferences(
        path=path,
        pairs=len(kept),
        items=len(votes),
        judgments=sum(sum(v.values()) for v in votes.values()),
        split_evenly=len(pairs) - len(kept),
    )
