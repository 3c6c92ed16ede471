"""``deploy/gpu-check`` (``harness/gpu_check.py``): the result document, a failing part recorded while the
others run, the exit status, the pipeline part's handling of the stack (with ``subprocess.run`` faked), and
one real ``--device cpu --quick --skip-pipeline`` dry run (10 to 20 s on a 2-core VM). No stack, no GPU."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

from harness import gpu_check
from harness.machine import ROOT


def _ok(result: dict[str, Any]) -> gpu_check.Part:
    return lambda args: dict(result)


def _boom(args: argparse.Namespace) -> dict[str, Any]:
    raise RuntimeError("boom")


def _fake_parts(monkeypatch: pytest.MonkeyPatch, **parts: gpu_check.Part) -> None:
    for name in gpu_check.PARTS:
        monkeypatch.setitem(gpu_check.PARTS, name, parts.get(name, _ok({"images_per_s": 1.0})))


def _args(*argv: str) -> argparse.Namespace:
    args = gpu_check.parser().parse_args(list(argv))
    args.argv = list(argv)
    return args


def _last_line(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    return doc


def test_failing_part_is_recorded_and_the_rest_still_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake_parts(monkeypatch, train=_boom, model_fp16=_ok({"skipped": "cpu"}))
    out = tmp_path / "gpu" / "check.json"
    rc = gpu_check.main(["--device", "cpu", "--out", str(out)])
    assert rc == 1
    doc = _last_line(capsys)
    assert doc == json.loads(out.read_text())  # the file and the stdout line are the same document
    assert list(doc["parts"]) == list(gpu_check.PARTS)
    assert doc["failed"] == ["train"] and doc["ok"] is False and doc["complete"] is True
    assert doc["parts"]["train"]["error"] == "RuntimeError: boom"
    assert doc["parts"]["pipeline"]["images_per_s"] == 1.0  # ran after the failure
    assert doc["parts"]["model_fp16"]["skipped"] == "cpu"  # skipped is not failed
    assert all("wall_s" in r for r in doc["parts"].values())
    assert doc["device"] == "cpu" and doc["gpu"] is None
    assert {"cpu", "cores", "python", "packages", "commit"} <= set(doc["machine"])
    assert doc["command"] == f"deploy/gpu-check --device cpu --out {out}"


def test_all_parts_ok_exits_zero_and_skip_pipeline_is_not_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake_parts(monkeypatch, pipeline=_boom)  # not called: skipped
    rc = gpu_check.main(["--device", "cpu", "--skip-pipeline", "--out", str(tmp_path / "r.json")])
    doc = _last_line(capsys)
    assert rc == 0 and doc["ok"] is True and doc["failed"] == []
    assert doc["parts"]["pipeline"] == {"skipped": "--skip-pipeline"}


def test_result_file_is_rewritten_after_each_part(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "r.json"
    seen: dict[str, Any] = {}

    def train(args: argparse.Namespace) -> dict[str, Any]:
        seen.update(json.loads(out.read_text()))
        return {}

    _fake_parts(monkeypatch, model_bf16=_boom, train=train)
    assert gpu_check.main(["--device", "cpu", "--skip-pipeline", "--out", str(out)]) == 1
    # What a run cut short during `train` leaves: the parts before it, marked incomplete.
    assert list(seen["parts"]) == ["model_fp32", "model_fp16", "model_bf16"]
    assert seen["complete"] is False and seen["ok"] is False and seen["failed"] == ["model_bf16"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_missing_is_an_error_per_part() -> None:
    result = gpu_check.run_part("model_fp32", gpu_check.PARTS["model_fp32"], _args("--device", "cuda"))
    assert result["error"].startswith("RuntimeError: CUDA is not available")
    assert gpu_check.machine("cuda")["gpu"] is None


def test_fp16_is_skipped_on_cpu() -> None:
    assert "skipped" in gpu_check.model_part(_args("--device", "cpu"), "fp16")


class FakeRun:
    """Stands in for ``subprocess.run``: ``deploy/stack status/up/down``, ``python -m harness.pipeline``."""

    def __init__(self, status: int = 3, up: int = 0, pipeline: int = 0) -> None:
        self.rc = {"status": status, "up": up, "down": 0, "pipeline": pipeline}
        self.calls: list[str] = []

    def __call__(self, cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        what = "pipeline" if "harness.pipeline" in cmd else cmd[-1]
        self.calls.append(what)
        stdout = json.dumps({"images_per_s": 900.0, "p99_ms": 12.5, "extra": 1}) if what == "pipeline" else ""
        return subprocess.CompletedProcess(cmd, self.rc[what], stdout, "its log\n")


def test_pipeline_part_brings_the_stack_up_and_down_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeRun(status=3)
    monkeypatch.setattr(subprocess, "run", fake)
    result = gpu_check.pipeline_part(_args("--device", "cpu", "--out", str(tmp_path / "gpu" / "c.json")))
    assert fake.calls == ["status", "up", "pipeline", "down"]
    assert result["result_file"] == str(tmp_path / "gpu" / "pipeline-cpu.json")
    assert result["images_per_s"] == 900.0 and result["p99_ms"] == 12.5 and "extra" not in result


def test_pipeline_part_leaves_a_running_stack_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeRun(status=0)
    monkeypatch.setattr(subprocess, "run", fake)
    gpu_check.pipeline_part(_args("--device", "cpu", "--out", str(tmp_path / "c.json")))
    assert fake.calls == ["status", "up", "pipeline"]


@pytest.mark.parametrize(
    ("up", "pipeline", "message"), [(1, 0, "deploy/stack up exited 1"), (0, 2, "exited 2")]
)
def test_pipeline_part_failures_raise_and_still_take_the_stack_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, up: int, pipeline: int, message: str
) -> None:
    fake = FakeRun(status=3, up=up, pipeline=pipeline)
    monkeypatch.setattr(subprocess, "run", fake)
    with pytest.raises(RuntimeError, match=message):
        gpu_check.pipeline_part(_args("--device", "cpu", "--out", str(tmp_path / "c.json")))
    assert fake.calls[-1] == "down"


def test_cpu_dry_run_end_to_end(tmp_path: Path) -> None:
    """The real thing, as the docs give it for a machine without a GPU (10 to 20 s on a 2-core VM)."""
    out = tmp_path / "cpu-dry-run.json"
    env = {**os.environ, "CIFAKE_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    cmd = [str(ROOT / "deploy" / "gpu-check"), "--device", "cpu", "--quick", "--skip-pipeline"]
    proc = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    assert doc == json.loads(out.read_text())
    assert doc["ok"] is True and doc["failed"] == [] and doc["complete"] is True
    parts = doc["parts"]
    assert parts["model_fp32"]["batch256_images_per_s"] > 0
    assert "skipped" in parts["model_fp16"] and "skipped" in parts["pipeline"]
    agreement = parts["model_bf16"]["vs_fp32"]
    assert agreement["images"] == 512 and 0 <= agreement["max_abs_diff_p_fake"] < 0.1
    assert parts["train"]["steps"] >= 1 and parts["train"]["images_per_s"] > 0
    assert not (
        tmp_path / "cache"
    ).exists()  # the synthetic data's decoded cache went with its temporary folder
