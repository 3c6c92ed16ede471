"""harness.cheaper_model: the agreement it reports, and the layers it keeps in fp32 exist in the graph the
scorer serves (a renamed layer would otherwise quietly quantise everything)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnxruntime import quantization as q

from harness.cheaper_model import FIRST_AND_HEAD, agreement, predict, quantised, session
from scorer.models import create_model
from scorer.runtime import export_onnx
from scorer.weights import DEFAULT_MEAN, DEFAULT_STD


def test_agreement_counts_changed_labels_and_points() -> None:
    labels = np.array([1, 1, 0, 0])
    ref = np.array([0.9, 0.6, 0.2, 0.45], dtype=np.float32)
    other = np.array([0.9, 0.4, 0.2, 0.55], dtype=np.float32)  # one right label lost, one wrong gained
    out = agreement(ref, other, labels, threshold=0.5)
    assert out["labels_differ_at_0.5"] == 2
    assert out["delta_points_at_0.5"] == -50.0
    assert out["accuracy_at_0.5"] == 0.5
    assert abs(out["max_abs_p_fake_diff"] - 0.2) < 1e-6


def test_excluded_layers_exist_and_stay_fp32(tmp_path: Path) -> None:
    model = create_model("fastnet", width=8, tta_flip=True).eval()
    fp32 = tmp_path / "fp32.onnx"
    fp32.write_bytes(export_onnx(model, 32, DEFAULT_MEAN, DEFAULT_STD))
    pre = tmp_path / "pre.onnx"
    q.quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    names = {n.name for n in onnx.load(str(pre)).graph.node}
    assert set(FIRST_AND_HEAD) <= names
    images = np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    out = quantised(pre, images, FIRST_AND_HEAD, tmp_path / "int8.onnx")
    graph = onnx.load(str(out)).graph
    # A quantised node reads a DequantizeLinear output; the excluded ones read float tensors.
    produced_by = {o: n.op_type for n in graph.node for o in n.output}
    for node in graph.node:
        if node.name in FIRST_AND_HEAD:
            assert produced_by.get(node.input[1]) != "DequantizeLinear", node.name
    quantised_convs = [
        n for n in graph.node if n.op_type == "Conv" and produced_by.get(n.input[1]) == "DequantizeLinear"
    ]
    assert quantised_convs, "no layer was quantised"
    p = predict(session(out), images)
    assert p.shape == (64,) and np.all((p >= 0) & (p <= 1))
