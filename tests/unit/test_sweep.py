"""The sweep's result files: rows from before the others_cpu_pct column still load, the table names the
machine, and the Pareto front keeps only undominated rows."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from harness.sweep import FIELDS, pareto_front, read_rows, write_outputs


def _row(name: str, acc: float, ips: int) -> dict[str, Any]:
    return {
        "candidate": name,
        "arch": name,
        "width": "",
        "params": 1000,
        "epochs": 1,
        "steps": 10,
        "train_images_per_s": 100,
        "val_accuracy": acc,
        "val_auroc": 0.9,
        "val_ece": 0.01,
        "cpu_images_per_s_b256": ips,
        "budget_s": 120.0,
        "others_cpu_pct": 1.5,
    }


def test_old_rows_load_and_the_table_names_the_machine(tmp_path: Path) -> None:
    old = [{k: v for k, v in _row("a", 0.9, 500).items() if k != "others_cpu_pct"}]
    with (tmp_path / "results.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[k for k in FIELDS if k != "others_cpu_pct"])
        w.writeheader()
        w.writerows(old)
    rows = [*read_rows(tmp_path / "results.csv"), _row("b", 0.95, 400)]
    assert rows[0]["others_cpu_pct"] == "" and rows[0]["cpu_images_per_s_b256"] == 500
    write_outputs(rows, tmp_path)
    table = (tmp_path / "results.md").read_text()
    assert "cores, commit" in table and "| b | b |  | 1000 |" in table and table.count("\n| ") == 3
    assert (tmp_path / "pareto.png").stat().st_size > 0


def test_pareto_front_drops_dominated_rows() -> None:
    rows = [_row("fast", 0.90, 900), _row("good", 0.97, 300), _row("worse", 0.89, 800)]
    assert [r["candidate"] for r in pareto_front(rows)] == ["good", "fast"]
