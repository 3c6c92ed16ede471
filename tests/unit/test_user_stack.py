"""The after-suite check's comparison (tests/user_stack.py) reports every change, and only changes."""

from __future__ import annotations

from tests.user_stack import Fingerprint, queue_ids

BEFORE = Fingerprint(
    tables={"public.images": "3 rows, aa", "public.models": "1 rows, bb"},
    objects={"images": "3 objects, cc"},
    topics={"images.submitted": (3, 0)},
    groups={"scorer": {"images.submitted:0": 3}},
)


def test_an_identical_fingerprint_has_no_differences() -> None:
    assert BEFORE.differences(BEFORE) == []


def test_every_kind_of_change_is_reported() -> None:
    after = Fingerprint(
        tables={"public.images": "4 rows, dd", "public.models": "1 rows, bb", "test_1.images": "0 rows, ee"},
        objects={},
        topics={"images.submitted": (3, 1)},
        groups={"scorer": {"images.submitted:0": 4}, "test-group": {}},
    )
    changed = BEFORE.differences(after)
    assert [c.split(":")[0] for c in changed] == [
        "table public.images",
        "table test_1.images",
        "bucket images",
        "topic images.submitted",
        "consumer group scorer",
        "consumer group test-group",
    ]


def test_queue_ids_keep_the_order_and_drop_the_filters() -> None:
    hrefs = ["/review/item/abc?model=x&amp;label=fake", "/review/history", "/review/item/def"]
    assert queue_ids(hrefs) == ["abc", "def"]
