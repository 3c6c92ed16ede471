"""``python -m harness.baseline --rev REV``: the pipeline bench of an earlier commit and of this checkout,
one after the other on the same stack, so that every comparison is a ratio measured side by side rather than
a number from another day.

The earlier commit runs from a temporary ``git worktree`` with this checkout's interpreter, so it uses its
own code and its own bench command (``python -m harness.pipeline``, or ``python -m scorer bench`` before the
harness existed). This checkout's latency phase is offered the same rate as the baseline's (half of the
baseline's backlog maximum), so the two p99 figures are comparable. The result file holds both runs' JSON,
the ratios (this checkout / baseline) and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.machine import machine_info, write_json
from ingest.cli import configure_logging

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = "benchmarks/pipeline/baseline.json"


def bench_command(tree: Path, rate: float | None, extra: list[str]) -> list[str]:
    """The bench command of the code in ``tree``: whichever entry point that commit has (and, where it
    writes a result file, told not to: only this module's file is the comparison)."""
    rate_args = ["--rate", f"{rate:.1f}"] if rate else []
    bench = tree / "harness" / "pipeline_bench.py"
    if bench.exists():
        quiet = ["--out", ""] if '"--out"' in bench.read_text() else []
        return [
            sys.executable,
            "-m",
            "harness.pipeline",
            "--log-level",
            "WARNING",
            *quiet,
            *rate_args,
            *extra,
        ]
    return [sys.executable, "-m", "scorer", "--log-level", "WARNING", "bench", *rate_args, *extra]


def last_json_line(stdout: str) -> dict[str, Any]:
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            parsed: dict[str, Any] = json.loads(line)
            return parsed
    raise RuntimeError("the bench printed no JSON line")


def run_in(tree: Path, rate: float | None, extra: list[str], timeout: float) -> dict[str, Any]:
    # Absolute paths: the worktree has no .stack of its own, and its code reads them relative to itself.
    env = os.environ | {
        "CIFAKE_ENV_FILE": str(Path(os.environ.get("CIFAKE_ENV_FILE", ROOT / ".stack" / "env")).resolve()),
        "CIFAKE_STACK_DIR": str(Path(os.environ.get("CIFAKE_STACK_DIR", ROOT / ".stack")).resolve()),
    }
    cmd = bench_command(tree, rate, extra)
    done = subprocess.run(
        cmd, cwd=tree, env=env, stdout=subprocess.PIPE, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[1:])} in {tree} exited {done.returncode}")
    return last_json_line(done.stdout)


def total_cpu_ms(result: Mapping[str, Any]) -> float:
    return float(sum(result.get("cpu_ms_per_image", {}).values()))


def ratios(current: Mapping[str, Any], baseline: Mapping[str, Any]) -> dict[str, float | None]:
    """current / baseline for the figures the cost-per-image targets are stated in."""

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    return {
        "images_per_s": ratio(current.get("images_per_s"), baseline.get("images_per_s")),
        "cpu_ms_per_image": ratio(total_cpu_ms(current), total_cpu_ms(baseline)),
        "p99_ms": ratio(current.get("p99_ms"), baseline.get("p99_ms")),
        "two_scorers_images_per_s": ratio(
            current.get("two_scorers_images_per_s"), baseline.get("two_scorers_images_per_s")
        ),
        # The issue states the inline target against the baseline's *reference* figure: a baseline without
        # an inline phase still gives this ratio.
        "inline_vs_baseline_reference": ratio(
            current.get("inline_images_per_s"), baseline.get("images_per_s")
        ),
    }


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median backlog throughput (an odd count picks the middle one, an even count the
    slower of the middle two): one real run's figures, not a mix of several."""
    ordered = sorted(runs, key=lambda r: float(r["images_per_s"]))
    return ordered[(len(ordered) - 1) // 2]


def compare(rev: str, extra: list[str], timeout: float, repeat: int) -> dict[str, Any]:
    """Alternate baseline and current ``repeat`` times, so that a machine that slows down or speeds up
    during the run weighs on both sides."""
    base_runs: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cifake-baseline-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), rev], cwd=ROOT, check=True)
        try:
            for _ in range(repeat):
                base_runs.append(run_in(tree, None, extra, timeout))
                rate = 0.5 * float(base_runs[0]["images_per_s"])  # the same offered load every time
                runs.append(run_in(ROOT, rate, extra, timeout))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
    baseline, current = median_run(base_runs), median_run(runs)
    return {
        "baseline": {"rev": rev, **baseline},
        "current": current,
        "ratios": ratios(current, baseline),
        "total_cpu_ms_per_image": {
            "baseline": round(total_cpu_ms(baseline), 3),
            "current": round(total_cpu_ms(current), 3),
        },
        "runs": {
            "baseline_images_per_s": [r["images_per_s"] for r in base_runs],
            "current_images_per_s": [r["images_per_s"] for r in runs],
            "baseline_scorer_cpu_ms": [r.get("cpu_ms_per_image", {}).get("scorer") for r in base_runs],
            "current_scorer_cpu_ms": [r.get("cpu_ms_per_image", {}).get("scorer") for r in runs],
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.baseline", description=__doc__.splitlines()[0])
    p.add_argument("--rev", required=True, help="the earlier commit to compare with")
    p.add_argument("--out", default=DEFAULT_OUT, help="result file")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per bench run")
    p.add_argument(
        "--repeat", type=int, default=2, help="baseline/current pairs, alternated (median reported)"
    )
    p.add_argument("--log-level", default="INFO")
    args, extra = p.parse_known_args(argv)  # the rest goes to both benches (e.g. --n 2000)
    configure_logging(args.log_level)
    result = compare(args.rev, extra, args.timeout, args.repeat)
    doc = {
        "machine": machine_info(),
        "command": "python -m harness.baseline " + " ".join(argv or sys.argv[1:]),
    }
    write_json(args.out, doc | result)
    print(json.dumps(result["ratios"] | {"out": args.out}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
