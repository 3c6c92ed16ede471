"""promote / rollback through the registry make a running scorer switch versions (in-process scorer)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.wait import wait_until
from ingest.settings import StackSettings
from ingest.storage import S3Store
from retrainer.registry import Announcer, ModelRegistry
from tests.retrainer_helpers import models_topic
from tests.scorer_helpers import (
    ScorerThread,
    jpeg,
    make_weights,
    scorer_settings,
    submit_refs,
    upload_images,
    verdict_rows,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def mtopic(stack: StackSettings) -> Iterator[str]:
    with models_topic(stack) as t:
        yield t


def test_promote_and_rollback_switch_a_running_scorer(
    iso: StackSettings, mtopic: str, topic: str, group: str, tmp_path: Path
) -> None:
    registry = ModelRegistry(
        iso, S3Store(iso.s3), Announcer(iso, mtopic), key_prefix=f"test-{uuid.uuid4().hex[:8]}/"
    )
    for i, v in enumerate(["v1", "v2"]):
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
    start = make_weights(tmp_path / "v0.safetensors", "v0", seed=9)
    settings = scorer_settings(topic, group, start, follow_models=True, models_topic=mtopic)
    # The scorer stops after this long without records: long enough for a slow first group assignment on
    # a freshly started broker (a fresh-clone CI run once timed out here with 6 s, its join having logged
    # "No partition metadata"), short enough that join() below does not wait long.
    scorer = ScorerThread(iso, settings, idle_timeout=20)
    submitted = 0
    tag = uuid.uuid4().hex[:8]

    def served_by(version: str) -> None:
        """Submit one image at a time until a verdict of this phase names ``version``."""
        nonlocal submitted
        phase: list[str] = []

        def switched() -> bool:
            nonlocal submitted
            rows = verdict_rows(iso, phase)
            if any(r[1] == version for r in rows):
                return True
            if len(rows) == len(phase):  # everything so far is scored: send the next image
                data = jpeg(submitted + 1000)
                (key,) = upload_images(iso, [data])
                image_id = f"{tag}-{submitted}"
                submit_refs(iso, topic, [image_id], [key])
                phase.append(image_id)
                submitted += 1
            return False

        wait_until(switched, 60, f"a verdict from {version}", interval=0.2)

    served_by("v2")  # at start the scorer replays the latest announcement
    assert registry.rollback().version == "v1"
    served_by("v1")
    assert registry.promote("v2").version == "v2"
    served_by("v2")
    stats = scorer.join(60)
    assert stats.processed == submitted
