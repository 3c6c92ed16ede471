"""``python -m tests.chaos``: submit images while the pipeline's processes and servers are killed, then prove
that nothing was lost, nothing was counted twice and exactly the bad input was dead-lettered.

On a private stack (``deploy/stack up`` in a temp state dir on free ports, reset at the end unless
``--keep``; ``--stack-dir`` uses an existing one instead -- never the shared ``.stack``, since services get
killed) it runs real ``python -m scorer run`` and ``python -m explainer run`` processes, uploads ``--images``
objects (the good ones are noise JPEGs whose sha256 is their image id, as the intake would name them;
``--bad`` of them are bad input of nine kinds, see ``BAD_KINDS``) and publishes their references to
``images.submitted`` in chunks at ``--rate`` per second. While chunk *i+1* is being published, fault *i*
happens (``--faults all``):

    scorer SIGKILL (a supervisor starts a new one) . explainer SIGKILL (and restart) . Kafka broker SIGKILL,
    then ``deploy/stack up`` . scorer SIGKILL . MinIO SIGKILL, 20 s down, ``up`` . PostgreSQL immediate
    shutdown (SIGQUIT: crash recovery on restart), ``up`` . a second scorer joins (rebalance)

``--faults short`` (the CI test): scorer SIGKILL, Kafka restart, MinIO 5 s down, second scorer.

MinIO is killed rather than SIGSTOPped: a stopped process still accepts TCP connections into the kernel's
backlog, so clients would only see slow requests (and wait out their socket timeouts); a killed one refuses
connections, which is the "store unavailable" error the services must classify as transient, back off and
retry without committing. Kafka is SIGKILLed (no controlled shutdown) for the same reason. PostgreSQL gets
SIGQUIT, its crash-like immediate shutdown: SIGKILL on the postmaster alone would leave its backends holding
the shared memory and the restart would refuse to start.

A publish that Kafka did not acknowledge is sent again, so an image may reach ``images.submitted`` twice --
the duplicate the idempotent writes must absorb. When every image has its outcome (or ``--timeout``), the
checks below run and one JSON line is printed, last; the exit status is 1 if any check failed:

* ``verdicts``: PostgreSQL rows for the good images; exactly one per image per model version, none for a bad
  one; ``lost``: images with neither a verdict nor a dead letter;
* ``explanations``: rows for the good images the explainer's policy selects (verdict fake or uncertain), each
  with its three objects in MinIO (``missing_objects`` = 0);
* ``dlq`` / ``dlq_expected``: the distinct image ids on ``images.submitted.dlq`` vs the bad ones; each must
  carry the reason code its kind expects (``dlq_wrong_reason``) and no good image may be there;
* ``duplicates``: rows beyond one per key in ``verdicts`` and ``explanations``, plus images that got both a
  verdict and a dead letter; ``drain_seconds``: from the last publish and fault to the last outcome.
* ``service_exits``: scorer/explainer processes that died without being killed (restarted, but a failure).

Informational: ``resent`` (publishes retried), ``verdict_messages_redelivered`` and ``dlq_redelivered``
(at-least-once delivery on the topics: messages repeated because a batch was replayed after a fault).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.wait import wait_until
from ingest.db import connect
from ingest.settings import StackSettings
from ingest.storage import S3Store
from ingest.topics import IMAGES_SUBMITTED, IMAGES_VERDICTS, dlq_topic
from tests.chaos_input import Publisher, build_corpus
from tests.chaos_outcome import (
    TopicReader,
    checks,
    drained,
    end_offsets,
    evaluate,
    group_members,
    start_groups_at_end,
)
from tests.chaos_services import Service
from tests.private_stack import PrivateStack

logger = logging.getLogger("chaos")

SESSION_TIMEOUT_MS = 10_000  # a SIGKILLed member is noticed after this; the default 30 s only slows the run


@dataclass
class Run:
    stack: PrivateStack
    settings: StackSettings
    run_id: str
    good: list[str]
    bad: dict[str, str]  # image id -> expected dead-letter code
    log_dir: Path
    scorer_group: str
    explainer_group: str
    scorers: list[Service] = field(default_factory=list)
    explainer: Service | None = None
    service_exits: int = 0
    faults: list[dict[str, Any]] = field(default_factory=list)
    t0: float = field(default_factory=time.monotonic)

    # -- processes ---------------------------------------------------------------------------

    def _service(self, module: str, name: str, group: str, extra_env: dict[str, str]) -> Service:
        argv = [
            sys.executable,
            "-m",
            module,
            "run",
            "--group",
            group,
            "--metrics-port",
            "0",
            "--device",
            "cpu",
        ]
        env = self.stack.service_env(CIFAKE_KAFKA__SESSION_TIMEOUT_MS=str(SESSION_TIMEOUT_MS), **extra_env)
        return Service(name, argv, env, self.log_dir)

    def add_scorer(self) -> Service:
        s = self._service(
            "scorer", f"scorer{len(self.scorers) + 1}", self.scorer_group, {"CIFAKE_SCORER_THREADS": "1"}
        )
        s.start()
        self.scorers.append(s)
        return s

    def start_explainer(self) -> None:
        env = {"CIFAKE_EXPLAINER_THREADS": "1", "CIFAKE_EXPLAINER_POLICY": "flagged"}
        self.explainer = self._service("explainer", "explainer", self.explainer_group, env)
        self.explainer.start()

    def supervise(self) -> None:
        """Restart a service that died on its own (as a supervisor would), and count it: a failure."""
        for s in [*self.scorers, *([self.explainer] if self.explainer else [])]:
            if not s.running():
                self.service_exits += 1
                logger.error("%s exited by itself; restarting. Last lines:\n%s", s.name, s.tail())
                s.start()

    def stop_all(self) -> None:
        for s in [*self.scorers, *([self.explainer] if self.explainer else [])]:
            s.stop()

    # -- progress probes (used to fire a fault while work is in flight) --------------------------

    def _count(self, sql: str) -> int:
        try:
            with connect(self.settings.pg) as conn, conn.cursor() as cur:
                cur.execute(sql, (self.good,))
                row = cur.fetchone()
                return int(row[0]) if row else 0
        except Exception:  # the database may be the thing that is down
            return -1

    def verdict_count(self) -> int:
        return self._count("SELECT count(*) FROM verdicts WHERE image_id = ANY(%s)")

    def explanation_count(self) -> int:
        return self._count("SELECT count(*) FROM explanations WHERE image_id = ANY(%s)")

    def _when_progressing(self, probe: Callable[[], int], what: str) -> None:
        """Wait (bounded) until ``probe`` grows, so the next kill hits a process with work in hand."""
        before = probe()
        try:
            wait_until(lambda: probe() > before, 120, what, interval=0.2)
        except TimeoutError:
            logger.warning("no progress in %s before the fault; injecting it anyway", what)

    # -- faults --------------------------------------------------------------------------------

    def _replaced(self, group: str, expected: int, before: set[str]) -> None:
        """Wait (bounded) until ``group`` is Stable with ``expected`` members, one of them not in ``before``:
        the new process has joined and the dead one's session has expired. Faults happen in turn, so the
        next one never hits a process that is still starting."""
        try:
            wait_until(
                lambda: (
                    (m := group_members(self.settings, group)) is not None
                    and len(m) == expected
                    and bool(m - before)
                ),
                180,
                f"{expected} live member(s) in {group}",
                interval=0.5,
            )
        except TimeoutError as e:
            logger.warning("%s; going on", e)

    def kill_scorer(self) -> None:
        self._when_progressing(self.verdict_count, "verdicts")
        before = group_members(self.settings, self.scorer_group) or set()
        victim = self.scorers[0]
        victim.kill()
        logger.info("SIGKILLed %s; starting a replacement", victim.name)
        victim.start()
        self._replaced(self.scorer_group, len(self.scorers), before)

    def kill_explainer(self) -> None:
        self._when_progressing(self.explanation_count, "explanations")
        before = group_members(self.settings, self.explainer_group) or set()
        assert self.explainer is not None
        self.explainer.kill()
        logger.info("SIGKILLed the explainer; starting a replacement")
        self.explainer.start()
        self._replaced(self.explainer_group, 1, before)

    def restart_kafka(self) -> None:
        pid = self.stack.kill("kafka", signal.SIGKILL)
        logger.info("SIGKILLed the Kafka broker (pid %d); deploy/stack up", pid)
        self.stack.up()

    def stop_minio(self, seconds: float) -> None:
        pid = self.stack.kill("minio", signal.SIGKILL)
        logger.info("SIGKILLed MinIO (pid %d); down for %.0fs", pid, seconds)
        threading.Event().wait(seconds)  # the outage itself, not a wait for something to settle
        self.stack.up()

    def restart_postgres(self) -> None:
        pid = self.stack.kill("postgres", signal.SIGQUIT)
        logger.info("PostgreSQL immediate shutdown (pid %d); deploy/stack up", pid)
        self.stack.up()

    def second_scorer(self) -> None:
        before = group_members(self.settings, self.scorer_group) or set()
        self.add_scorer()
        self._replaced(self.scorer_group, len(self.scorers), before)

    def schedule(self, which: str) -> list[tuple[str, Callable[[], None]]]:
        if which == "short":
            return [
                ("scorer_sigkill", self.kill_scorer),
                ("kafka_restart", self.restart_kafka),
                ("minio_stop_5s", lambda: self.stop_minio(5)),
                ("second_scorer", self.second_scorer),
            ]
        return [
            ("scorer_sigkill", self.kill_scorer),
            ("explainer_sigkill", self.kill_explainer),
            ("kafka_restart", self.restart_kafka),
            ("scorer_sigkill", self.kill_scorer),
            ("minio_stop_20s", lambda: self.stop_minio(20)),
            ("postgres_restart", self.restart_postgres),
            ("second_scorer", self.second_scorer),
        ]

    def inject(self, name: str, fault: Callable[[], None]) -> None:
        started = time.monotonic()
        logger.info("fault: %s", name)
        fault()
        self.faults.append(
            {
                "fault": name,
                "at_s": round(started - self.t0, 1),
                "took_s": round(time.monotonic() - started, 1),
            }
        )
        self.supervise()


# -- the run ----------------------------------------------------------------------------------


def chaos(stack: PrivateStack, args: argparse.Namespace) -> dict[str, Any]:
    settings = stack.settings()
    run_id = uuid.uuid4().hex[:8]
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    # Not inside the state dir: `reset` removes that, and the logs are what explains a failed run.
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix=f"cifake-chaos-{run_id}-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    store = S3Store(settings.s3)
    subs = build_corpus(store, run_id, args.images, args.bad, seed)
    logger.info("run %s: %d images (%d bad) uploaded; logs in %s", run_id, len(subs), args.bad, log_dir)
    run = Run(
        stack=stack,
        settings=settings,
        run_id=run_id,
        good=[s.image_id for s in subs if s.expect == "verdict"],
        bad={s.image_id: s.expect for s in subs if s.expect != "verdict"},
        log_dir=log_dir,
        scorer_group=f"chaos-{run_id}-scorer",
        explainer_group=f"chaos-{run_id}-explainer",
    )
    start_groups_at_end(settings, {run.scorer_group: IMAGES_SUBMITTED, run.explainer_group: IMAGES_VERDICTS})
    since_dlq = end_offsets(settings, dlq_topic(IMAGES_SUBMITTED))
    since_verdicts = end_offsets(settings, IMAGES_VERDICTS)
    since_explainer_dlq = end_offsets(settings, dlq_topic(IMAGES_VERDICTS))
    faults = run.schedule(args.faults)
    size = -(-len(subs) // (len(faults) + 1))
    chunks = [subs[i : i + size] for i in range(0, len(subs), size)]
    chunks += [[] for _ in range(len(faults) + 1 - len(chunks))]
    try:
        run.add_scorer()
        run.start_explainer()
        run.t0 = time.monotonic()
        publisher = Publisher(settings, IMAGES_SUBMITTED, chunks, args.rate)
        for i, (name, fault) in enumerate(faults):
            publisher.done[i].wait()
            publisher.release(i + 1)  # the next chunk is published while this fault happens
            run.inject(name, fault)
        publisher.join(timeout=args.timeout)
        quiet = time.monotonic()
        logger.info(
            "all %d published (%d resent); waiting for the drain", len(publisher.acked), publisher.resent
        )
        dlq = TopicReader(settings, since_dlq)

        def settled() -> bool:
            if drained(settings, run.good, list(run.bad), dlq):
                return True
            run.supervise()  # restarts what died meanwhile
            return False

        try:
            wait_until(settled, args.timeout, "every image's outcome", interval=1.0)
        except TimeoutError as e:
            logger.warning("%s; evaluating what there is", e)  # the result names what is missing
        drain_s = time.monotonic() - quiet
        verdict_msgs = TopicReader(settings, since_verdicts)
        explainer_dlq = TopicReader(settings, since_explainer_dlq)
        verdict_msgs.poll()
        explainer_dlq.poll()
        result = evaluate(settings, run.good, run.bad, dlq, verdict_msgs, explainer_dlq)
        for reader in (dlq, verdict_msgs, explainer_dlq):
            reader.close()
    finally:
        run.stop_all()
    result.update(
        submitted=len(publisher.acked),
        drain_seconds=round(drain_s, 1),
        run_seconds=round(time.monotonic() - run.t0, 1),
        service_exits=run.service_exits,
        resent=publisher.resent,
        faults=run.faults,
        rate=args.rate,
        seed=seed,
        logs=str(log_dir),
    )
    failed = checks(result)
    result.update(ok=not failed, failed=failed)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=5000, help="images submitted, bad ones included")
    p.add_argument("--bad", type=int, default=50, help="bad submissions mixed in (several kinds)")
    p.add_argument("--faults", choices=["all", "short"], default="all")
    # Each chunk goes out as a burst faster than the scorers drain it, so every fault meets work in flight.
    p.add_argument("--rate", type=float, default=500.0, help="images published per second within a chunk")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds allowed for publishing, then drain")
    p.add_argument("--stack-dir", type=Path, help="use this running stack's state dir (never the shared one)")
    p.add_argument("--keep", action="store_true", help="leave the private stack running")
    p.add_argument("--partitions", type=int, default=6, help="partitions per topic of the private stack")
    p.add_argument("--seed", type=int, help="image generation seed (default: random)")
    p.add_argument("--log-dir", help="service logs (default: a new temp dir, kept)")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--out", type=Path, help="also write the result, with the machine, to this JSON file")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s chaos %(levelname)s %(message)s"
    )
    for noisy in ("kafka", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)  # the faults make them shout; our checks judge
    if args.bad > args.images:
        p.error("--bad must not exceed --images")
    if args.stack_dir:
        shared = (Path(__file__).resolve().parents[1] / ".stack").resolve()
        if args.stack_dir.resolve() == shared and not os.environ.get("CIFAKE_CHAOS_ALLOW_SHARED"):
            p.error(f"{shared} is the shared stack; chaos kills its services. Use a private one.")
        stack = PrivateStack.existing(args.stack_dir)
    else:
        stack = PrivateStack.create(partitions=args.partitions)
    # SIGTERM (a CI timeout, a Ctrl-C'd parent) unwinds like an exception: services stopped, stack reset.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    started = time.monotonic()
    try:
        stack.up()
        logger.info("stack %s up in %.0fs", stack.state_dir, time.monotonic() - started)
        result = chaos(stack, args)
    finally:
        if stack.owned and not args.keep:
            stack.reset()
        elif stack.owned:
            logger.info("kept the stack: CIFAKE_STACK_DIR=%s (env file %s)", stack.state_dir, stack.env_file)
    if result["failed"]:
        logger.error("FAILED: %s", "; ".join(result["failed"]))
    if args.out:
        from harness.machine import machine_info

        args.out.parent.mkdir(parents=True, exist_ok=True)
        command = "python -m tests.chaos " + " ".join(sys.argv[1:])
        args.out.write_text(
            json.dumps({"machine": machine_info(), "command": command, **result}, indent=2) + "\n"
        )
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
