"""``python -m harness.model_compare --data PATH --weights A --weights B``: two detectors side by side.

For each weights file, on the final-report split (``harness.report_split``: nothing was tuned on it;
``--report-fraction`` carves it for a model trained without one, e.g. v3 with 0.5): accuracy at the
model's threshold and at 0.5, AUROC, ECE, and the accuracy drop under each robustness perturbation (JPEG,
blur, resize). Then the served runtime's raw throughput (``scorer bench-model``'s measure) at batches of
1, 32 and 256, the models alternated over ``--rounds`` on the same machine in the same run (median kept),
because this VM's speed changes between runs more than two models of the same size differ. Writes
``benchmarks/default_model/compare.json``. With ``--ensemble``, also the figures of the models' mean p_fake on
the same split (``ensemble``): what a distillation teacher made of them would know (``retrainer.distill``).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from harness.machine import publish
from harness.report_split import figures
from ingest import cli
from retrainer.evaluate import EvalConfig, evaluate, load_eval_split
from retrainer.metrics import auroc, ece
from scorer.bench import bench_serving
from scorer.engine import ServingModel
from scorer.infer import p_fake_from_logits, predict_logits
from scorer.weights import load_weights

logger = logging.getLogger(__name__)

BATCHES = (1, 32, 256)


def quality(weights: str, data: str, report_fraction: float | None, threads: int) -> dict[str, Any]:
    """The report split's figures and robustness drops (points) for ``weights``."""
    with tempfile.TemporaryDirectory(prefix="cifake-compare-") as tmp:
        report = evaluate(
            EvalConfig(
                weights=weights,
                data=data,
                split="report",
                out=tmp,
                robustness=True,
                report_fraction=report_fraction,
                threads=threads,
            )
        )
    model = report.get("model") or {}
    out: dict[str, Any] = {
        "version": model.get("version"),
        "params": model.get("params"),
        "sha256": model.get("sha256"),
        **figures(report),
    }
    out["robustness_drop_points"] = {
        name: round(100 * r["accuracy_drop"], 2) for name, r in (report.get("robustness") or {}).items()
    }
    return out


def throughput(weights: list[str], rounds: int, min_time: float) -> list[dict[str, Any]]:
    """``bench_serving`` per model, alternated ``rounds`` times; the median per batch size."""
    models = [ServingModel.load(w, "cpu") for w in weights]
    runs: list[list[dict[str, Any]]] = [[] for _ in models]
    for r in range(rounds):
        for i, m in enumerate(models):
            runs[i].append(bench_serving(m, BATCHES, min_time))
            logger.info("round %d, %s: %s", r + 1, weights[i], runs[i][-1])
    out = []
    for model_runs in runs:
        row: dict[str, Any] = {k: v for k, v in model_runs[0].items() if not k.endswith("_images_per_s")}
        for bs in BATCHES:
            key = f"batch{bs}_images_per_s"
            row[key] = round(statistics.median(run[key] for run in model_runs), 1)
            row[f"{key}_runs"] = [run[key] for run in model_runs]
        out.append(row)
    return out


def ensemble(weights: list[str], data: str, report_fraction: float | None) -> dict[str, Any]:
    """Accuracy at 0.5, AUROC and ECE of the models' mean p_fake on the report split (the first model's;
    every model must have the same one, which ``evaluate`` has already checked for the rows)."""
    models = [load_weights(w) for w in weights]
    split = load_eval_split(data, "report", models[0][1], report_fraction)
    ps = [p_fake_from_logits(predict_logits(m, split.images, meta.mean, meta.std)) for m, meta in models]
    p, y = np.mean(ps, axis=0), split.labels
    return {
        "accuracy_at_0.5": float(((p >= 0.5).astype(np.int64) == y).mean()),
        "auroc": auroc(y, p),
        "ece": ece(y, p),
        "n": len(y),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    rows = [quality(w, args.data, args.report_fraction, args.threads) for w in args.weights]
    for row, speed in zip(rows, throughput(args.weights, args.rounds, args.min_time), strict=True):
        row["bench_model"] = speed
    result: dict[str, Any] = {"split": "report", "models": dict(zip(args.weights, rows, strict=True))}
    if args.ensemble:
        result["ensemble"] = ensemble(args.weights, args.data, args.report_fraction)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.model_compare", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="cifake-train.zip (or the CIFAKE folder)")
    p.add_argument("--weights", action="append", required=True, help="a weights file or 'default'; twice")
    p.add_argument(
        "--report-fraction",
        type=float,
        help="for a model trained without a report split (v3: 0.5); a model with one must match it",
    )
    p.add_argument("--ensemble", action="store_true", help="also the figures of the models' mean p_fake")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--min-time", type=float, default=2.0, help="seconds timed per batch size and round")
    p.add_argument("--out", default=str(Path("benchmarks/default_model/compare.json")))
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    cli.configure_logging(args.log_level)
    result = run(args)
    return publish(args.out, result, "harness.model_compare")


if __name__ == "__main__":
    sys.exit(main())
