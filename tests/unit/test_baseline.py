"""``harness.baseline``: which bench an earlier commit runs, and the ratios it reports."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.baseline import bench_command, last_json_line, median_run, ratios


def test_a_commit_with_the_harness_runs_harness_pipeline_without_overwriting_the_result_file(
    tmp_path: Path,
) -> None:
    (tmp_path / "harness").mkdir()
    (tmp_path / "harness" / "pipeline_bench.py").write_text('p.add_argument(\n    "--out",\n)')
    cmd = bench_command(tmp_path, 193.44, ["--n", "2000"])
    assert cmd[1:4] == ["-m", "harness.pipeline", "--log-level"]
    assert cmd[cmd.index("--out") + 1] == ""
    assert cmd[-4:] == ["--rate", "193.4", "--n", "2000"]


def test_a_harness_without_a_result_file_flag_gets_none(tmp_path: Path) -> None:
    (tmp_path / "harness").mkdir()
    (tmp_path / "harness" / "pipeline_bench.py").write_text("")
    assert "--out" not in bench_command(tmp_path, None, [])


def test_the_median_run_is_one_real_run() -> None:
    runs = [{"images_per_s": v, "p99_ms": v} for v in (300.0, 100.0, 200.0)]
    assert median_run(runs) == {"images_per_s": 200.0, "p99_ms": 200.0}
    assert median_run(runs[:2])["images_per_s"] == 100.0


def test_an_older_commit_runs_its_scorer_bench(tmp_path: Path) -> None:
    assert bench_command(tmp_path, None, [])[1:] == ["-m", "scorer", "--log-level", "WARNING", "bench"]


def test_the_last_json_line_is_the_result() -> None:
    assert last_json_line('log\n{"a": 1}\nmore log\n{"images_per_s": 2}\n') == {"images_per_s": 2}
    with pytest.raises(RuntimeError):
        last_json_line("no json here\n")


def test_ratios_are_current_over_baseline_with_cpu_summed_over_processes() -> None:
    baseline = {"images_per_s": 500.0, "p99_ms": 200.0, "cpu_ms_per_image": {"scorer": 2.0, "minio": 0.5}}
    current = {
        "images_per_s": 900.0,
        "p99_ms": 100.0,
        "cpu_ms_per_image": {"scorer": 1.0, "minio": 0.5},
        "inline_images_per_s": 1250.0,
    }
    got = ratios(current, baseline)
    assert got == {
        "images_per_s": 1.8,
        "cpu_ms_per_image": 0.6,
        "p99_ms": 0.5,
        "two_scorers_images_per_s": None,
        "inline_vs_baseline_reference": 2.5,  # the baseline had no inline phase: its reference figure
    }
