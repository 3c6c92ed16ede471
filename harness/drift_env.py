"""drift-bench plumbing: the run's own schema and topics, streaming images, reading verdicts, the simulated
moderator."""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Callable

import numpy as np
import psycopg2
from PIL import Image
from psycopg2 import sql
from pydantic import SecretStr

from deploy.provision import apply_migrations, discover_migrations
from harness.topics import create_topics
from harness.wait import wait_until
from ingest.contracts import Feedback, ImageSubmitted, encode, utcnow
from ingest.db import connect
from ingest.errors import is_transient
from ingest.kafka import make_admin, make_producer
from ingest.settings import PostgresSettings, StackSettings
from ingest.storage import S3Store
from retrainer.data import CifakeSplit

logger = logging.getLogger(__name__)

PRIORITY = {"uncertain": 0, "fake": 1, "real": 2}


class DriftEnv:
    """The run's own schema and topics, and the settings that point there; removed on close unless kept."""

    def __init__(self, stack: StackSettings, run: str) -> None:
        self.run = run
        self.schema = f"drift_{run}"
        self.submitted, self.feedback, self.models = (
            f"drift.{run}.{t}" for t in ("submitted", "feedback", "models")
        )
        base = stack.pg.dsn.get_secret_value()
        self.base_dsn = base
        dsn = base + ("&" if "?" in base else "?") + "options=" + f"-c%20search_path%3D{self.schema}"
        self.stack = stack.model_copy(update={"pg": PostgresSettings(dsn=SecretStr(dsn))})

    def create(self) -> None:
        self._exec(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.schema)))
        apply_migrations(self.stack.pg.dsn.get_secret_value(), discover_migrations())
        topics = {
            self.submitted: 2,
            self.submitted + ".dlq": 1,
            self.feedback: 2,
            self.feedback + ".dlq": 1,
            self.models: 1,
        }
        create_topics(self.stack.kafka, topics)

    def close(self) -> None:
        admin = make_admin(self.stack.kafka)
        try:
            names = [
                self.submitted,
                self.submitted + ".dlq",
                self.feedback,
                self.feedback + ".dlq",
                self.models,
            ]
            admin.delete_topics(names)
        except Exception as e:  # best effort: a leftover topic harms nothing
            logger.warning("could not delete the run's topics: %s", e)
        finally:
            admin.close()
        self._exec(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.schema)))

    def _exec(self, statement: sql.Composable) -> None:
        conn = psycopg2.connect(self.base_dsn)
        try:
            with conn, conn.cursor() as cur:
                cur.execute(statement)
        finally:
            conn.close()

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "CIFAKE_PG__DSN": self.stack.pg.dsn.get_secret_value(), **extra}


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.5) -> None:
    """``harness.wait.wait_until``, except that a transient failure of the stack while polling (a
    connection refused or timed out on a loaded machine) counts as "not yet": the experiment outlives it,
    and only the deadline ends it."""

    def polled() -> bool:
        try:
            return predicate()
        except Exception as e:
            if not is_transient(e):
                raise
            logger.warning("drift-bench: %s while waiting for %s; polling on", type(e).__name__, what)
            return False

    wait_until(polled, timeout, what, interval)


class Stream:
    """Uploads images, submits them, reads their verdicts back, labels them as the simulated moderator."""

    def __init__(self, env: DriftEnv, ds: CifakeSplit) -> None:
        self.env = env
        self.ds = ds
        self.store = S3Store(env.stack.s3)
        self.producer = make_producer(env.stack.kafka)
        self.truth: dict[str, int] = {}

    def submit(self, idx: np.ndarray) -> list[str]:
        ids = []
        for i in idx:
            data = png(self.ds.images[i])
            key = hashlib.sha256(data).hexdigest()
            self.store.put("images", key, data, "image/png")
            msg = ImageSubmitted(
                image_id=key, ref=f"s3://images/{key}", submitted_at=utcnow(), source="drift"
            )
            self.producer.send(self.env.submitted, key=key.encode(), value=encode(msg))
            self.truth[key] = int(self.ds.labels[i])
            ids.append(key)
        self.producer.flush(30)
        return ids

    def verdicts(self, ids: list[str]) -> dict[str, tuple[str, float, str]]:
        """image_id -> (model_version, p_fake, label) of its latest verdict."""
        with connect(self.env.stack.pg) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT DISTINCT ON (image_id) image_id, model_version, p_fake, label, threshold"
                " FROM verdicts WHERE image_id = ANY(%s) ORDER BY image_id, scored_at DESC",
                (ids,),
            )
            rows = cur.fetchall()
        conn.close()
        return {r[0]: (r[1], float(r[2]) - float(r[4]), r[3]) for r in rows}

    def label(self, ids: list[str], n: int) -> int:
        """Label ``n`` of ``ids`` from ground truth: uncertain first, then fake, then real; closest first."""
        verdicts = self.verdicts(ids)
        order = sorted(verdicts, key=lambda i: (PRIORITY[verdicts[i][2]], abs(verdicts[i][1])))[:n]
        for image_id in order:
            msg = Feedback(
                image_id=image_id,
                label="fake" if self.truth[image_id] else "real",
                moderator="drift-sim",
                labelled_at=utcnow(),
            )
            self.producer.send(self.env.feedback, key=image_id.encode(), value=encode(msg))
        self.producer.flush(30)
        return len(order)

    def close(self) -> None:
        self.producer.close(10)
