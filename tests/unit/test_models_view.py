"""The console's Models page without the stack: ``ingest.api.model_view`` and the rendered template.

``parse_models_page`` is also used by tests/integration/test_models_page.py.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html.parser import HTMLParser
from itertools import pairwise
from typing import Any

import pytest

from ingest.api.model_view import MISSING, histogram, model_row, trigger_text
from ingest.api.review import _env

EDGES = [round(i / 10, 1) for i in range(11)]
# The shipped weights' metrics (scorer/assets/default.safetensors), registered with trigger "initial".
INITIAL_METRICS: dict[str, Any] = {
    "val_accuracy": 0.9812,
    "val_auroc": 0.99844104,
    "val_ece": 0.0028286203206147743,
    "val_nll": 0.0497,
    "best_epoch": 38,
    "val_pfake_hist": {
        "edges": EDGES,
        "counts": [4724.0, 115.0, 83.0, 62.0, 38.0, 46.0, 42.0, 67.0, 110.0, 4713.0],
    },
}
# What retrainer/retrain.py ``compare`` stores for a fine-tuned candidate.
FINE_TUNED_METRICS: dict[str, Any] = {
    "holdout_accuracy": 0.875,
    "champion_holdout_accuracy": 0.85,
    "base_val_accuracy": 0.9731,
    "champion_base_val_accuracy": 0.9741,
    "n_holdout": 40,
    "n_feedback_train": 160,
    "n_base_val": 2000,
    "holdout_gain": 0.025,
    "base_val_drop": 0.001,
    "steps": 300,
}
FEEDBACK_DATA = {"feedback": {"labels": 200, "holdout": 40, "train": 160}, "base": {"replay": 4000}}
SVG_NS = "{http://www.w3.org/2000/svg}"


def row(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "version": "v1",
        "parent": None,
        "status": "champion",
        "metrics": {},
        "trigger": "initial",
        "created_at": datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC),
        "data": {},
        "reasons": [],
    }
    return base | kw


# -- the view ---------------------------------------------------------------------------------------


def test_initial_champion_shows_validation_metrics_and_the_histogram() -> None:
    m = model_row(row(metrics=INITIAL_METRICS, data={"source": "default.safetensors"}))
    assert (m.accuracy.text, m.auroc.text, m.ece.text) == ("0.9812", "0.9984", "0.0028")
    assert "val_accuracy" in m.accuracy.note
    assert (m.gain.text, m.drop.text) == (MISSING, MISSING) and m.gain.missing
    assert (m.trigger, m.trigger_detail) == ("initial", "from default.safetensors")
    h = m.histogram
    assert h is not None and len(h.bars) == 10
    counts = INITIAL_METRICS["val_pfake_hist"]["counts"]
    assert [b.count for b in h.bars] == counts
    for b, c in zip(h.bars, counts, strict=True):
        assert b.height == pytest.approx(h.height * c / max(counts), abs=0.01)
        assert b.y + b.height == pytest.approx(h.height)
    assert [b.fake_side for b in h.bars] == [False] * 5 + [True] * 5
    assert all(b.x < c.x for b, c in pairwise(h.bars))
    assert "10,000 images in 10 bins from 0 to 1" in h.summary
    assert "50% below 0.5" in h.summary and "tallest bin 0–0.1 with 4,724" in h.summary
    assert json.loads(m.raw_metrics) == INITIAL_METRICS
    assert '\n  "val_pfake_hist": {"counts": [4724.0, 115.0,' in m.raw_metrics  # one line, not 24


def test_fine_tuned_candidate_shows_gain_drop_and_who_triggered_it() -> None:
    m = model_row(
        row(
            version="ft-1",
            parent="v1",
            status="rejected",
            trigger="feedback_count",
            metrics=FINE_TUNED_METRICS,
            data=FEEDBACK_DATA,
            reasons=["base accuracy drop +0.0010 above epsilon"],
        )
    )
    assert m.accuracy.text == "0.9731" and "base validation" in m.accuracy.note
    assert (m.auroc.text, m.ece.text) == (MISSING, MISSING)
    assert (m.gain.text, m.drop.text) == ("+0.0250", "+0.0010")
    assert "0.8750 vs 0.8500, 40 images" in m.gain.note
    assert m.histogram is None
    assert (m.trigger, m.trigger_detail) == ("feedback count", "200 moderator-labelled images, 40 held out")
    assert m.reasons == ["base accuracy drop +0.0010 above epsilon"]
    assert json.loads(m.raw_data) == FEEDBACK_DATA
    assert model_row(row(metrics={"base_val_drop": -0.002})).drop.text == "-0.0020"


def test_a_model_without_metrics_shows_dashes() -> None:
    m = model_row(row(metrics={}, trigger=None, data=None, reasons=None))
    cells = (m.accuracy, m.auroc, m.ece, m.gain, m.drop)
    assert all(c.text == MISSING and c.missing for c in cells)
    assert m.histogram is None and m.raw_metrics == "" and m.raw_data == ""
    assert (m.trigger, m.trigger_detail) == (MISSING, "")


@pytest.mark.parametrize(
    "value",
    [
        "0.98",
        True,
        None,
        float("nan"),
        float("inf"),
        [0.9],
        {"v": 1},
    ],
)
def test_metrics_that_are_not_finite_numbers_are_missing(value: Any) -> None:
    m = model_row(row(metrics={"val_accuracy": value, "val_auroc": value, "holdout_gain": value}))
    assert (m.accuracy.text, m.auroc.text, m.gain.text) == (MISSING, MISSING, MISSING)


@pytest.mark.parametrize(
    "hist",
    [
        {"edges": EDGES, "counts": [0] * 10},  # no images
        {"edges": EDGES, "counts": [1, -1, 3, 4, 5, 6, 7, 8, 9, 10]},
        {"edges": EDGES[:-1], "counts": [1] * 10},  # one edge too few
        {"edges": list(reversed(EDGES)), "counts": [1] * 10},
        {"edges": EDGES, "counts": [True] * 10},
        {"edges": EDGES, "counts": "1,2,3"},
        {"counts": []},
        "histogram",
        [],
    ],
)
def test_unusable_histograms_are_left_out(hist: Any) -> None:
    assert histogram({"val_pfake_hist": hist}) is None


def test_a_bare_list_of_counts_is_ten_equal_bins_and_bin_widths_follow_the_edges() -> None:
    h = histogram({"val_pfake_hist": [1, 2, 0, 4]}, width=100, height=40)
    assert h is not None
    assert [b.height for b in h.bars] == [10.0, 20.0, 0.0, 40.0]
    assert [(b.lo, b.hi) for b in h.bars] == [(0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0)]
    uneven = histogram({"val_pfake_hist": {"edges": [0, 0.5, 1.0], "counts": [1, 1]}}, width=100, height=10)
    wide = histogram({"val_pfake_hist": {"edges": [0, 0.9, 1.0], "counts": [1, 1]}}, width=100, height=10)
    assert uneven is not None and wide is not None
    assert uneven.bars[0].width == uneven.bars[1].width
    assert wide.bars[0].width > 8 * wide.bars[1].width


def test_trigger_texts() -> None:
    assert trigger_text("manual", {}) == ("manual (operator)", "")
    assert trigger_text("schedule", {"feedback": {"labels": 1}}) == ("schedule", "1 moderator-labelled image")
    assert trigger_text("something-new", {"feedback": "x"}) == ("something-new", "")


# -- the template -----------------------------------------------------------------------------------


@dataclass
class PageRow:
    version: str
    cells: dict[str, str] = field(default_factory=dict)  # td class (first word) -> text
    titles: dict[str, str] = field(default_factory=dict)  # td class -> title attribute
    svg: str = ""  # the histogram's <svg>...</svg>, as served
    details: list[str] = field(default_factory=list)  # text of each <pre> inside a <details>
    summary: str = ""


class _ModelsTable(HTMLParser):
    """Rows of ``table#models``: cell texts by class, the raw SVG markup, the texts inside <details>."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.rows: list[PageRow] = []
        self.in_table = self.in_body = self.in_details = self.in_pre = self.in_summary = self.in_svg = False
        self.cell: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table" and a.get("id") == "models":
            self.in_table = True
        elif self.in_table and tag == "tbody":
            self.in_body = True
        elif self.in_body and tag == "tr":
            self.rows.append(PageRow(a.get("data-version") or ""))
        elif self.in_body and tag == "td":
            self.cell = (a.get("class") or "").split()[0] if a.get("class") else ""
            self.rows[-1].cells[self.cell] = ""
            if a.get("title"):
                self.rows[-1].titles[self.cell] = a["title"] or ""
        elif self.cell is not None and tag in ("br", "ul", "li", "p"):
            self.rows[-1].cells[self.cell] += " "
        elif self.in_body and tag == "svg":
            self.in_svg = True
            self.rows[-1].svg = "<svg>"  # the markup itself is cut from the source afterwards
        elif self.in_body and tag == "details":
            self.in_details = True
        elif self.in_details and tag == "summary":
            self.in_summary = True
        elif self.in_details and tag == "pre":
            self.in_pre = True
            self.rows[-1].details.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self.in_table = self.in_body = False
        elif tag == "td":
            self.cell = None
        elif tag == "svg":
            self.in_svg = False
        elif tag == "details":
            self.in_details = False
        elif tag == "summary":
            self.in_summary = False
        elif tag == "pre":
            self.in_pre = False

    def handle_data(self, data: str) -> None:
        if not self.rows or self.cell is None or self.in_svg:
            return
        r = self.rows[-1]
        if self.in_pre:
            r.details[-1] += data
        elif self.in_summary:
            r.summary += data
        else:
            r.cells[self.cell] += data


def parse_models_page(page: str) -> dict[str, PageRow]:
    """The Models page's rows by version (cell texts stripped and whitespace-collapsed)."""
    p = _ModelsTable()
    p.feed(page)
    out = {}
    svgs = iter(re.findall(r"<svg\b.*?</svg>", page, flags=re.S))
    for r in p.rows:
        r.cells = {k: " ".join(v.split()) for k, v in r.cells.items()}
        if r.svg:
            r.svg = next(svgs)
        out[r.version] = r
    return out


def svg_bars(svg: str) -> tuple[ET.Element, list[ET.Element]]:
    """The SVG (parsed as XML: it must be well-formed) and its bars."""
    root = ET.fromstring(svg)
    return root, [e for e in root.iter(f"{SVG_NS}rect") if "bar" in e.get("class", "").split()]


def render(models: list[dict[str, Any]]) -> str:
    return _env.get_template("models.html").render(
        session=None, path="/review/models", models=[model_row(m) for m in models]
    )


def test_the_template_renders_columns_svg_and_raw_metrics() -> None:
    page = render(
        [
            row(
                version="ft-1", parent="v1", status="candidate", trigger="manual", metrics=FINE_TUNED_METRICS
            ),
            row(version="v1", metrics=INITIAL_METRICS, data={"source": "default.safetensors"}),
            row(version="bare", status="retired", metrics={}, trigger=None),
        ]
    )
    rows = parse_models_page(page)
    assert list(rows) == ["ft-1", "v1", "bare"]
    v1 = rows["v1"]
    assert v1.cells["accuracy"] == "0.9812" and v1.cells["auroc"] == "0.9984" and v1.cells["ece"] == "0.0028"
    assert v1.cells["gain"] == MISSING and v1.cells["drop"] == MISSING
    assert v1.cells["when"] == "2025-03-04 05:06" and v1.cells["status"] == "champion"
    assert v1.cells["trigger"] == "initial from default.safetensors"
    root, bars = svg_bars(v1.svg)
    assert root.get("role") == "img" and "10,000 images" in (root.get("aria-label") or "")
    assert root.find(f"{SVG_NS}title") is not None
    counts = INITIAL_METRICS["val_pfake_hist"]["counts"]
    assert len(bars) == len(counts)
    heights = [float(b.get("height", "nan")) for b in bars]
    for h, c in zip(heights, counts, strict=True):
        assert h == pytest.approx(heights[0] * c / counts[0], abs=0.01)
    assert bars[0].find(f"{SVG_NS}title").text == "p_fake 0–0.1: 4,724"  # type: ignore[union-attr]
    assert v1.summary == "raw metrics" and json.loads(v1.details[0]) == INITIAL_METRICS
    ft = rows["ft-1"]
    assert (ft.cells["gain"], ft.cells["drop"], ft.cells["auroc"]) == ("+0.0250", "+0.0010", MISSING)
    assert ft.cells["version"] == "ft-1 from v1" and ft.cells["trigger"] == "manual (operator)"
    assert "0.8750 vs 0.8500" in ft.titles["gain"]
    assert ft.cells["histogram"] == MISSING and json.loads(ft.details[0]) == FINE_TUNED_METRICS
    bare = rows["bare"]
    metric_cells = ("accuracy", "auroc", "ece", "gain", "drop", "histogram", "raw")
    assert all(bare.cells[c] == MISSING for c in metric_cells) and bare.details == []


def test_everything_is_escaped_and_nothing_needs_inline_style_or_script() -> None:
    evil = '<img src=x onerror="alert(1)">'
    page = render(
        [
            row(
                version="v1",
                status="rejected",
                metrics=INITIAL_METRICS | {"note": evil},
                data={"source": evil, "feedback": {"labels": 3}},
                reasons=[evil],
            )
        ]
    )
    assert "<img" not in page and 'onerror="alert' not in page
    # the reason, the trigger detail, and the raw metrics and data
    assert page.count("&lt;img src=x onerror=") == 4
    assert not re.search(r"\sstyle=", page) and "<style" not in page
    assert re.findall(r"<script\b[^>]*>", page) == ['<script src="/review/static/review.js">']
    r = parse_models_page(page)["v1"]
    assert json.loads(r.details[0])["note"] == evil and json.loads(r.details[1])["source"] == evil


def test_no_models() -> None:
    assert "No models registered yet." in render([])
