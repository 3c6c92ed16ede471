"""Scale-out on one machine: a private three-broker stack, two scorers, one broker SIGKILLed mid-stream.

`deploy/stack up --brokers 3` starts a throwaway stack (its own state dir and free ports, the install cache
shared with the main stack, which is never touched). Images go in through `Intake.accept`, the path the HTTP
API and `ingest submit` use; two scorers of one consumer group score them while the broker leading
partition 0 of images.submitted is killed with SIGKILL and then started again by `deploy/stack up`.
Kafka delivery is at-least-once, so a verdict message may be sent twice; the promise is about the durable
result: exactly one verdict row per image, none lost, and the restarted broker back in every partition's
in-sync replica set.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError
from pydantic import SecretStr

import scorer.service
from harness.wait import wait_until
from ingest.db import Database, connect
from ingest.intake import Intake, IntakeSettings
from ingest.kafka import make_admin, make_producer
from ingest.service import Service
from ingest.settings import KafkaSettings, PostgresSettings, S3Settings, StackSettings
from ingest.storage import S3Store
from ingest.topics import IMAGES_SUBMITTED
from tests.private_stack import free_ports
from tests.scorer_helpers import (
    ScorerThread,
    jpeg,
    make_weights,
    scorer_settings,
    verdict_messages,
    verdicts_offsets,
)

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
STACK = REPO_ROOT / "deploy" / "stack"
BROKERS = 3
N_IMAGES = 300
PARTITIONS = 6
# The first `up` may have to install Kafka/MinIO/PostgreSQL into an empty cache; later ones take a minute.
UP_TIMEOUT_S = 1800
COMMAND_TIMEOUT_S = 240


@dataclass
class PrivateStack:
    state_dir: Path
    env: dict[str, str]

    def run(self, *args: str, timeout: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(STACK), *args],
            env=self.env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(STACK), *args],
            env=self.env,
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def settings(self) -> StackSettings:
        """This stack's env file as `StackSettings`, built explicitly: nothing exported can redirect it."""
        values = dict(
            line.split("=", 1) for line in (self.state_dir / "env").read_text().splitlines() if "=" in line
        )
        return StackSettings(
            kafka=KafkaSettings(bootstrap_servers=values["CIFAKE_KAFKA__BOOTSTRAP_SERVERS"]),
            s3=S3Settings(
                endpoint=values["CIFAKE_S3__ENDPOINT"],
                access_key=SecretStr(values["CIFAKE_S3__ACCESS_KEY"]),
                secret_key=SecretStr(values["CIFAKE_S3__SECRET_KEY"]),
                secure=False,
            ),
            pg=PostgresSettings(dsn=SecretStr(values["CIFAKE_PG__DSN"])),
        )


def _describe(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def _status(stack: PrivateStack) -> dict[str, str]:
    """service -> up | down | unhealthy, from `deploy/stack status`."""
    result = stack.run("status")
    fields = (line.split() for line in result.stdout.splitlines())
    return {f[0]: f[1] for f in fields if len(f) >= 2 and f[0] not in {"state", "env"}}


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateStack]:
    # Not pytest's 0700 tmp root: as root, PostgreSQL runs as the `postgres` user and must reach the dir.
    state_dir = Path(tempfile.mkdtemp(prefix="cifake-scaleout-"))
    state_dir.chmod(0o755)
    ports = free_ports(2 * BROKERS + 3)
    kafka, controllers = ports[:BROKERS], ports[BROKERS : 2 * BROKERS]
    minio, console, pg = ports[2 * BROKERS :]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIFAKE_")}
    env.update(
        CIFAKE_STACK_DIR=str(state_dir),
        CIFAKE_PYTHON=os.environ.get("CIFAKE_PYTHON", sys.executable),
        CIFAKE_PARTITIONS=str(PARTITIONS),
        CIFAKE_STACK_KAFKA_PORT=",".join(map(str, kafka)),
        CIFAKE_STACK_KAFKA_CONTROLLER_PORT=",".join(map(str, controllers)),
        CIFAKE_STACK_MINIO_PORT=str(minio),
        CIFAKE_STACK_MINIO_CONSOLE_PORT=str(console),
        CIFAKE_STACK_PG_PORT=str(pg),
        CIFAKE_STACK_REGISTER_MODEL="0",  # the scorers bring their own weights; saves a torch start per `up`
    )
    if "CIFAKE_CACHE_DIR" in os.environ:
        env["CIFAKE_CACHE_DIR"] = os.environ["CIFAKE_CACHE_DIR"]
    instance = PrivateStack(state_dir=state_dir, env=env)
    try:
        result = instance.run("up", "--brokers", str(BROKERS), timeout=UP_TIMEOUT_S)
        assert result.returncode == 0, _describe(result)
        yield instance
    finally:
        reset = instance.run("reset")
        if reset.returncode != 0:
            shutil.rmtree(state_dir, ignore_errors=True)
        assert reset.returncode == 0, _describe(reset)


def _group_members(admin: KafkaAdminClient, group: str) -> int:
    try:
        return len(admin.describe_groups([group])[group].get("members") or [])
    except KafkaError:  # no coordinator yet: the offsets topic is created by the first group join
        return 0


def _lagging_replicas(admin: KafkaAdminClient) -> list[str]:
    """Partitions (of every topic, internal ones included) whose in-sync set lacks one of their replicas."""
    out = []
    for topic in admin.describe_topics():
        for p in topic["partitions"]:
            if set(p["isr_nodes"]) != set(p["replica_nodes"]):
                out.append(f"{topic['name']}[{p['partition_index']}] isr={p['isr_nodes']}")
    return out


@pytest.fixture
def scorer_services(monkeypatch: pytest.MonkeyPatch) -> list[Service]:
    """The services `run_scorer` builds, so the test can stop its scorers the moment it is done with them:
    an idle timeout would cost its length at the end, or fire while the submissions wait out the outage."""
    services: list[Service] = []
    build = scorer.service.build_service

    def capture(*args: Any, **kwargs: Any) -> Service:
        service = build(*args, **kwargs)
        services.append(service)
        return service

    monkeypatch.setattr(scorer.service, "build_service", capture)
    return services


@dataclass
class Run:
    """What the scenario observed, for the assertions and the summary line."""

    ids: list[str] = field(default_factory=list)
    slowest: dict[str, float] = field(default_factory=dict)  # phase -> longest accept (s)
    marks: dict[str, float] = field(default_factory=dict)  # checkpoint -> seconds since the start
    started: float = field(default_factory=time.monotonic)

    def mark(self, name: str) -> None:
        self.marks[name] = round(time.monotonic() - self.started, 1)


def test_two_scorers_lose_and_double_nothing_while_a_broker_dies(
    cluster: PrivateStack, scorer_services: list[Service], tmp_path: Path
) -> None:
    stack = cluster.settings()
    assert len(stack.kafka.bootstrap_servers.split(",")) == BROKERS
    admin = make_admin(stack.kafka)
    try:
        (submitted,) = admin.describe_topics([IMAGES_SUBMITTED])
        assert {len(p["replica_nodes"]) for p in submitted["partitions"]} == {3}
        # the victim leads a partition of the input topic, so the intake and both scorers feel its loss
        victim = f"kafka-{next(p['leader_id'] for p in submitted['partitions'] if p['partition_index'] == 0)}"

        weights = make_weights(tmp_path / "w.safetensors", f"scaleout-{uuid.uuid4().hex[:6]}", seed=11)
        group = f"scaleout-{uuid.uuid4().hex[:8]}"
        since = verdicts_offsets(stack)
        run = Run()
        scorers = [ScorerThread(stack, scorer_settings(IMAGES_SUBMITTED, group, weights, max_batch=16))]
        scorers.append(ScorerThread(stack, scorer_settings(IMAGES_SUBMITTED, group, weights, max_batch=16)))
        try:
            wait_until(
                lambda: _group_members(admin, group) == 2, 90, "both scorers in the group", interval=0.5
            )
            run.mark("scorers_joined")
            _submit_through_a_broker_loss(cluster, stack, victim, run)
            wait_until(
                lambda: _verdict_count(stack, run.ids) >= N_IMAGES, 180, f"{N_IMAGES} verdicts", interval=0.5
            )
            run.mark("all_verdicts")
        finally:
            for service in scorer_services:
                service.loop.stop()  # each finishes its batch, commits and returns its stats
        stats = [s.join(timeout=120) for s in scorers]
        wait_until(lambda: not _lagging_replicas(admin), 120, "every replica back in sync", interval=0.5)
        run.mark("in_sync")
        brokers = admin.describe_cluster()["brokers"]
    finally:
        admin.close()

    rows = _verdict_rows(stack, run.ids)
    assert len(rows) == N_IMAGES, "exactly one verdict row per image"
    assert Counter(image_id for image_id, _ in rows).most_common(1)[0][1] == 1, "no image scored twice"
    assert {image_id for image_id, _ in rows} == set(run.ids), "none lost"
    messages = verdict_messages(stack, since, set(run.ids), timeout=90)
    assert {m.image_id for m in messages} == set(run.ids), "a verdict message for every image"
    assert len(messages) >= N_IMAGES  # at-least-once: a retried batch may publish a verdict again
    assert all(s.processed > 0 for s in stats), f"both scorers got work: {stats}"
    assert sum(s.processed for s in stats) >= N_IMAGES
    assert all(s.dead_lettered == 0 for s in stats), stats
    assert sorted(b["broker_id"] for b in brokers if not b.get("is_fenced")) == [1, 2, 3]
    print(
        f"scaleout: {N_IMAGES} images, {len(rows)} verdict rows, {len(messages)} verdict messages read "
        f"({len(messages) - N_IMAGES} re-sent), killed {victim}, records per scorer "
        f"{[s.processed for s in stats]}, retried batches {[s.retries for s in stats]}, slowest accept (s) "
        f"{ {k: round(v, 2) for k, v in run.slowest.items()} }, timeline (s) {run.marks}"
    )


def _submit_through_a_broker_loss(cluster: PrivateStack, stack: StackSettings, victim: str, run: Run) -> None:
    """Submit every image through the intake: a third before the kill, a third with the broker down, the rest
    while `deploy/stack up` brings it back."""
    images = [jpeg(80_000 + i) for i in range(N_IMAGES)]
    producer = make_producer(stack.kafka)
    db = Database(stack.pg)
    intake = Intake(IntakeSettings(metrics_port=None), S3Store(stack.s3), producer, db.connection)

    def submit(data: bytes, phase: str) -> None:
        started = time.monotonic()
        run.ids.append(intake.accept(data, "scaleout-test").image_id)
        run.slowest[phase] = max(run.slowest.get(phase, 0.0), time.monotonic() - started)

    third = N_IMAGES // 3
    restart: subprocess.Popen[str] | None = None
    try:
        for data in images[:third]:
            submit(data, "before")
        run.mark("kill")
        killed = cluster.run("kill", victim)
        assert killed.returncode == 0, _describe(killed)
        assert _status(cluster)[victim] == "down"
        # the partitions it led get new leaders once the controller fences it; acks=all writes go on with the
        # two replicas left (min.insync.replicas=2), meanwhile the intake's sends wait and retry
        for data in images[third : 2 * third]:
            submit(data, "down")
        # `up` starts only what is not running; keep submitting while it does
        run.mark("restart")
        restart = cluster.start("up")
        rest = iter(images[2 * third :])
        for data in rest:
            submit(data, "restart")
            with contextlib.suppress(subprocess.TimeoutExpired):
                restart.wait(timeout=0.1)  # paces the trickle over the restart; returns early when it ends
            if restart.returncode is not None:
                break
        for data in rest:
            submit(data, "after")
        out, _ = restart.communicate(timeout=COMMAND_TIMEOUT_S)
        assert restart.returncode == 0, out
        run.mark("restarted")
    finally:
        producer.close(timeout=10)
        db.close()
        if restart is not None and restart.poll() is None:  # failed mid-restart: let `up` end before reset
            restart.communicate(timeout=COMMAND_TIMEOUT_S)
    assert len(set(run.ids)) == N_IMAGES
    assert _status(cluster)[victim] == "up"


def _verdict_count(stack: StackSettings, ids: list[str]) -> int:
    with contextlib.closing(connect(stack.pg)) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM verdicts WHERE image_id = ANY(%s)", (ids,))
        row = cur.fetchone()
        return int(row[0]) if row else 0


def _verdict_rows(stack: StackSettings, ids: list[str]) -> list[tuple[str, str]]:
    with contextlib.closing(connect(stack.pg)) as conn, conn.cursor() as cur:
        cur.execute("SELECT image_id, model_version FROM verdicts WHERE image_id = ANY(%s)", (ids,))
        return [(r[0], r[1]) for r in cur.fetchall()]
