"""The streaming scorer on the real stack: exactly one verdict per image, crash safety, hot swap, parity."""

from __future__ import annotations

import functools
import hashlib
import os
import signal
import socket
import subprocess
import sys
import urllib.request
import uuid
import zipfile
from pathlib import Path

import pytest

from harness.wait import wait_until
from ingest.contracts import ModelPublished, encode, utcnow
from ingest.decode import DecodeLimits
from ingest.settings import StackSettings
from ingest.storage import S3Store
from scorer.engine import ServingModel
from scorer.offline import iter_sources, score_sources
from scorer.service import run_scorer
from tests.conftest import ROOT
from tests.kafka_helpers import create_topics, delete_topics, produce
from tests.scorer_helpers import (
    ScorerThread,
    jpeg,
    make_weights,
    scorer_settings,
    submit_refs,
    upload_images,
    verdict_messages,
    verdict_rows,
    verdicts_offsets,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def weights_v1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_weights(
        tmp_path_factory.mktemp("w") / "v1.safetensors", f"test-v1-{uuid.uuid4().hex[:6]}", seed=1
    )


def test_n_images_give_exactly_n_rows_and_n_messages(
    stack: StackSettings, topic: str, group: str, weights_v1: Path
) -> None:
    n = 120
    keys = upload_images(stack, [jpeg(seed) for seed in range(n)])
    ids = [f"n-{uuid.uuid4().hex[:8]}-{i}" for i in range(n)]
    since = verdicts_offsets(stack)
    submit_refs(stack, topic, ids, keys)

    stats = run_scorer(stack, scorer_settings(topic, group, weights_v1), max_records=n, idle_timeout=60)
    assert stats.processed == n and stats.dead_lettered == 0

    rows = verdict_rows(stack, ids)
    assert sorted(r[0] for r in rows) == sorted(ids)
    msgs = verdict_messages(stack, since, set(ids))
    assert sorted(v.image_id for v in msgs) == sorted(ids)
    by_id = {r[0]: r for r in rows}
    for v in msgs:
        assert v.model_version == by_id[v.image_id][1]
        assert v.p_fake == pytest.approx(by_id[v.image_id][2])
        assert v.original_size == (32, 32) and v.original_format == "JPEG"


def test_sigkill_mid_stream_then_restart_gives_exactly_n_rows(
    stack: StackSettings, topic: str, group: str, weights_v1: Path
) -> None:
    n = 400
    keys = upload_images(stack, [jpeg(1000 + seed) for seed in range(n)])
    ids = [f"k-{uuid.uuid4().hex[:8]}-{i}" for i in range(n)]
    submit_refs(stack, topic, ids, keys)
    # A short session timeout so the killed member's partitions move on quickly.
    env = {
        **os.environ,
        "CIFAKE_SCORER_FOLLOW_MODELS": "false",
        "CIFAKE_SCORER_MAX_WAIT_MS": "20",
        "CIFAKE_KAFKA__SESSION_TIMEOUT_MS": "10000",
    }
    cmd = [
        sys.executable,
        "-m",
        "scorer",
        "run",
        "--topic",
        topic,
        "--group",
        group,
        "--weights",
        str(weights_v1),
        "--metrics-port",
        "0",
        "--max-batch",
        "8",
        "--device",
        "cpu",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: len(verdict_rows(stack, ids)) >= 40, 120, "the first verdicts")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    partial = len(verdict_rows(stack, ids))
    assert partial < n, "the scorer finished before it could be killed; raise n"

    # The killed member's partitions move to the new one after the session timeout; idempotent upserts
    # absorb the batch that was written but not committed.
    run_scorer(stack, scorer_settings(topic, group, weights_v1), idle_timeout=40)
    rows = verdict_rows(stack, ids)
    assert len(rows) == n
    assert sorted(r[0] for r in rows) == sorted(ids)


def test_hot_swap_mid_stream_and_bad_announcements_keep_the_old_model(
    stack: StackSettings, topic: str, group: str, weights_v1: Path, tmp_path: Path
) -> None:
    models_topic = f"test.models.{uuid.uuid4().hex[:8]}"
    create_topics(stack, {models_topic: 1})
    store = S3Store(stack.s3)
    v2 = f"test-v2-{uuid.uuid4().hex[:6]}"
    v2_path = make_weights(tmp_path / "v2.safetensors", v2, seed=2)
    v2_bytes = v2_path.read_bytes()
    store.put("models", f"tests/{v2}.safetensors", v2_bytes)
    store.put("models", f"tests/{v2}-corrupt.safetensors", b"not a safetensors file")
    v1_version = ServingModel.load(weights_v1, "cpu").version

    total = 90
    keys = upload_images(stack, [jpeg(5000 + s) for s in range(total)])
    ids = [f"h-{uuid.uuid4().hex[:8]}-{i}" for i in range(total)]
    settings = scorer_settings(
        topic, group, weights_v1, follow_models=True, models_topic=models_topic, max_batch=10
    )
    scorer = ScorerThread(stack, settings, max_records=total, idle_timeout=90)
    try:
        submit_refs(stack, topic, ids[:30], keys[:30])
        wait_until(lambda: len(verdict_rows(stack, ids[:30])) == 30, 90, "verdicts from v1")

        def announce(version: str, key: str, sha: str) -> None:
            msg = ModelPublished(version=version, object_key=key, sha256=sha, published_at=utcnow())
            produce(stack, models_topic, [(version.encode(), encode(msg))])

        produce(stack, models_topic, [(b"x", b"{garbage")])
        announce(v2 + "-badsha", f"tests/{v2}.safetensors", "0" * 64)
        corrupt = f"tests/{v2}-corrupt.safetensors"
        announce(v2 + "-corrupt", corrupt, hashlib.sha256(b"not a safetensors file").hexdigest())
        submit_refs(stack, topic, ids[30:60], keys[30:60])
        wait_until(lambda: len(verdict_rows(stack, ids[:60])) == 60, 90, "verdicts after bad announcements")

        announce(v2, f"tests/{v2}.safetensors", hashlib.sha256(v2_bytes).hexdigest())

        # Trickle records until the swap shows, then the rest: the swap happens between two batches.
        def all_scored(some: list[str]) -> bool:
            return len(verdict_rows(stack, some)) == len(some)

        for i in range(60, total, 5):
            submit_refs(stack, topic, ids[i : i + 5], keys[i : i + 5])
            wait_until(functools.partial(all_scored, ids[: i + 5]), 90, "trickled verdicts")
        scorer.join()
    finally:
        delete_topics(stack, [models_topic])

    rows = verdict_rows(stack, ids)  # ordered by scored_at
    assert sorted(r[0] for r in rows) == sorted(ids)  # none lost, none doubled
    versions = [r[1] for r in rows]
    assert set(versions[:60]) == {v1_version}  # bad announcements changed nothing
    assert versions[-1] == v2
    first_v2 = versions.index(v2)
    assert set(versions[first_v2:]) == {v2}  # once swapped, every later verdict is v2


def test_offline_score_on_folder_and_zip_matches_streaming(
    stack: StackSettings, topic: str, group: str, weights_v1: Path, tmp_path: Path
) -> None:
    images = [jpeg(9000 + s, size=(40 + s, 30)) for s in range(12)]
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, data in enumerate(images):
        (folder / f"{i:02d}.jpg").write_bytes(data)
    archive = tmp_path / "imgs.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i, data in enumerate(images):
            zf.writestr(f"inner/{i:02d}.jpg", data)

    keys = upload_images(stack, images)
    ids = [f"o-{uuid.uuid4().hex[:8]}-{i}" for i in range(len(images))]
    submit_refs(stack, topic, ids, keys)
    run_scorer(stack, scorer_settings(topic, group, weights_v1), max_records=len(images), idle_timeout=60)
    streamed = {r[0]: r[2] for r in verdict_rows(stack, ids)}

    model = ServingModel.load(weights_v1, "cpu")
    limits = DecodeLimits()
    for source in (folder, archive):
        rows = list(score_sources(iter_sources([source], limits), model, limits, band=0.1))
        assert len(rows) == len(images)
        for i, row in enumerate(rows):
            assert row["image_id"] == keys[i]
            assert row["p_fake"] == pytest.approx(streamed[ids[i]], abs=1e-5)
            assert row["original_size"] == [40 + i, 30]


def test_metrics_endpoint_exposes_the_scorer_series(
    stack: StackSettings, topic: str, group: str, weights_v1: Path
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    keys = upload_images(stack, [jpeg(7000 + i) for i in range(5)] + [b"not an image"])
    ids = [f"m-{uuid.uuid4().hex[:8]}-{i}" for i in range(6)]
    submit_refs(stack, topic, ids, keys)
    env = {**os.environ, "CIFAKE_SCORER_FOLLOW_MODELS": "false"}
    cmd = [sys.executable, "-m", "scorer", "run", "--topic", topic, "--group", group]
    cmd += ["--weights", str(weights_v1), "--metrics-port", str(port), "--device", "cpu"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/metrics"

    def scrape() -> str:
        try:
            return urllib.request.urlopen(url, timeout=2).read().decode()
        except OSError:
            return ""

    try:
        wait_until(
            lambda: 'scorer_dead_letters_total{reason="not_an_image"' in scrape(), 120, "the dead letter"
        )
        wait_until(lambda: "scorer_verdicts_total{" in scrape(), 30, "verdict counters")
        body = scrape()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    version = ServingModel.load(weights_v1, "cpu").version
    for series in (
        f'scorer_records_total{{outcome="processed",topic="{topic}"}} 5.0',
        f'scorer_model_info{{arch="baseline",version="{version}"}} 1.0',
        "scorer_batch_size_records_bucket",
        'scorer_stage_seconds_count{stage="infer"}',
        "scorer_end_to_end_latency_seconds_bucket",
        "scorer_consumer_lag_records{",
        "scorer_batch_duration_seconds_count",
    ):
        assert series in body, series
    assert proc.returncode == 0
