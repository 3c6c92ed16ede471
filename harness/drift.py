"""``python -m harness.drift_bench``: does feedback teach the service a shifted distribution, end to end?

On the real stack, in its own topics (``drift.<run>.*``) and its own PostgreSQL schema (``drift_<run>``), so
nothing reaches the production registry or ``models.published``:

1. train a champion only on ``old_categories`` of CIFAKE (the category is in the file name) and register it;
2. start a scorer process (``python -m scorer run``, following the run's models topic) and a retrainer
   process (``python -m retrainer run``, which starts its worker; label trigger = labels per round);
3. per round: stream a chunk of images of *all* categories, wait for their verdicts; a simulated moderator
   labels a share of them from ground truth (``uncertain`` first, then ``fake``, then ``real``), capped at
   ``max_labels`` in total; wait for the retrain to register a version; if it became champion, wait until the
   scorer's verdicts name it (time from the round's first label to serving);
4. after each version: accuracy of the champion on held-out validation images of the new and the old
   categories (never streamed). Prints a table, writes ``drift.json`` and ``drift.png`` in ``--out``; the last
   line printed is one JSON object (new_before, new_after, old_before, old_after, labels_used,
   seconds_to_serving, ...).

Note: the scorer publishes its verdicts on ``images.verdicts`` (its topic is not configurable), as the
scorer's own benchmark does.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.drift_env import DriftEnv, Stream, wait_for
from ingest.settings import StackSettings
from ingest.storage import S3Store
from retrainer.data import CATEGORIES, CifakeSplit, dedup_index, load_split, split_train_val
from retrainer.registry import Announcer, ModelRecord, ModelRegistry
from retrainer.retrain import accuracy, fine_tune
from retrainer.settings import DEFAULT_BASE_DATA, GateSettings, TrainBudget
from scorer.models import create_model
from scorer.weights import ModelMeta, load_weights, save_weights

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class DriftConfig:
    data: str = DEFAULT_BASE_DATA
    # The six animal categories; the new ones are airplane, automobile, ship and truck. An animals ->
    # vehicles shift leaves the first champion 11 points worse on the new categories, where a 0-4 / 5-9
    # split (both halves mixing animals and vehicles) left it only 6 points worse: little to learn.
    old_categories: tuple[int, ...] = (2, 3, 4, 5, 6, 7)
    arch: str = "fastnet_s"
    init_steps: int = 1500
    init_max: int = 8000  # old-category training images for the first champion (seeded subsample)
    # Reuse a first champion trained by an earlier run with the same seed, stream, probes and init_max.
    init_weights: str | None = None
    init_batch: int = 128
    init_lr: float = 0.05
    stream: int = 4000  # images streamed, all categories
    probes: int = 200  # extra unlabelled images, submitted to see which version serves
    rounds: int = 1
    # Of each round's verdicts; the simulated moderator labels the uncertain ones first, so a share
    # below 1 spends the labels where the champion is least sure.
    label_share: float = 0.5
    max_labels: int = 2000
    eval_max: int = 4000  # validation images per group (old / new categories)
    budget: TrainBudget = field(
        default_factory=lambda: TrainBudget(steps=1200, replay=8000, interpolate=0.85, base_val_max=3000)
    )
    gate: GateSettings = field(default_factory=GateSettings)
    seed: int = 0
    out: str = "runs/drift"
    keep: bool = False
    round_timeout_s: float = 900.0


@dataclass
class Row:
    version: str
    status: str
    labels_used: int
    new_accuracy: float
    old_accuracy: float
    seconds_to_serving: float | None
    trigger: str | None = None
    candidate_new: float | None = None  # the version registered this round (champion or rejected)
    candidate_old: float | None = None
    # What the gate read for that candidate: hold-out gain and base-validation drop (fractions), set sizes,
    # and its reasons when rejected.
    gate: dict[str, Any] | None = None


GATE_KEYS = ("holdout_gain", "base_val_drop", "n_holdout", "n_base_val")


def split_data(ds: CifakeSplit, cfg: DriftConfig) -> dict[str, np.ndarray]:
    """Disjoint index sets: champion training (old categories), stream (all), probes, eval old/new (val)."""
    rng = np.random.default_rng(cfg.seed)
    train_idx, val_idx = split_train_val(ds, 0.1, cfg.seed)
    train_idx = rng.permutation(np.intersect1d(train_idx, dedup_index(ds.hashes)))
    stream, probes, rest = np.split(train_idx, [cfg.stream, cfg.stream + cfg.probes])
    old = np.isin(ds.categories, cfg.old_categories)
    val_idx = rng.permutation(val_idx)
    return {
        "init": rest[old[rest]][: cfg.init_max],
        "stream": stream,
        "probes": probes,
        "eval_old": val_idx[old[val_idx]][: cfg.eval_max],
        "eval_new": val_idx[~old[val_idx]][: cfg.eval_max],
    }


def train_champion(ds: CifakeSplit, idx: np.ndarray, cfg: DriftConfig, path: Path, version: str) -> Path:
    """The drifted-from champion: trained from scratch on the old categories only."""
    budget = TrainBudget(
        steps=cfg.init_steps,
        batch_size=cfg.init_batch,
        lr=cfg.init_lr,
        seed=cfg.seed,
        threads=cfg.budget.threads,
    )
    empty = np.zeros((0, 32, 32, 3), np.uint8)
    model = fine_tune(create_model(cfg.arch), empty, np.zeros(0, np.int64), ds.subset(idx), budget)
    meta = ModelMeta(
        arch=cfg.arch,
        version=version,
        threshold=0.5,
        data_fingerprint=ds.fingerprint,
        split={"val_fraction": 0.1, "seed": cfg.seed},
        train_config={"drift_bench": True, "categories": list(cfg.old_categories), "steps": cfg.init_steps},
    )
    return save_weights(path, model, meta)


def evaluate(path: Path, ds: CifakeSplit, sets: dict[str, np.ndarray]) -> tuple[float, float]:
    model, meta = load_weights(path)
    new = accuracy(model, meta, ds.images[sets["eval_new"]], ds.labels[sets["eval_new"]])
    old = accuracy(model, meta, ds.images[sets["eval_old"]], ds.labels[sets["eval_old"]])
    return float(new or 0.0), float(old or 0.0)


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs = [r.labels_used for r in rows]
    ax.plot(xs, [r.new_accuracy for r in rows], "o-", color="C0", label="champion, new categories")
    ax.plot(xs, [r.old_accuracy for r in rows], "s-", color="C1", label="champion, old categories")
    cands = [r for r in rows if r.candidate_new is not None]
    if cands:
        cx = [r.labels_used for r in cands]
        c_new = [float(r.candidate_new or 0.0) for r in cands]
        c_old = [float(r.candidate_old or 0.0) for r in cands]
        ax.plot(cx, c_new, "o--", mfc="none", color="C0", label="candidate, new")
        ax.plot(cx, c_old, "s--", mfc="none", color="C1", label="candidate, old")
    for r in rows:
        tag = "start" if not r.labels_used else f"{r.version[-6:]} {r.status}"
        ax.annotate(tag, (r.labels_used, r.new_accuracy), fontsize=7)
    ax.set_xlabel("feedback labels used")
    ax.set_ylabel("accuracy (held-out validation)")
    ax.set_title("drift-bench: accuracy after each retrain (dashed: that round's candidate)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    logger.info("starting %s (log %s)", " ".join(cmd[2:]), log)
    with log.open("ab") as f:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM, then SIGKILL after 90 s; the exit status (0 = a clean stop)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


def run_drift_bench(stack: StackSettings, cfg: DriftConfig) -> dict[str, Any]:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ds = load_split(cfg.data, "train")
    sets = split_data(ds, cfg)
    new_names = [CATEGORIES[c] for c in range(10) if c not in cfg.old_categories]
    logger.info(
        "old categories %s, new %s; %s", cfg.old_categories, new_names, {k: len(v) for k, v in sets.items()}
    )
    env = DriftEnv(stack, uuid.uuid4().hex[:8])
    previous = None
    if threading.current_thread() is threading.main_thread():
        # SIGTERM as SystemExit: the finally below stops the services and drops the run's schema and topics.
        previous = signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    env.create()
    procs: list[subprocess.Popen[bytes]] = []
    stream = Stream(env, ds)
    t0 = time.monotonic()
    try:
        bench = DriftRun(env, ds, sets, cfg, out, stream, procs)
        with tempfile.TemporaryDirectory(prefix="cifake-drift-") as tmp:
            rows = bench.run(Path(tmp))
        summary = summarize(rows, bench.labels_used) | {
            "wall_s": round(time.monotonic() - t0, 1),
            "run": env.run,
        }
        summary["service_exit_codes"] = [_stop(p) for p in procs]
        plot(rows, out / "drift.png")
        report = {"config": _config_json(cfg), "rows": [asdict(r) for r in rows], "summary": summary}
        (out / "drift.json").write_text(json.dumps(report, indent=2))
        return summary
    finally:
        stream.close()
        for p in procs:
            _stop(p)
        if not cfg.keep:
            env.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class DriftRun:
    """One experiment in a ``DriftEnv``: the champion, the two service processes, the rounds."""

    def __init__(
        self,
        env: DriftEnv,
        ds: CifakeSplit,
        sets: dict[str, np.ndarray],
        cfg: DriftConfig,
        out: Path,
        stream: Stream,
        procs: list[subprocess.Popen[bytes]],
    ) -> None:
        self.env, self.ds, self.sets, self.cfg, self.out = env, ds, sets, cfg, out
        self.stream, self.procs = stream, procs
        self.prefix = f"drift-{env.run}/"
        self.registry = ModelRegistry(
            env.stack, S3Store(env.stack.s3), Announcer(env.stack, env.models), key_prefix=self.prefix
        )
        self.per_round = min(round(cfg.label_share * cfg.stream / cfg.rounds), cfg.max_labels // cfg.rounds)
        self.probes = iter(sets["probes"])
        self.labels_used = 0

    def start_services(self, init: Path) -> None:
        env, cfg = self.env, self.cfg
        scorer_env = env.env(CIFAKE_SCORER_MODELS_TOPIC=env.models, CIFAKE_SCORER_DEVICE="cpu")
        cmd = [
            sys.executable,
            "-m",
            "scorer",
            "run",
            "--topic",
            env.submitted,
            "--group",
            f"drift-{env.run}",
            "--weights",
            str(init),
            "--metrics-port",
            "0",
        ]
        self.procs.append(_start(cmd, scorer_env, self.out / "scorer.log"))
        retrainer_env = env.env(
            CIFAKE_RETRAINER_FEEDBACK_TOPIC=env.feedback,
            # Its own consumer group, as in a deployment. Sharing the scorer's group, one loaded run's
            # retrainer left the group in a rebalance it led and never rejoined (no labels consumed).
            CIFAKE_RETRAINER_GROUP_ID=f"drift-{env.run}-retrainer",
            CIFAKE_RETRAINER_MODELS_TOPIC=env.models,
            CIFAKE_RETRAINER_MODEL_KEY_PREFIX=self.prefix,
            CIFAKE_RETRAINER_BASE_DATA=cfg.data,
            CIFAKE_RETRAINER_BASE_CATEGORIES=json.dumps(list(cfg.old_categories)),
            CIFAKE_RETRAINER_METRICS_PORT="0",
            CIFAKE_RETRAINER_WORKER_METRICS_PORT="0",
            CIFAKE_RETRAINER_WORKER_POLL_S="1",
            CIFAKE_RETRAINER_TRIGGER_LABELS=str(self.per_round),
            CIFAKE_RETRAINER_TRIGGER_INTERVAL_S="0",
            CIFAKE_RETRAINER_GATE=cfg.gate.model_dump_json(),
            CIFAKE_RETRAINER_BUDGET=cfg.budget.model_dump_json(),
        )
        cmd = [sys.executable, "-m", "retrainer", "run"]
        self.procs.append(_start(cmd, retrainer_env, self.out / "retrainer.log"))

    def accuracy_of(self, record: ModelRecord) -> tuple[float, float]:
        """(new, old) category accuracy of a registered version."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.safetensors"
            path.write_bytes(self.registry.fetch_weights(record))
            return evaluate(path, self.ds, self.sets)

    def wait_serving(self, version: str) -> None:
        """Submit probe images (never labelled) until one gets a verdict from ``version``."""
        probe_ids: list[str] = []

        def served() -> bool:
            if any(v[0] == version for v in self.stream.verdicts(probe_ids).values()):
                return True
            probe_ids.extend(self.stream.submit(np.array([next(self.probes)])))
            return False

        wait_for(served, self.cfg.round_timeout_s, f"the scorer to serve {version}", interval=1.0)

    def round(self, chunk: np.ndarray) -> Row:
        ids = self.stream.submit(chunk)

        def scored() -> bool:
            return len(self.stream.verdicts(ids)) == len(ids)

        wait_for(scored, self.cfg.round_timeout_s, "the round's verdicts")
        n_before = len(self.registry.versions())

        def retrained() -> bool:
            return len(self.registry.versions()) > n_before

        t_fb = time.monotonic()
        self.labels_used += self.stream.label(
            ids, min(self.per_round, self.cfg.max_labels - self.labels_used)
        )
        wait_for(retrained, self.cfg.round_timeout_s, "a retrained version")
        record = self.registry.versions()[-1]
        seconds = None
        if record.status == "champion":
            self.wait_serving(record.version)
            seconds = time.monotonic() - t_fb
        champion = self.registry.champion()
        assert champion is not None
        new_acc, old_acc = self.accuracy_of(champion)
        cand_new, cand_old = self.accuracy_of(record)
        return Row(
            record.version,
            record.status,
            self.labels_used,
            new_acc,
            old_acc,
            seconds,
            record.trigger,
            cand_new,
            cand_old,
            {k: record.metrics.get(k) for k in GATE_KEYS} | {"reasons": record.reasons},
        )

    def run(self, tmp: Path) -> list[Row]:
        t0 = time.monotonic()
        version = f"drift-init-{self.env.run}"
        if self.cfg.init_weights:
            init = tmp / "init.safetensors"
            model, meta = load_weights(self.cfg.init_weights)
            save_weights(init, model, dataclasses.replace(meta, version=version))
        else:
            init = train_champion(self.ds, self.sets["init"], self.cfg, tmp / "init.safetensors", version)
            # Kept beside the report, so that a rerun with other retraining settings can start from the
            # same champion (--init-weights) instead of training it again.
            out = Path(self.cfg.out)
            out.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(init, out / "init.safetensors")
        logger.info("initial champion trained in %.0fs", time.monotonic() - t0)
        self.registry.publish(
            init.read_bytes(),
            version=version,
            parent=None,
            status="champion",
            trigger="initial",
            metrics={},
            data_info={"categories": list(self.cfg.old_categories)},
        )
        rows = [Row(version, "champion", 0, *evaluate(init, self.ds, self.sets), None, "initial")]
        print(_row_line(rows[0], 0), flush=True)
        self.start_services(init)
        for r, chunk in enumerate(np.array_split(self.sets["stream"], self.cfg.rounds)):
            if self.labels_used >= self.cfg.max_labels:
                break
            rows.append(self.round(chunk))
            print(_row_line(rows[-1], r + 1), flush=True)
        return rows


def summarize(rows: list[Row], labels_used: int) -> dict[str, Any]:
    published = [r for r in rows[1:] if r.status == "champion"]
    last = published[-1] if published else rows[0]
    return {
        "new_before": rows[0].new_accuracy,
        "new_after": last.new_accuracy,
        "old_before": rows[0].old_accuracy,
        "old_after": last.old_accuracy,
        "labels_used": labels_used,
        "seconds_to_serving": max((r.seconds_to_serving or 0.0) for r in published) if published else None,
        "versions_published": len(published),
        "versions_rejected": sum(1 for r in rows[1:] if r.status == "rejected"),
        "serving": last.version,
    }


def _row_line(r: Row, n: int) -> str:
    s = f"{r.seconds_to_serving:.1f}s" if r.seconds_to_serving is not None else "-"
    cand = ""
    if r.candidate_new is not None and r.candidate_old is not None:
        cand = f"  (candidate new {r.candidate_new:.4f} old {r.candidate_old:.4f})"
    return (
        f"round {n}: {r.version:<28} {r.status:<9} labels {r.labels_used:>5}  "
        f"champion new {r.new_accuracy:.4f} old {r.old_accuracy:.4f}  to serving {s}{cand}"
    )


def _config_json(cfg: DriftConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d["budget"] = cfg.budget.model_dump()
    d["gate"] = cfg.gate.model_dump()
    return d
