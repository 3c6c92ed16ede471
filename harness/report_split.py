"""``python -m harness.report_split --data PATH [--weights W]``: a model's figures on the final-report split.

The report split (``retrainer.data.split_report``) is the part of the validation split that nothing was tuned
on: no early stopping, temperature or threshold. A model trained with ``--report-fraction`` has one in its
metadata; for an older model (v1-v3, tuned on all of its validation split) ``--report-fraction`` carves the
same kind of part out of its validation split, which it never trained on. Prints the figures at the
model's threshold and at 0.5, and writes them with the machine to ``--out`` when given (the full evaluation
report goes to ``--report-dir``). ``harness.model_compare`` measures several models this way in one run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from typing import Any

from harness.machine import publish
from ingest import cli
from retrainer.evaluate import EvalConfig, evaluate

KEYS = ("accuracy", "accuracy_at_0.5", "auroc", "ece", "accuracy_dedup", "threshold", "counts")


def figures(report: dict[str, Any]) -> dict[str, Any]:
    return {k: report[k] for k in KEYS if k in report}


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="cifake-report-") as tmp:
        out = args.report_dir or tmp
        report = evaluate(
            EvalConfig(
                weights=args.weights,
                data=args.data,
                split="report",
                out=out,
                report_fraction=args.report_fraction,
                threads=args.threads,
            )
        )
    result = {"weights": args.weights, "model": report.get("model"), "split": "report", **figures(report)}
    if args.report_fraction is not None:
        result["report_fraction"] = args.report_fraction
    return publish(args.out, result, "harness.report_split")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.report_split", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="cifake-train.zip (or the CIFAKE folder)")
    p.add_argument("--weights", default="default")
    p.add_argument(
        "--report-fraction",
        type=float,
        help="for a model trained without a report split (v1-v3: 0.5)",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--report-dir", help="keep the full evaluation report (HTML, figures) here")
    p.add_argument("--out", default="", help="also write the result file here")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    cli.configure_logging(args.log_level)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
