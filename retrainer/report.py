"""Figures (PNG) and a self-contained HTML page for an evaluation report."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from retrainer.data import CifakeSplit

Curves = dict[str, tuple[np.ndarray, ...]]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # reports are written on headless machines
    import matplotlib.pyplot as plt

    return plt


def write_figures(
    out: Path, report: dict[str, Any], curves: Curves, ds: CifakeSplit, p: np.ndarray
) -> list[Path]:
    """confusion, ROC, precision-recall, reliability, worst errors and (if present) robustness PNGs."""
    plt = _plt()
    paths: list[Path] = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        paths.append(out / name)

    c = report["confusion"]
    fig, ax = plt.subplots(figsize=(3.8, 3.4))
    mat = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
    ax.imshow(mat, cmap="Blues")
    for (i, j), v in np.ndenumerate(mat):
        ax.text(j, i, str(v), ha="center", va="center", color="black" if v < mat.max() / 2 else "white")
    ax.set_xticks([0, 1], ["real", "fake"])
    ax.set_yticks([0, 1], ["real", "fake"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion (threshold {report['threshold']:.2f})")
    save(fig, "confusion.png")

    fpr, tpr, _ = curves["roc"]
    fig, ax = plt.subplots(figsize=(4, 3.6))
    ax.plot(fpr, tpr, lw=1.5, label=f"AUROC {report['auroc']:.4f}")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false positive rate (real flagged fake)")
    ax.set_ylabel("true positive rate")
    ax.legend(loc="lower right")
    ax.set_title("ROC")
    save(fig, "roc.png")

    precision, recall = curves["pr"]
    fig, ax = plt.subplots(figsize=(4, 3.6))
    ax.plot(recall, precision, lw=1.5, label=f"AP {report['average_precision']:.4f}")
    ax.set_xlabel("recall (fake)")
    ax.set_ylabel("precision (fake)")
    ax.set_ylim(max(0.0, float(np.min(precision)) - 0.02), 1.005)
    ax.legend(loc="lower left")
    ax.set_title("precision-recall")
    save(fig, "pr.png")

    rel = report["reliability"]
    fig, ax = plt.subplots(figsize=(4, 3.6))
    centers = (np.array(rel["lower"]) + np.array(rel["upper"])) / 2
    acc = np.array(rel["accuracy"], dtype=float)
    ax.bar(
        centers,
        np.nan_to_num(acc),
        width=(rel["upper"][0] - rel["lower"][0]) * 0.9,
        alpha=0.7,
        label="accuracy",
    )
    ax.plot([0.5, 1], [0.5, 1], "k:", lw=0.8, label="perfect calibration")
    ax.set_xlim(0.5, 1)
    ax.set_ylim(0.4, 1.01)
    ax.set_xlabel("confidence of predicted class")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability (ECE {report['ece']:.4f})")
    ax.legend(loc="upper left", fontsize=8)
    save(fig, "reliability.png")

    save(_worst_errors(plt, ds, p, report["threshold"]), "worst_errors.png")

    if "robustness" in report:
        names = ["clean", *report["robustness"]]
        accs = [report["accuracy"]] + [v["accuracy"] for v in report["robustness"].values()]
        fig, ax = plt.subplots(figsize=(6, 3.4))
        ax.barh(names, [100 * a for a in accs], color=["C0"] + ["C1"] * (len(names) - 1))
        for i, a in enumerate(accs):
            ax.text(100 * a, i, f" {100 * a:.2f}", va="center", fontsize=8)
        ax.set_xlim(min(50.0, 100 * min(accs) - 5), 101)
        ax.set_xlabel("accuracy (%)")
        ax.invert_yaxis()
        ax.set_title("robustness")
        save(fig, "robustness.png")
    return paths


def _worst_errors(plt: Any, ds: CifakeSplit, p: np.ndarray, threshold: float, n: int = 32) -> Any:
    """The most confidently wrong images, 8 per row, with true label and p_fake."""
    pred = (p >= threshold).astype(np.int64)
    wrong = np.flatnonzero(pred != ds.labels)
    conf_wrong = np.abs(p[wrong] - threshold)
    order = wrong[np.argsort(-conf_wrong)][:n]
    cols = 8
    rows = max(1, int(np.ceil(len(order) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.3, rows * 1.55), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), order, strict=False):
        ax.imshow(ds.images[i], interpolation="nearest")
        true = "fake" if ds.labels[i] == 1 else "real"
        ax.set_title(f"{true} p={p[i]:.2f}", fontsize=7)
    fig.suptitle(f"worst errors ({len(wrong)} wrong of {len(p)})", fontsize=9)
    return fig


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.5f}"
    return html.escape(str(v))


def write_html(path: Path, report: dict[str, Any], figures: list[Path]) -> None:
    """One HTML file with the headline table, per-category and robustness tables, and the PNGs inlined."""
    head_keys = [
        "accuracy",
        "accuracy_dedup",
        "precision",
        "recall",
        "f1",
        "auroc",
        "average_precision",
        "ece",
        "nll",
        "brier",
        "threshold",
    ]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>CIFAKE detector report</title>",
        "<style>body{font-family:sans-serif;max-width:1000px;margin:auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "img{max-width:100%}</style></head><body>",
        f"<h1>CIFAKE detector report: {html.escape(str(report['model']['version']))}</h1>",
        f"<p>split <b>{html.escape(report['split'])}</b>, "
        f"data fingerprint {html.escape(report['data_fingerprint'])},"
        f" model {html.escape(report['model']['arch'])} ({report['model']['params']} parameters), "
        f"created {html.escape(report['created_at'])}</p>",
        "<h2>Metrics</h2><table>",
        *(f"<tr><th>{k}</th><td>{_fmt(report[k])}</td></tr>" for k in head_keys),
        f"<tr><th>counts</th><td>{_fmt(json.dumps(report['counts']))}</td></tr></table>",
        "<h2>Accuracy per CIFAR-10 category</h2><table><tr><th>category</th><th>accuracy</th></tr>",
        *(f"<tr><td>{k}</td><td>{_fmt(v)}</td></tr>" for k, v in report["accuracy_per_category"].items()),
        "</table>",
    ]
    if "robustness" in report:
        parts.append(
            "<h2>Robustness</h2><table><tr><th>perturbation</th><th>accuracy</th><th>drop</th>"
            "<th>auroc</th><th>ece</th></tr>"
        )
        for name, r in report["robustness"].items():
            parts.append(
                f"<tr><td>{html.escape(name)}</td><td>{_fmt(r['accuracy'])}</td>"
                f"<td>{_fmt(r['accuracy_drop'])}</td><td>{_fmt(r['auroc'])}</td><td>{_fmt(r['ece'])}</td></tr>"
            )
        parts.append("</table>")
    parts.append("<h2>Figures</h2>")
    for fig in figures:
        b64 = base64.b64encode(fig.read_bytes()).decode("ascii")
        parts.append(
            f"<h3>{html.escape(fig.stem)}</h3>"
            f"<img alt='{html.escape(fig.stem)}' src='data:image/png;base64,{b64}'>"
        )
    parts.append("</body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")
