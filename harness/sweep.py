"""Architecture sweep: train each candidate under the same CPU time budget, then tabulate and plot.

``python -m harness.sweep --data PATH --budget 150 --out benchmarks/sweep`` writes ``results.csv``,
``results.md`` (with the machine, and how busy other processes kept it) and ``pareto.png`` (validation
accuracy vs CPU images/s at batch 256). Each candidate gets the same wall-clock budget with the
learning-rate schedule following the clock, so small models see more epochs than large ones; that is the
trade-off the sweep is meant to show for this machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from harness.cpu_meter import OthersMeter
from harness.machine import machine_info
from ingest.cli import configure_logging
from retrainer.train import TrainConfig, train
from scorer.bench import images_per_second
from scorer.models import count_params
from scorer.weights import load_weights

logger = logging.getLogger(__name__)

DEFAULT_CANDIDATES = (
    "baseline",
    "vgg_small:16",
    "resnet_small:16",
    "fastnet_s",
    "fastnet:24",
    "fastnet:32",
    "fastnet_l",
)
FIELDS = (
    "candidate",
    "arch",
    "width",
    "params",
    "epochs",
    "steps",
    "train_images_per_s",
    "val_accuracy",
    "val_auroc",
    "val_ece",
    "cpu_images_per_s_b256",
    "budget_s",
    "others_cpu_pct",
)


def run_dir_for(runs: Path, spec: str) -> Path:
    return runs / spec.replace(":", "-w")


def bench_b256(model: torch.nn.Module, input_size: int, repeats: int = 3) -> float:
    """Best of ``repeats`` timings: the machine is shared, and the best run is the least disturbed one."""
    return max(
        images_per_second(model, 256, torch.device("cpu"), input_size, min_time=1.0) for _ in range(repeats)
    )


def rebench(rows: list[dict[str, Any]], runs: Path) -> None:
    """Re-measure the throughput column from the saved sweep models, all in one quiet moment."""
    for r in rows:
        path = run_dir_for(runs, r["candidate"]) / "model.safetensors"
        model, meta = load_weights(path)
        r["cpu_images_per_s_b256"] = round(bench_b256(model, meta.input_size))
        logger.info("rebench %s: %s images/s", r["candidate"], r["cpu_images_per_s_b256"])


def parse_candidate(spec: str) -> tuple[str, int | None]:
    name, _, width = spec.partition(":")
    return name, int(width) if width else None


def run_sweep(
    data: str,
    candidates: list[str],
    budget: float,
    out: Path,
    runs: Path,
    threads: int,
    seed: int,
    append: bool = False,
) -> list[dict[str, Any]]:
    """Train and benchmark each candidate; with ``append``, rows of earlier runs for other candidates stay."""
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = read_rows(out / "results.csv") if append else []
    rows = [r for r in rows if r["candidate"] not in candidates]
    for spec in candidates:
        arch, width = parse_candidate(spec)
        run_dir = run_dir_for(runs, spec)
        cfg = TrainConfig(
            data=data,
            arch=arch,
            width=width,
            out=str(run_dir),
            epochs=1000,
            time_budget=budget,
            threads=threads,
            seed=seed,
            progress=False,
            version=f"sweep-{spec}",
        )
        if (run_dir / "history.jsonl").exists():
            (run_dir / "history.jsonl").unlink()  # a rerun starts a fresh log
        logger.info("sweep: training %s for %.0fs", spec, budget)
        others = OthersMeter()
        others.start()
        result = train(cfg)
        others_pct = round(100 * others.stop(), 1)
        model, meta = load_weights(result.weights)
        ips = bench_b256(model, meta.input_size)
        row = {
            "candidate": spec,
            "arch": arch,
            "width": width or "",
            "params": count_params(model),
            "epochs": meta.metrics["epochs_run"],
            "steps": meta.metrics["steps"],
            "train_images_per_s": round(
                meta.metrics["steps"] * cfg.batch_size / meta.metrics["train_wall_s"]
            ),
            "val_accuracy": round(meta.metrics["val_accuracy"], 4),
            "val_auroc": round(meta.metrics["val_auroc"], 5),
            "val_ece": round(meta.metrics["val_ece"], 4),
            "cpu_images_per_s_b256": round(ips),
            "budget_s": budget,
            # What else kept the cores busy while this row trained: the table compares rows fairly only
            # when this stays near 0 for all of them.
            "others_cpu_pct": others_pct,
        }
        logger.info("sweep: %s", json.dumps(row))
        rows.append(row)
        write_outputs(rows, out)  # after each candidate, so a long sweep leaves partial results
    return rows


def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    ints = ("params", "epochs", "steps", "train_images_per_s", "cpu_images_per_s_b256")
    floats = ("val_accuracy", "val_auroc", "val_ece", "budget_s")
    with path.open(newline="") as f:
        rows: list[dict[str, Any]] = list(csv.DictReader(f))
    for r in rows:
        if not r.get("train_images_per_s"):  # rows written before the column existed
            r["train_images_per_s"] = round(int(r["steps"]) * 256 / float(r["budget_s"]))
        r.update({k: int(r[k]) for k in ints} | {k: float(r[k]) for k in floats})
        r.setdefault("others_cpu_pct", "")  # rows written before the column existed
    return rows


def write_outputs(rows: list[dict[str, Any]], out: Path) -> None:
    machine = machine_info()
    with (out / "results.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    lines = [
        "# CIFAKE architecture sweep",
        "",
        "Each candidate trained for `budget_s` seconds of wall-clock training on the 2-core CPU",
        "(2 torch threads), full de-duplicated train split, LR schedule following the",
        "clock; validation on the 10% split (seed 0). `cpu_images_per_s_b256` is raw inference, best of 3",
        "one-second runs at batch 256.",
        "Made by `python -m harness.sweep` (see harness/sweep.py) on "
        f"`{machine['cpu']}`, {machine['cores']} cores, commit `{machine['commit']}`. `others_cpu_pct`: the "
        "share of the cores other processes kept busy while the row trained (0 = a quiet machine).",
        "",
        "| " + " | ".join(FIELDS) + " |",
        "|" + "---|" * len(FIELDS),
    ]
    lines += ["| " + " | ".join(str(r[k]) for k in FIELDS) + " |" for r in rows]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    plot_pareto(rows, out / "pareto.png")


def pareto_front(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows not dominated in (accuracy, throughput), sorted by throughput."""
    front = [
        r
        for r in rows
        if not any(
            o["val_accuracy"] >= r["val_accuracy"]
            and o["cpu_images_per_s_b256"] >= r["cpu_images_per_s_b256"]
            and o is not r
            and (o["val_accuracy"], o["cpu_images_per_s_b256"])
            != (r["val_accuracy"], r["cpu_images_per_s_b256"])
            for o in rows
        )
    ]
    return sorted(front, key=lambda r: r["cpu_images_per_s_b256"])


def plot_pareto(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for r in rows:
        ax.scatter(r["cpu_images_per_s_b256"], 100 * r["val_accuracy"], s=20 + r["params"] / 5000)
        ax.annotate(
            r["candidate"],
            (r["cpu_images_per_s_b256"], 100 * r["val_accuracy"]),
            fontsize=8,
            xytext=(4, 4),
            textcoords="offset points",
        )
    front = pareto_front(rows)
    ax.plot(
        [r["cpu_images_per_s_b256"] for r in front], [100 * r["val_accuracy"] for r in front], "k--", lw=0.8
    )
    ax.set_xscale("log")
    ax.set_xlabel("CPU images/s at batch 256 (2 threads)")
    ax.set_ylabel("validation accuracy (%)")
    budget = rows[0]["budget_s"] if rows else 0
    ax.set_title(f"CIFAKE sweep, {budget:.0f}s CPU training budget each (marker size ~ params)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.sweep", description=__doc__)
    p.add_argument("--data", required=True)
    p.add_argument("--budget", type=float, default=150.0, help="training seconds per candidate")
    p.add_argument("--candidates", nargs="+", default=list(DEFAULT_CANDIDATES), help="arch or arch:width")
    p.add_argument("--out", default="benchmarks/sweep")
    p.add_argument("--runs", default="runs/sweep")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--append", action="store_true", help="keep earlier rows in OUT/results.csv")
    p.add_argument("--rebench", action="store_true", help="only re-measure throughput of the rows in OUT")
    args = p.parse_args(argv)
    configure_logging("INFO")
    torch.set_num_threads(args.threads)
    if args.rebench:
        rows = read_rows(Path(args.out) / "results.csv")
        rebench(rows, Path(args.runs))
        write_outputs(rows, Path(args.out))
        return 0
    run_sweep(
        args.data,
        args.candidates,
        args.budget,
        Path(args.out),
        Path(args.runs),
        args.threads,
        args.seed,
        args.append,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
