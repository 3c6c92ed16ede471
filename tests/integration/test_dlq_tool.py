"""A bad deploy and the DLQ runbook on the real stack: a release that fails every record costs one batch of
dead letters, then the circuit breaker holds the backlog (nothing dead-lettered or committed); after the
fix the backlog goes through, `dlq list` shows the dead letters, `dlq redrive` puts them back once (a second
redrive sends nothing), and the fixed scorer scores every record exactly once."""

from __future__ import annotations

import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from harness.wait import wait_until
from ingest.batch import Batch
from ingest.contracts import DeadLetter, encode, utcnow
from ingest.dlq import Filters, read, redrive
from ingest.metrics import LoopMetrics, new_registry, serve_metrics
from ingest.settings import StackSettings
from ingest.topics import dlq_topic
from scorer.service import run_scorer
from tests.conftest import ROOT
from tests.kafka_helpers import committed, end_offsets, make_loop, produce
from tests.scorer_helpers import jpeg, make_weights, scorer_settings, submit_refs, upload_images, verdict_rows

pytestmark = pytest.mark.integration


class ScoringHandler:
    """The fixed release: the real scorer's handler (as ``scorer run`` builds it) on this test's weights."""

    def __init__(self, stack: StackSettings, weights: Path) -> None:
        from ingest.decode import DecodeLimits
        from ingest.fetch import Fetcher, FetchSettings
        from ingest.storage import S3Store
        from scorer.engine import ServingModel
        from scorer.handler import ScoreHandler, ScorerMetrics
        from scorer.sink import PostgresVerdictSink

        store = S3Store(stack.s3)
        self.handler = ScoreHandler(
            fetcher=Fetcher(store, FetchSettings()),
            limits=DecodeLimits(),
            sink=PostgresVerdictSink(stack.pg),
            store=store,
            model=ServingModel.load(weights, "cpu"),
            next_model=lambda: None,
            uncertain_band=0.1,
            metrics=ScorerMetrics.create(new_registry()),
        )

    def __call__(self, batch: Batch) -> None:
        self.handler(batch)


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode().strip()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode().strip()


def _broken_release(batch: Batch) -> None:
    raise AttributeError("'NoneType' object has no attribute 'predict'")  # a bug, not bad input


def test_a_bad_deploys_dead_letters_are_redriven_once(
    stack: StackSettings, topic: str, group: str, tmp_path: Path
) -> None:
    n, batch = 120, 16
    keys = upload_images(stack, [jpeg(7000 + i) for i in range(n)])
    ids = [f"dlq-{uuid.uuid4().hex[:8]}-{i}" for i in range(n)]
    submit_refs(stack, topic, ids, keys)
    weights = make_weights(tmp_path / "w.safetensors", f"test-dlq-{uuid.uuid4().hex[:6]}", seed=2)
    broken = threading.Event()
    broken.set()
    fixed_release = ScoringHandler(stack, weights)

    def release(b: Batch) -> None:
        if broken.is_set():
            _broken_release(b)
        fixed_release(b)

    registry = new_registry()
    loop = make_loop(
        stack, topic, group, release, max_batch=batch, metrics=LoopMetrics.create("bad", registry)
    )
    loop.config.breaker_probe_s = 0.2
    _server, port = serve_metrics(registry, "127.0.0.1", 0, loop.readiness)
    runner = threading.Thread(target=lambda: loop.run(max_records=n, idle_timeout=60))
    runner.start()
    wait_until(lambda: registry.get_sample_value("bad_circuit_open") == 1.0, 60, "the breaker to open")
    first_batch = sum(end_offsets(stack, dlq_topic(topic)).values())
    # One full batch of dead letters (plus, at most, a first poll smaller than the breaker's minimum), not
    # the backlog.
    assert batch <= first_batch < 2 * batch
    assert sum(committed(stack, group, topic).values()) == first_batch
    assert _get(port, "/ready") == (503, "circuit open: batches fail on every record with unexpected errors")
    assert _get(port, "/healthz") == (200, "ok")  # alive: no restart loop, just not ready
    broken.clear()  # the fix is deployed
    runner.join(timeout=120)
    assert not runner.is_alive() and registry.get_sample_value("bad_circuit_open") == 0.0
    assert _get(port, "/ready") == (200, "ready")
    assert sum(end_offsets(stack, dlq_topic(topic)).values()) == first_batch
    n = first_batch  # what the runbook has to bring back

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
    fixed = run_scorer(stack, scorer_settings(topic, group, weights), max_records=n, idle_timeout=60)
    assert fixed.processed == n and fixed.dead_lettered == 0
    rows = verdict_rows(stack, ids)
    assert sorted(r[0] for r in rows) == sorted(ids)  # every image once: no duplicates
