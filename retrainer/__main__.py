"""``python -m retrainer {train,evaluate,models,known,run,worker,retrain-now}``: entry point; the
only place logging handlers are set."""

from __future__ import annotations

import argparse
import sys

from ingest import cli
from ingest.cli import Command, Handler, SubParsers
from retrainer.cli import SERVICE_COMMANDS
from scorer.models import list_models


def _add_train(sub: SubParsers) -> Handler:
    p = sub.add_parser("train", help="train a detector on a CIFAKE folder or zip")
    p.add_argument("--data", required=True, help="CIFAKE folder (train/REAL, train/FAKE) or the zip")
    p.add_argument("--arch", default="fastnet", choices=list_models())
    p.add_argument("--width", type=int, default=None, help="width multiplier passed to the architecture")
    p.add_argument("--out", default="runs/train", help="output folder (checkpoints, model.safetensors)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate (SGD, Nesterov)")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--warmup", type=float, default=0.03, help="warm-up fraction of training")
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay of the weights (0 disables)")
    p.add_argument("--jpeg-p", type=float, default=0.25, help="probability of a JPEG re-encoded sample")
    p.add_argument("--jpeg-q-min", type=int, default=40)
    p.add_argument("--jpeg-q-max", type=int, default=90)
    p.add_argument("--shift", type=int, default=2, help="max random translation in pixels")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument(
        "--report-fraction",
        type=float,
        default=0.0,
        help="share of the validation split held out for the final report: never used for early stopping, "
        "temperature or threshold (evaluate --split report)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-train", type=int, default=None, help="train on a stratified subset of this size")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    p.add_argument(
        "--time-budget", type=float, default=None, help="seconds; the LR schedule follows the clock"
    )
    p.add_argument("--patience", type=int, default=0, help="early stop after N epochs without improvement")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads; 0 = switch between 1 and all cores by speed",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors")
    p.add_argument(
        "--tta-flip",
        action="store_true",
        help="ship the model with flip test-time augmentation (fastnet; halves inference throughput)",
    )
    p.add_argument("--init", default=None, help="start from these weights (fine-tuning); sets parent_version")
    p.add_argument(
        "--teacher",
        action="append",
        default=[],
        help="distil from these weights (repeat for an ensemble: their mean p_fake); see --distill",
    )
    p.add_argument(
        "--distill", type=float, default=0.5, help="with --teacher: the teachers' share of each target"
    )
    p.add_argument("--version", default=None, help="version string stored in the metadata")
    p.add_argument("--no-progress", action="store_true")

    def run(args: argparse.Namespace) -> int:
        from retrainer.train import TrainConfig, train

        cfg = TrainConfig(
            data=args.data,
            arch=args.arch,
            width=args.width,
            out=args.out,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            label_smoothing=args.label_smoothing,
            warmup=args.warmup,
            ema=args.ema,
            jpeg_p=args.jpeg_p,
            jpeg_q_min=args.jpeg_q_min,
            jpeg_q_max=args.jpeg_q_max,
            shift=args.shift,
            val_fraction=args.val_fraction,
            report_fraction=args.report_fraction,
            seed=args.seed,
            max_train=args.max_train,
            max_steps=args.max_steps,
            time_budget=args.time_budget,
            patience=args.patience,
            threads=args.threads,
            device=args.device,
            resume=args.resume,
            tta_flip=args.tta_flip,
            init=args.init,
            teachers=args.teacher,
            distill=args.distill,
            version=args.version,
            progress=not args.no_progress,
        )
        result = train(cfg)
        wall_s = round(result.wall_s, 1)
        return cli.print_result({"weights": str(result.weights), "wall_s": wall_s, **result.meta.metrics})

    return run


def _add_evaluate(sub: SubParsers) -> Handler:
    p = sub.add_parser("evaluate", help="metrics, figures and an HTML report for a weights file")
    p.add_argument("--weights", default="default", help="weights file, or 'default' for the shipped model")
    p.add_argument("--data", required=True, help="CIFAKE folder or zip")
    p.add_argument(
        "--split",
        choices=["val", "report", "test"],
        default="val",
        help="val: the images the model was tuned on; report: the validation images held out of tuning",
    )
    p.add_argument(
        "--report-fraction",
        type=float,
        help="for --split report on a model trained without one: the share of its validation split to use",
    )
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--robustness", action="store_true", help="also score perturbed copies")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=1024)

    def run(args: argparse.Namespace) -> int:
        from retrainer.evaluate import EvalConfig, evaluate

        report = evaluate(
            EvalConfig(
                weights=args.weights,
                data=args.data,
                split=args.split,
                report_fraction=args.report_fraction,
                out=args.out,
                robustness=args.robustness,
                threads=args.threads,
                device=args.device,
                batch_size=args.batch_size,
            )
        )
        keys = ("accuracy", "auroc", "ece", "accuracy_dedup")
        return cli.print_result({k: report[k] for k in keys} | {"out": args.out})

    return run


COMMANDS: list[Command] = [_add_train, _add_evaluate, *SERVICE_COMMANDS]


def main(argv: list[str] | None = None) -> int:
    return cli.main("python -m retrainer", __doc__, COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
