"""Re-scoring after a champion change: what the old champion scored in the window is resubmitted."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg2
import pytest

from ingest.contracts import ImageSubmitted, decode
from ingest.settings import StackSettings
from ingest.storage import S3Store
from ingest.times import parse_since
from retrainer.__main__ import main as retrainer_main
from retrainer.registry import Announcer, ModelRegistry
from retrainer.rescore import rescore
from tests.kafka_helpers import read_all
from tests.retrainer_helpers import insert_images, models_topic
from tests.scorer_helpers import make_weights

pytestmark = pytest.mark.integration


def add_verdict(stack: StackSettings, image_id: str, version: str, minutes_ago: float) -> None:
    conn = psycopg2.connect(stack.pg.dsn.get_secret_value())
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                "INSERT INTO verdicts (image_id, model_version, p_fake, label, threshold, scored_at)"
                " VALUES (%s, %s, 0.5, 'uncertain', 0.5, now() - %s * interval '1 minute')",
                (image_id, version, minutes_ago),
            )
    finally:
        conn.close()


def test_rescore_resubmits_the_window_and_waits_for_the_new_version(iso: StackSettings, topic: str) -> None:
    insert_images(iso, ["a", "b", "old"], ["s3://images/ka", "s3://images/kb", "s3://images/kold"])
    insert_images(iso, ["inline"])  # no stored reference
    for image_id, minutes in (("a", 5), ("b", 10), ("inline", 5), ("old", 600)):
        add_verdict(iso, image_id, "v-old", minutes)
    add_verdict(iso, "a", "v-other", 1)  # another version's verdict is not resubmitted
    # The probe is the earliest-scored image ("b"); a scorer serving v-new would write this verdict for it.
    add_verdict(iso, "b", "v-new", 0)

    result = rescore(iso, "v-old", parse_since("1h"), topic, new_version="v-new", wait_s=5)
    assert (result.resubmitted, result.without_reference) == (2, 1)
    msgs = [decode(ImageSubmitted, v) for *_x, v in read_all(iso, topic, 2, timeout=10)]
    assert sorted(m.image_id for m in msgs) == ["a", "b"]
    assert {m.ref for m in msgs} == {"s3://images/ka", "s3://images/kb"}
    assert all(m.metadata == {"rescore_of": "v-old"} for m in msgs)


def test_rescore_times_out_when_no_scorer_serves_the_new_version(iso: StackSettings, topic: str) -> None:
    insert_images(iso, ["a"], ["s3://images/ka"])
    add_verdict(iso, "a", "v-old", 1)
    with pytest.raises(TimeoutError):
        rescore(iso, "v-old", parse_since("1h"), topic, new_version="v-new", wait_s=1)


def test_rollback_cli_with_rescore(
    iso: StackSettings,
    topic: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with models_topic(iso) as mtopic:
        registry = ModelRegistry(iso, S3Store(iso.s3), Announcer(iso, mtopic), key_prefix="test-rescore/")
        for i, v in enumerate(["r1", "r2"]):
            path = make_weights(tmp_path / f"{v}.safetensors", v, seed=i)
            registry.publish(
                path.read_bytes(),
                version=v,
                parent=None,
                status="champion",
                trigger="manual",
                metrics={},
                data_info={},
            )
        insert_images(iso, ["x"], ["s3://images/kx"])
        add_verdict(iso, "x", "r2", 1)
        add_verdict(iso, "x", "r1", 0)  # as if a scorer already served r1 again
        monkeypatch.setenv("CIFAKE_PG__DSN", iso.pg.dsn.get_secret_value())
        args = ["models", "--topic", mtopic, "rollback", "--json", "--rescore-since", "1h"]
        assert retrainer_main([*args, "--rescore-topic", topic, "--rescore-wait", "5"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert (
            out["version"] == "r1"
            and out["rescore"]["resubmitted"] == 1
            and out["rescore"]["version"] == "r2"
        )
