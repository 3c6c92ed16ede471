"""Where do the maps put their mass? Object centre vs. background border, per class and CIFAR-10 category.

Bird & Lotfi (2024) read their Grad-CAM maps as the model attending to small background imperfections
rather than to the object. This tests that on our model: for every validation image, the map of the
class the model predicted is split into the border ring (outer 1/8 of each side, 43.75 % of a 32 px
image) and the centre. A map with no preference puts 43.75 % of its mass on the border; more means the
evidence sits in the background border, less that it sits where CIFAR-10 objects are (centred).

An all-zero map (no positive evidence for the predicted class at the layer) has no mass to split; such
maps are counted and left out of the shares.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from explainer.cam import CamExplainer, Method, TargetSpec
from explainer.render import border_mask
from scorer.engine import ServingModel

logger = logging.getLogger(__name__)

CLASS_NAMES = ("real", "fake")


def compute_maps(
    model: ServingModel,
    images: np.ndarray,
    method: Method = "gradcam",
    target: TargetSpec = "predicted",
    batch_size: int = 256,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(maps ``[N, H, W]``, targets ``[N]``, p_fake ``[N]``) for uint8 NHWC ``images``.

    ``predicted`` is the verdict's class: fake when p_fake >= the model's threshold (not the arg-max logit).
    """
    ex = CamExplainer(model.model, method, model.meta.mean, model.meta.std)
    maps, targets, p_fake = [], [], []
    for i in range(0, len(images), batch_size):
        chunk = images[i : i + batch_size]
        spec: TargetSpec | list[int] = target
        if target == "predicted":
            spec = [int(p >= model.meta.threshold) for p in model.predict(chunk)]
        r = ex.explain(chunk, spec)
        maps.append(r.maps)
        targets.append(r.targets)
        p_fake.append(r.p_fake)
    return np.concatenate(maps), np.concatenate(targets), np.concatenate(p_fake)


def _summary(border: np.ndarray, peak_in_border: np.ndarray, valid: np.ndarray) -> dict[str, Any]:
    n_valid = int(valid.sum())
    return {
        "n": len(valid),
        "n_zero_maps": int((~valid).sum()),
        "border_share_mean": round(float(border[valid].mean()), 4) if n_valid else None,
        "border_share_median": round(float(np.median(border[valid])), 4) if n_valid else None,
        "peak_in_border": round(float(peak_in_border[valid].mean()), 4) if n_valid else None,
    }


def aggregate(
    maps: np.ndarray,
    labels: np.ndarray,
    categories: np.ndarray,
    category_names: tuple[str, ...],
    predicted: np.ndarray,
) -> dict[str, Any]:
    """The evidence report: border shares overall, per true class, per class x category; mean maps."""
    n, h, _w = maps.shape
    ring = border_mask(h)
    total = maps.reshape(n, -1).sum(axis=1, dtype=np.float64)
    valid = total > 0
    border = np.where(valid, maps[:, ring].sum(axis=1, dtype=np.float64) / np.where(valid, total, 1), np.nan)
    peaks = maps.reshape(n, -1).argmax(axis=1)
    peak_in_border = ring.reshape(-1)[peaks]
    report: dict[str, Any] = {
        "n": n,
        "border_area_share": round(float(ring.mean()), 4),
        "overall": _summary(border, peak_in_border, valid),
        "accuracy": round(float((predicted == labels).mean()), 4),
        "by_class": {},
        "by_category": {},
        "mean_maps": {},
    }
    for c, cname in enumerate(CLASS_NAMES):
        sel = labels == c
        report["by_class"][cname] = _summary(border[sel], peak_in_border[sel], valid[sel])
        report["by_category"][cname] = {
            cat: _summary(
                border[sel & (categories == k)],
                peak_in_border[sel & (categories == k)],
                valid[sel & (categories == k)],
            )
            for k, cat in enumerate(category_names)
        }
        mean_map = maps[sel & valid].mean(axis=0) if (sel & valid).any() else np.zeros((h, h))
        report["mean_maps"][cname] = np.round(mean_map, 4).tolist()
    return report


def plot(report: dict[str, Any], path: str, category_names: tuple[str, ...]) -> None:
    """Mean map per class plus border share per category and class, against the uniform share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(11.5, 4.0), dpi=120, layout="constrained")
    grid = fig.add_gridspec(1, 3, width_ratios=(1, 1, 3.0))
    map_axes = []
    for i, cname in enumerate(CLASS_NAMES):
        ax = fig.add_subplot(grid[0, i])
        im = ax.imshow(np.asarray(report["mean_maps"][cname]), cmap="inferno", vmin=0, vmax=1)
        s = report["by_class"][cname]
        ax.set_title(
            f"mean map, {cname.upper()} images\nborder share {s['border_share_mean']:.2f}", fontsize=9
        )
        ax.set_xticks([])
        ax.set_yticks([])
        map_axes.append(ax)
    fig.colorbar(im, ax=map_axes, orientation="horizontal", fraction=0.06, pad=0.04)
    ax = fig.add_subplot(grid[0, 2])
    x = np.arange(len(category_names))
    for j, cname in enumerate(CLASS_NAMES):
        vals = [report["by_category"][cname][cat]["border_share_mean"] or 0.0 for cat in category_names]
        ax.bar(x + (j - 0.5) * 0.4, vals, width=0.4, label=cname.upper())
    ax.axhline(report["border_area_share"], color="k", ls="--", lw=1, label="uniform map")
    ax.set_xticks(x, category_names, rotation=30, fontsize=8)
    ax.set_ylabel("share of map mass on the border")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title(f"border (outer 1/8) vs centre, {report['method']} of the predicted class", fontsize=9)
    fig.suptitle(f"Where the evidence is: {report['n']} validation images, model {report['model_version']}")
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
