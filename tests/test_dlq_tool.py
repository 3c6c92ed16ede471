"""The DLQ runbook on the real stack: a bad deploy dead-letters a backlog; `dlq list` shows it, `dlq redrive`
puts it back once (a second redrive sends nothing), and the fixed scorer scores every record exactly once."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from ingest.batch import Batch
from ingest.contracts import DeadLetter, encode, utcnow
from ingest.dlq import Filters, read, redrive
from ingest.settings import StackSettings
from ingest.topics import dlq_topic
from scorer.service import run_scorer
from tests.conftest import ROOT
from tests.kafka_helpers import end_offsets, make_loop, produce
from tests.scorer_helpers import jpeg, make_weights, scorer_settings, submit_refs, upload_images, verdict_rows

pytestmark = pytest.mark.integration


def _broken_release(batch: Batch) -> None:
    raise AttributeError("'NoneType' object has no attribute 'predict'")  # a bug, not bad input


def test_a_bad_deploys_dead_letters_are_redriven_once(
    stack: StackSettings, topic: str, group: str, tmp_path: Path
) -> None:
    n = 20
    keys = upload_images(stack, [jpeg(7000 + i) for i in range(n)])
    ids = [f"dlq-{uuid.uuid4().hex[:8]}-{i}" for i in range(n)]
    submit_refs(stack, topic, ids, keys)
    stats = make_loop(stack, topic, group, _broken_release).run(max_records=n, idle_timeout=30)
    assert stats.dead_lettered == n

    code = "unexpected_AttributeError"
    listed = list(read(stack, topic, Filters(code=code)))
    assert len(listed) == n and {e.letter.code for e in listed if e.letter} == {code}
    assert list(read(stack, topic, Filters(code="undecodable"))) == []
    cli = [sys.executable, "-m", "ingest", "dlq"]
    out = subprocess.run([*cli, "list", "--topic", topic, "--code", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    assert f"{n} dead letters" in out and "no attribute 'predict'" in out

    # A truncated dead letter (payload cut to the DLQ's limit) is reported, never redriven.
    cut = DeadLetter(payload_b64="e30=", topic=topic, partition=0, offset=10**9, error_class="X", code=code,
                     reason="[payload truncated from 9 to 2 bytes] x", attempts=1, service="test",
                     failed_at=utcnow())  # fmt: skip
    produce(stack, dlq_topic(topic), [(None, encode(cut))])

    before = sum(end_offsets(stack, topic).values())
    dry = redrive(stack, topic, Filters(code=code), dry_run=True)
    assert (dry.redriven, dry.truncated) == (n, 1) and sum(end_offsets(stack, topic).values()) == before
    first = redrive(stack, topic, Filters(code=code))
    assert (first.redriven, first.already, first.truncated) == (n, 0, 1)
    assert sum(end_offsets(stack, topic).values()) == before + n
    again = redrive(stack, topic, Filters(code=code))
    assert (again.redriven, again.already) == (0, n)
    assert sum(end_offsets(stack, topic).values()) == before + n

    # The fixed release, same group: the redriven records are after the committed offsets.
    weights = make_weights(tmp_path / "w.safetensors", f"test-dlq-{uuid.uuid4().hex[:6]}", seed=2)
    fixed = run_scorer(stack, scorer_settings(topic, group, weights), max_records=n, idle_timeout=60)
    assert fixed.processed == n and fixed.dead_lettered == 0
    rows = verdict_rows(stack, ids)
    assert sorted(r[0] for r in rows) == sorted(ids)  # every image once: no duplicates
