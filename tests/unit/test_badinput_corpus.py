"""The bad-input corpus itself, without the stack: its size per family, and every image case's expectation
agrees with the decoder (so a failure in the streaming run points at the pipeline, not at the table)."""

from __future__ import annotations

from typing import Any

import pytest

from ingest.contracts import ImageSubmitted, decode
from ingest.decode import DecodeLimits, decode_image
from ingest.errors import InvalidMessage, PermanentError
from tests.badinput import feedback, http, submitted

FAMILIES: dict[str, list[Any]] = {
    "kafka messages": submitted.MESSAGE_CASES,
    "image bytes": submitted.IMAGE_CASES,
    "http requests": [*http.HTTP_CASES, *http.ARCHIVE_CASES],
    "feedback messages": feedback.CASES,
}


def test_corpus_has_at_least_forty_cases_across_four_families() -> None:
    sizes = {family: len(cases) for family, cases in FAMILIES.items()}
    assert all(n >= 10 for n in sizes.values()), sizes
    assert sum(sizes.values()) >= 40, sizes


@pytest.mark.parametrize("case", submitted.IMAGE_CASES, ids=[c.name for c in submitted.IMAGE_CASES])
def test_image_expectations_match_the_decoder(case: submitted.SubmittedCase) -> None:
    make = case.image or case.inline
    assert make is not None
    limits = DecodeLimits(max_bytes=submitted.MAX_BYTES)
    try:
        decode_image(make(), limits, target_size=32)
        got = "verdict"
    except PermanentError as e:
        got = e.code
    assert got == case.expect


@pytest.mark.parametrize(
    "case",
    [c for c in submitted.MESSAGE_CASES if c.expect == "invalid_message"],
    ids=[c.name for c in submitted.MESSAGE_CASES if c.expect == "invalid_message"],
)
def test_invalid_messages_are_refused_by_the_contract(case: submitted.SubmittedCase) -> None:
    assert case.raw is not None
    with pytest.raises(InvalidMessage):
        decode(ImageSubmitted, case.raw("corpus-1"))
