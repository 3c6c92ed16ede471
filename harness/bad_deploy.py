"""A bad deploy at the issue's scale (issue #15): a scorer release that raises an unexpected error on every
record meets a backlog of ``--n`` images; at most one batch reaches the DLQ, then the circuit breaker holds.

    python -m harness.bad_deploy [--n 5000] [--out benchmarks/reliability/bad_deploy.json]

On the running stack (``deploy/stack up``) it uploads ``--n`` fresh 32x32 noise PNGs to MinIO (named by their
sha256, as the intake names them) and publishes their ``ImageSubmitted`` references on a private topic
``bad-deploy.<run>.submitted`` (6 partitions, plus its 1-partition ``.dlq``; both deleted at the end). Then,
in this process, the shared consumer loop runs the real scorer handler (``ScoreHandler`` on the shipped
default model, one inference thread and warmed up as ``scorer run`` does) at the scorer's default batch size,
wrapped in a "release" that raises ``AttributeError`` on every batch while the bad deploy is in place. The
loop has the default breaker settings except a 0.5 s probe interval, and serves ``/ready`` and ``/healthz``.

Phases, each timed, and what each shows (the checks; exit status 1 if one fails, ``ok``/``failed`` in the
result file):

1. until the breaker opens (``bad_deploy_circuit_open`` 1): exactly one committed batch, all of it on the
   ``.dlq`` (at most ``max_batch`` dead letters), the group committed exactly that batch, ``/ready`` 503 with
   the breaker's reason, ``/healthz`` 200 (alive: nothing restarts it into a crash loop);
2. ``--hold`` seconds more with the breaker open: no new dead letter, no new commit, ``/ready`` stays 503,
   the held batch is probed again and again;
3. the fix is deployed (the release stops raising): the same loop drains the rest of the backlog, with no
   new dead letter; the breaker closes and ``/ready`` is 200;
4. ``ingest.dlq.redrive`` (code ``unexpected_AttributeError``): a dry run sends nothing, the first redrive
   sends every dead letter, a second one sends none;
5. a fixed restart (``scorer.service.run_scorer``, the same group) scores the redriven records;
6. PostgreSQL has exactly one ``verdicts`` row per image (no image lost, no duplicate, one model version)
   and the group committed every record of the topic.

The result also counts the ERROR lines "dead-lettering <record>": one per dead letter sent, none for a held
batch (whose probes handle one record each).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import random
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from harness.churn_load import BUCKET, delete_group, noise_pngs, upload
from harness.churn_observe import end_offsets, model_versions, verdict_rows
from harness.machine import machine_info, write_json
from harness.topics import create_topics
from harness.wait import wait_until
from ingest.batch import Batch
from ingest.cli import configure_logging
from ingest.contracts import ImageSubmitted, encode, utcnow
from ingest.decode import DecodeLimits
from ingest.dlq import Filters, redrive
from ingest.fetch import Fetcher, FetchSettings
from ingest.kafka import RevocationTracker, make_admin, make_consumer, make_producer
from ingest.loop import ConsumerLoop, LoopConfig, RunStats
from ingest.metrics import LoopMetrics, new_registry, serve_metrics
from ingest.settings import StackSettings, load
from ingest.storage import S3Store
from ingest.topics import dlq_topic
from scorer.engine import ServingModel, warm_up
from scorer.handler import ScoreHandler, ScorerMetrics
from scorer.service import ScorerSettings, cpu_threads, run_scorer
from scorer.sink import PostgresVerdictSink

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path("benchmarks/reliability/bad_deploy.json")
APP = "bad_deploy"  # metric prefix
SERVICE = "bad-deploy"  # the dead letters' ``service``
CODE = "unexpected_AttributeError"


@dataclass(frozen=True)
class BadDeployConfig:
    n: int = 5000
    partitions: int = 6
    max_batch: int = ScorerSettings.model_fields["max_batch"].default  # the scorer's default, 256
    max_wait_ms: int = ScorerSettings.model_fields["max_wait_ms"].default
    breaker_probe_s: float = 0.5
    hold_s: float = 5.0
    open_timeout_s: float = 180.0
    drain_timeout_s: float = 900.0
    seed: int | None = None


class Release:
    """The deployed scorer: raises a bug (not bad input) on every batch while ``broken`` is set."""

    def __init__(self, fixed: ScoreHandler) -> None:
        self.fixed = fixed
        self.broken = threading.Event()

    def __call__(self, batch: Batch) -> None:
        if self.broken.is_set():
            raise AttributeError("'NoneType' object has no attribute 'predict'")
        self.fixed(batch)


class LogCounter(logging.Handler):
    """Counts the ERROR lines saying a record is dead-lettered: as many as dead letters, none while held."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.dead_lettering = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("dead-lettering"):
            self.dead_lettering += 1


@contextlib.contextmanager
def private_topic(stack: StackSettings, run_id: str, partitions: int) -> Iterator[str]:
    name = f"bad-deploy.{run_id}.submitted"
    names = [name, dlq_topic(name)]
    admin = make_admin(stack.kafka)
    try:
        create_topics(stack.kafka, {name: partitions, names[1]: 1})
        yield name
    finally:
        with contextlib.suppress(Exception):  # a leftover private topic harms nothing
            admin.delete_topics(names)
        admin.close()


def publish(stack: StackSettings, topic: str, ids: list[str]) -> None:
    producer = make_producer(stack.kafka)
    try:
        msgs = (
            ImageSubmitted(image_id=i, ref=f"s3://{BUCKET}/{i}", submitted_at=utcnow(), source=SERVICE)
            for i in ids
        )
        futures = [producer.send(topic, key=m.image_id.encode(), value=encode(m)) for m in msgs]
        producer.flush(timeout=120)
        for f in futures:
            f.get(timeout=60)
    finally:
        producer.close(timeout=30)


def total(stack: StackSettings, topic: str) -> int:
    return sum(end_offsets(stack, topic).values())


def committed(stack: StackSettings, group: str, topic: str) -> int:
    admin = make_admin(stack.kafka)
    try:
        offsets = admin.list_group_offsets({group: None}).get(group) or {}
    finally:
        admin.close()
    return sum(om.offset for tp, om in offsets.items() if tp.topic == topic and om.offset > 0)


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return int(r.status), r.read().decode().strip()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read().decode().strip()


def scoring_handler(stack: StackSettings, max_batch: int, cleanup: contextlib.ExitStack) -> ScoreHandler:
    """The fixed release: the scorer's handler as tests/integration/test_dlq_tool.py builds it, on the shipped
    model, with ``scorer run``'s CPU threads and warm-up."""
    torch.set_num_threads(cpu_threads(None))
    model = ServingModel.load("default", "cpu")
    warm_up(model, max_batch)
    store = S3Store(stack.s3)
    fetcher = Fetcher(store, FetchSettings())
    cleanup.callback(fetcher.close)
    sink = PostgresVerdictSink(stack.pg)
    cleanup.callback(sink.close)
    handler = ScoreHandler(
        fetcher=fetcher,
        limits=DecodeLimits(),
        sink=sink,
        store=store,
        model=model,
        next_model=lambda: None,
        uncertain_band=0.1,
        metrics=ScorerMetrics.create(new_registry()),
    )
    cleanup.callback(handler.close)
    return handler


class BadDeploy:
    """One run's phases (module docstring); each returns what the result file records about it."""

    def __init__(self, stack: StackSettings, config: BadDeployConfig, topic: str, group: str) -> None:
        self.stack, self.config, self.topic, self.group = stack, config, topic, group
        self.registry = new_registry()
        self.logs = LogCounter()

    def counts(self) -> tuple[int, int]:
        """(records on the .dlq, the group's committed offsets summed)"""
        return total(self.stack, dlq_topic(self.topic)), committed(self.stack, self.group, self.topic)

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.registry.get_sample_value(f"{APP}_{name}", labels) or 0.0

    def start(self, release: Release, cleanup: contextlib.ExitStack) -> tuple[ConsumerLoop, int]:
        """The loop as a service builds it (default breaker, short probe), its /ready and /healthz."""
        cfg = self.config
        revocations = RevocationTracker()
        consumer = make_consumer(
            self.stack.kafka, self.group, [self.topic], revocations, max_poll_records=cfg.max_batch
        )
        config = LoopConfig(SERVICE, cfg.max_batch, cfg.max_wait_ms, breaker_probe_s=cfg.breaker_probe_s)
        metrics = LoopMetrics.create(APP, self.registry)
        loop = ConsumerLoop(consumer, make_producer(self.stack.kafka), release, config, metrics, revocations)
        server, port = serve_metrics(self.registry, "127.0.0.1", 0, loop.readiness)
        cleanup.callback(server.server_close)
        cleanup.callback(server.shutdown)
        logging.getLogger("ingest.batch").addHandler(self.logs)  # where "dead-lettering" lines come from
        cleanup.callback(logging.getLogger("ingest.batch").removeHandler, self.logs)
        return loop, port

    def at_open(self, port: int) -> dict[str, Any]:
        dead, done = self.counts()
        return {
            "dead_letters": dead,
            "committed": done,
            "committed_batches": self.sample("batches_total", {"outcome": "committed"}),
            "held_probes": self.sample("batches_total", {"outcome": "held"}),
            "ready": http_get(port, "/ready"),
            "healthz": http_get(port, "/healthz"),
            "dead_lettering_log_lines": self.logs.dead_lettering,
        }

    def hold(self, port: int, at_open: dict[str, Any]) -> dict[str, Any]:
        """Watch the open breaker for ``hold_s``: /ready every 0.5 s, then what moved meanwhile."""
        codes: list[int] = []
        deadline, pause = time.monotonic() + self.config.hold_s, threading.Event()
        while time.monotonic() < deadline:
            codes.append(http_get(port, "/ready")[0])
            pause.wait(0.5)
        dead, done = self.counts()
        return {
            "seconds": self.config.hold_s,
            "dead_letters_delta": dead - at_open["dead_letters"],
            "committed_delta": done - at_open["committed"],
            "held_probes": self.sample("batches_total", {"outcome": "held"}),
            "ready_codes": sorted(set(codes)),
            "ready_samples": len(codes),
            "still_open": self.sample("circuit_open") == 1.0,
            "dead_lettering_log_lines": self.logs.dead_lettering - at_open["dead_lettering_log_lines"],
        }

    def drained(self, stats: RunStats, port: int) -> dict[str, Any]:
        dead, done = self.counts()
        open_now, ready = self.sample("circuit_open"), http_get(port, "/ready")
        return {
            **asdict(stats),
            "circuit_open": open_now,
            "ready": ready,
            "committed": done,
            "dead_letters": dead,
        }

    def redrive(self) -> dict[str, Any]:
        """Dry run, redrive, redrive again, and the source topic's record count around them."""
        stack, topic, only = self.stack, self.topic, Filters(code=CODE)
        before = total(stack, topic)
        dry = redrive(stack, topic, only, dry_run=True)
        after_dry = total(stack, topic)
        first, second = redrive(stack, topic, only), redrive(stack, topic, only)
        return {
            "dry_run": dry.as_dict(),
            "first": first.as_dict(),
            "second": second.as_dict(),
            "topic_records": {"before": before, "after_dry_run": after_dry, "after": total(stack, topic)},
        }


def run_bad_deploy(stack: StackSettings, config: BadDeployConfig) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:8]
    seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2**31)
    group = f"bad-deploy-{run_id}"
    r: dict[str, Any] = {"benchmark": "bad_deploy", "issue": 15, "run": run_id, "machine": machine_info()}
    r["settings"] = {**asdict(config), "seed": seed, "group": group, "breaker": "LoopConfig defaults"}
    t: dict[str, float] = {}
    started = mark = time.monotonic()

    def lap(name: str) -> None:
        nonlocal mark
        t[name], mark = round(time.monotonic() - mark, 2), time.monotonic()

    with contextlib.ExitStack() as cleanup:
        r["topic"] = topic = cleanup.enter_context(private_topic(stack, run_id, config.partitions))
        cleanup.callback(delete_group, stack, group)
        ids = upload(stack, noise_pngs(config.n, seed))
        if len(set(ids)) != config.n or verdict_rows(stack, ids):
            raise RuntimeError(f"seed {seed}: images collide or already have verdicts; use another seed")
        lap("upload")
        publish(stack, topic, ids)
        lap("publish")
        release = Release(scoring_handler(stack, config.max_batch, cleanup))
        release.broken.set()  # the bad deploy
        bench = BadDeploy(stack, config, topic, group)
        loop, port = bench.start(release, cleanup)
        lap("model_and_loop_start")

        runner = ThreadPoolExecutor(1, thread_name_prefix="bad-deploy-loop")
        cleanup.callback(runner.shutdown)  # after loop.stop (LIFO): the loop is gone before its topic
        cleanup.callback(loop.stop)
        running = runner.submit(loop.run, max_records=config.n, idle_timeout=60.0)
        try:
            wait_until(
                lambda: bench.sample("circuit_open") == 1.0, config.open_timeout_s, "the breaker", 0.05
            )
            opened = True
        except TimeoutError:
            opened = False
        lap("until_open")
        if not opened:
            loop.stop()
            running.result(120)
            raise RuntimeError(f"the breaker did not open within {config.open_timeout_s:.0f}s")
        r["at_open"] = bench.at_open(port)
        r["held"] = bench.hold(port, r["at_open"])
        lap("held")
        release.broken.clear()  # the fix is deployed
        r["drain"] = bench.drained(running.result(config.drain_timeout_s), port)
        lap("drain")
        r["redrive"] = bench.redrive()
        lap("redrive")
        redriven = r["redrive"]["first"]["redriven"]
        fixed = run_scorer(stack, fixed_settings(topic, group), max_records=redriven, idle_timeout=60)
        r["fixed_restart"] = {**asdict(fixed), "committed": committed(stack, group, topic)}
        lap("fixed_restart")
        rows = verdict_rows(stack, ids)
        r["verdicts"] = {
            "images": config.n,
            "rows": sum(rows.values()),
            "distinct_ids": len(rows),
            "duplicates": sum(c - 1 for c in rows.values()),
            "lost": config.n - len(rows),
            "model_versions": model_versions(stack, ids),
        }
        r["topic_records"] = total(stack, topic)
        lap("count")
    t["total"] = round(time.monotonic() - started, 2)
    r["seconds"] = t
    r["checks"] = checks(r, config)
    r["failed"] = [name for name, good in r["checks"].items() if not good]
    r["ok"] = not r["failed"]
    return r


def fixed_settings(topic: str, group: str) -> ScorerSettings:
    """``scorer run`` after the fix, on this run's topic and group; built here, not from the environment."""
    kw: dict[str, Any] = {"weights": "default", "device": "cpu", "metrics_port": None, "follow_models": False}
    return ScorerSettings(input_topic=topic, group_id=group, **kw)


def checks(r: dict[str, Any], config: BadDeployConfig) -> dict[str, bool]:
    o, h, d, rd, f, v = (r[k] for k in ("at_open", "held", "drain", "redrive", "fixed_restart", "verdicts"))
    dead, topic = o["dead_letters"], rd["topic_records"]
    return {
        "one_batch_dead_lettered": o["committed_batches"] == 1 and 0 < dead <= config.max_batch,
        "committed_only_that_batch": o["committed"] == dead,
        "unready_at_open": o["ready"][0] == 503 and o["ready"][1].startswith("circuit open"),
        "alive_at_open": tuple(o["healthz"]) == (200, "ok"),
        "nothing_dead_lettered_while_held": h["dead_letters_delta"] == 0,
        "nothing_committed_while_held": h["committed_delta"] == 0,
        "unready_while_held": h["still_open"] and h["ready_codes"] == [503],
        "held_batch_probed": h["held_probes"] > o["held_probes"],
        "drained_after_fix": d["processed"] == config.n - dead and d["dead_lettered"] == dead,
        "drain_committed_all": d["committed"] == config.n,
        "no_dead_letters_after_fix": d["dead_letters"] == dead,
        "ready_after_fix": d["circuit_open"] == 0.0 and tuple(d["ready"]) == (200, "ready"),
        "dry_run_sends_nothing": rd["dry_run"]["redriven"] == dead
        and topic["after_dry_run"] == topic["before"],
        "redrive_once": rd["first"]["redriven"] == dead and topic["after"] == topic["before"] + dead,
        "second_redrive_none": rd["second"]["redriven"] == 0 and rd["second"]["already"] == dead,
        "fixed_restart_scored_redriven": f["processed"] == dead and f["dead_lettered"] == 0,
        "all_committed": f["committed"] == r["topic_records"] == config.n + dead,
        "every_image_once": v["rows"] == v["distinct_ids"] == config.n
        and (v["duplicates"], v["lost"], len(v["model_versions"])) == (0, 0, 1),
    }


def summary(r: dict[str, Any]) -> str:
    o, h, rd, v, s = (r[k] for k in ("at_open", "held", "redrive", "verdicts", "seconds"))
    return (
        f"bad_deploy {'ok' if r['ok'] else 'FAILED ' + ','.join(r['failed'])}: {v['images']} images, "
        f"batch {r['settings']['max_batch']}; at open {o['dead_letters']} dead letters, {o['committed']} "
        f"committed, /ready {o['ready'][0]} /healthz {o['healthz'][0]}; held {h['seconds']:.0f}s: "
        f"+{h['dead_letters_delta']} dead letters +{h['committed_delta']} committed; redrive "
        f"dry/first/second "
        f"{rd['dry_run']['redriven']}/{rd['first']['redriven']}/{rd['second']['redriven']}; verdicts "
        f"{v['rows']} rows, {v['duplicates']} duplicates, {v['lost']} lost; {s['total']:.0f}s"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m harness.bad_deploy", description=(__doc__ or "").split("\n\n")[0]
    )
    p.add_argument("--n", type=int, default=5000, help="images in the backlog")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="result file (JSON)")
    p.add_argument("--hold", type=float, default=5.0, help="seconds to watch the open breaker hold")
    p.add_argument("--seed", type=int, help="image seed (default: random)")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    configure_logging(args.log_level)
    logging.getLogger("kafka").setLevel(logging.WARNING)
    config = BadDeployConfig(n=args.n, hold_s=args.hold, seed=args.seed)
    result = run_bad_deploy(load(StackSettings), config)
    write_json(args.out, result, indent=1)
    print(summary(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
