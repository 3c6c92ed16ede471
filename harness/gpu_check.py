"""``deploy/gpu-check``: the scorer and the retrainer on one device (CUDA, or ``--device cpu`` as a dry run).

Parts, each timed and each failing on its own (its entry is then ``{"error": ...}`` and the run goes on):

- ``model_fp32``, ``model_fp16``, ``model_bf16``: the bare model's images/s (``scorer.bench.bench_model``),
  fp32 and under ``torch.autocast``, and how far the half-precision p_fake is from fp32 on a fixed batch;
  fp16 on a CPU is skipped (the scorer autocasts to fp16 on CUDA only, ``scorer/engine.py``);
- ``train``: one epoch of ``retrainer.train`` on ``--data``, else on a synthetic CIFAKE;
- ``pipeline``: ``python -m harness.pipeline`` with the scorer on the device, after ``deploy/stack up``.

The result (with the machine, ``harness/machine.py``) is written to ``--out`` after every part, so a run cut
short still leaves what it measured; the last stdout line is the same JSON object. Exit status 1 when a
part failed. Only torch, numpy, Pillow and safetensors are needed up to the pipeline part, which also
needs the stack and the services' packages.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest.mock import patch

import numpy as np

from harness.machine import ROOT, machine_info, write_json

logger = logging.getLogger(__name__)

Part = Callable[[argparse.Namespace], dict[str, Any]]
# The pipeline bench's keys quoted in this result (its own file has them all).
PIPELINE_HEADLINE = (
    *("images_per_s", "raw_images_per_s", "ratio", "two_scorers_images_per_s", "batch1_images_per_s"),
    *("rate", "p50_ms", "p95_ms", "p99_ms", "device", "model_version", "n"),
)


def _device(spec: str) -> Any:
    import torch

    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"CUDA is not available (torch {torch.__version__}, built for CUDA {torch.version.cuda})"
        )
    return device


def agreement_images(n: int = 512, seed: int = 0) -> np.ndarray:
    """A fixed uint8 NHWC batch: half synthetic CIFAKE images (REAL and FAKE), half uniform noise."""
    from retrainer.data import load_split
    from retrainer.synthetic import make_synthetic_cifake

    with tempfile.TemporaryDirectory() as tmp:
        data = make_synthetic_cifake(Path(tmp) / "data", n_per_class=n // 4, seed=seed)
        synthetic = load_split(data, "train", use_cache=False).images
    noise = np.random.default_rng(seed).integers(0, 256, (n - len(synthetic), *synthetic.shape[1:]), np.uint8)
    return np.concatenate([synthetic, noise])


def model_part(args: argparse.Namespace, precision: str) -> dict[str, Any]:
    import torch

    from scorer.bench import bench_model
    from scorer.infer import p_fake_from_logits, predict_logits
    from scorer.weights import load_weights

    device = _device(args.device)
    if precision == "fp16" and device.type == "cpu":
        return {"skipped": "fp16 autocast runs on CUDA only here (the scorer's CPU path is fp32)"}
    dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    model, meta = load_weights(args.weights, device=device)
    batch_sizes = (1, 32, 256, 1024) if device.type == "cuda" else (1, 32, 256)
    min_time = 0.3 if args.quick else 2.0

    def autocast() -> torch.autocast:
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    with autocast():
        bench = bench_model(model, device, meta.input_size, batch_sizes, min_time=min_time)
    out: dict[str, Any] = {"precision": precision, **bench, "weights": meta.version or args.weights}
    if device.type == "cuda" and dtype is None:
        # fp32 convolutions may run as TF32 on the tensor cores (PyTorch's default for cuDNN).
        out["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
    if dtype is not None:
        images = agreement_images()
        ref = p_fake_from_logits(predict_logits(model, images, meta.mean, meta.std, device=device))
        with autocast():
            p = p_fake_from_logits(predict_logits(model, images, meta.mean, meta.std, device=device))
        diff = np.abs(p - ref)
        out["vs_fp32"] = {
            "images": len(images),
            "max_abs_diff_p_fake": float(diff.max()),
            "mean_abs_diff_p_fake": float(diff.mean()),
            "label_flips": int(((p >= meta.threshold) != (ref >= meta.threshold)).sum()),
            "threshold": meta.threshold,
        }
    return out


def train_part(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from retrainer.synthetic import make_synthetic_cifake
    from retrainer.train import TrainConfig, train

    device = _device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        if args.data:
            data, described = args.data, args.data
        else:
            n = 300 if args.quick else args.synthetic_per_class
            data = str(make_synthetic_cifake(Path(tmp) / "data", n_per_class=n))
            described = f"synthetic CIFAKE, {2 * n} images"
        cfg = TrainConfig(
            data=data,
            out=str(Path(tmp) / "train"),
            epochs=1,
            max_steps=3 if args.quick else None,
            device=args.device,
            version="gpu-check",
            progress=False,
        )
        # The decoded-data cache is keyed on the path: a temporary folder's goes with it, not to the user's.
        with patch.dict(os.environ, {} if args.data else {"CIFAKE_CACHE_DIR": str(Path(tmp) / "cache")}):
            result = train(cfg)
    m = result.meta.metrics
    seen = int(m["steps"]) * cfg.batch_size
    return {
        "data": described,
        "arch": cfg.arch,
        # The trainer tunes its own CPU thread count, so a CPU is named without one.
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "amp": "bf16 autocast" if device.type == "cuda" else None,
        "batch_size": cfg.batch_size,
        "steps": m["steps"],
        "images": seen,
        # Time in training steps only (first-step start-up included); wall_s adds data, bank and validation.
        "train_s": m["train_wall_s"],
        "images_per_s": round(seen / m["train_wall_s"], 1) if m["train_wall_s"] else None,
        "train_and_finalize_s": round(result.wall_s, 1),
        "val_accuracy": round(float(m["val_accuracy"]), 4),
    }


def _tail(text: str, n: int = 1500) -> str:
    return text[-n:].strip()


def pipeline_part(args: argparse.Namespace) -> dict[str, Any]:
    device = _device(args.device)
    stack = str(ROOT / "deploy" / "stack")
    # deploy/stack provisions with .venv/bin/python unless told otherwise: use this interpreter.
    env = {**os.environ, "CIFAKE_PYTHON": os.environ.get("CIFAKE_PYTHON", sys.executable)}
    result_file = Path(args.out).parent / f"pipeline-{device.type}.json"
    sizes = ["--n", "500", "--n-batch1", "100", "--duration", "5"] if args.quick else []
    cmd = [sys.executable, "-m", "harness.pipeline", "--device", args.device, "--weights", args.weights]
    cmd += ["--out", str(result_file), *sizes, *(["--data", args.data] if args.data else [])]
    was_up = subprocess.run([stack, "status"], cwd=ROOT, env=env, capture_output=True).returncode == 0
    try:
        up = subprocess.run(
            [stack, "up"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.stack_timeout
        )
        if up.returncode != 0:
            raise RuntimeError(f"deploy/stack up exited {up.returncode}: {_tail(up.stderr + up.stdout)}")
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.pipeline_timeout
        )
        sys.stderr.write(proc.stderr)  # its log, after the fact
    finally:
        if not was_up:  # leave the machine as it was
            subprocess.run([stack, "down"], cwd=ROOT, env=env, capture_output=True, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"harness.pipeline exited {proc.returncode}: {_tail(proc.stderr + proc.stdout)}")
    res = json.loads(lines[-1])
    return {"result_file": str(result_file), **{k: res.get(k) for k in PIPELINE_HEADLINE}}


def _model(precision: str) -> Part:
    return lambda args: model_part(args, precision)


# Run in this order; tests replace entries.
PARTS: dict[str, Part] = {
    "model_fp32": _model("fp32"),
    "model_fp16": _model("fp16"),
    "model_bf16": _model("bf16"),
    "train": train_part,
    "pipeline": pipeline_part,
}


def run_part(name: str, part: Part, args: argparse.Namespace) -> dict[str, Any]:
    """The part's result with its ``wall_s``; an exception becomes ``{"error": "Type: message"}``."""
    t0 = time.perf_counter()
    try:
        result = dict(part(args))
    except Exception as e:
        logger.exception("part %s failed", name)
        result = {"error": f"{type(e).__name__}: {e}"}
    result["wall_s"] = round(time.perf_counter() - t0, 2)
    logger.info("%s: %s", name, json.dumps(result, default=str))
    return result


def failed_parts(parts: dict[str, dict[str, Any]]) -> list[str]:
    return [name for name, r in parts.items() if "error" in r]


def machine(device: str) -> dict[str, Any]:
    """``harness.machine.machine_info`` plus the GPU, when the device is CUDA; never raises."""
    try:
        info = machine_info(("torch", "numpy", "pillow", "safetensors"))
    except Exception as e:
        info = {"error": f"{type(e).__name__}: {e}"}
    if device.startswith("cuda"):
        try:
            import torch

            props = torch.cuda.get_device_properties(torch.device(device))
            info["gpu"] = props.name
            info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
            info["cuda"] = torch.version.cuda
            smi = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
            out = subprocess.run(smi, capture_output=True, text=True, timeout=30)
            info["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 else None
        except Exception as e:
            info["gpu"] = None
            info["gpu_error"] = f"{type(e).__name__}: {e}"
    return info


def assemble(
    args: argparse.Namespace,
    parts: dict[str, dict[str, Any]],
    info: dict[str, Any],
    wall_s: float,
    done: bool,
) -> dict[str, Any]:
    failed = failed_parts(parts)
    return {
        "check": "gpu-check",
        "device": args.device,
        "gpu": info.get("gpu"),
        "quick": args.quick,
        "complete": done,
        "ok": done and not failed,
        "failed": failed,
        "wall_s": round(wall_s, 1),
        "parts": parts,
        "machine": info,
        "command": "deploy/gpu-check " + " ".join(args.argv),
    }


def write(path: str, doc: dict[str, Any]) -> None:
    write_json(path, doc, default=str)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="deploy/gpu-check", description="the scorer and the retrainer on one device"
    )
    p.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu for a dry run")
    p.add_argument("--quick", action="store_true", help="short timings, 3 training steps, a small pipeline")
    p.add_argument("--data", help="CIFAKE folder or zip for training (default: a synthetic one)")
    p.add_argument("--out", default="benchmarks/gpu/gpu-check.json", help="result file")
    p.add_argument("--skip-pipeline", action="store_true", help="no stack, no pipeline bench")
    p.add_argument("--weights", default="default", help="weights for the model and pipeline parts")
    p.add_argument("--synthetic-per-class", type=int, default=10_000, help="synthetic images per class")
    p.add_argument("--stack-timeout", type=float, default=600.0, help="seconds for deploy/stack up")
    p.add_argument("--pipeline-timeout", type=float, default=900.0, help="seconds for harness.pipeline")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    args.argv = argv
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, format=fmt)
    t0 = time.perf_counter()
    info = machine(args.device)
    parts: dict[str, dict[str, Any]] = {}
    for name, part in PARTS.items():
        if name == "pipeline" and args.skip_pipeline:
            parts[name] = {"skipped": "--skip-pipeline"}
        else:
            parts[name] = run_part(name, part, args)
        write(args.out, assemble(args, parts, info, time.perf_counter() - t0, done=False))
    doc = assemble(args, parts, info, time.perf_counter() - t0, done=True)
    write(args.out, doc)
    print(json.dumps(doc, default=str), flush=True)
    return 1 if doc["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
