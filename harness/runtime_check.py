"""``python -m harness.runtime_check --data PATH``: does ONNX Runtime serve the same model as PyTorch, and
what does each cost per image on this CPU?

On the shipped model's own validation split (reproduced from its metadata, ``harness.demo_samples``), both
runtimes score every image; the result gives each one's accuracy at the model's threshold and at 0.5, the
difference, the largest |p_fake difference| and how many labels differ. Then each runtime's throughput and
CPU-ms per image at batches of 64 and 256 on 1 and 2 threads (random uint8 images, this process only).
Writes ``benchmarks/pipeline/runtime.json``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.cpu_meter import per_call_cost
from harness.machine import publish
from ingest import cli
from scorer.engine import ServingModel

logger = logging.getLogger(__name__)


def agreement(
    reference: ServingModel, other: ServingModel, images: np.ndarray, labels: np.ndarray, batch: int = 256
) -> dict[str, Any]:
    """Both models' accuracy on ``images`` (label 1 = fake) at ``reference``'s threshold and at 0.5, and
    how far ``other``'s p_fake strays from ``reference``'s."""
    p_ref = _predict(reference, images, batch)
    p_other = _predict(other, images, batch)
    out: dict[str, Any] = {"images": len(images), "max_abs_p_fake_diff": float(np.abs(p_ref - p_other).max())}
    for name, t in (("threshold", reference.meta.threshold), ("0.5", 0.5)):
        a = float(((p_ref >= t) == labels).mean())
        b = float(((p_other >= t) == labels).mean())
        out[f"at_{name}"] = {
            "threshold": t,
            reference.runtime: round(a, 5),
            other.runtime: round(b, 5),
            "delta_points": round(100 * (b - a), 3),
            "labels_differ": int(((p_ref >= t) != (p_other >= t)).sum()),
        }
    return out


def _predict(model: ServingModel, images: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([model.predict(images[i : i + batch]) for i in range(0, len(images), batch)])


def cost(model: ServingModel, batch: int, min_time: float = 2.0) -> dict[str, float]:
    """images/s and CPU-ms per image of ``model.predict`` at ``batch`` (this process's CPU time)."""
    images = np.random.default_rng(0).integers(
        0, 256, (batch, model.input_size, model.input_size, 3), np.uint8
    )
    return per_call_cost(lambda: model.predict(images), batch, min_time)


def run(args: argparse.Namespace) -> int:
    from harness.demo_samples import reproduce_split

    torch_model = ServingModel.load(args.weights, "cpu", runtime="torch")
    ort_model = ServingModel.load(args.weights, "cpu", runtime="onnxruntime")
    result: dict[str, Any] = {"model_version": torch_model.version}
    if args.data:
        split = reproduce_split(args.data, torch_model.meta)
        idx = np.asarray(split.val_idx)
        images, labels = split.ds.images[idx], split.ds.labels[idx]
        result["validation"] = agreement(torch_model, ort_model, images, labels)
        logger.info("validation: %s", result["validation"])
    costs: dict[str, Any] = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        models = {
            "torch": ServingModel.load(args.weights, "cpu", runtime="torch"),
            "onnxruntime": ServingModel.load(args.weights, "cpu", runtime="onnxruntime"),
        }
        for batch in (64, 256):
            for name, m in models.items():
                costs[f"{name}_threads{threads}_batch{batch}"] = c = cost(m, batch, args.min_time)
                logger.info("%s, %d thread(s), batch %d: %s", name, threads, batch, c)
    result["cost"] = costs
    return publish(args.out, result, "harness.runtime_check")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.runtime_check", description=__doc__.splitlines()[0])
    p.add_argument("--data", help="cifake-train.zip: the agreement on the model's validation split")
    p.add_argument("--weights", default="default")
    p.add_argument("--min-time", type=float, default=2.0, help="seconds timed per configuration")
    p.add_argument("--out", default=str(Path("benchmarks/pipeline/runtime.json")))
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    cli.configure_logging(args.log_level)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
