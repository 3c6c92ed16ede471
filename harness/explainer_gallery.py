"""A README figure: a few validation images with the overlays the service stores for them.

The overlays are made by ``explainer.render.overlay_array``, the function behind every stored overlay, so
the figure shows exactly what a moderator sees. Images are drawn at random (seeded) from those the model
calls fake (and, for contrast, from those it calls real), never hand-picked.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from explainer.cam import CamExplainer, Method
from explainer.render import OVERLAY_SIZE, map_stats, overlay_array
from scorer.engine import ServingModel


def pick(
    p_fake: np.ndarray, labels: np.ndarray, threshold: float, n_fake: int, n_real: int, seed: int
) -> np.ndarray:
    """Indices: ``n_fake`` FAKE images called fake, then ``n_real`` REAL images called real (seeded draw)."""
    rng = np.random.default_rng(seed)
    fake = np.flatnonzero((labels == 1) & (p_fake >= threshold))
    real = np.flatnonzero((labels == 0) & (p_fake < threshold))
    chosen_fake = rng.choice(fake, min(n_fake, len(fake)), replace=False)
    chosen_real = rng.choice(real, min(n_real, len(real)), replace=False)
    return np.concatenate([chosen_fake, chosen_real])


def gallery(
    model: ServingModel,
    images: np.ndarray,
    labels: np.ndarray,
    path: str,
    method: Method = "gradcam",
    n_fake: int = 6,
    n_real: int = 2,
    seed: int = 0,
) -> dict[str, Any]:
    """Draw the grid (top row: input, bottom row: overlay of the ``fake`` map) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p_all = np.concatenate([model.predict(images[i : i + 1024]) for i in range(0, len(images), 1024)])
    idx = pick(p_all, labels, model.meta.threshold, n_fake, n_real, seed)
    ex = CamExplainer(model.model, method, model.meta.mean, model.meta.std)
    result = ex.explain(images[idx], "fake")
    fig, axes = plt.subplots(
        2, len(idx), figsize=(1.6 * len(idx), 4.0), dpi=120, squeeze=False, layout="constrained"
    )
    shown = []
    for j, i in enumerate(idx):
        big = Image.fromarray(images[i], "RGB").resize((OVERLAY_SIZE, OVERLAY_SIZE), Image.Resampling.NEAREST)
        axes[0, j].imshow(np.asarray(big))
        axes[1, j].imshow(overlay_array(images[i], result.maps[j]))
        truth = "FAKE" if labels[i] == 1 else "REAL"
        stats = map_stats(result.maps[j])
        axes[0, j].set_title(f"{truth}\np_fake {result.p_fake[j]:.2f}", fontsize=8)
        share = "n/a (zero map)" if not np.isfinite(stats.border_share) else f"{stats.border_share:.2f}"
        axes[1, j].set_title(f"border {share}", fontsize=8)
        shown.append({"index": int(i), "label": truth, "p_fake": round(float(result.p_fake[j]), 4)})
        for ax in axes[:, j]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(
        f"{method} of the 'fake' logit, model {model.version} (top: input, bottom: stored overlay)",
        fontsize=9,
    )
    fig.savefig(path)
    plt.close(fig)
    return {"path": path, "method": method, "model_version": model.version, "images": shown}
