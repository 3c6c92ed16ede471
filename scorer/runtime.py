"""CPU inference through ONNX Runtime: the served network, preprocessing included, exported once when a
model is loaded and then run without PyTorch's per-call overhead.

Why: on the 2-core CPU the scorer runs the model on one thread, where PyTorch eager took 0.62-0.76 CPU-ms
per image (batches of 8-256) and ONNX Runtime 0.38 for the same graph, with p_fake equal within 1e-6
(``python -m harness.runtime_check`` measures both on the validation split). PyTorch stays the path on
CUDA and for everything that needs gradients (Grad-CAM, training); ``ServingModel.model`` is always the
PyTorch module, and this runner is an extra, derived view of the same weights.

Contract: ``OnnxRunner(model, input_size, mean, std, threads)`` takes uint8 NHWC images of
``input_size`` and returns p_fake (float32 ``[N]``), the same function as ``ServingModel.predict``'s
PyTorch path: normalisation, the network (flip TTA included when the architecture has it) and the
softmax all run inside the exported graph. Any batch size is accepted (the batch axis is symbolic). Safe
to call from several threads (``InferenceSession.run`` is).
"""

from __future__ import annotations

import tempfile
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

Runtime = Literal["auto", "onnxruntime", "torch"]
RUNTIMES: tuple[str, ...] = ("auto", "onnxruntime", "torch")
# TorchScript tracing keeps global state: two exports at once in one process (a hot swap while another
# model loads, or several scorers in one test process) must not interleave.
_EXPORT_LOCK = threading.Lock()


def resolve_runtime(runtime: str, device: torch.device) -> str:
    """``auto``: ONNX Runtime on CPU, PyTorch on CUDA (its fp16 autocast path)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; expected one of {', '.join(RUNTIMES)}")
    if runtime == "auto":
        return "onnxruntime" if device.type == "cpu" else "torch"
    if runtime == "onnxruntime" and device.type != "cpu":
        raise ValueError(f"runtime onnxruntime runs on the CPU only, not on {device}; use torch or auto")
    return runtime


class _Served(nn.Module):
    """uint8 NHWC in, p_fake out: what the exported graph computes."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float() / 255.0
        x = (x - self.mean) / self.std
        return torch.softmax(self.model(x).float(), dim=1)[:, 1]


def export_onnx(model: nn.Module, input_size: int, mean: Sequence[float], std: Sequence[float]) -> bytes:
    """The serialized ONNX graph of ``model`` with preprocessing and softmax, batch axis symbolic."""
    served = _Served(model, mean, std).eval().cpu()
    example = torch.zeros((2, input_size, input_size, 3), dtype=torch.uint8)
    with _EXPORT_LOCK, tempfile.TemporaryDirectory(prefix="cifake-onnx-") as tmp, warnings.catch_warnings():
        path = Path(tmp) / "model.onnx"
        # The TorchScript-based exporter is deprecated in favour of the dynamo one, which needs
        # onnxscript and more; for this graph of convolutions it is exact (checked in tests).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            served,
            (example,),
            path,
            input_names=["images"],
            output_names=["p_fake"],
            dynamic_axes={"images": {0: "n"}, "p_fake": {0: "n"}},
            dynamo=False,
        )
        return path.read_bytes()


class OnnxRunner:
    def __init__(
        self,
        model: nn.Module,
        input_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        threads: int,
    ) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Idle workers would spin on cores that the scorer's fetch and decode threads (and, on a small
        # host, the broker and the object store) need at the same moments.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3  # warnings about shape inference on the symbolic batch axis are noise
        self.threads = opts.intra_op_num_threads
        self.session = ort.InferenceSession(
            export_onnx(model, input_size, mean, std), opts, providers=["CPUExecutionProvider"]
        )

    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(images, dtype=np.uint8)
        out = self.session.run(None, {"images": x})[0]
        return np.asarray(out, dtype=np.float32)
