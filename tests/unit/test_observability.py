"""The Grafana dashboard and Prometheus rules in deploy/observability: promtool accepts the rules and the
example config, the rule unit tests prove the alerts fire, a broken rule file is refused, and every metric
name a query uses is one the services really export (read from their metric registries)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from explainer.handler import ExplainerMetrics
from ingest.api.app import HttpMetrics
from ingest.metrics import LoopMetrics, new_registry
from ingest.settings import KafkaSettings, PostgresSettings
from retrainer.feedback import FeedbackMetrics
from retrainer.worker import WorkerMetrics
from scorer.handler import ScorerMetrics
from scorer.hotswap import ModelWatcher
from scorer.known_index import KnownIndex
from scorer.known_watcher import KnownContentWatcher
from tests.fetch_helpers import MemoryStore

ROOT = Path(__file__).resolve().parents[2]
OBS = ROOT / "deploy" / "observability"
SETUP = "deploy/setup-promtool"
# Series Prometheus makes itself for every target, not the services.
SCRAPE_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


def _promtool() -> str:
    cache = Path(
        os.environ.get("CIFAKE_CACHE_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cifake-screen"
    )
    candidates = (
        os.environ.get("CIFAKE_PROMTOOL"),
        str(cache / "bin" / "promtool"),
        shutil.which("promtool"),
    )
    for cand in candidates:
        if cand and os.access(cand, os.X_OK):
            return cand
    pytest.fail(f"promtool not found: run `{SETUP}` (part of `make setup`) or set CIFAKE_PROMTOOL")


@pytest.fixture(scope="module")
def promtool() -> str:
    return _promtool()


def _run(promtool: str, *args: str, cwd: Path = OBS) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


# -- promtool -----------------------------------------------------------------------------------


def test_rules_pass_promtool_check(promtool: str) -> None:
    res = _run(promtool, "check", "rules", "alerts.yml")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_alert_unit_tests_pass(promtool: str) -> None:
    """alerts.test.yml makes the drift, DLQ, lag, latency and scorer-down alerts fire (and stay quiet)."""
    res = _run(promtool, "test", "rules", "alerts.test.yml")
    assert res.returncode == 0, res.stdout + res.stderr
    cases = _yaml(OBS / "alerts.test.yml")["tests"]
    tested = {t["alertname"] for case in cases for t in case["alert_rule_test"]}
    for alert in ("PFakeDrift", "ScorerDeadLetterRateHigh", "ScorerConsumerLagHigh", "ScorerLatencyP99High"):
        assert alert in tested
    assert {"ScorerDown", "NoScorerUp"} <= tested


def test_alert_unit_tests_catch_a_weakened_rule(promtool: str, tmp_path: Path) -> None:
    """The rule tests can fail: the drift alert with its threshold raised out of reach no longer fires."""
    text = (OBS / "alerts.yml").read_text()
    assert text.count("scorer_pfake_reference_info > 0.2") == 1
    weakened = text.replace("scorer_pfake_reference_info > 0.2", "scorer_pfake_reference_info > 5")
    (tmp_path / "alerts.yml").write_text(weakened)
    shutil.copy(OBS / "alerts.test.yml", tmp_path / "alerts.test.yml")
    res = _run(promtool, "test", "rules", "alerts.test.yml", cwd=tmp_path)
    assert res.returncode != 0
    assert "PFakeDrift" in res.stdout + res.stderr


@pytest.mark.parametrize(
    "rule",
    [
        {"alert": "Broken", "expr": "sum(rate(scorer_records_total[5m])"},  # unbalanced parenthesis
        {"alert": "Broken", "expr": "scorer_records_total", "for": "ten minutes"},
        {"record": "not a valid name", "expr": "up"},
    ],
)
def test_broken_rule_file_fails(promtool: str, tmp_path: Path, rule: dict[str, str]) -> None:
    path = tmp_path / "broken.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "broken", "rules": [rule]}]}))
    res = _run(promtool, "check", "rules", str(path))
    assert res.returncode != 0, res.stdout
    assert "FAILED" in res.stdout + res.stderr


def test_example_prometheus_config_is_valid(promtool: str) -> None:
    res = _run(promtool, "check", "config", "prometheus.yml")
    assert res.returncode == 0, res.stdout + res.stderr


def test_dashboard_queries_parse(promtool: str, tmp_path: Path) -> None:
    """Each dashboard query, with Grafana's variables filled in, is valid PromQL (as recording rules)."""
    exprs = _dashboard_exprs()
    rules = [{"record": f"dashboard:query_{i}", "expr": _as_promql(e)} for i, e in enumerate(exprs)]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    res = _run(promtool, "check", "rules", str(path))
    assert res.returncode == 0, res.stdout + res.stderr


# -- the dashboard ------------------------------------------------------------------------------


def test_dashboard_covers_the_pipeline() -> None:
    dash = _dashboard()
    panels = dash["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    titles = {p["title"] for p in panels}
    for want in (
        "Throughput",
        "End-to-end latency",
        "Batch size",
        "Consumer lag",
        "Dead letters by reason",
        "Verdict mix",
        "Serving model version",
        "p_fake distribution",
        "Drift PSI by scorer",
    ):
        assert want in titles, want
    names = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "instance"} <= names
    latency = next(p for p in panels if p["title"] == "End-to-end latency")
    assert {"p50", "p95", "p99"} == {t["legendFormat"] for t in latency["targets"]}
    assert all("histogram_quantile" in t["expr"] for t in latency["targets"])


# -- metric names -------------------------------------------------------------------------------


def test_every_queried_metric_is_exported() -> None:
    exported = _exported_names()
    used: dict[str, set[str]] = {}
    for expr in _dashboard_exprs():
        for name in metric_names(expr):
            used.setdefault(name, set()).add("grafana-dashboard.json")
    for expr in _rule_exprs():
        for name in metric_names(expr):
            used.setdefault(name, set()).add("alerts.yml")
    assert {"scorer_pfake_psi", "scorer_dead_letters_total", "scorer_consumer_lag_records"} <= set(used)
    unknown = {n: sorted(files) for n, files in used.items() if n not in exported and n not in SCRAPE_SERIES}
    assert not unknown, f"metrics used but exported by no service: {unknown}"


def test_metric_name_extraction() -> None:
    expr = (
        'sum by (le, stage) (rate(a_b_bucket{stage!~"x|y", job="s"}[5m] offset 1h)) / on (job) '
        'group_left (source) c_info > bool 1e3 and absent(up{job="scorer"} == 1) '
        "unless histogram_quantile(0.9, d_total[$__rate_interval])"
    )
    assert metric_names(expr) == {"a_b_bucket", "c_info", "up", "d_total"}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers left after removing strings, label matchers,
    ranges and grouping lists, that are neither functions nor keywords."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    keywords = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
                "group_right", "inf", "nan"}  # fmt: skip
    names: set[str] = set()
    for m in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", s):
        if re.match(r"\s*\(", s[m.end() :]) or m.group().lower() in keywords:
            continue
        names.add(m.group())
    return names


def _exported_names() -> set[str]:
    """Every series name the services can export, from the same metric factories their main() uses."""
    registries: list[CollectorRegistry] = []
    for app in ("scorer", "explainer", "retrainer"):
        reg = new_registry()
        LoopMetrics.create(app, reg)
        if app != "retrainer":
            ModelWatcher(KafkaSettings(), MemoryStore(), "cpu", reg, app=app)
        registries.append(reg)
    ScorerMetrics.create(registries[0])
    KnownContentWatcher(KafkaSettings(), PostgresSettings(), KnownIndex(), registries[0])
    ExplainerMetrics.create(registries[1])
    FeedbackMetrics.create(registries[2])
    for factory in (WorkerMetrics.create, HttpMetrics.create):
        reg = new_registry()
        factory(reg)
        registries.append(reg)
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("", "_count", "_sum", "_created"),
        "gauge": ("",),
        "info": ("_info",),
    }
    names: set[str] = set()
    for reg in registries:
        for family in reg.collect():
            names.update(family.name + s for s in suffixes.get(family.type, ("",)))
    return names


# -- reading the files --------------------------------------------------------------------------


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _dashboard() -> Any:
    return json.loads((OBS / "grafana-dashboard.json").read_text())


def _dashboard_exprs() -> list[str]:
    dash = _dashboard()
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", []) if t.get("expr")]
    for var in dash["templating"]["list"]:
        m = re.match(r"label_values\((\w+)", str(var.get("definition", "")))
        if m:
            exprs.append(m.group(1))
    assert exprs
    return exprs


def _as_promql(expr: str) -> str:
    """Grafana's variables replaced by what Grafana would send."""
    return expr.replace("$__rate_interval", "1m").replace("$__range", "6h").replace("$instance", ".*")


def _rule_exprs() -> list[str]:
    return [r["expr"] for g in _yaml(OBS / "alerts.yml")["groups"] for r in g["rules"]]
