"""What the console's Models page shows of a registry row: the key metrics, who or what started the run,
and the validation p_fake histogram as the geometry of a small SVG bar chart.

The registry's ``metrics`` differ by how a version was made (absent keys are shown as "–"):

* trained from scratch (``python -m retrainer train``, the shipped weights registered as ``initial``):
  ``val_accuracy``, ``val_auroc``, ``val_ece`` and the histogram ``val_pfake_hist`` (``{"edges": [...],
  "counts": [...]}``, the scorers' drift reference, see scorer/drift.py);
* fine-tuned on feedback (retrainer/retrain.py): ``base_val_accuracy``, ``base_val_auroc``,
  ``base_val_ece``, the histogram, ``holdout_gain`` (candidate minus champion accuracy on the feedback
  hold-out) and ``base_val_drop`` (champion minus candidate accuracy on base validation).

The ingest package may not import the scorer or the retrainer (import-linter layers), so the key names are
repeated here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise
from typing import Any

MISSING = "–"
HIST_KEY = "val_pfake_hist"  # scorer.drift.META_KEY
# (label, keys tried in order): the first present number is shown.
ACCURACY_KEYS = (("validation", "val_accuracy"), ("base validation", "base_val_accuracy"), ("", "accuracy"))
AUROC_KEYS = ("val_auroc", "base_val_auroc", "auroc")
ECE_KEYS = ("val_ece", "base_val_ece", "ece")
GAIN_KEY = "holdout_gain"
DROP_KEY = "base_val_drop"
# What each registry trigger means, in words (retrainer/worker.py ``due``, retrainer/cli.py ``retrain-now``).
TRIGGERS = {
    "initial": "initial",
    "feedback_count": "feedback count",
    "schedule": "schedule",
    "manual": "manual (operator)",
}
SVG_WIDTH, SVG_HEIGHT = 120.0, 32.0
BAR_GAP = 1.0


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    lo: float
    hi: float
    count: float
    fake_side: bool  # bin lies at or above p_fake 0.5

    @property
    def title(self) -> str:
        return f"p_fake {_edge(self.lo)}–{_edge(self.hi)}: {_count(self.count)}"


@dataclass(frozen=True)
class Histogram:
    bars: list[Bar]
    width: float
    height: float
    total: float

    @property
    def summary(self) -> str:
        """The chart in words (its aria-label)."""
        top = max(self.bars, key=lambda b: b.count)
        parts = [
            f"p_fake histogram on validation: {_count(self.total)} images in {len(self.bars)} bins "
            f"from {_edge(self.bars[0].lo)} to {_edge(self.bars[-1].hi)}"
        ]
        if any(math.isclose(b.hi, 0.5) for b in self.bars):
            below = sum(b.count for b in self.bars if b.hi <= 0.5 + 1e-9)
            parts.append(f"{below / self.total:.0%} below 0.5")
        parts.append(f"tallest bin {_edge(top.lo)}–{_edge(top.hi)} with {_count(top.count)}")
        return "; ".join(parts)


@dataclass(frozen=True)
class Cell:
    """One formatted metric: ``text`` is what the cell shows, ``note`` (may be empty) says what it is."""

    text: str
    note: str = ""
    value: float | None = None

    @property
    def missing(self) -> bool:
        return self.value is None


@dataclass(frozen=True)
class ModelRow:
    version: str
    parent: str | None
    status: str
    created_at: datetime
    trigger: str
    trigger_detail: str
    reasons: list[str]
    accuracy: Cell
    auroc: Cell
    ece: Cell
    gain: Cell
    drop: Cell
    histogram: Histogram | None
    raw_metrics: str
    raw_data: str


def number(metrics: Mapping[str, Any], key: str) -> float | None:
    """``metrics[key]`` as a finite float, or None (absent, null, a bool, text, NaN)."""
    v = metrics.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def first_number(metrics: Mapping[str, Any], keys: Sequence[str]) -> tuple[str, float] | None:
    for k in keys:
        v = number(metrics, k)
        if v is not None:
            return k, v
    return None


def plain(metrics: Mapping[str, Any], keys: Sequence[str]) -> Cell:
    found = first_number(metrics, keys)
    if found is None:
        return Cell(MISSING)
    return Cell(f"{found[1]:.4f}", found[0], found[1])


def signed(metrics: Mapping[str, Any], key: str, note: str) -> Cell:
    v = number(metrics, key)
    if v is None:
        return Cell(MISSING)
    return Cell(f"{v:+.4f}", note, v)


def accuracy_cell(metrics: Mapping[str, Any]) -> Cell:
    for label, key in ACCURACY_KEYS:
        v = number(metrics, key)
        if v is not None:
            return Cell(f"{v:.4f}", f"{key}: accuracy on {label}" if label else key, v)
    return Cell(MISSING)


def gain_cell(metrics: Mapping[str, Any]) -> Cell:
    note = "holdout_gain: candidate minus champion accuracy on the feedback hold-out"
    cand, champ = number(metrics, "holdout_accuracy"), number(metrics, "champion_holdout_accuracy")
    n = number(metrics, "n_holdout")
    if cand is not None and champ is not None:
        note += f" ({cand:.4f} vs {champ:.4f}"
        note += f", {int(n)} images)" if n is not None else ")"
    return signed(metrics, GAIN_KEY, note)


def drop_cell(metrics: Mapping[str, Any]) -> Cell:
    note = "base_val_drop: champion minus candidate accuracy on base validation (positive = worse)"
    return signed(metrics, DROP_KEY, note)


def histogram(
    metrics: Mapping[str, Any], width: float = SVG_WIDTH, height: float = SVG_HEIGHT
) -> Histogram | None:
    """The bars of ``metrics["val_pfake_hist"]``: x by the bin edges, height proportional to the count.

    Accepts ``{"edges": [...], "counts": [...]}`` or a bare list of counts (equal bins on [0, 1]), as the
    scorer does; anything else (or no images at all) is None.
    """
    raw = metrics.get(HIST_KEY)
    counts_raw: Any
    edges_raw: Any
    if isinstance(raw, Mapping):
        counts_raw, edges_raw = raw.get("counts"), raw.get("edges")
    else:
        counts_raw, edges_raw = raw, None
    counts = _floats(counts_raw)
    if not counts or any(c < 0 for c in counts) or sum(counts) <= 0:
        return None
    n = len(counts)
    edges = _floats(edges_raw) if edges_raw is not None else [i / n for i in range(n + 1)]
    if edges is None or len(edges) != n + 1 or any(b <= a for a, b in pairwise(edges)):
        return None
    top, span = max(counts), edges[-1] - edges[0]
    bars = []
    for i, c in enumerate(counts):
        x0 = (edges[i] - edges[0]) / span * width
        x1 = (edges[i + 1] - edges[0]) / span * width
        h = round(height * c / top, 2)
        bars.append(
            Bar(
                x=round(x0 + BAR_GAP / 2, 2),
                y=round(height - h, 2),
                width=round(max(x1 - x0 - BAR_GAP, 0.5), 2),
                height=h,
                lo=edges[i],
                hi=edges[i + 1],
                count=c,
                fake_side=(edges[i] + edges[i + 1]) / 2 >= 0.5,
            )
        )
    return Histogram(bars, width, height, sum(counts))


def trigger_text(trigger: str | None, data: Mapping[str, Any]) -> tuple[str, str]:
    """(what started the run, a detail from the registry's ``data``: labels used or the source file)."""
    label = TRIGGERS.get(trigger or "", trigger or MISSING)
    details = []
    feedback = data.get("feedback")
    if isinstance(feedback, Mapping):
        n = feedback.get("labels")
        if isinstance(n, int) and not isinstance(n, bool):
            # images with a majority label across moderators (retrainer/feedback.py MajorityLabels)
            details.append(f"{n} moderator-labelled image{'s' if n != 1 else ''}")
        hold = feedback.get("holdout")
        if isinstance(hold, int) and not isinstance(hold, bool):
            details.append(f"{hold} held out")
    source = data.get("source")
    if isinstance(source, str) and source:
        details.append(f"from {source}")
    return label, ", ".join(details)


def model_row(m: Mapping[str, Any]) -> ModelRow:
    """A ``queries.models`` row as the Models page shows it."""
    metrics = m.get("metrics") or {}
    data = m.get("data") or {}
    if not isinstance(metrics, Mapping):
        metrics = {}
    if not isinstance(data, Mapping):
        data = {}
    trigger, detail = trigger_text(m.get("trigger"), data)
    reasons = m.get("reasons") or []
    return ModelRow(
        version=m["version"],
        parent=m.get("parent"),
        status=m["status"],
        created_at=m["created_at"],
        trigger=trigger,
        trigger_detail=detail,
        reasons=[str(r) for r in reasons] if isinstance(reasons, list) else [str(reasons)],
        accuracy=accuracy_cell(metrics),
        auroc=plain(metrics, AUROC_KEYS),
        ece=plain(metrics, ECE_KEYS),
        gain=gain_cell(metrics),
        drop=drop_cell(metrics),
        histogram=histogram(metrics),
        raw_metrics=raw_json(metrics),
        raw_data=raw_json(data),
    )


def raw_json(obj: Mapping[str, Any]) -> str:
    """``obj`` as JSON, one top-level key a line (a histogram's lists stay on one line); "" when empty."""
    if not obj:
        return ""
    lines = [f"  {json.dumps(k)}: {json.dumps(obj[k], sort_keys=True, default=str)}" for k in sorted(obj)]
    return "{\n" + ",\n".join(lines) + "\n}"


def _floats(raw: Any) -> list[float] | None:
    if not isinstance(raw, list | tuple):
        return None
    out = []
    for v in raw:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(float(v)):
            return None
        out.append(float(v))
    return out


def _edge(e: float) -> str:
    return f"{e:.2f}".rstrip("0").rstrip(".") if e != int(e) else f"{int(e)}"


def _count(c: float) -> str:
    return f"{int(c):,}" if c == int(c) else f"{c:,.1f}"
