"""`deploy/stack` lifecycle, tested on a second, throwaway stack instance.

The instance has its own state dir (a temp dir) and its own free ports, so the main stack that the other
integration tests use is never touched. The tests run in file order against one module-scoped instance;
the last one takes it down, and the fixture's finalizer resets it (removing the state dir) whatever happened.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest
from kafka.admin import KafkaAdminClient
from minio import Minio

from tests.private_stack import alive, free_ports, read_env_file

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
STACK = REPO_ROOT / "deploy" / "stack"
SERVICES = ("kafka", "minio", "postgres")
PARTITIONS = 2  # not the default 6, so the test shows CIFAKE_PARTITIONS is honoured
SCHEMA_TABLES = {
    "images",
    "verdicts",
    "explanations",
    "feedback",
    "models",
    "api_keys",
    "moderators",
    "schema_migrations",
}
# First `up` may install Kafka/MinIO/PostgreSQL when the machine's cache is empty; later ones take seconds.
UP_TIMEOUT_S = 1800
COMMAND_TIMEOUT_S = 180


@dataclass
class Stack:
    state_dir: Path
    env: dict[str, str]

    def run(self, command: str, timeout: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(STACK), command],
            env=self.env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def settings(self) -> dict[str, str]:
        """This instance's env file, as the services read it."""
        return read_env_file(self.state_dir / "env")

    def pids(self) -> dict[str, int]:
        return {s: int((self.state_dir / "run" / f"{s}.pid").read_text()) for s in SERVICES}


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def _status_lines(output: str) -> dict[str, list[str]]:
    return {fields[0]: fields for fields in (line.split() for line in output.splitlines()) if fields}


def _describe(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


@pytest.fixture(scope="module")
def second_stack() -> Iterator[Stack]:
    # Not pytest's 0700 tmp root: as root, PostgreSQL runs as the `postgres` user and must reach the dir.
    state_dir = Path(tempfile.mkdtemp(prefix="cifake-stack-test-"))
    state_dir.chmod(0o755)
    kafka, controller, minio, console, pg = free_ports(5)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIFAKE_")}
    env.update(
        CIFAKE_STACK_DIR=str(state_dir),
        CIFAKE_PYTHON=os.environ.get("CIFAKE_PYTHON", sys.executable),
        CIFAKE_PARTITIONS=str(PARTITIONS),
        CIFAKE_STACK_KAFKA_PORT=str(kafka),
        CIFAKE_STACK_KAFKA_CONTROLLER_PORT=str(controller),
        CIFAKE_STACK_MINIO_PORT=str(minio),
        CIFAKE_STACK_MINIO_CONSOLE_PORT=str(console),
        CIFAKE_STACK_PG_PORT=str(pg),
    )
    if "CIFAKE_CACHE_DIR" in os.environ:
        env["CIFAKE_CACHE_DIR"] = os.environ["CIFAKE_CACHE_DIR"]
    instance = Stack(state_dir=state_dir, env=env)
    try:
        result = instance.run("up", timeout=UP_TIMEOUT_S)
        assert result.returncode == 0, _describe(result)
        yield instance
    finally:
        reset = instance.run("reset")
        if reset.returncode != 0:
            shutil.rmtree(state_dir, ignore_errors=True)
        assert reset.returncode == 0, _describe(reset)


def test_status_reports_three_healthy_services(second_stack: Stack) -> None:
    result = second_stack.run("status")
    assert result.returncode == 0, _describe(result)
    lines = _status_lines(result.stdout)
    pids = second_stack.pids()
    ports = {
        "kafka": second_stack.env["CIFAKE_STACK_KAFKA_PORT"],
        "minio": second_stack.env["CIFAKE_STACK_MINIO_PORT"],
        "postgres": second_stack.env["CIFAKE_STACK_PG_PORT"],
    }
    for service in SERVICES:
        fields = lines[service]
        assert fields[1] == "up", result.stdout
        assert fields[2] == f"127.0.0.1:{ports[service]}"
        assert fields[-1] == str(pids[service])
        assert alive(pids[service])


def test_env_file_has_exactly_the_settings_keys(second_stack: Stack) -> None:
    settings = second_stack.settings()
    assert set(settings) == {
        "CIFAKE_KAFKA__BOOTSTRAP_SERVERS",
        "CIFAKE_S3__ENDPOINT",
        "CIFAKE_S3__ACCESS_KEY",
        "CIFAKE_S3__SECRET_KEY",
        "CIFAKE_S3__SECURE",
        "CIFAKE_PG__DSN",
        "CIFAKE_STACK_DIR",
    }
    kafka_port = second_stack.env["CIFAKE_STACK_KAFKA_PORT"]
    assert settings["CIFAKE_KAFKA__BOOTSTRAP_SERVERS"] == f"127.0.0.1:{kafka_port}"
    assert settings["CIFAKE_STACK_DIR"] == str(second_stack.state_dir)
    assert (second_stack.state_dir / "env").stat().st_mode & 0o077 == 0, "env file holds secrets: owner-only"


def test_up_again_is_a_noop(second_stack: Stack) -> None:
    before = second_stack.pids()
    result = second_stack.run("up")
    assert result.returncode == 0, _describe(result)
    assert second_stack.pids() == before
    assert "starting" not in result.stderr, result.stderr
    assert all(alive(pid) for pid in before.values())


def test_topics_exist_with_configured_partitions(second_stack: Stack) -> None:
    admin = KafkaAdminClient(bootstrap_servers=second_stack.settings()["CIFAKE_KAFKA__BOOTSTRAP_SERVERS"])
    try:
        partitions = {t["name"]: len(t["partitions"]) for t in admin.describe_topics()}
    finally:
        admin.close()
    for topic in ("images.submitted", "images.verdicts", "images.explanations", "moderation.feedback"):
        assert partitions[topic] == PARTITIONS
        assert partitions[f"{topic}.dlq"] == PARTITIONS
    assert partitions["models.published"] == 1
    assert partitions["models.published.dlq"] == 1


def test_minio_put_get_stat(second_stack: Stack) -> None:
    settings = second_stack.settings()
    client = Minio(
        settings["CIFAKE_S3__ENDPOINT"],
        access_key=settings["CIFAKE_S3__ACCESS_KEY"],
        secret_key=settings["CIFAKE_S3__SECRET_KEY"],
        secure=False,
    )
    for bucket in ("images", "explanations", "models"):
        assert client.bucket_exists(bucket)
    key = f"test/{uuid.uuid4().hex}.bin"
    payload = os.urandom(70_000)
    client.put_object(
        "images", key, io.BytesIO(payload), len(payload), content_type="application/octet-stream"
    )
    response = client.get_object("images", key)
    try:
        assert response.read() == payload
    finally:
        response.close()
        response.release_conn()
    stat = client.stat_object("images", key)
    assert stat.size == len(payload)
    assert stat.content_type == "application/octet-stream"


def test_schema_exists(second_stack: Stack) -> None:
    conn = psycopg2.connect(second_stack.settings()["CIFAKE_PG__DSN"])
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
            assert {row[0] for row in cur.fetchall()} >= SCHEMA_TABLES
            cur.execute("SELECT version, name FROM schema_migrations ORDER BY version")
            assert cur.fetchall()[0] == (1, "init")
            with pytest.raises(psycopg2.errors.CheckViolation):
                cur.execute(
                    "INSERT INTO verdicts (image_id, model_version, p_fake, label, threshold, scored_at)"
                    " VALUES ('x', 'v1', 0.5, 'maybe', 0.5, now())"
                )
    finally:
        conn.rollback()
        conn.close()


def test_down_stops_every_process_it_started(second_stack: Stack) -> None:
    pids = second_stack.pids()
    postgres_children = _children(pids["postgres"])
    assert postgres_children, "a running postmaster has background workers"
    result = second_stack.run("down")
    assert result.returncode == 0, _describe(result)
    still_running = [pid for pid in [*pids.values(), *postgres_children] if alive(pid)]
    assert still_running == []
    status = second_stack.run("status")
    assert status.returncode != 0, _describe(status)
    lines = _status_lines(status.stdout)
    assert all(lines[s][1] == "down" for s in SERVICES), status.stdout
    assert not any(re.match(r".*\.pid$", p.name) for p in (second_stack.state_dir / "run").iterdir())
