"""The explainer on the real stack: N verdicts -> N rows, 3N objects, N messages; crash, DLQ, policy."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from explainer.service import run_explainer
from harness.wait import wait_until
from ingest.contracts import DeadLetter, Explanation, decode
from ingest.settings import StackSettings
from tests.conftest import ROOT
from tests.explainer_helpers import (
    check_objects,
    explainer_settings,
    explanation_rows,
    objects_under,
    register_model,
    send_verdicts,
    stored_images,
)
from tests.kafka_helpers import committed, create_topics, delete_topics, end_offsets, read_all
from tests.scorer_helpers import make_weights

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_weights(
        tmp_path_factory.mktemp("w") / "v1.safetensors", f"test-expl-{uuid.uuid4().hex[:6]}", seed=1
    )


@pytest.fixture
def out_topic(stack: StackSettings, topic: str) -> Iterator[str]:
    name = f"{topic}.out"
    create_topics(stack, {name: 3})
    yield name
    delete_topics(stack, [name])


def _version(weights: Path) -> str:
    from scorer.weights import read_meta

    return read_meta(weights).version


def _ids(prefix: str, n: int) -> list[str]:
    tag = uuid.uuid4().hex[:8]
    return [f"{prefix}-{tag}-{i}" for i in range(n)]


def test_n_flagged_verdicts_give_n_rows_3n_objects_n_messages(
    stack: StackSettings, topic: str, group: str, out_topic: str, weights: Path
) -> None:
    n, version = 24, _version(weights)
    ids = _ids("e", n)
    stored_images(stack, ids, seed=10)
    labels = ["fake" if i % 3 else "uncertain" for i in range(n)]  # the default policy explains both
    send_verdicts(stack, topic, ids, version, labels)

    settings = explainer_settings(topic, group, out_topic, weights, methods=["gradcam", "hirescam"])
    stats = run_explainer(stack, settings, max_records=n, idle_timeout=60)
    assert stats.processed == n and stats.dead_lettered == 0

    rows = explanation_rows(stack, ids)
    assert sorted((r.image_id, r.method) for r in rows) == sorted(
        (i, m) for i in ids for m in ("gradcam", "hirescam")
    )
    for r in rows:
        assert r.model_version == version
        check_objects(stack, r)
    for i in ids:
        assert len(objects_under(stack, i)) == 6  # 3 per method, nothing else under the image's prefix
    msgs = [decode(Explanation, v) for _p, _o, _k, v in read_all(stack, out_topic, expect=2 * n)]
    assert sorted((m.image_id, m.method) for m in msgs) == sorted((r.image_id, r.method) for r in rows)
    by_key = {(r.image_id, r.method): r for r in rows}
    for m in msgs:
        assert m.keys == by_key[(m.image_id, m.method)].keys
        assert m.evidence["peak"] == by_key[(m.image_id, m.method)].evidence["peak"]
    assert committed(stack, group, topic) == end_offsets(stack, topic)


def test_policy_fake_skips_real_and_uncertain(
    stack: StackSettings, topic: str, group: str, out_topic: str, weights: Path
) -> None:
    ids = _ids("p", 9)
    stored_images(stack, ids, seed=200)
    labels = ["fake", "real", "uncertain"] * 3
    send_verdicts(stack, topic, ids, _version(weights), labels)
    settings = explainer_settings(topic, group, out_topic, weights, policy="fake")
    stats = run_explainer(stack, settings, max_records=9, idle_timeout=60)
    assert stats.processed == 9 and stats.dead_lettered == 0  # skipped verdicts are committed, not failed
    explained = sorted(r.image_id for r in explanation_rows(stack, ids))
    assert explained == sorted(i for i, lab in zip(ids, labels, strict=True) if lab == "fake")
    for i, lab in zip(ids, labels, strict=True):
        if lab != "fake":
            assert objects_under(stack, i) == []
    assert committed(stack, group, topic) == end_offsets(stack, topic)


def test_vanished_image_unknown_image_and_unknown_model_are_dead_lettered(
    stack: StackSettings, topic: str, group: str, out_topic: str, weights: Path, tmp_path: Path
) -> None:
    version = _version(weights)
    good, vanished, unknown_model, no_row = _ids("ok", 3), _ids("gone", 1), _ids("um", 1), _ids("norow", 1)
    stored_images(stack, good + unknown_model, seed=300)
    # The row names an object that has since been deleted (bytes unique to this run).
    stored_images(stack, vanished, seed=10**6 + uuid.uuid4().int % 10**9, vanish=True)
    # A verdict from an older model that is only in the registry is explained with that model.
    other = f"test-reg-{uuid.uuid4().hex[:6]}"
    register_model(stack, other, make_weights(tmp_path / "other.safetensors", other, seed=2))
    send_verdicts(stack, topic, good[:2] + vanished + no_row, version)
    send_verdicts(stack, topic, good[2:], other)
    send_verdicts(stack, topic, unknown_model, f"never-published-{uuid.uuid4().hex[:6]}")

    settings = explainer_settings(topic, group, out_topic, weights, model_cache_size=1)
    stats = run_explainer(stack, settings, max_records=6, idle_timeout=60)
    assert stats.processed == 3 and stats.dead_lettered == 3

    rows = {r.image_id: r for r in explanation_rows(stack, good + vanished + unknown_model + no_row)}
    assert sorted(rows) == sorted(good)
    assert rows[good[2]].model_version == other and rows[good[0]].model_version == version
    letters = [decode(DeadLetter, v) for _p, _o, _k, v in read_all(stack, topic + ".dlq", expect=3)]
    by_id = {base64.b64decode(lt.key_b64 or "").decode(): lt for lt in letters}
    assert by_id[vanished[0]].code == "missing_object" and "does not exist" in by_id[vanished[0]].reason
    assert by_id[no_row[0]].code == "unknown_image"
    assert by_id[unknown_model[0]].code == "unknown_model_version"
    assert all(lt.service == "explainer" and lt.topic == topic for lt in letters)


def test_sigkill_then_restart_leaves_no_duplicates_and_no_missing_objects(
    stack: StackSettings, topic: str, group: str, out_topic: str, weights: Path
) -> None:
    n = 160
    ids = _ids("k", n)
    stored_images(stack, ids, seed=1000)
    send_verdicts(stack, topic, ids, _version(weights))
    env = {
        **os.environ,
        "CIFAKE_EXPLAINER_FOLLOW_MODELS": "false",
        "CIFAKE_EXPLAINER_MAX_WAIT_MS": "20",
        "CIFAKE_KAFKA__SESSION_TIMEOUT_MS": "6000",
    }
    cmd = [
        sys.executable,
        "-m",
        "explainer",
        "run",
        "--topic",
        topic,
        "--group",
        group,
        "--output-topic",
        out_topic,
        "--weights",
        str(weights),
        "--metrics-port",
        "0",
        "--max-batch",
        "4",
        "--device",
        "cpu",
    ]

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    proc = start()
    try:
        wait_until(lambda: len(explanation_rows(stack, ids)) >= 8, 120, "the first explanations")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    partial = len(explanation_rows(stack, ids))
    assert partial < n, "the explainer finished before it could be killed; raise n"

    # The restarted member takes the partitions over once the killed one's session expires; the batch
    # that was written but not committed is replayed onto the same keys. SIGTERM then stops it cleanly.
    proc = start()
    try:
        wait_until(lambda: len(explanation_rows(stack, ids)) == n, 150, "all explanations after restart")
        wait_until(
            lambda: committed(stack, group, topic) == end_offsets(stack, topic), 60, "the final commit"
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()

    rows = explanation_rows(stack, ids)
    assert sorted(r.image_id for r in rows) == sorted(ids)  # exactly one row each
    for r in rows:
        assert objects_under(stack, r.image_id) == sorted(r.keys.values())  # all three, nothing else
    for r in rows[:: max(1, n // 10)]:  # open a sample: every object is complete
        check_objects(stack, r)
    # Messages are at least once: every explanation announced, replays may repeat one, never a stranger.
    msgs = [decode(Explanation, v) for _p, _o, _k, v in read_all(stack, out_topic, expect=n)]
    assert {m.image_id for m in msgs} == set(ids)
