"""A stand-in NER detector for the data tests (`data.pii_detector: "tests.pii_names:names"`): it
finds a fixed list of person names, as a real NER model would find any. Ray workers import it by
that name because they run with the repository root on their path."""

import re

NAMES = re.compile(r"\b(?:Alice Moreau|Ravi Shankar)\b")


def names(text: str) -> list[tuple[int, int, str]]:
    """`(start, end, "NAME")` for each known name in `text`."""
    return [(m.start(), m.end(), "NAME") for m in NAMES.finditer(text)]


def names_or_fail(text: str) -> list[tuple[int, int, str]]:
    """`names`, but failing on any text with "KABOOM" in it, as a model can fail on one odd input."""
    if "KABOOM" in text:
        raise RuntimeError("the NER model failed on this text")
    return names(text)
