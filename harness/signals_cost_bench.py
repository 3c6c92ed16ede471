"""What the signals (PDQ hashing, provenance, known-content matching) cost the streaming scorer.

    python -m harness.signals_cost_bench [--data cifake-train.zip] [--n 5000] [--rounds 2]

Runs the pipeline benchmark (``python -m harness.pipeline``, on the running stack) with signals off
(``CIFAKE_SCORER_SIGNALS__ENABLED=false``), on (the default: PDQ with its 8 variants, provenance, and a
known-content index loaded from PostgreSQL) and on without the variants
(``CIFAKE_SCORER_SIGNALS__DIHEDRAL=false``), in turn ``--rounds`` times so that a change in the machine's
load hits every mode alike. Writes ``benchmarks/known_content/pipeline_signals.json`` with every run's
JSON line and the medians of throughput and CPU per image, and prints the summary as one line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness.machine import machine_info, write_json

ROOT = Path(__file__).resolve().parents[1]


MODES: dict[str, dict[str, str]] = {
    "off": {"CIFAKE_SCORER_SIGNALS__ENABLED": "false"},
    "on": {"CIFAKE_SCORER_SIGNALS__ENABLED": "true", "CIFAKE_SCORER_SIGNALS__DIHEDRAL": "true"},
    "on_no_variants": {"CIFAKE_SCORER_SIGNALS__ENABLED": "true", "CIFAKE_SCORER_SIGNALS__DIHEDRAL": "false"},
}


def _bench(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, **MODES[mode]}
    cmd = [sys.executable, "-m", "harness.pipeline", "--n", str(args.n), "--duration", str(args.duration)]
    cmd += ["--out", ""]  # its own result file is written below, not the pipeline bench's
    if args.data:
        cmd += ["--data", args.data]
    if args.rate:
        cmd += ["--rate", str(args.rate)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"the pipeline bench failed (signals {mode}):\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def _flatten(run: dict[str, Any]) -> dict[str, float]:
    """The figures compared, wherever the bench's JSON keeps them (missing ones are left out)."""
    out: dict[str, float] = {}
    for k, v in run.items():
        if isinstance(v, int | float) and not isinstance(v, bool):
            out[k] = float(v)
        elif isinstance(v, dict):
            for k2, v2 in v.items():
                if isinstance(v2, int | float) and not isinstance(v2, bool):
                    out[f"{k}.{k2}"] = float(v2)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--data", help="folder or zip of images (default: the bench's generated JPEGs)")
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--rate", type=float, help="fixed rate for the latency phase (default: the bench's)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default="benchmarks/known_content")
    args = p.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    for _ in range(args.rounds):
        for mode in MODES:
            runs[mode].append(_bench(mode, args))
    medians = {}
    for mode, rs in runs.items():
        flat = [_flatten(r) for r in rs]
        common = set.intersection(*(set(f) for f in flat))
        medians[mode] = {k: round(statistics.median(f[k] for f in flat), 3) for k in sorted(common)}
    result = {
        "benchmark": "known_content.pipeline_signals",
        "command": "python -m harness.signals_cost_bench " + " ".join(sys.argv[1:]),
        "modes": MODES,
        "medians": medians,
        "runs": runs,
        "machine": machine_info(),
        "load": "Kafka, MinIO, PostgreSQL, the scorer(s) and the bench's producer/consumer share the machine",
    }
    write_json(Path(args.out) / "pipeline_signals.json", result)
    print(json.dumps({"benchmark": result["benchmark"], **medians}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
