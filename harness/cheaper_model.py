"""``python -m harness.cheaper_model --data PATH``: would a cheaper graph of the served model (int8, or
without its flip TTA) cost less CPU per image without costing accuracy?

The scorer serves the fp32 ONNX graph (``scorer.runtime``) with flip TTA (two passes per image). This
check runs the same weights as:

- ``int8_*``: ONNX Runtime's static int8 quantisation (QDQ, per-channel weights, activations calibrated on
  training images) of every layer; of every layer but the stem convolution; and of every layer but the
  stem, the first block's first convolution and the linear head (the layers that see the raw
  high-frequency traces, and the one that decides);
- ``fp32_no_flip_tta``: the fp32 graph with one pass per image (the architecture's ``tta_flip`` off).

For each, on the model's own validation split: accuracy at 0.5, the change in points against the served
graph at the model's threshold and at 0.5, the labels that change, the largest |p_fake difference|, and
CPU-ms per image on one thread at batch 64, the scorer's chunk (this process only; the graphs alternate
over ``--rounds`` and the median is kept). Writes ``benchmarks/pipeline/cheaper_model.json``. The bar a
faster path must pass to be served (issue 16): |delta accuracy| <= 0.1 point.
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime import quantization as q

from harness.cpu_meter import per_call_cost
from harness.machine import publish
from ingest import cli
from scorer.engine import ServingModel
from scorer.runtime import export_onnx

logger = logging.getLogger(__name__)

STEM = "/model/stem/stem.0/Conv"
FIRST_AND_HEAD = [STEM, "/model/block1/conv1/Conv", "/model/head/Gemm"]
VARIANTS: dict[str, list[str]] = {
    "int8_all": [],
    "int8_but_stem": [STEM],
    "int8_but_stem_first_head": FIRST_AND_HEAD,
}


class _Calibration(q.CalibrationDataReader):
    def __init__(self, images: np.ndarray, batch: int = 128) -> None:
        self._batches = iter([{"images": images[i : i + batch]} for i in range(0, len(images), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantised(fp32: Path, calib: np.ndarray, exclude: list[str], out: Path) -> Path:
    q.quantize_static(
        str(fp32),
        str(out),
        _Calibration(calib),
        quant_format=q.QuantFormat.QDQ,
        per_channel=True,
        activation_type=q.QuantType.QUInt8,
        weight_type=q.QuantType.QInt8,
        nodes_to_exclude=exclude,
    )
    return out


def session(path: Path) -> ort.InferenceSession:
    """One thread, no spinning: how the scorer runs its model."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def predict(sess: ort.InferenceSession, images: np.ndarray, batch: int = 256) -> np.ndarray:
    return np.concatenate(
        [
            np.asarray(sess.run(None, {"images": images[i : i + batch]})[0])
            for i in range(0, len(images), batch)
        ]
    )


def cpu_ms_per_image(sess: ort.InferenceSession, images: np.ndarray, min_time: float) -> float:
    return per_call_cost(lambda: sess.run(None, {"images": images}), len(images), min_time)[
        "cpu_ms_per_image"
    ]


def agreement(p_ref: np.ndarray, p: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, Any]:
    out: dict[str, Any] = {"max_abs_p_fake_diff": round(float(np.abs(p - p_ref).max()), 5)}
    for name, t in (("threshold", threshold), ("0.5", 0.5)):
        out[f"delta_points_at_{name}"] = round(
            100 * float(((p >= t) == labels).mean() - ((p_ref >= t) == labels).mean()), 3
        )
        out[f"labels_differ_at_{name}"] = int(((p >= t) != (p_ref >= t)).sum())
    out["accuracy_at_0.5"] = round(float(((p >= 0.5) == labels).mean()), 5)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from harness.demo_samples import reproduce_split

    model = ServingModel.load(args.weights, "cpu", runtime="torch")
    split = reproduce_split(args.data, model.meta)
    val = np.asarray(split.val_idx)
    images, labels = split.ds.images[val], split.ds.labels[val]
    calib = split.ds.images[np.asarray(split.train_idx)[: args.calibration]]
    with tempfile.TemporaryDirectory(prefix="cifake-int8-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        fp32.write_bytes(export_onnx(model.model, model.input_size, model.meta.mean, model.meta.std))
        # quantize_static wants shapes: the symbolic batch axis defeats ORT's symbolic inference; ONNX's does.
        pre = Path(tmp) / "pre.onnx"
        q.quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        sessions = {"fp32": session(pre)}
        for name, exclude in VARIANTS.items():
            sessions[name] = session(quantised(pre, calib, exclude, Path(tmp) / f"{name}.onnx"))
        if getattr(model.model, "tta_flip", False):
            single = copy.deepcopy(model.model)
            setattr(single, "tta_flip", False)  # noqa: B010 (an attribute of FastNet, not of nn.Module)
            no_tta = Path(tmp) / "no_tta.onnx"
            no_tta.write_bytes(export_onnx(single, model.input_size, model.meta.mean, model.meta.std))
            sessions["fp32_no_flip_tta"] = session(no_tta)
    p_ref = predict(sessions["fp32"], images)
    result: dict[str, Any] = {"model_version": model.version, "validation_images": len(images)}
    variants: dict[str, Any] = {
        "fp32": {"accuracy_at_0.5": round(float(((p_ref >= 0.5) == labels).mean()), 5)}
    }
    for name in list(sessions)[1:]:
        variants[name] = agreement(p_ref, predict(sessions[name], images), labels, model.meta.threshold)
    batch = images[:64]
    costs: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(args.rounds):
        for name, sess in sessions.items():
            costs[name].append(cpu_ms_per_image(sess, batch, args.min_time))
    for name, values in costs.items():
        variants[name]["cpu_ms_per_image_threads1_batch64"] = round(statistics.median(values), 4)
        variants[name]["cpu_vs_fp32"] = round(statistics.median(values) / statistics.median(costs["fp32"]), 3)
    result["variants"] = variants
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.cheaper_model", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="cifake-train.zip: the model's validation split")
    p.add_argument("--weights", default="default")
    p.add_argument("--calibration", type=int, default=2048, help="training images for activation ranges")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--min-time", type=float, default=2.0, help="seconds timed per variant and round")
    p.add_argument("--out", default=str(Path("benchmarks/pipeline/cheaper_model.json")))
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    cli.configure_logging(args.log_level)
    result = run(args)
    return publish(args.out, result, "harness.cheaper_model")


if __name__ == "__main__":
    sys.exit(main())
