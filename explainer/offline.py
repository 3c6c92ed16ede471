"""Explanations written to a folder instead of the object store (``python -m explainer score --explain DIR``).

The layout under ``DIR`` is the bucket's (``explainer.sink.object_keys``), so a folder of offline results
reads like a copy of the ``explanations`` bucket, and the files are byte-for-byte what the service stores
for the same image and model (apart from the service's verdict fields in the sidecar).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from explainer.cam import CamExplainer, Method, TargetSpec
from explainer.render import render
from explainer.sink import object_keys
from scorer.engine import ServingModel


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the folder is meant to be shared like the bucket
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class FolderExplainer:
    """Callable given each scored batch (uint8 NHWC arrays + their result rows); adds ``explanation``
    (the sidecar's path) to every row."""

    def __init__(
        self,
        model: ServingModel,
        out_dir: str | Path,
        methods: Sequence[Method] = ("gradcam",),
        target: TargetSpec = "fake",
    ) -> None:
        self.model = model
        self.out = Path(out_dir)
        self.target: TargetSpec = target
        self.explainers = {m: CamExplainer(model.model, m, model.meta.mean, model.meta.std) for m in methods}

    def __call__(self, images: np.ndarray, rows: list[dict[str, Any]]) -> None:
        for method, ex in self.explainers.items():
            result = ex.explain(images, self.target)
            for i, row in enumerate(rows):
                r = render(
                    images[i],
                    result.maps[i],
                    method=method,
                    layer=ex.layer_name,
                    target=self.target,
                    model_version=self.model.version,
                    p_fake=float(result.p_fake[i]),
                    extra={"image_id": row["image_id"], "source": row.get("path")},
                )
                keys = object_keys(row["image_id"], self.model.version, method)
                _write_atomic(self.out / keys["map"], r.map_png)
                _write_atomic(self.out / keys["overlay"], r.overlay_png)
                _write_atomic(self.out / keys["sidecar"], r.sidecar_bytes)
                row.setdefault("explanation", {})[method] = str(self.out / keys["sidecar"])
