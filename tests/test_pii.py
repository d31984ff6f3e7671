"""PII detection: each kind found and replaced by its placeholder; look-alikes left alone."""

import pytest

from rayft.data.pii import find_pii, iban_ok, luhn_ok, scrub


@pytest.mark.parametrize(
    "text, kind",
    [
        ("write to jane.doe+tickets@mail.example.co.uk please", "EMAIL"),
        ("call +1 415 555 0134 now", "PHONE"),
        ("call +44 20 7946 0958 now", "PHONE"),
        ("call 0049 30 901820 now", "PHONE"),
        ("call +33 1 42 68 53 00 now", "PHONE"),
        ("call (212) 555-0147 now", "PHONE"),
        ("card 4111 1111 1111 1111 used", "CARD"),
        ("card 5500-0000-0000-0004 used", "CARD"),
        ("iban DE89 3704 0044 0532 0130 00 ok", "IBAN"),
        ("iban GB82WEST12345698765432 ok", "IBAN"),
        ("from 198.51.100.23 today", "IP"),
        ("from 2001:db8::8a2e:370:7334 today", "IP"),
        ("ssn 123-45-6789 on file", "SSN"),
        ("url https://admin:s3cret@db.example.com/x", "CREDENTIALS"),
        ("key sk-proj-abcdefghijklmnopqrstuvwx1234 here", "API_KEY"),
        ("key AKIAIOSFODNN7EXAMPLE here", "API_KEY"),
        ("token ghp_abcdefghijklmnopqrstuvwxyz0123456789AB here", "API_KEY"),
    ],
)
def test_each_kind_is_found_and_replaced(text, kind):
    scrubbed, counts = scrub(text)
    assert counts == {kind: 1}
    assert f"<{kind}>" in scrubbed
    assert [k for _, _, k in find_pii(text)] == [kind]


@pytest.mark.parametrize(
    "text",
    [
        "order #43936 shipped on 2026-11-22 for 129.99",
        "card 4111 1111 1111 1112 fails the checksum",
        "iban GB82WEST12345698765433 fails the checksum",
        "error E-500 at 12:30:45, version 3.10.2",
        "Ticket number 12345678",
    ],
)
def test_look_alikes_are_left_alone(text):
    assert scrub(text) == (text, {})


def test_card_next_to_other_numbers_is_still_found():
    assert scrub("ref 12 4492 3914 7474 4661") == ("ref 12 <CARD>", {"CARD": 1})


def test_checksums():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("GB82WEST12345698765432") and not iban_ok("GB82WEST12345698765433")


def test_ner_detector_adds_spans_for_names():
    def names(text):
        start = text.find("Alice")
        return [(start, start + 5, "NAME")] if start >= 0 else []

    assert scrub("Alice wrote from a@b.io", ner=names) == ("<NAME> wrote from <EMAIL>", {"NAME": 1, "EMAIL": 1})
