"""Rebalance churn (issue #15): scorers join and leave every few seconds under load; nothing is lost or
doubled and no committed offset ever goes back.

    python -m harness.churn [--duration 120] [--scorers 3] [--images N]
                            [--out benchmarks/reliability/churn.json]

On the running stack (``deploy/stack up``) it uploads ``--images`` fresh 32x32 noise PNGs to MinIO (named by
their sha256, as the intake names them) and publishes their references at a steady rate for ``--duration``
seconds, while real ``python -m scorer run`` processes of one consumer group come and go: two to start with,
then every 2-5 s one joins or one leaves, between one and ``--scorers`` alive; every third leave is a
SIGKILL, the others SIGTERM (finish the batch, commit, leave the group). A process only leaves while another
one is in the group, so somebody always consumes. When the churn ends, the scorers left drain the backlog.
Meanwhile the group's committed offsets (and members) are sampled every 0.5 s; every sample is recorded.

Checks (exit status 1 if one fails; ``ok``/``failed`` in the result file):

* ``lost`` 0 and ``duplicate_rows`` 0: exactly one ``verdicts`` row per submitted image. The table's key is
  (image_id, model_version), so a second row could only come from another model version: the scorers do not
  follow model updates in this run, and a second version fails the check too;
* ``decreases`` empty: no sampled committed offset of any partition is below the previous sample's;
* ``not_drained`` empty: at the end every partition's committed offset is its log end;
* a verdict message on ``images.verdicts`` for every image (repeats are allowed by at-least-once delivery
  and reported as ``verdict_messages_redelivered``), and none of the images on the input's ``.dlq``;
* no scorer exited unasked, every SIGTERM ended in exit status 0 (or, for a scorer still loading its model,
  in the signal's default action), and the run did churn (joins, graceful leaves and kills all happened).

The result also says, per lost image, the partition and offset its record had, and per scorer how many
records its loop dropped from a batch because a rebalance revoked their partition (from the scorer logs,
which are kept in ``--log-dir``).

Input topic. The shared ``images.submitted`` has the history of every earlier run, and a new group with
``auto_offset_reset=earliest`` would score all of it. By default each run therefore gets a private topic
``churn.<run>.submitted`` (same partition count as ``images.submitted``, plus its ``.dlq``), deleted at
the end: the group sees exactly this run's records, and no other consumer of ``images.submitted`` (another
test's scorer, with another model version) can add rows for these images or take records from this group
-- the shared topic could not promise either. A private stack (``tests/private_stack.py``) would isolate
as well but costs a minute to start; the loop's behaviour under rebalances does not depend on which topic it
reads. ``--topic images.submitted`` runs against the shared topic instead: the group's offsets are then set
to the topic's current end before any scorer starts (``alter_group_offsets`` on the still empty group).
Verdicts always go to the shared ``images.verdicts`` and ``verdicts`` table; their checks look only at this
run's image ids, which are fresh (checked before publishing).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import random
import signal
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness.churn_load import Publisher, delete_group, input_topic, noise_pngs, upload
from harness.churn_observe import (
    OffsetSampler,
    dropped_on_revocation,
    end_offsets,
    evaluate,
    start_group_at_end,
    verdict_rows,
)
from harness.churn_scorers import KILL_PATTERN, Churner, ScorerPool, ScorerSpec
from harness.machine import machine_info, write_json
from harness.wait import wait_until
from ingest.cli import configure_logging
from ingest.settings import StackSettings, env_file, load
from ingest.topics import IMAGES_VERDICTS, dlq_topic

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path("benchmarks/reliability/churn.json")
INITIAL_SCORERS = 2


@dataclass(frozen=True)
class ChurnConfig:
    duration_s: float = 120.0
    scorers: int = 3  # most scorer processes alive at once (at least 2)
    images: int = 3000
    topic: str | None = None  # None: a private topic per run (see the module docstring)
    min_gap_s: float = 2.0
    max_gap_s: float = 5.0
    sample_interval_s: float = 0.5
    session_timeout_ms: int = 6000
    join_timeout_s: float = 120.0
    drain_timeout_s: float = 300.0
    device: str = "cpu"
    max_batch: int | None = None  # None: the scorer's default
    seed: int | None = None
    log_dir: Path | None = None


def _prepare_images(stack: StackSettings, n: int, seed: int) -> list[str]:
    ids = upload(stack, noise_pngs(n, seed))
    if len(set(ids)) != n:
        raise RuntimeError("generated images collide")
    if verdict_rows(stack, ids):
        raise RuntimeError(f"seed {seed} made images that already have verdicts; use another seed")
    return ids


def _wait_phase(pool: ScorerPool, until: float) -> None:
    """Keep reaping and marking joins until ``until`` (monotonic)."""
    pause = threading.Event()
    while (left := until - time.monotonic()) > 0:
        pause.wait(min(0.5, left))
        pool.refresh()


def _drained(pool: ScorerPool, sampler: OffsetSampler, ends: dict[int, int]) -> bool:
    """Every partition committed up to its end. The loop commits only after the rows are written, so from
    here on no verdict row can still appear: a missing one is lost, not late."""
    pool.refresh()
    if not pool.alive():  # every member exited unasked: keep one running so the backlog is scored
        pool.start()
    committed = sampler.committed()
    return all(committed.get(p, 0) >= end for p, end in ends.items())


def run_churn(stack: StackSettings, config: ChurnConfig) -> dict[str, Any]:
    """One churn run; the result as written to the JSON file (``ok`` and ``failed`` say how it went)."""
    if config.scorers < 2:
        raise ValueError("churn needs at least 2 scorers")
    run_id = uuid.uuid4().hex[:8]
    seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2**31)
    log_dir = config.log_dir or Path(tempfile.mkdtemp(prefix=f"cifake-churn-{run_id}-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    group = f"churn-{run_id}"
    started = time.monotonic()
    with contextlib.ExitStack() as cleanup:
        topic = cleanup.enter_context(input_topic(stack, config.topic, run_id))
        if config.topic:
            start_group_at_end(stack, group, topic)
        cleanup.callback(delete_group, stack, group)
        since = {
            "input": end_offsets(stack, topic),
            "verdicts": end_offsets(stack, IMAGES_VERDICTS),
            "dlq": end_offsets(stack, dlq_topic(topic)),
        }
        ids = _prepare_images(stack, config.images, seed)
        logger.info(
            "run %s: %d images uploaded, topic %s, group %s, logs %s", run_id, len(ids), topic, group, log_dir
        )
        t0 = time.monotonic()
        sampler = OffsetSampler(stack, group, topic, t0, config.sample_interval_s)
        sampler.start()
        cleanup.callback(sampler.stop)
        spec = ScorerSpec(
            group,
            topic,
            run_id,
            log_dir,
            config.session_timeout_ms,
            config.device,
            config.max_batch,
            env_file(),
        )
        pool = ScorerPool(spec, sampler.members, t0)
        cleanup.callback(pool.stop_all)
        timing = _churn(stack, config, pool, sampler, topic, ids, seed)
        # Stopped here as well (the callbacks above are for a run that fails): the outcome is read once every
        # member has committed and left, before the private topic goes.
        pool.stop_all()
        sampler.stop()
        outcome = evaluate(stack, ids, topic, since, sampler)
    events = pool.events
    result: dict[str, Any] = {
        "benchmark": "churn",
        "machine": machine_info(packages=("torch", "kafka-python")),
        "run_id": run_id,
        "seed": seed,
        "settings": {
            **{k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
            "rate_per_s": round(config.images / config.duration_s, 2),
            "input_topic": topic,
            "private_topic": not config.topic,
            "group": group,
            "kill_pattern": ["kill" if k else "term" for k in KILL_PATTERN],
        },
        "counts": outcome.pop("counts"),
        "membership": {
            "joins": events.joins,
            "graceful_leaves": events.graceful_leaves,
            "kills": events.kills,
            "deferred_leaves": events.deferred,
            "member_list_changes_sampled": sampler.membership_changes(),
            # records each scorer's loop dropped from a batch because a rebalance revoked their partition
            "dropped_on_revocation": {p.name: dropped_on_revocation(p.log_text()) for p in pool.procs},
            "unexpected_exits": events.unexpected_exits,
            "failed_graceful_stops": events.failed_graceful_stops,
        },
        "offsets": outcome,
        "timing": {**timing, "wall_s": round(time.monotonic() - started, 1)},
        "timeline": events.timeline,
        "samples": [asdict(s) for s in sampler.samples],
        "logs": str(log_dir),
    }
    failed = checks(result)
    result.update(ok=not failed, failed=failed)
    return result


def _churn(
    stack: StackSettings,
    config: ChurnConfig,
    pool: ScorerPool,
    sampler: OffsetSampler,
    topic: str,
    ids: list[str],
    seed: int,
) -> dict[str, float]:
    """Start, churn under load for ``duration_s``, then let the scorers left drain; returns phase times."""
    t0 = pool.t0
    for _ in range(INITIAL_SCORERS):
        pool.start()

    def someone_joined() -> bool:
        pool.refresh()
        return any(p.joined for p in pool.procs)

    try:
        wait_until(someone_joined, config.join_timeout_s, "a scorer to join the group", 0.5)
    except TimeoutError as e:
        raise TimeoutError(f"{e}; logs in {pool.spec.log_dir}") from None
    joined_s = time.monotonic() - t0
    publisher = Publisher(stack, topic, ids, config.images / config.duration_s, f"churn-{pool.spec.run_id}")
    publisher.start()
    churner = Churner(pool, config.scorers, config.min_gap_s, config.max_gap_s, seed)
    churn_start = time.monotonic()
    churn_end = churn_start + config.duration_s
    while (now := time.monotonic()) < churn_end:
        _wait_phase(pool, min(churn_end, now + churner.next_gap()))
        if time.monotonic() < churn_end:
            churner.tick()
    publisher.join(timeout=120)
    churn_s = time.monotonic() - churn_start
    ends = {tp.partition: o for tp, o in end_offsets(stack, topic).items()}
    drain_start = time.monotonic()
    try:
        wait_until(lambda: _drained(pool, sampler, ends), config.drain_timeout_s, "the drain", 0.5)
    except TimeoutError:
        logger.error("not drained after %.0fs; checking what there is", config.drain_timeout_s)
    return {
        "first_join_s": round(joined_s, 1),
        "churn_s": round(churn_s, 1),
        "drain_s": round(time.monotonic() - drain_start, 1),
    }


def checks(r: dict[str, Any]) -> list[str]:
    """The names of the checks ``r`` fails (empty: all passed)."""
    c, m, o = r["counts"], r["membership"], r["offsets"]
    failed = [
        f"{key} == 0" for key in ("lost", "duplicate_rows", "images_without_verdict_message", "dlq") if c[key]
    ]
    if c["images_with_verdict"] != c["submitted"]:
        failed.append("a verdict row for every submitted image")
    if len(c["model_versions"]) > 1:
        failed.append("one model version")
    if o["decreases"]:
        failed.append("no committed offset decreases")
    if o["not_drained"]:
        failed.append("every partition committed up to its log end")
    if m["unexpected_exits"] or m["failed_graceful_stops"]:
        failed.append("no scorer exited unasked; every SIGTERM ended in exit status 0")
    if not (m["joins"] > INITIAL_SCORERS and m["graceful_leaves"] and m["kills"]):
        failed.append("the group churned (joins, graceful leaves and kills)")
    return failed


def summary(r: dict[str, Any]) -> str:
    c, m, o, t = r["counts"], r["membership"], r["offsets"], r["timing"]
    return (
        f"churn {'OK' if r['ok'] else 'FAILED ' + '; '.join(r['failed'])}: {c['submitted']} images, "
        f"{c['verdict_rows']} verdict rows ({c['duplicate_rows']} duplicate, {c['lost']} lost), "
        f"{c['verdict_messages']} verdict messages ({c['verdict_messages_redelivered']} redelivered), "
        f"dlq {c['dlq']}; joins {m['joins']}, graceful leaves {m['graceful_leaves']}, kills {m['kills']}, "
        f"member-list changes sampled {m['member_list_changes_sampled']}; {o['samples']} offset samples, "
        f"{len(o['decreases'])} decreases; churn {t['churn_s']}s, drain {t['drain_s']}s, wall {t['wall_s']}s"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.churn", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--duration", type=float, default=120.0, help="seconds of churn under load")
    p.add_argument("--scorers", type=int, default=3, help="most scorers alive at once (2 or more)")
    p.add_argument("--images", type=int, help="images published over the churn (default: 25 per second)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="result file (JSON)")
    p.add_argument("--topic", help="input topic (default: a private one per run; see the docstring)")
    p.add_argument("--min-gap", type=float, default=2.0, help="shortest pause between membership changes (s)")
    p.add_argument("--max-gap", type=float, default=5.0, help="longest pause between membership changes (s)")
    p.add_argument("--device", default="cpu", help="the scorers' device")
    p.add_argument("--seed", type=int, help="image and schedule seed (default: random)")
    p.add_argument("--log-dir", type=Path, help="scorer logs (default: a new temp dir, kept)")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    configure_logging(args.log_level)
    logging.getLogger("kafka").setLevel(logging.WARNING)
    if args.scorers < 2:
        p.error("--scorers must be at least 2")
    config = ChurnConfig(
        duration_s=args.duration,
        scorers=args.scorers,
        images=args.images or int(25 * args.duration),
        topic=args.topic,
        min_gap_s=args.min_gap,
        max_gap_s=args.max_gap,
        device=args.device,
        seed=args.seed,
        log_dir=args.log_dir,
    )
    # SIGTERM unwinds like an exception: scorers stopped, private topic and group deleted.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    result = run_churn(load(StackSettings), config)
    write_json(args.out, result, indent=1)
    print(summary(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
