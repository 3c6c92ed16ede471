"""The drift bench's result file (``benchmarks/drift/drift.json`` by default): the run's report with the
machine, the command and the load average; the figure beside it. No stack."""

from __future__ import annotations

import json
from pathlib import Path

from harness.drift_bench import parser, write_result

SUMMARY = {
    "new_before": 0.8,
    "new_after": 0.85,
    "old_before": 0.95,
    "old_after": 0.951,
    "labels_used": 2000,
    "seconds_to_serving": 100.0,
    "versions_published": 1,
    "versions_rejected": 0,
    "serving": "ft-x",
    "wall_s": 400.0,
    "run": "abcd1234",
    "service_exit_codes": [0, 0],
}


def test_result_file_has_machine_command_and_report(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    report = {"config": {"seed": 0}, "rows": [{"version": "drift-init-abcd1234"}], "summary": SUMMARY}
    (out / "drift.json").write_text(json.dumps(report))
    (out / "drift.png").write_bytes(b"\x89PNG fake")
    path = tmp_path / "benchmarks" / "drift" / "drift.json"
    write_result(path, out, "python -m harness.drift_bench --threads 1", (1.0, 0.5, 0.25), note="idle")
    doc = json.loads(path.read_text())
    assert {"cpu", "cores", "python", "packages", "commit"} <= set(doc["machine"])
    assert "torch" in doc["machine"]["packages"]
    assert doc["command"] == "python -m harness.drift_bench --threads 1"
    assert doc["loadavg_start"] == [1.0, 0.5, 0.25] and len(doc["loadavg_end"]) == 3
    assert doc["note"] == "idle"
    assert doc["summary"] == SUMMARY and doc["rows"] == report["rows"] and doc["config"] == {"seed": 0}
    assert (path.parent / "drift.png").read_bytes() == b"\x89PNG fake"


def test_result_defaults_under_benchmarks() -> None:
    args = parser().parse_args(["--data", "x.zip"])
    assert Path(args.result).parts[-3:] == ("benchmarks", "drift", "drift.json")
    assert args.note is None
