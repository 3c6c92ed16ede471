"""``python -m harness.explainer_studies <command>``: the explainer's offline studies and figures.

``faithfulness`` (deletion/insertion curves), ``evidence`` (where the maps put their mass), ``bench``
(explanations/s against the bare model) and ``gallery`` (the overlay figure). They read CIFAKE's
validation split through the retrainer's loader (``harness/explainer_data.py``), the split the model was
selected on. Results go under ``benchmarks/explainer/`` and ``docs/figures/``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from harness.machine import write_json
from ingest import cli
from ingest.cli import Command, Handler, SubParsers

METHOD_CHOICES = ["gradcam", "hirescam", "layercam"]

logger = logging.getLogger("explainer")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", default="default", help="weights file or 'default'")
    p.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def _load(args: argparse.Namespace) -> Any:
    import torch

    from scorer.engine import ServingModel

    if args.threads:
        torch.set_num_threads(args.threads)
    return ServingModel.load(args.weights, args.device)


def _add_faithfulness(sub: SubParsers) -> Handler:
    p = sub.add_parser("faithfulness", help="deletion/insertion curves, CAM order vs random (JSON + PNG)")
    _common(p)
    p.add_argument("--data", required=True, help="CIFAKE folder or zip (its validation split is used)")
    p.add_argument("--n", type=int, default=2000, help="FAKE validation images to use")
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--method", action="append", choices=METHOD_CHOICES, help="repeatable (default gradcam)")
    p.add_argument("--unit", action="append", type=int, help="deletion unit in px, repeatable (default 4)")
    p.add_argument(
        "--baseline",
        action="append",
        choices=["rise", "real"],
        help="what deleted units become / insertion starts from, repeatable (default rise)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/explainer/faithfulness.json")
    p.add_argument("--plot", default="docs/figures/explainer-faithfulness.png")

    def run(args: argparse.Namespace) -> int:
        from harness.explainer_data import load_validation, sample
        from harness.explainer_faithfulness import faithfulness, plot

        model = _load(args)
        val = load_validation(args.data, model.meta)
        ds = sample(val, args.n, args.seed, label=1)
        donors = sample(val, args.n, args.seed + 1, label=0).images
        report = faithfulness(
            model,
            ds.images,
            args.method or ["gradcam"],
            args.steps,
            args.unit or [4],
            args.baseline or ["rise"],
            donors=donors,
            seed=args.seed,
        )
        report["data"] = Path(args.data).name
        write_json(args.out, report, indent=1)
        if args.plot:
            Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
            plot(report, args.plot)
        areas = {c: r["areas"] for c, r in report["by_config"].items()}
        return cli.print_result({"out": args.out, "plot": args.plot, "n": report["n"], "areas": areas})

    return run


def _add_evidence(sub: SubParsers) -> Handler:
    p = sub.add_parser("evidence", help="border vs centre mass of the maps per class and category (+ figure)")
    _common(p)
    p.add_argument("--data", required=True, help="CIFAKE folder or zip (its validation split is used)")
    p.add_argument("--n", type=int, default=None, help="images (default: the whole validation split)")
    p.add_argument("--method", choices=METHOD_CHOICES, default="gradcam")
    p.add_argument("--target", choices=["predicted", "fake", "real"], default="predicted")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/explainer/evidence.json")
    p.add_argument("--plot", default="docs/figures/explainer-evidence.png")

    def run(args: argparse.Namespace) -> int:
        from harness.explainer_data import load_validation, sample
        from harness.explainer_evidence import aggregate, compute_maps, plot

        model = _load(args)
        ds = sample(load_validation(args.data, model.meta), args.n, args.seed)
        maps, _targets, p_fake = compute_maps(model, ds.images, args.method, args.target)
        predicted = (p_fake >= model.meta.threshold).astype("int64")
        report = {
            "method": args.method,
            "target": args.target,
            "model_version": model.version,
            "data": Path(args.data).name,
            **aggregate(maps, ds.labels, ds.categories, ds.category_names, predicted),
        }
        write_json(args.out, report, indent=1)
        if args.plot:
            Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
            plot(report, args.plot, ds.category_names)
        brief = {k: report[k] for k in ("n", "border_area_share", "overall", "by_class")}
        return cli.print_result({"out": args.out, "plot": args.plot, **brief})

    return run


def _add_bench(sub: SubParsers) -> Handler:
    p = sub.add_parser("bench", help="explanations/s vs the bare model's images/s (JSON last line)")
    _common(p)
    p.add_argument("--method", choices=METHOD_CHOICES, default="gradcam")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--min-time", type=float, default=2.0, help="seconds timed per measurement")
    p.add_argument("--rounds", type=int, default=3, help="alternating raw/explain rounds (medians reported)")
    p.add_argument("--out", help="also write the JSON here")

    def run(args: argparse.Namespace) -> int:
        from harness.explainer_bench import bench

        result = bench(_load(args), args.method, args.batch, args.min_time, args.rounds)
        if args.out:
            write_json(args.out, result, indent=1)
        return cli.print_result(result)

    return run


def _add_gallery(sub: SubParsers) -> Handler:
    p = sub.add_parser("gallery", help="a README figure: validation images and their stored-style overlays")
    _common(p)
    p.add_argument("--data", required=True, help="CIFAKE folder or zip (its validation split is used)")
    p.add_argument("--method", choices=METHOD_CHOICES, default="gradcam")
    p.add_argument("--n-fake", type=int, default=6)
    p.add_argument("--n-real", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="docs/figures/explainer-overlays.png")

    def run(args: argparse.Namespace) -> int:
        from harness.explainer_data import load_validation
        from harness.explainer_gallery import gallery

        model = _load(args)
        ds = load_validation(args.data, model.meta)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        info = gallery(
            model, ds.images, ds.labels, args.out, args.method, args.n_fake, args.n_real, args.seed
        )
        return cli.print_result(info)

    return run


COMMANDS: list[Command] = [
    _add_faithfulness,
    _add_evidence,
    _add_bench,
    _add_gallery,
]


def main(argv: list[str] | None = None) -> int:
    return cli.main("python -m harness.explainer_studies", "the explainer's offline studies", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
