"""The serving model: a loaded weights file plus the inference path the scorer runs per batch.

``ServingModel`` is immutable; a hot swap replaces the whole object between batches, so a batch is
always scored by exactly one model version, the one recorded in its verdicts.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from scorer.infer import memory_format, pick_device
from scorer.preprocess import normalize_uint8
from scorer.runtime import OnnxRunner, resolve_runtime
from scorer.weights import ModelMeta, load_weights, resolve_weights

logger = logging.getLogger(__name__)

Label = Literal["real", "fake", "uncertain"]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class ServingModel:
    model: nn.Module
    meta: ModelMeta
    version: str
    sha256: str
    device: torch.device
    # ONNX Runtime's view of ``model`` (scorer/runtime.py), or None when ``predict`` runs PyTorch.
    runner: OnnxRunner | None = None

    @property
    def runtime(self) -> str:
        return "onnxruntime" if self.runner is not None else "torch"

    @classmethod
    def load(
        cls,
        spec: str | Path,
        device: torch.device | str = "auto",
        version: str | None = None,
        runtime: str = "auto",
    ) -> ServingModel:
        """Load ``spec`` ("default" or a path). The version is the one in the metadata unless given.

        A file without a version in its metadata is named after its content hash, so two different
        unnamed files can never be confused in the verdicts table. ``runtime`` (``auto``, ``onnxruntime``,
        ``torch``): what ``predict`` runs; ``auto`` is ONNX Runtime on CPU, with as many threads as
        PyTorch has (``torch.set_num_threads`` before loading).
        """
        dev = pick_device(device) if isinstance(device, str) else device
        path = resolve_weights(str(spec))
        digest = file_sha256(path)
        model, meta = load_weights(path, device=dev)
        model = model.to(memory_format=memory_format(dev))
        name = version or meta.version or f"sha-{digest[:12]}"
        runner = None
        if resolve_runtime(runtime, dev) == "onnxruntime":
            size = int(meta.input_size)
            runner = OnnxRunner(model, size, meta.mean, meta.std, torch.get_num_threads())
        logger.info(
            "loaded model %s (%s, threshold %.3f) from %s on %s, %s",
            name,
            meta.arch,
            meta.threshold,
            path,
            dev,
            "ONNX Runtime" if runner is not None else "PyTorch",
        )
        return cls(model, meta, name, digest, dev, runner)

    @property
    def input_size(self) -> int:
        return int(self.meta.input_size)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """p_fake (float32 ``[N]``) for uint8 NHWC ``images`` of the model's input size."""
        if len(images) == 0:
            return np.zeros((0,), np.float32)
        n = len(images)
        if self.runner is not None:
            # No padding: ONNX Runtime keeps no per-shape kernel state (its arena grows to the largest batch).
            return self.runner(images)
        x = normalize_uint8(images, self.meta.mean, self.meta.std)
        padded = padded_batch_size(n)
        if padded > n:
            # The CPU kernels (oneDNN) keep per-input-shape state, ~4.5 MB per distinct batch size here: a
            # scorer seeing every size from 1 to 256 grew by ~1.2 GB before levelling off. Padding to a few
            # sizes bounds that; the zero rows cost at most 31 images of work and are dropped below.
            x = torch.cat([x, x.new_zeros((padded - n, *x.shape[1:]))])
        with torch.inference_mode():
            if self.device.type == "cuda":
                # Pinned host memory lets the copy overlap; fp16 autocast halves the arithmetic.
                x = x.pin_memory().to(self.device, non_blocking=True)
                x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast("cuda", dtype=torch.float16):
                    logits = self.model(x)
            else:
                logits = self.model(x.contiguous(memory_format=torch.channels_last))
            p = torch.softmax(logits[:n].float(), dim=1)[:, 1]
        return p.cpu().numpy().astype(np.float32)


def warm_up(model: ServingModel, max_batch: int) -> int:
    """Run every padded batch size up to ``max_batch`` once, so that the kernels' per-shape state is built at
    start-up (memory reaches its plateau and no later batch pays a first-time cost); returns the sizes run."""
    sizes = sorted({padded_batch_size(n) for n in range(1, max_batch + 1)})
    size = model.input_size
    for b in sizes:
        model.predict(np.zeros((b, size, size, 3), np.uint8))
    return len(sizes)


def padded_batch_size(n: int) -> int:
    """The batch size ``n`` images are run at: 1, 2, 4, 8, then multiples of 8 up to 64, then multiples
    of 32. A half-loaded scorer runs batches of 10-30 images, where padding to powers of two wasted up to
    a third of each inference call; above 64 (chunks are 64 by default) coarse steps keep the count low."""
    if n <= 8:
        return 1 << max(0, (n - 1).bit_length())
    if n <= 64:
        return -(-n // 8) * 8
    return -(-n // 32) * 32


def label_for(p_fake: float, threshold: float, band: float) -> Label:
    """``uncertain`` within ``band`` of the threshold (either side), else ``fake``/``real``."""
    if abs(p_fake - threshold) < band:
        return "uncertain"
    return "fake" if p_fake >= threshold else "real"
