"""``python -m harness.drift_bench``: the command line of the drift experiment (``harness/drift.py``).

Does feedback teach the service a shifted distribution, end to end? See ``docs/retrainer.md``.

Besides ``drift.json`` / ``drift.png`` in ``--out`` it writes the result file the docs quote (``--result``,
default ``benchmarks/drift/drift.json``): the run's config, rows and summary with the machine it ran on, the
command and the load average before and after; the figure goes beside it (same name, ``.png``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from harness.drift import DriftConfig, run_drift_bench
from harness.machine import ROOT, machine_info
from ingest.settings import StackSettings, load
from retrainer.settings import GateSettings


def parser() -> argparse.ArgumentParser:
    d = DriftConfig()
    p = argparse.ArgumentParser(
        prog="python -m harness.drift_bench",
        description="end-to-end drift experiment on the real stack (own topics/schema)",
    )
    p.add_argument(
        "--data",
        default=os.environ.get("CIFAKE_RETRAINER_BASE_DATA", d.data),
        required=not (os.environ.get("CIFAKE_RETRAINER_BASE_DATA") or d.data),
        help="CIFAKE folder or zip (default: $CIFAKE_RETRAINER_BASE_DATA)",
    )
    p.add_argument(
        "--old-categories",
        default=",".join(map(str, d.old_categories)),
        help="CIFAR-10 category indices the first champion is trained on",
    )
    p.add_argument("--arch", default=d.arch)
    p.add_argument("--init-steps", type=int, default=d.init_steps)
    p.add_argument("--init-max", type=int, default=d.init_max, help="training images for the first champion")
    p.add_argument("--init-weights", help="reuse this first champion (same seed, stream, probes, init-max)")
    p.add_argument("--stream", type=int, default=d.stream, help="images streamed (all categories)")
    p.add_argument("--rounds", type=int, default=d.rounds)
    p.add_argument("--label-share", type=float, default=d.label_share)
    p.add_argument("--max-labels", type=int, default=d.max_labels)
    p.add_argument("--eval-max", type=int, default=d.eval_max)
    p.add_argument("--steps", type=int, default=d.budget.steps, help="fine-tuning steps per retrain")
    p.add_argument("--replay", type=int, default=d.budget.replay)
    p.add_argument("--base-val-max", type=int, default=d.budget.base_val_max)
    p.add_argument("--lr", type=float, default=d.budget.lr)
    p.add_argument("--feedback-share", type=float, default=d.budget.feedback_share)
    p.add_argument("--interpolate", type=float, default=d.budget.interpolate, help="WiSE-FT weight (1: off)")
    p.add_argument("--delta", type=float, default=d.gate.delta)
    p.add_argument("--epsilon", type=float, default=d.gate.epsilon)
    p.add_argument("--threads", type=int, default=0, help="torch threads for training (0: measured)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", default=d.out)
    p.add_argument("--keep", action="store_true", help="keep the run's topics and schema")
    p.add_argument(
        "--result",
        default=str(ROOT / "benchmarks" / "drift" / "drift.json"),
        help="result file with the machine; the figure goes beside it as .png ('' to skip)",
    )
    p.add_argument("--note", help="recorded in the result file (e.g. what else ran on the machine)")
    return p


def write_result(
    path: Path, out: Path, command: str, loadavg_start: tuple[float, ...], note: str | None = None
) -> dict[str, Any]:
    """The result file the docs quote: ``out/drift.json`` with where and how it ran; ``out/drift.png`` is
    copied beside it (same name, ``.png``)."""
    report = json.loads((out / "drift.json").read_text())
    doc: dict[str, Any] = {
        "machine": machine_info(packages=("torch", "kafka-python")),
        "command": command,
        # Kafka, MinIO, PostgreSQL, the scorer and the retrainer share the machine's cores with anything
        # else running; the load average says how busy it was.
        "loadavg_start": [round(x, 2) for x in loadavg_start],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        **({"note": note} if note else {}),
        **report,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    shutil.copyfile(out / "drift.png", path.with_suffix(".png"))
    return doc


def run(args: argparse.Namespace, stack: StackSettings, argv: list[str] | None = None) -> int:
    d = DriftConfig()
    cfg = DriftConfig(
        data=args.data,
        old_categories=tuple(int(c) for c in args.old_categories.split(",")),
        arch=args.arch,
        init_steps=args.init_steps,
        init_max=args.init_max,
        init_weights=args.init_weights,
        stream=args.stream,
        rounds=args.rounds,
        label_share=args.label_share,
        max_labels=args.max_labels,
        eval_max=args.eval_max,
        budget=d.budget.model_copy(
            update={
                "steps": args.steps,
                "replay": args.replay,
                "base_val_max": args.base_val_max,
                "lr": args.lr,
                "feedback_share": args.feedback_share,
                "interpolate": args.interpolate,
                "threads": args.threads,
                "seed": args.seed,
            }
        ),
        gate=GateSettings(delta=args.delta, epsilon=args.epsilon, min_holdout=d.gate.min_holdout),
        seed=args.seed,
        out=args.out,
        keep=args.keep,
    )
    loadavg_start = os.getloadavg()
    summary = run_drift_bench(stack, cfg)
    if args.result:
        command = " ".join(["python -m harness.drift_bench", *(sys.argv[1:] if argv is None else argv)])
        write_result(Path(args.result), Path(cfg.out), command, loadavg_start, args.note)
    print(json.dumps(summary), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    return run(args, load(StackSettings), argv)


if __name__ == "__main__":
    raise SystemExit(main())
