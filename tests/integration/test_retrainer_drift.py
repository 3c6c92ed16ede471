"""drift-bench end to end on synthetic data with a tiny budget. It runs the real processes (scorer; retrainer
`run`, which starts its worker) in its own topics and schema: the worker retrains on the label trigger and
publishes, the scorer serves the new version, both stop cleanly on SIGTERM; the summary has the documented
keys, the plot is written, and the run's schema is dropped."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg2
import pytest

from harness.drift import DriftConfig, run_drift_bench
from ingest.settings import StackSettings
from retrainer.settings import GateSettings, TrainBudget
from retrainer.synthetic import make_synthetic_cifake
from scorer.weights import load_weights

pytestmark = pytest.mark.integration


def test_drift_bench_tiny(
    stack: StackSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CIFAKE_CACHE_DIR", str(tmp_path / "cache"))
    data = make_synthetic_cifake(tmp_path / "data", n_per_class=120, seed=0)
    cfg = DriftConfig(
        data=str(data),
        arch="baseline",
        init_steps=20,
        init_batch=32,
        stream=60,
        probes=20,
        rounds=1,
        label_share=1.0,
        max_labels=60,
        eval_max=40,
        budget=TrainBudget(
            steps=10, batch_size=16, replay=40, base_val_max=20, holdout_fraction=0.3, threads=1
        ),
        gate=GateSettings(delta=-1.0, epsilon=1.0, min_holdout=1),
        out=str(tmp_path / "out"),
        round_timeout_s=120,
    )
    summary = run_drift_bench(stack, cfg)
    for key in ("new_before", "new_after", "old_before", "old_after"):
        assert 0.0 <= summary[key] <= 1.0
    assert summary["labels_used"] == 60 and summary["versions_published"] == 1
    assert summary["seconds_to_serving"] is not None and summary["seconds_to_serving"] > 0
    assert (tmp_path / "out" / "drift.png").stat().st_size > 0
    # The first champion is kept for reruns (--init-weights) and loads as the architecture it was trained as.
    assert load_weights(tmp_path / "out" / "init.safetensors")[1].arch == "baseline"
    report = json.loads((tmp_path / "out" / "drift.json").read_text())
    assert [(r["status"], r["trigger"]) for r in report["rows"]] == [
        ("champion", "initial"),
        ("champion", "feedback_count"),
    ]
    assert summary["service_exit_codes"] == [0, 0]
    assert "round 1:" in capsys.readouterr().out
    conn = psycopg2.connect(stack.pg.dsn.get_secret_value())
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM information_schema.schemata WHERE schema_name = %s",
                (f"drift_{summary['run']}",),
            )
            row = cur.fetchone()
            assert row is not None and row[0] == 0, "the run's schema is dropped"
    finally:
        conn.close()
