"""The verdict sink's image upsert against real PostgreSQL: the first row wins, and it only gains what it
lacked (a PDQ hash, or a reference once an unstored inline image is stored by a later scoring)."""

from __future__ import annotations

from ingest.contracts import utcnow
from ingest.db import connect
from ingest.settings import StackSettings
from scorer.sink import ImageRow, PostgresVerdictSink


def _row(ref: str | None, pdq: str | None = None, quality: int | None = None) -> ImageRow:
    return ImageRow("sink-1", ref, "ab" * 32, "t", utcnow(), {}, pdq, quality)


def _stored(stack: StackSettings) -> tuple[str | None, str | None, int | None]:
    with connect(stack.pg) as conn, conn.cursor() as cur:
        cur.execute("SELECT ref, pdq, pdq_quality FROM images WHERE id = 'sink-1'")
        row = cur.fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def test_an_image_row_gains_a_missing_reference_and_hash_but_never_loses_them(iso: StackSettings) -> None:
    sink = PostgresVerdictSink(iso.pg)
    try:
        sink.write([_row(None)], [])  # scored as real under persist_inline=flagged: not stored
        assert _stored(iso) == (None, None, None)
        sink.write([_row("s3://images/" + "ab" * 32, "0f" * 32, 80)], [])  # scored again, now flagged
        assert _stored(iso) == ("s3://images/" + "ab" * 32, "0f" * 32, 80)
        sink.write([_row(None, "11" * 32, 20)], [])  # a later replay without either changes nothing
        assert _stored(iso) == ("s3://images/" + "ab" * 32, "0f" * 32, 80)
        sink.write([_row("s3://images/other", None)], [])  # and the first reference is kept
        assert _stored(iso)[0] == "s3://images/" + "ab" * 32
    finally:
        sink.close()


def test_a_batch_that_holds_an_image_twice_is_written_in_one_statement(iso: StackSettings) -> None:
    # Postgres refuses an upsert that meets one key twice in a statement (CardinalityViolation), which
    # would fail the whole batch; the sink sends one row per image, as if the rows had come in turn.
    sink = PostgresVerdictSink(iso.pg)
    try:
        sink.write(
            [_row(None), _row("s3://images/" + "ab" * 32, "0f" * 32, 80), _row("s3://x", "22" * 32, 9)], []
        )
        assert _stored(iso) == ("s3://images/" + "ab" * 32, "0f" * 32, 80)
    finally:
        sink.close()
